"""CIFAR-10 "python version" (cifar-10-batches-py): pickled dicts read with a restricted unpickler.

The real files are Python 2 pickles of ``{b'batch_label', b'labels', b'data', b'filenames'}``
where ``data`` is a numpy uint8 array (10000, 3072) (rows: 1024 R, 1024 G, 1024 B values, row-major
32x32) and ``labels`` a list of ints. Rebuilding the array needs three numpy globals; the
unpickler resolves those and refuses every other global, so a hostile file cannot run code.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ...errors import DataError
from ._common import RawSplits, check_labels, fmt_shape, require_shape, resolve

__all__ = ["SafeUnpickler", "safe_load_pickle", "load_cifar10", "CIFAR10_CLASSES"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
_SHAPE = (3, 32, 32)


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    """Python 3 protocol-2 pickles store bytes as ``_codecs.encode(str, 'latin1')``; allow only that."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refused _codecs.encode call with unexpected arguments")
    return text.encode("latin1")


_reconstruct = np.empty(0).__reduce_ex__(2)[0]      # numpy's multiarray._reconstruct
_frombuffer = np.empty(1).__reduce_ex__(5)[0]       # numpy's numeric._frombuffer (protocol 5)
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy array-rebuilding globals listed in ``_ALLOWED``."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global '{module}.{name}'") from None


_BATCH = "a CIFAR-10 python batch (a pickled dict of numpy data and labels)"
_META = "the CIFAR-10 meta file (a pickled dict with 'label_names')"


def safe_load_pickle(path: Path, expected: str = _BATCH):
    """Load a pickle with :class:`SafeUnpickler` (Python 2 strings come back as bytes); ``expected``
    says what the file should be, for the error message."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"'{path}': cannot read ({exc})") from None
    except Exception as exc:  # any malformed pickle: EOFError, UnpicklingError, ValueError, ...
        raise DataError(f"'{path}': expected {expected}, found an unreadable or unsafe pickle ({exc})") from None


def _get(d: dict, key: str):
    """Look a key up as bytes (Python 2 pickles) or str (Python 3 pickles)."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = safe_load_pickle(path)
    if not isinstance(d, dict):
        raise DataError(f"'{path}': expected a pickled dict with 'data' and 'labels', found {type(d).__name__}")
    data, labels = _get(d, "data"), _get(d, "labels")
    if data is None or labels is None:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in d)
        raise DataError(f"'{path}': expected keys 'data' and 'labels', found {keys}")
    n = int(np.prod(_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != n:
        found = (f"{data.dtype} array of shape {fmt_shape(data.shape)}" if isinstance(data, np.ndarray)
                 else type(data).__name__)
        raise DataError(f"'{path}': expected 'data' as a uint8 array (N, {n}), found {found}")
    if not isinstance(labels, (list, tuple, np.ndarray)) or not all(
            isinstance(v, (int, np.integer)) for v in labels):
        raise DataError(f"'{path}': expected 'labels' as a list of ints, found {type(labels).__name__}")
    # Check the range before converting: a value beyond int64 would overflow in NumPy.
    bad = next(((i, int(v)) for i, v in enumerate(labels) if not 0 <= int(v) <= 9), None)
    if bad is not None:
        raise DataError(f"'{path}' labels: expected labels in [0, 9], found {bad[1]} at index {bad[0]}")
    y = check_labels(np.asarray(labels, dtype=np.int64), len(data), 10, f"'{path}' labels")
    # Rows are channel-major 32x32 planes, so a reshape gives NCHW directly (still uint8).
    return data.reshape((-1,) + _SHAPE), y


def _to_float(x: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1] with one float array (CIFAR train is 600 MB as float32)."""
    out = x.astype(np.float32)
    out /= np.float32(255.0)
    return out


def _classes(folder: Path) -> list[str]:
    meta = folder / "batches.meta"
    if not meta.is_file():
        return list(CIFAR10_CLASSES)
    d = safe_load_pickle(meta, _META)
    names = _get(d, "label_names") if isinstance(d, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"'{meta}': expected 'label_names' as a list of 10 names, found {names!r:.80}")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


def load_cifar10(cfg, input_shape, base_dir=None) -> RawSplits:
    """CIFAR-10 from ``cifar-10-batches-py`` (the folder itself or its parent)."""
    folder = resolve(cfg.path, base_dir, "cifar10")
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    require_shape(_SHAPE, input_shape, "dataset 'cifar10'")
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"'{folder}': expected the CIFAR-10 batches {', '.join(names)}, "
                        f"missing {', '.join(missing)}")
    batches = [_read_batch(folder / n) for n in names]
    x = _to_float(np.concatenate([b[0] for b in batches[:5]]))
    y = np.concatenate([b[1] for b in batches[:5]])
    test = (_to_float(batches[5][0]), batches[5][1])
    return RawSplits(train=(x, y), test=test, classes=_classes(folder), source=f"cifar10:{folder}")
