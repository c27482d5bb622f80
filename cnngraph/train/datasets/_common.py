"""Helpers shared by the dataset loaders: raw splits, layout conversion, label checks, splitting."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..input_kinds import INPUT_KINDS, mask_unit

__all__ = ["RawSplits", "to_nchw", "as_float_images", "looks_8bit", "check_labels", "check_values", "labels_beyond",
           "stratified_split",
           "require_shape", "fmt_shape"]


@dataclass
class RawSplits:
    """What a loader returns: float32 NCHW images in the source's raw units, int64 labels.

    ``val`` / ``test`` are None when the source has none (``load_dataset`` then carves them).
    ``pixel_scale`` maps an image read in [0, 1] to the raw units (16 for digits, else 1).
    ``notes`` are remarks for the user on how the data was read (printed by train and evaluate).
    ``label_sources`` are (where, labels as read) when the classes are numbered from the labels (no class
    names), so that labels beyond a model's classes can be named (:func:`labels_beyond`).
    """

    train: tuple[np.ndarray, np.ndarray]
    classes: list[str]
    source: str
    val: tuple[np.ndarray, np.ndarray] | None = None
    test: tuple[np.ndarray, np.ndarray] | None = None
    pixel_scale: float = 1.0
    notes: list[str] = field(default_factory=list)
    label_sources: list[tuple[str, np.ndarray]] = field(default_factory=list)


def fmt_shape(shape) -> str:
    """Render a shape as ``(1, 28, 28)``."""
    return str(tuple(int(s) for s in shape))   # (1200,) for one dimension, as Python writes it


def require_shape(found: tuple[int, ...], input_shape: tuple[int, int, int], what: str) -> None:
    """Raise DataError unless a source's fixed image shape equals the model's input shape."""
    if tuple(found) != tuple(input_shape):
        raise DataError(
            f"{what}: images are {fmt_shape(found)} (C, H, W) but the model's input_shape is "
            f"{fmt_shape(input_shape)}; set the input layer's shape to {fmt_shape(found)}")


def to_nchw(arr: np.ndarray, input_shape: tuple[int, ...], layout: str, what: str) -> np.ndarray:
    """Return ``arr`` as (N, C, H, W) given the expected (C, H, W), as (N, C, L) given a sequence's (C, L), or as
    (N, C, D, H, W) given a volume's (C, D, H, W).

    Accepts channels first (NCHW / NCL / NCDHW), channels last (NHWC / NLC / NDHWC; ``layout`` "auto" tries
    channels first first) and, when C == 1, no channel axis: (N, H, W) / (N, L) / (N, D, H, W). ``layout`` names
    one of those. ``what`` names the file and key for the error message.
    """
    c, *space = (int(s) for s in input_shape)
    space = tuple(space)
    names = INPUT_KINDS[len(input_shape)][3:]
    if layout != "auto" and layout.upper() not in names:
        raise DataError(f"{what}: layout {layout} is for {INPUT_KINDS[len(layout) - 1][1]}; the "
                        f"model's input_shape {fmt_shape(input_shape)} takes {names[0].lower()} or {names[1].lower()}")
    first, last = layout in ("auto", names[0].lower()), layout in ("auto", names[1].lower())
    shape = tuple(arr.shape)
    if arr.ndim == len(space) + 1 and c == 1 and shape[1:] == space:
        return arr[:, None]
    if arr.ndim == len(space) + 2:
        if first and shape[1:] == (c, *space):
            return arr
        if last and shape[1:] == (*space, c):
            return np.moveaxis(arr, -1, 1)
    dims = (lambda *d: "(N, " + ", ".join(map(str, d)) + ")")
    wanted = " or ".join(f"{dims(*order)} ({name})" for ok, order, name in
                         ((first, (c, *space), names[0]), (last, (*space, c), names[1])) if ok)
    if c == 1:
        wanted += f" or {dims(*space)}"
    kind = INPUT_KINDS[len(input_shape)][1]
    raise DataError(f"{what}: expected {kind} of shape {wanted} for the model's input_shape "
                    f"{fmt_shape(input_shape)}, found shape {fmt_shape(shape)}")


def as_float_images(arr: np.ndarray, what: str, scale_uint8: bool = True) -> np.ndarray:
    """Convert image data to float32: uint8 is scaled by 1/255 (if ``scale_uint8``), other numbers kept
    as they are."""
    if arr.dtype == np.uint8 and scale_uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{what}: expected numeric image data (uint8 or float), found dtype {arr.dtype}")
    out = arr.astype(np.float32)
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        bad = ~np.isfinite(out.reshape(len(out), -1))
        first = int(np.flatnonzero(bad.any(axis=1))[0])   # the sample to look at, as the labels' check says
        value = out.reshape(len(out), -1)[first][bad[first]][0]
        raise DataError(f"{what}: expected finite pixel values, found {int(bad.sum())} NaN/inf values (the first, "
                        f"{value}, in sample {first})")
    return out


def looks_8bit(arr: np.ndarray) -> bool:
    """Whether non-uint8 numbers are 8-bit pixel values: integers or floats, all within [0, 255], with
    a maximum of 2 or more (so that [0, 1] data overshooting a little, as interpolation does, stays [0, 1]
    data). Such data (uint8 images saved as float or int64) is scaled by 1/255 like uint8,
    so that it is in the same units as the images ``predict`` reads in [0, 1]. Fractions are allowed
    (resized 0..255 images have them); data with negative values (already standardised) is not 8-bit."""
    if arr.dtype == np.uint8 or arr.dtype.kind not in "iuf" or arr.size == 0:
        return False
    lo, hi = float(np.min(arr)), float(np.max(arr))
    return 0.0 <= lo and 2.0 <= hi <= 255.0


def check_labels(y: np.ndarray, n: int, n_classes: int | None, what: str,
                 mask_shape: tuple[int, ...] | None = None, ignore: int | None = None) -> np.ndarray:
    """Validate class labels (integral, ``n`` of them, in [0, n_classes)) and return them as int64.

    A label is one class per image: a 1-D vector. With ``mask_shape`` = (H, W) it may also be one
    class per pixel (segmentation masks): (N, H, W), or (N, 1, H, W); with ``mask_shape`` = (L,), one class
    per step of a sequence: (N, L) or (N, 1, L). Masks may also hold ``ignore``, the value of void pixels,
    which is no class.
    """
    y = np.asarray(y)
    dims = 1 + len(mask_shape) if mask_shape is not None else None   # a mask's rank, with N
    if dims and y.ndim == dims + 1 and y.shape[1] == 1:
        y = y[:, 0]
    elif dims and y.ndim == dims + 1 and y.shape[-1] == 1 and tuple(y.shape[1:-1]) == tuple(mask_shape):
        y = y[..., 0]    # channels-last masks, as images may be
    elif y.ndim == 2 and y.shape[1] == 1 and tuple(mask_shape or ()) != (1,):
        y = y[:, 0]      # a column of labels (N, 1), as y.reshape(-1, 1) or a DataFrame column gives
    unit = mask_unit(len(mask_shape) if mask_shape is not None else 2)
    form = f"(N, {', '.join(map(str, mask_shape))})" if mask_shape is not None else ""
    if y.ndim != 1 and y.ndim != dims:
        masks = f" or masks of shape {form} (one class per {unit})" if mask_shape else ""
        raise DataError(f"{what}: expected a 1-D vector of integer class labels{masks}, found shape "
                        f"{fmt_shape(y.shape)} (one-hot labels are not accepted; use argmax. Values to regress or "
                        f"multi-label 0/1 targets: set train.data.targets: values)")
    if y.ndim > 1 and tuple(y.shape[1:]) != tuple(mask_shape):
        raise DataError(f"{what}: expected masks of shape {form} (one class per {unit} of the input), found shape "
                        f"{fmt_shape(y.shape)}")
    if y.dtype.kind not in "biuf":
        raise DataError(f"{what}: expected integer class labels, found dtype {y.dtype}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            i = int(np.flatnonzero(~np.isfinite(y.reshape(-1)))[0])
            v = y.reshape(-1)[i]
            raise DataError(f"{what}: expected integer class labels, found {'NaN' if np.isnan(v) else v} at index "
                            f"{_index(y, i)}")
        if not np.array_equal(y, np.round(y)):
            raise DataError(f"{what}: expected integer class labels, found non-integral float values (values to "
                            f"regress: set train.data.targets: values)")
    if len(y) != n:
        raise DataError(f"{what}: expected {n} {'masks' if y.ndim > 1 else 'labels'} (one per sample), found {len(y)}")
    y = y.astype(np.int64)
    classes = y if ignore is None else y[y != ignore]
    if classes.size:
        lo, hi = int(classes.min()), int(classes.max())
        if lo < 0 and n_classes is None:
            flat = y.reshape(-1)
            i = int(np.flatnonzero((flat < 0) & (flat != ignore))[0])   # the first negative class value
            raise DataError(f"{what}: expected labels >= 0, found {int(flat[i])} at index {_index(y, i)}")
        if lo < 0 or (n_classes is not None and hi >= n_classes):
            raise DataError(f"{what}: expected labels in [0, {n_classes - 1}], found values in [{lo}, {hi}]"
                            f"{_void_hint(y)}")
        if y.ndim > 1 and n_classes is None and hi == 255 and int((y == 255).sum()) < y.size // 2 and ignore is None:
            raise DataError(f"{what}: masks use 255 for some {unit}s, the 'void' label of VOC-style masks: set "
                            f"train.loss.ignore_index: 255 to leave them out of the loss and the metrics, or list "
                            f"every class in a 'classes' key if 255 is one")
    return y


def check_values(y: np.ndarray, n: int, what: str) -> np.ndarray:
    """Validate regression targets (numeric, finite, ``n`` of them) and return them as float32."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise DataError(f"{what}: expected numeric target values, found dtype {y.dtype}")
    if y.ndim == 0 or len(y) != n:
        raise DataError(f"{what}: expected {n} target values (one per image), found shape {fmt_shape(y.shape)}")
    out = y.astype(np.float32)
    if not np.isfinite(out).all():
        raise DataError(f"{what}: expected finite target values, found {int((~np.isfinite(out)).sum())} NaN/inf")
    return out


