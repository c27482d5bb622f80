"""Recognise NumPy array files by their first bytes before ``np.load``, whose message for any other
file wrongly talks about pickled data."""
from __future__ import annotations

__all__ = ["array_file_kind"]


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
