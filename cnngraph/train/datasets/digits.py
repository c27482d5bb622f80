"""The bundled UCI hand-written digits (8x8, grey levels 0..16, 10 classes, 1,797 images).

The file ``cnngraph/data/digits.npz`` holds ``x`` (uint8, (1797, 8, 8)), ``y`` (uint8) and the
fixed split ``train_idx`` / ``val_idx`` / ``test_idx`` (see ``cnngraph/data/DIGITS_LICENSE.txt``).
The split is stored, not recomputed, so it never changes between runs or NumPy versions.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ...errors import DataError
from ._common import RawSplits, require_shape, stratified_split

__all__ = ["DIGITS_PATH", "load_digits", "load_digits_segmentation", "load_digits_rotation", "build_digits_npz",
           "DIGITS_SPLIT_SEED"]

DIGITS_PATH = Path(__file__).resolve().parents[2] / "data" / "digits.npz"
DIGITS_SPLIT_SEED = 1998
DIGITS_SHAPE = (1, 8, 8)


def load_digits(cfg, input_shape, base_dir=None) -> RawSplits:
    """Load the bundled digits; images keep their raw grey levels 0..16 (``pixel_scale`` 16)."""
    require_shape(DIGITS_SHAPE, input_shape, "dataset 'digits'")
    try:
        with np.load(DIGITS_PATH, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
            idx = [z[k] for k in ("train_idx", "val_idx", "test_idx")]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"bundled digits file '{DIGITS_PATH}' is missing or damaged ({exc}); "
                        "reinstall cnngraph") from None
    x = x.astype(np.float32)[:, None, :, :]
    y = y.astype(np.int64)
    splits = [(x[i], y[i]) for i in idx]
    return RawSplits(train=splits[0], val=splits[1], test=splits[2],
                     classes=[str(d) for d in range(10)], source="digits (UCI, bundled)",
                     pixel_scale=16.0)


PAIRS_SHAPE = (1, 8, 16)
INK = 4   # grey levels above this (of 16) are the digit's pixels


def load_digits_segmentation(cfg, input_shape, base_dir=None) -> RawSplits:
    """Segmentation on the bundled digits: each image is two digits side by side (1, 8, 16) and each
    pixel's class is the digit it belongs to (1 + the digit, for its ink) or 0 (background).

    Every digit of a split is the left half of one pair; its right partner is another digit of the same
    split (a fixed permutation), so the splits stay apart and never change.
    """
    require_shape(PAIRS_SHAPE, input_shape, "dataset 'digits_segmentation'")
    raw = load_digits(cfg, (1, 8, 8), base_dir)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    splits = []
    for x, y in (raw.train, raw.val, raw.test):
        partner = (np.arange(len(y)) + 1 + rng.permutation(len(y))) % len(y) if len(y) > 1 else np.arange(len(y))
        masks = np.where(x[:, 0] > INK, y[:, None, None] + 1, 0).astype(np.int64)
        splits.append((np.concatenate([x, x[partner]], axis=3), np.concatenate([masks, masks[partner]], axis=2)))
    return RawSplits(train=splits[0], val=splits[1], test=splits[2],
                     classes=["background"] + [str(d) for d in range(10)],
                     source="digits segmentation (UCI digits in pairs, bundled)", pixel_scale=16.0)


MAX_TURN = 45.0   # degrees either way


def load_digits_rotation(cfg, input_shape, base_dir=None) -> RawSplits:
    """Regression on the bundled digits: each digit is turned by a fixed random angle in [-45, 45] degrees
    (bilinear, about its centre) and the target is that angle / 45, in [-1, 1]. The angles are drawn once
    per split from a fixed seed, so the data never change between runs."""
    from ..augment import rotate
    require_shape(DIGITS_SHAPE, input_shape, "dataset 'digits_rotation'")
    raw = load_digits(cfg, DIGITS_SHAPE, base_dir)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED + 1)
    splits = []
    for x, _ in (raw.train, raw.val, raw.test):
        angles = rng.uniform(-MAX_TURN, MAX_TURN, len(x))
        splits.append((rotate(x, angles), (angles / MAX_TURN).astype(np.float32)[:, None]))
    return RawSplits(train=splits[0], val=splits[1], test=splits[2], classes=[],
                     source="digits rotation (UCI digits turned by known angles, bundled)", pixel_scale=16.0)


def build_digits_npz(csv_gz: str | Path, out: str | Path = DIGITS_PATH) -> dict[str, int]:
    """Rebuild ``digits.npz`` from scikit-learn's ``sklearn/datasets/data/digits.csv.gz``.

    Each CSV row is 64 pixel values then the label. The split is stratified 60/15/25 %
    (test carved first: ceil(25 %), then validation: ceil(15 % of the whole) from the rest)
    with ``np.random.default_rng(DIGITS_SPLIT_SEED)``. Returns the split sizes.
    """
    with gzip.open(csv_gz, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x = data[:, :64].reshape(-1, 8, 8).astype(np.uint8)
    y = data[:, 64].astype(np.uint8)
    train_idx, test_idx, val_idx = stratified_split(y, [0.25, 0.15], DIGITS_SPLIT_SEED)
    np.savez_compressed(out, x=x, y=y, train_idx=train_idx, val_idx=val_idx, test_idx=test_idx)
    return {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)}