def _carve(y: np.ndarray, order: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``order`` (grouped by class) into (rest, part) with ceil(fraction * n) in part.

    Systematic sampling over the class-grouped order keeps every class's share within one
    sample of ``fraction``; the totals are exact and need no per-class bookkeeping.
    """
    n = len(order)
    i = np.arange(n)
    take = np.ceil((i + 1) * fraction - 1e-9) - np.ceil(i * fraction - 1e-9) > 0
    return order[~take], order[take]


def _index(y: np.ndarray, flat: int):
    """The position of flat index ``flat`` in ``y``: an int for labels, a tuple for masks."""
    return flat if y.ndim == 1 else tuple(int(v) for v in np.unravel_index(flat, y.shape))


def labels_beyond(sources: list[tuple[str, np.ndarray]], limit: int, ignore: int | None = None,
                  shown: int = 3) -> str:
    """Where the labels >= ``limit`` (other than ``ignore``) are, per source: "'d.npz' key 'y': 1 label >= 10
    (57 at index 5)"; '' when there are none."""
    parts = []
    for what, y in sources:
        flat = np.asarray(y).reshape(-1)
        bad = np.flatnonzero((flat >= limit) & (flat != ignore))
        if len(bad):
            at = ", ".join(f"{int(flat[i])} at index {_index(y, i)}" for i in bad[:shown])
            parts.append(f"{what}: {len(bad)} label{'s' * (len(bad) > 1)} >= {limit} ({at}{', ...' * (len(bad) > shown)})")
    return "; ".join(parts)


def _void_hint(y: np.ndarray) -> str:
    if y.ndim > 1 and int(y.max()) == 255:
        return " (255 is the 'void' label of VOC-style masks: set train.loss.ignore_index: 255 to leave it out)"
    return ""


def strata(y: np.ndarray) -> np.ndarray:
    """What a split is stratified by: the label, or for a mask its most frequent class."""
    y = np.asarray(y)
    if y.dtype.kind == "f":    # values to regress: no classes to balance, a plain seeded split
        return np.zeros(len(y), np.int64)
    if y.ndim == 1 or len(y) == 0:
        return y
    flat = y.reshape(len(y), -1)
    k = int(flat.max()) + 1
    flat = np.where(flat < 0, k, flat)   # a negative void label (PyTorch's -100) counts as one more value
    k += 1
    counts = np.bincount((flat + k * np.arange(len(y))[:, None]).ravel(), minlength=k * len(y))
    return counts.reshape(len(y), k).argmax(axis=1)


def stratified_split(y: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Stratified, seeded split of ``range(len(y))``.

    Parameters
    ----------
    y : labels (masks are stratified by their most frequent class).
    fractions : the share of the *whole* set for each carved part, e.g. ``[0.25, 0.15]``.
    seed : seed for ``np.random.default_rng`` (the within-class order).

    Returns
    -------
    ``[rest, part_1, part_2, ...]`` as sorted int64 index arrays; part k holds
    ``ceil(fraction_k * n_left)`` samples, carved in the order given.
    """
    y = strata(y)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    # Group by class, random order within each class: systematic sampling then stratifies.
    order = perm[np.argsort(y[perm], kind="stable")]
    parts = []
    left = 1.0
    for f in fractions:
        if f <= 0:
            parts.append(np.empty(0, dtype=np.int64))
            continue
        order, part = _carve(y, order, min(1.0, f / left))
        left -= f
        parts.append(np.sort(part).astype(np.int64))
    return [np.sort(order).astype(np.int64)] + parts


def resolve(path: str | None, base_dir: str | None, dataset: str) -> Path:
    """Resolve a configured path against the spec's folder; DataError when missing."""
    if path is None:
        raise DataError(f"dataset '{dataset}': train.data.path is required (a file or folder), found none")
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    if not p.exists():
        raise DataError(f"dataset '{dataset}': path '{p}' does not exist")
    return p
