"""Reading NumPy array files safely: recognise them by their first bytes before ``np.load`` (whose
message for any other file wrongly talks about pickled data), and check every array header against
the bytes that follow it, so that a forged header cannot make NumPy allocate terabytes."""
from __future__ import annotations

import math
import os
import zipfile

import numpy as np

__all__ = ["array_file_kind", "load_arrays"]

# Deflate, the compression np.savez_compressed uses, shrinks data by at most about 1032 times: a zip member
# that claims a larger ratio has a forged size (NumPy allocates a member's array before decompressing it).
_MAX_ZIP_RATIO = 1100


def array_file_kind(path) -> tuple[str | None, bytes]:
    """('npy' | 'npz' | None, the first bytes): .npy files start with b'\\x93NUMPY', .npz files are zip
    archives (b'PK'; an empty archive too)."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head == b"\x93NUMPY":
        return "npy", head
    if head.startswith(b"PK"):
        return "npz", head
    return None, head


def load_arrays(path) -> np.ndarray | dict[str, np.ndarray]:
    """The array of a .npy file, or every array of an .npz by name, read without pickles after checking
    each header's size against the file (or zip member). ValueError (or OSError, EOFError,
    zipfile.BadZipFile from the readers) on anything else."""
    kind, head = array_file_kind(path)
    if kind == "npy":
        with open(path, "rb") as f:
            _check_header(f, os.fstat(f.fileno()).st_size, "")
        return np.load(path, allow_pickle=False)
    if kind != "npz":
        raise ValueError(f"not a .npy or .npz file: it starts with {head!r}")
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            where = f"member '{info.filename}': "
            if info.file_size > _MAX_ZIP_RATIO * info.compress_size + 1024:
                raise ValueError(f"{where}claims {info.file_size:,} bytes from {info.compress_size:,} compressed "
                                 f"bytes, more than compression can give; the archive is damaged or forged")
            with archive.open(info) as member:
                if member.read(6) == b"\x93NUMPY":
                    member.seek(0)
                    _check_header(member, info.file_size, where)
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def _check_header(f, file_size: int, where: str) -> None:
    """ValueError when the .npy header at ``f`` declares more data than the ``file_size`` bytes hold."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read(f)
    if dtype.hasobject:   # np.load refuses these itself (allow_pickle=False), with its own message
        return
    need, have = math.prod(shape) * dtype.itemsize, file_size - f.tell()
    if need > have:
        raise ValueError(f"{where}the header declares {dtype} data of shape {tuple(shape)} ({need:,} bytes), but "
                         f"only {have:,} bytes follow it; the file is truncated or its header is damaged")
