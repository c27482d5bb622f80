"""Array-module selection: one op implementation for NumPy and CuPy.

CuPy is imported lazily, only when a CUDA device is asked for or a CuPy array is seen.
"""
from __future__ import annotations

import numpy as np

from .errors import BackendError

__all__ = ["xp_of", "get_xp", "to_numpy", "to_device", "DEVICES", "tune_allocator"]

DEVICES = ("cpu", "cuda")


def _cupy():
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise BackendError(
            "device 'cuda' needs CuPy, which is not installed: pip install 'cnngraph[gpu]' (in a source checkout: pip install -e '.[gpu]')"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # pragma: no cover
        raise BackendError(f"device 'cuda': CuPy found no usable GPU ({exc})") from exc
    if count < 1:  # pragma: no cover
        raise BackendError("device 'cuda': CuPy found no GPU")
    return cupy


_TUNED = False


def tune_allocator() -> bool:
    """Keep freed memory in the C heap for reuse instead of returning it to the OS after every array.

    Every layer allocates fresh activations and gradients of the same sizes on every step; glibc
    serves arrays above its mmap threshold with fresh mmaps, so each one page-faults its memory in
    again (measured 5-20 % of a LeNet/cifarnet training step on 2 cores). Raising the mmap and trim
    thresholds makes the heap reuse those blocks: a buffer pool for the whole process. Peak memory is
    unchanged; freed memory is kept for reuse. Set CNNGRAPH_MALLOC_TUNING=0 to leave malloc alone.
    Returns whether the settings were applied (glibc on Linux only).
    """
    global _TUNED
    import os
    import sys
    if _TUNED or os.environ.get("CNNGRAPH_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return _TUNED
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):   # not glibc
        return False
    _TUNED = bool(ok)
    return _TUNED


def get_xp(device: str = "cpu"):
    """Return the array module for ``device`` ("cpu" → numpy, "cuda" → cupy)."""
    if device == "cpu":
        return np
    if device == "cuda":
        return _cupy()
    raise BackendError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")


def xp_of(*arrays):
    """Array module of the given arrays: numpy unless one of them is a CuPy array."""
    for a in arrays:
        if a is not None and type(a).__module__.startswith("cupy"):
            import cupy
            return cupy
    return np


def to_numpy(a):
    """Copy a (possibly CuPy) array to a NumPy array; NumPy arrays pass through."""
    if a is None or isinstance(a, np.ndarray):
        return a
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def to_device(a, xp):
    """Move an array onto the device of array module ``xp``."""
    if xp is np:
        return to_numpy(a)
    return xp.asarray(a)
