"""Training data: the ``train.data`` spec section, dataset loading, splitting, normalisation, batching.

``load_dataset`` asks a loader for the source's splits (built-ins in ``RAW_LOADERS``; plugins
register ``loader(cfg, input_shape, seed, base_dir) -> Dataset`` in the registry and can use
``finish_dataset``), carves any missing validation/test split (stratified, seeded), applies
``limit``, computes or takes the per-channel normalisation and returns a :class:`Dataset` of
float32 NCHW arrays (NCL for a model whose input is a sequence (C, L); only ``npz`` reads those).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
from pydantic import Field, model_validator

from ..errors import DataError
from ..paramtypes import StrictSettings
from .datasets import (RawSplits, load_cifar10, load_digits, load_digits_rotation, load_digits_segmentation,
                       load_fashion_mnist, load_image_folder, load_mnist, load_npz, stratified_split)

__all__ = ["DataConfig", "NormalizeStats", "Dataset", "LOADERS", "RAW_LOADERS", "RawSplits", "load_dataset",
           "finish_dataset",
           "iterate_batches", "image_only_reason", "pixel_range_fits", "npy_eight_bit", "compute_normalization", "apply_normalization", "stratified_split"]

RawLoader = Callable[..., RawSplits]
# Built-in sources: ``raw_loader(cfg, input_shape, base_dir) -> RawSplits``.
RAW_LOADERS: dict[str, RawLoader] = {
    "digits": load_digits,
    "digits_segmentation": load_digits_segmentation,
    "digits_rotation": load_digits_rotation,
    "npz": load_npz,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "image_folder": load_image_folder,
}


def _full_loader(name: str) -> Callable[..., "Dataset"]:
    def loader(cfg, input_shape, seed=0, base_dir=None):
        return finish_dataset(RAW_LOADERS[name](cfg, input_shape, base_dir), cfg, seed)
    loader.__name__ = loader.__qualname__ = f"load_{name}_dataset"
    loader.__doc__ = f"Dataset loader for '{name}' (the hook signature: cfg, input_shape, seed, base_dir)."
    return loader


# What the plugin registry's ``datasets`` table holds: ``loader(cfg, input_shape, seed, base_dir) -> Dataset``.
LOADERS: dict[str, Callable[..., "Dataset"]] = {name: _full_loader(name) for name in RAW_LOADERS}


def _find_loader(name: str):
    """A built-in loader, else one a plugin registered; None when unknown."""
    if name in LOADERS:
        return LOADERS[name]
    try:
        from ..registry import get_registry
        return get_registry().datasets.get(name)
    except ImportError:  # registry unavailable (bare checkout): only built-ins exist
        return None


def _known_datasets() -> list[str]:
    names = list(LOADERS)
    try:
        from ..registry import get_registry
        names += [n for n in get_registry().datasets if n not in LOADERS]
    except ImportError:
        pass
    return names


class NormalizeStats(StrictSettings):
    """Explicit normalisation: one value per channel, or one value for all channels."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self):
        if len(self.mean) != len(self.std):
            raise ValueError(f"normalize: mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"normalize: every std must be > 0, found {self.std}")
        return self


class DataConfig(StrictSettings):
    """The spec's ``train.data`` section."""

    dataset: str = "digits"
    path: str | None = None
    layout: Literal["auto", "nchw", "nhwc", "ncl", "nlc", "ncdhw", "ndhwc"] = "auto"   # a sequence's / a volume's too
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float | None = Field(None, ge=0.0, lt=1.0)
    normalize: Literal["auto", "none"] | NormalizeStats = "auto"
    limit: int | None = Field(None, ge=1)
    # what y holds: class labels / masks, or values to regress (npz); auto: values when y has fractions
    targets: Literal["auto", "classes", "values"] = "auto"
    # a mask value that is no class (void pixels); set by training from train.loss.ignore_index
    ignore_label: int | None = None
    # a plugin dataset's own settings, passed through to its loader as ``cfg.options``
    options: dict[str, Any] = {}
    # npz: how x's numbers map to pixel units. auto: uint8, and other numbers within [0, 255] with a
    # maximum >= 2, are 8-bit pixels (/255); 8bit: always /255; as_is: never scaled (e.g. depths in metres)
    pixels: Literal["auto", "8bit", "as_is"] = "auto"
    # image_folder: leave out the images that cannot be read (with a note naming them) instead of refusing
    skip_unreadable: bool = False

    @model_validator(mode="after")
    def _check(self):
        if _find_loader(self.dataset) is None:
            from ..registry import did_you_mean
            known = _known_datasets()
            raise ValueError(f"unknown dataset '{self.dataset}'{did_you_mean(self.dataset, known)}; "
                             f"known: {', '.join(known)}")
        if self.dataset in RAW_LOADERS and not self.dataset.startswith("digits") and self.path is None:
            raise ValueError(f"dataset '{self.dataset}' needs 'path' (a file or folder)")
        if self.options and self.dataset in RAW_LOADERS:   # a built-in would ignore them silently
            raise ValueError(f"dataset '{self.dataset}' takes no options (options: is for plugin datasets)")
        if self.skip_unreadable and self.dataset in RAW_LOADERS and self.dataset != "image_folder":
            raise ValueError(f"skip_unreadable is for dataset: image_folder (dataset '{self.dataset}' reads whole "
                             f"files, refused when damaged)")
        if self.pixels != "auto" and self.dataset != "npz":
            raise ValueError(f"pixels: {self.pixels} is for dataset: npz (dataset '{self.dataset}' has fixed pixel units)")
        if self.targets == "values" and self.dataset in RAW_LOADERS and self.dataset not in ("npz", "digits_rotation"):
            raise ValueError(f"targets: values (regression) needs your own data (dataset: npz); dataset "
                             f"'{self.dataset}' has class labels")
        if self.val_fraction + (self.test_fraction or 0.0) >= 1.0:
            raise ValueError("val_fraction + test_fraction must be < 1 (something must be left to train on)")
        return self


@dataclass
class Dataset:
    """Loaded, split and normalised data.

    ``train`` / ``val`` / ``test`` are ``(x, y)``: x float32 (N, C, H, W) normalised (or (N, C, L) for a
    model whose input is a sequence), y int64: one
    class per image (N,), or for segmentation one per pixel (N, H, W) (``dense``); or y float32 values
    to regress, any shape per sample (``values``; ``classes`` is then empty).
    A split the source lacks and that was not carved is empty (N == 0).
    ``mean`` / ``std`` are the per-channel values applied: ``(raw - mean) / std``.
    ``pixel_scale`` maps an image in [0, 1] to raw units (``read_image(..., scale=pixel_scale)``).
    ``pixel_range`` is (min, max) of the raw training images: outside [0, pixel_scale], images read
    from image files are not in the units the model learned. ``notes`` are the loader's remarks
    (how it read the data) for the user; ``label_sources`` as in RawSplits.
    """

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    classes: list[str]
    mean: list[float]
    std: list[float]
    source: str
    pixel_scale: float = 1.0
    pixel_range: tuple[float, float] | None = None
    pixels: str = "auto"    # train.data.pixels: as_is means predict reads .npy numbers (uint8 too) as they are
    notes: list[str] = field(default_factory=list)
    label_sources: list[tuple[str, np.ndarray]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    @property
    def values(self) -> bool:
        """Whether the targets are values to regress (float) rather than classes."""
        return self.train[1].dtype.kind == "f"

    @property
    def dense(self) -> bool:
        """Whether the labels are masks (one class per pixel) rather than one class per image."""
        return self.train[1].ndim > 1 and not self.values

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of every sample ((C, L) for sequences)."""
        return tuple(int(s) for s in self.train[0].shape[1:])

    @property
    def samples(self) -> str:
        """What the samples are called in messages: images, sequences for (C, L) inputs, volumes for (C, D, H, W)."""
        from .input_kinds import INPUT_KINDS
        return INPUT_KINDS.get(self.train[0].ndim - 1, ("", "images"))[1]

    @property
    def background(self) -> list[float]:
        """Per-channel normalised value of a raw 0 pixel (the fill augmentations should use)."""
        return [(0.0 - m) / s for m, s in zip(self.mean, self.std)]

    def prepare(self, x_raw: np.ndarray) -> np.ndarray:
        """Normalise new raw inputs (e.g. from ``read_inputs(..., scale=pixel_scale)``) like training data."""
        return apply_normalization(np.array(x_raw, dtype=np.float32), self.mean, self.std)


def pixel_range_fits(pixel_range, pixel_scale: float) -> bool:
    """Whether raw training pixels in ``pixel_range`` lie within [0, pixel_scale] (unknown: assume so)."""
    if not isinstance(pixel_range, (list, tuple)) or len(pixel_range) != 2:
        return True
    lo, hi = pixel_range
    return lo >= 0 and hi <= pixel_scale * (1 + 1e-6)


def npy_eight_bit(pixel_range, pixel_scale: float) -> bool:
    """Whether predict and explain read .npy numbers in 0..255 as 8-bit pixels (the npz loader's rule,
    ``looks_8bit``): for a checkpoint that records its raw training pixels' range within [0, pixel_scale].
    Checkpoints from before that record, and weights without a training checkpoint (an imported model),
    get .npy arrays as they are, as those models were trained on and fed."""
    return isinstance(pixel_range, (list, tuple)) and pixel_range_fits(pixel_range, pixel_scale)


def compute_normalization(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, C, H, W) or (N, C, L) data (float64 sums; a std of 0 becomes 1)."""
    if len(x) == 0:
        raise DataError("cannot compute normalisation: the training split is empty")
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    # A constant channel would divide by zero; leave it centred but unscaled.
    std = np.where(std > 1e-12, std, 1.0)
    return [float(m) for m in mean], [float(s) for s in std]


def apply_normalization(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(x - mean) / std`` per channel (axis 1), in place: float32 ``x`` itself is changed and returned (not a
    copy), so pass ``x.copy()`` to keep the raw values."""
    c = x.shape[1]
    per_channel = (1, -1) + (1,) * (x.ndim - 2)
    m = np.asarray(mean, dtype=np.float32).reshape(per_channel)
    s = np.asarray(std, dtype=np.float32).reshape(per_channel)
    if m.shape[1] not in (1, c):
        raise DataError(f"normalize: expected 1 or {c} mean/std values (one per channel), found {m.shape[1]}")
    x -= m
    x /= s
    return x


def _empty(like: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """An empty split with the samples and labels (or masks) shaped like those of ``like``."""
    return np.empty((0,) + like[0].shape[1:], np.float32), np.empty((0,) + like[1].shape[1:], like[1].dtype)


def _take(split, idx):
    return np.ascontiguousarray(split[0][idx]), split[1][idx]


def _carve_missing(raw: RawSplits, cfg: DataConfig, seed: int):
    """Carve test (when the source has none and test_fraction is set) then val from train."""
    train, val, test = raw.train, raw.val, raw.test
    f_test = cfg.test_fraction if test is None and cfg.test_fraction else 0.0
    f_val = cfg.val_fraction if val is None else 0.0
    if f_test or f_val:
        rest, t_idx, v_idx = stratified_split(train[1], [f_test, f_val], seed)
        if f_test:
            test = _take(train, t_idx)
        if f_val:
            val = _take(train, v_idx)
        train = _take(train, rest)
    return train, val if val is not None else _empty(train), test if test is not None else _empty(train)


def _stats(cfg: DataConfig, x_train: np.ndarray) -> tuple[list[float], list[float]]:
    c = x_train.shape[1]
    if cfg.normalize == "auto":
        return compute_normalization(x_train)
    if cfg.normalize == "none":
        return [0.0] * c, [1.0] * c
    mean, std = list(cfg.normalize.mean), list(cfg.normalize.std)
    if len(mean) == 1:
        mean, std = mean * c, std * c
    if len(mean) != c:
        raise DataError(f"normalize: expected 1 or {c} mean/std values (one per channel of the "
                        f"input), found {len(mean)}")
    return mean, std


def image_only_reason(dataset: str, input_shape) -> str | None:
    """Why a built-in dataset of images cannot feed a model whose input is a sequence (C, L) or a volume
    (C, D, H, W); None when it can (only ``npz`` holds those; a plugin dataset decides for itself)."""
    from .input_kinds import INPUT_KINDS
    if len(input_shape) == 3 or dataset not in RAW_LOADERS or dataset == "npz":
        return None
    kind, kinds, form = INPUT_KINDS[len(input_shape)][:3]
    return (f"dataset '{dataset}' holds images (C, H, W) but the model's input is a {kind} {form} = "
            f"{tuple(int(s) for s in input_shape)}; train {kinds} on your own data: dataset: npz with x of shape "
            f"(N, {form[1:-1]})")


def load_dataset(cfg: DataConfig, input_shape: tuple[int, ...], seed: int = 0,
                 base_dir: str | None = None) -> Dataset:
    """Load, split and normalise the dataset described by ``cfg``.

    Parameters
    ----------
    cfg : the ``train.data`` section (a DataConfig or its dict).
    input_shape : the model's (C, H, W), or (C, L) for sequences (``npz`` and plugin datasets only); data
        of another shape is a DataError (``image_folder`` images are resized to it instead).
    seed : seeds the stratified carving of missing validation/test splits.
    base_dir : folder that relative ``cfg.path`` is resolved against (the spec's folder).
    """
    if isinstance(cfg, dict):
        cfg = DataConfig.model_validate(cfg)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (2, 3, 4):
        raise DataError(f"dataset '{cfg.dataset}': expected the model input_shape as (C, H, W), (C, L) or "
                        f"(C, D, H, W), found {shape}")
    why = image_only_reason(cfg.dataset, shape)
    if why:
        raise DataError(why)
    loader = _find_loader(cfg.dataset)
    if loader is None:
        raise DataError(f"unknown dataset '{cfg.dataset}' (known: {', '.join(_known_datasets())})")
    return _call_loader(loader, cfg, shape, seed, base_dir)


def _call_loader(loader, cfg: DataConfig, shape, seed: int, base_dir) -> Dataset:
    """Run a dataset loader (built-in or a plugin's); an exception inside it, or a result that is not a
    Dataset, names the dataset, its plugin and the plugin file's line instead of a traceback."""
    from ..blame import failed, who
    from ..errors import CnnGraphError, PluginError
    subject = who("dataset loader", cfg.dataset, "datasets")
    try:
        ds = loader(cfg, shape, seed, base_dir)
    except CnnGraphError:
        raise
    except Exception as exc:
        raise DataError(failed(subject, "loading", exc, loader)) from exc
    if not isinstance(ds, Dataset):
        raise PluginError(f"{subject} returned a {type(ds).__name__}; expected a cnngraph.train.data.Dataset "
                          f"(build it with cnngraph.train.data.finish_dataset(RawSplits(...), cfg, seed))")
    for split in ("train", "val", "test"):   # else the model refuses the first batch, naming no dataset
        x = getattr(ds, split)[0]
        if tuple(x.shape[1:]) != tuple(shape):
            raise DataError(f"{subject} returned {split} images of shape {tuple(x.shape)}; the model's input takes "
                            f"(N, {', '.join(map(str, shape))})")
    return ds


def finish_dataset(raw: RawSplits, cfg: DataConfig, seed: int = 0) -> Dataset:
    """Turn a loader's raw splits into a :class:`Dataset` (for plugin loaders too).

    Carves the missing validation/test splits (stratified, seeded), applies ``cfg.limit`` to
    train, computes or takes the normalisation and applies it to every split. The arrays in
    ``raw`` must be owned by the caller (not a cache): they are normalised in place.
    """
    train, val, test = _carve_missing(raw, cfg, seed)
    if cfg.limit is not None:
        train = (train[0][:cfg.limit], train[1][:cfg.limit])
    if len(train[1]) == 0:
        total = len(raw.train[1])
        raise DataError(f"dataset '{cfg.dataset}' ({raw.source}): the training split is empty (the source has "
                        f"{total} training example{'' if total == 1 else 's'}"
                        + (", all carved off for validation/test" if total else "") + ")")
    mean, std = _stats(cfg, train[0])
    pixel_range = (float(train[0].min()), float(train[0].max()))   # raw units, before normalising
    # Normalise in place: for CIFAR-10 a copy would cost another 600 MB.
    splits = [(apply_normalization(np.ascontiguousarray(x, dtype=np.float32), mean, std), y)
              for x, y in (train, val, test)]
    notes = list(raw.notes) + _missing_classes(raw, {"val": val, "test": test})
    return Dataset(train=splits[0], val=splits[1], test=splits[2], classes=list(raw.classes),
                   mean=mean, std=std, source=raw.source, pixel_scale=raw.pixel_scale, pixel_range=pixel_range,
                   pixels=cfg.pixels, notes=notes, label_sources=list(raw.label_sources))


def _missing_classes(raw: RawSplits, splits: dict) -> list[str]:
    """Notes naming the classes that a validation or test split the source gave has no sample of (their
    recall and the macro means are then undefined there); carved splits are stratified and need none."""
    notes = []
    for name, (_, y) in splits.items():
        given = getattr(raw, name)
        if given is None or len(y) == 0 or y.ndim != 1 or y.dtype.kind == "f" or not raw.classes:
            continue
        present = set(np.unique(y).tolist())
        absent = [c for i, c in enumerate(raw.classes) if i not in present]
        if absent:
            shown = ", ".join(absent[:10]) + (", ..." if len(absent) > 10 else "")
            notes.append(f"note: {raw.source}: the {name} split has no sample of {len(absent)} class"
                         f"{'es' * (len(absent) > 1)}: {shown}")
    return notes


def iterate_batches(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool,
                    rng: np.random.Generator | None = None,
                    drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(xb, yb)`` mini-batches; the last partial batch too unless ``drop_last``.

    With ``shuffle`` the order is ``rng.permutation(len(x))`` (reproducible for a seeded rng).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} samples but y has {len(y)}")
    if shuffle:
        if rng is None:
            raise ValueError("iterate_batches(shuffle=True) needs an rng (np.random.Generator)")
        order = rng.permutation(n)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            yield x[start:end], y[start:end]
        else:
            idx = order[start:end]
            yield x[idx], y[idx]
