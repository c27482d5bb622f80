"""Array-module selection: one op implementation for NumPy and CuPy.

CuPy is imported lazily, only when a CUDA device is asked for or a CuPy array is seen.
"""
from __future__ import annotations

import numpy as np

from .errors import BackendError

__all__ = ["xp_of", "get_xp", "to_numpy", "to_device", "DEVICES"]

DEVICES = ("cpu", "cuda")


def _cupy():
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise BackendError(
            "device 'cuda' needs CuPy, which is not installed: pip install 'cnngraph[gpu]'"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # pragma: no cover
        raise BackendError(f"device 'cuda': CuPy found no usable GPU ({exc})") from exc
    if count < 1:  # pragma: no cover
        raise BackendError("device 'cuda': CuPy found no GPU")
    return cupy


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
