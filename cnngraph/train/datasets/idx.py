"""MNIST and Fashion-MNIST from the standard IDX files (optionally gzipped)."""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ...errors import DataError
from ._common import RawSplits, check_labels, fmt_shape, require_shape, resolve

__all__ = ["read_idx", "load_mnist", "load_fashion_mnist", "FASHION_CLASSES"]

# IDX type codes -> big-endian dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(t).name: code for code, t in _IDX_TYPES.items()}    # "uint8" -> 0x08
_MEANING = {1: ": labels", 3: ": images"}
_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
          "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _read_bytes(path: Path) -> bytes:
    """Whole file, gunzipped when it ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"'{path}': expected a gzip-compressed IDX file, found unreadable data ({exc})") from None


def read_idx(path: str | Path, ndim: int | None = None, dtype: str | None = None) -> np.ndarray:
    """Parse an IDX file: magic ``00 00 <type> <ndim>``, ndim big-endian uint32 sizes, data.

    ``ndim`` and ``dtype`` (e.g. "uint8"), when given, are what the caller expects; the magic number
    is checked against them before the size, so a wrong type byte is not reported as a truncated file.
    Truncated files, trailing bytes and a wrong magic number raise DataError.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"'{path}': expected an IDX header of at least 4 bytes, found {len(data)} bytes")
    zero0, zero1, code, nd = data[0], data[1], data[2], data[3]
    want_code = _CODES[dtype] if dtype is not None else None
    if zero0 or zero1 or code not in _IDX_TYPES or (ndim is not None and nd != ndim) or \
            (want_code is not None and code != want_code):
        want = f"0x0000{want_code or 0x08:02X}{ndim:02X}" if ndim is not None else "0x0000TTNN"
        what = f" ({_describe(want_code, ndim)})" if ndim is not None else ""
        found = _describe(code, nd) if not (zero0 or zero1) and code in _IDX_TYPES else "not an IDX file"
        gz = data[:2] == b"\x1f\x8b"   # gzip's magic: a compressed file without its .gz suffix
        raise DataError(f"'{path}': expected an IDX file with magic number {want}{what}, found "
                        f"0x{data[:4].hex().upper()} ({'gzip-compressed data: name it ' + path.name + '.gz' if gz else found})")
    head = 4 + 4 * nd
    if len(data) < head:
        raise DataError(f"'{path}': truncated: expected a {head}-byte header, found {len(data)} bytes")
    dims = struct.unpack(">" + "I" * nd, data[4:head])
    dtype = np.dtype(_IDX_TYPES[code])
    need = head + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != need:
        state = "truncated" if len(data) < need else "has trailing data"
        raise DataError(f"'{path}': {state}: expected {need} bytes (header + {fmt_shape(dims)} "
                        f"{dtype.name} values), found {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=head).reshape(dims).astype(dtype.newbyteorder("="))


def _describe(code: int | None, ndim: int) -> str:
    """What a magic number's type and dimension bytes mean: "uint8, 1 dimension: labels"."""
    kind = np.dtype(_IDX_TYPES[code]).name if code is not None else "any type"
    return f"{kind}, {ndim} dimension{'' if ndim == 1 else 's'}{_MEANING.get(ndim, '')}"


def _find(folder: Path, stem: str, notes: list[str]) -> Path:
    """Locate an IDX file under its standard name, the dotted variant, with or without .gz (in that order of
    preference); when several of those exist with different contents, a note says which one is read."""
    dotted = stem.replace("-idx", ".idx")
    names = [stem, stem + ".gz", dotted, dotted + ".gz"]
    found = [folder / name for name in names if (folder / name).is_file()]
    if not found:
        raise DataError(f"'{folder}': expected the IDX file '{stem}' (tried {', '.join(names)}), found none")
    if len(found) > 1 and len({_content(p) for p in found}) > 1:
        notes.append(f"note: '{folder}' holds {', '.join(p.name for p in found)} with different contents; "
                     f"reading {found[0].name}")
    return found[0]


def _content(path: Path) -> bytes | None:
    """The file's data (gunzipped for .gz) to compare candidates by; None when unreadable (read_idx says why)."""
    try:
        return _read_bytes(path)
    except DataError:
        return None


def _load(cfg, input_shape, base_dir, name: str, classes: list[str]) -> RawSplits:
    folder = resolve(cfg.path, base_dir, name)
    if not folder.is_dir():
        raise DataError(f"dataset '{name}': expected a folder with the IDX files, found file '{folder}'")
    notes: list[str] = []
    paths = {k: _find(folder, v, notes) for k, v in _FILES.items()}
    arrays = {k: read_idx(p, ndim=3 if k.endswith("_x") else 1, dtype="uint8") for k, p in paths.items()}
    require_shape((1,) + arrays["train_x"].shape[1:], input_shape, f"dataset '{name}' ('{paths['train_x']}')")
    splits = {}
    for part in ("train", "test"):
        x, y = arrays[part + "_x"], arrays[part + "_y"]
        if x.shape[1:] != arrays["train_x"].shape[1:]:
            raise DataError(f"'{paths[part + '_x']}': expected images of {fmt_shape(arrays['train_x'].shape[1:])}, "
                            f"found {fmt_shape(x.shape[1:])}")
        y = check_labels(y, len(x), len(classes), f"'{paths[part + '_y']}'")
        # MNIST pixels are uint8 0..255: map them to [0, 1].
        xf = x[:, None].astype(np.float32)
        xf /= np.float32(255.0)
        splits[part] = (xf, y)
    return RawSplits(train=splits["train"], test=splits["test"], classes=classes, source=f"{name}:{folder}",
                     notes=notes)


def load_mnist(cfg, input_shape, base_dir=None) -> RawSplits:
    """MNIST from its IDX files; test = t10k, validation carved from train by the caller."""
    return _load(cfg, input_shape, base_dir, "mnist", [str(d) for d in range(10)])


def load_fashion_mnist(cfg, input_shape, base_dir=None) -> RawSplits:
    """Fashion-MNIST (same file names and format as MNIST)."""
    return _load(cfg, input_shape, base_dir, "fashion_mnist", list(FASHION_CLASSES))
