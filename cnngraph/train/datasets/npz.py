"""User ``.npz`` files: ``x``/``y`` plus optional ``x_val``/``y_val``, ``x_test``/``y_test``, ``classes``.

``y`` is one class per image (N,), or one class per pixel (N, H, W): segmentation masks; or values to
regress (float, any shape per sample) with ``targets: values`` (the default ``auto`` takes y with
fractions as values). For a model whose input is a sequence (C, L), x holds sequences (N, C, L), (N, L, C)
or (N, L), and y one class per sequence (N,) or values."""
from __future__ import annotations

import zipfile

import numpy as np

from ...arrayfile import array_file_kind, load_arrays
from ...errors import DataError
from ._common import RawSplits, as_float_images, check_labels, check_values, looks_8bit, resolve, to_nchw

__all__ = ["load_npz"]

_PAIRS = {"train": ("x", "y"), "val": ("x_val", "y_val"), "test": ("x_test", "y_test")}


def _read(path) -> dict[str, np.ndarray]:
    """Read every array of an npz file without pickles; DataError on anything else."""
    kind, head = array_file_kind(path)
    if kind == "npy":
        raise DataError(f"'{path}': expected an .npz archive (np.savez), found a single .npy array")
    if kind is None:
        raise DataError(f"'{path}': expected an .npz archive (np.savez), found a file starting with {head!r}")
    try:
        return load_arrays(path)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"'{path}': contains object (pickled) arrays, which are not loaded for "
                            "safety; store x/y as numeric arrays and classes as a string array") from None
        raise DataError(f"'{path}': expected an .npz archive of arrays, found unreadable data ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"'{path}': expected an .npz archive of arrays, found unreadable data ({exc})") from None


def load_npz(cfg, input_shape, base_dir=None) -> RawSplits:
    """Load an npz dataset; uint8 images are scaled by 1/255, and so are other numbers that look like
    8-bit pixels (:func:`looks_8bit`); other floats are used as they are."""
    p = resolve(cfg.path, base_dir, "npz")
    if p.is_dir():
        raise DataError(f"'{p}': is a folder; expected an .npz file (np.savez) with x and y")
    arrays = _read(p)
    for key in ("x", "y"):
        if key not in arrays:
            from ...registry import did_you_mean
            raise DataError(f"'{p}': expected key '{key}' ({'images' if key == 'x' else 'labels or masks'}), "
                            f"found keys {sorted(arrays)}{did_you_mean(key, arrays)}")
    classes = _classes_key(arrays, p)
    notes = _unused_keys(arrays, p)
    present = [name for name, (kx, ky) in _PAIRS.items() if kx in arrays or ky in arrays]
    for name in present:
        kx, ky = _PAIRS[name]
        if kx not in arrays or ky not in arrays:
            missing = kx if kx not in arrays else ky
            raise DataError(f"'{p}': found '{ky if missing == kx else kx}' but expected key "
                            f"'{missing}' with it; found keys {sorted(arrays)}")
    present = [name for name in present if name == "train" or not _empty_split(arrays, name, p, notes)]
    if cfg.targets != "values":
        classes = _named_labels(arrays, present, classes, p, notes)
    eight_bit = _eight_bit(cfg.pixels, p, [arrays[_PAIRS[name][0]] for name in present], len(input_shape) == 2)
    if eight_bit and cfg.pixels == "auto":
        x = arrays["x"]
        notes.append(f"note: '{p}' key 'x' holds {x.dtype} values in [{x.min():g}, {x.max():g}]; taken as 8-bit "
                     f"pixels and scaled by 1/255 like uint8 images (train.data.pixels: as_is keeps them)")
    splits = {}
    for name in present:
        kx, ky = _PAIRS[name]
        x = to_nchw(arrays[kx], input_shape, cfg.layout, f"'{p}' key '{kx}'")
        wide_8bit = eight_bit and x.dtype != np.uint8
        x = as_float_images(x, f"'{p}' key '{kx}'", scale_uint8=cfg.pixels != "as_is")
        if wide_8bit:
            x /= np.float32(255.0)
        if _as_values(cfg.targets, arrays["y"]):
            y = check_values(arrays[ky], len(x), f"'{p}' key '{ky}'")
        else:
            y = check_labels(arrays[ky], len(x), len(classes) if classes else None, f"'{p}' key '{ky}'",
                             mask_shape=tuple(input_shape[1:]),
                             ignore=cfg.ignore_label)
        splits[name] = (np.ascontiguousarray(x), y)
    if splits["train"][1].dtype.kind == "f":
        return RawSplits(train=splits["train"], val=splits.get("val"), test=splits.get("test"), classes=[],
                         source=f"npz:{p}", notes=notes)
    kinds = {name: "masks" if y.ndim > 1 else "labels" for name, (_, y) in splits.items()}
    if len(set(kinds.values())) > 1:
        raise DataError(f"'{p}': the splits mix class labels and masks ({', '.join(f'{_PAIRS[k][1]}: {v}' for k, v in kinds.items())}); "
                        f"expected one kind for all")
    sources = []
    if classes is None:   # numbered up to the largest label: say where the labels are if a model has fewer
        n = max((int(_classes_in(y, cfg.ignore_label).max(initial=-1)) + 1 for _, y in splits.values() if len(y)),
                default=1)
        classes = [str(i) for i in range(n)]
        sources = [(f"'{p}' key '{_PAIRS[name][1]}'", y) for name, (_, y) in splits.items()]
    return RawSplits(train=splits["train"], val=splits.get("val"), test=splits.get("test"),
                     classes=classes, source=f"npz:{p}", notes=notes, label_sources=sources)


_KNOWN_KEYS = ("x", "y", "x_val", "y_val", "x_test", "y_test", "classes")


def _classes_key(arrays: dict, path) -> list[str] | None:
    """The 'classes' key's names (None without one); duplicates are refused, as two classes of one name could
    not be told apart in any report."""
    if "classes" not in arrays:
        return None
    c = arrays["classes"]
    if c.ndim != 1 or c.dtype.kind not in "USiu":
        raise DataError(f"'{path}': key 'classes' must be a 1-D array of names, found "
                        f"dtype {c.dtype} shape {c.shape}")
    classes = [str(v) for v in c.tolist()]
    twice = sorted({n for n in classes if classes.count(n) > 1})
    if twice:
        raise DataError(f"'{path}': key 'classes' names {', '.join(repr(n) for n in twice)} more than once; "
                        f"expected one distinct name per class")
    return classes


def _unused_keys(arrays: dict, path) -> list[str]:
    """A note naming the keys the loader does not read (a typo such as x_valid would otherwise go unseen)."""
    from ...registry import did_you_mean
    unused = [k for k in arrays if k not in _KNOWN_KEYS]
    if not unused:
        return []
    named = ", ".join(f"'{k}'{did_you_mean(k, _KNOWN_KEYS)}" for k in unused)
    return [f"note: '{path}': key(s) {named} not used; the keys read are {', '.join(_KNOWN_KEYS)}"]


def _empty_split(arrays: dict, name: str, path, notes: list[str]) -> bool:
    """Whether a validation or test split the file gives is empty; it is then taken as absent (so that
    val_fraction / test_fraction can carve one), with a note saying so."""
    kx, ky = _PAIRS[name]
    if len(arrays[kx]) or len(arrays[ky]):
        return False
    fraction = "val_fraction" if name == "val" else "test_fraction"
    notes.append(f"note: '{path}' keys '{kx}'/'{ky}' hold no samples: taken as no {name} split "
                 f"(train.data.{fraction} carves one from 'x'/'y')")
    return True


def _named_labels(arrays: dict, present: list[str], classes: list[str] | None, path, notes: list[str]):
    """Labels given as names (strings) become class indices, in place in ``arrays``: into the 'classes' key's
    names when there is one, else into the sorted distinct names of every split; returns the class names."""
    keys = [_PAIRS[name][1] for name in present]
    texts = [k for k in keys if arrays[k].dtype.kind in "US"]
    if not texts:
        return classes
    if len(texts) != len(keys):
        raise DataError(f"'{path}': keys {', '.join(texts)} hold class names but "
                        f"{', '.join(k for k in keys if k not in texts)} numbers; expected one kind for all")
    if classes is None:
        classes = sorted({str(v) for k in texts for v in np.unique(arrays[k]).tolist()})
        notes.append(f"note: '{path}' key 'y' holds class names: classes are their sorted distinct values "
                     f"({', '.join(classes[:10])}{', ...' * (len(classes) > 10)}); a 'classes' key sets another order")
    index = {n: i for i, n in enumerate(classes)}
    for k in texts:
        names = [str(v) for v in arrays[k].reshape(-1).tolist()]
        unknown = sorted({n for n in names if n not in index})
        if unknown:
            raise DataError(f"'{path}' key '{k}': class name(s) {', '.join(unknown[:10])} are not in key 'classes' "
                            f"({', '.join(classes[:10])})")
        arrays[k] = np.asarray([index[n] for n in names], dtype=np.int64).reshape(arrays[k].shape)
    return classes


def _eight_bit(pixels: str, path, xs: list[np.ndarray], sequences: bool = False) -> bool:
    """Whether x arrays of other types than uint8 are 8-bit pixels, to divide by 255 (uint8 is, unless
    as_is). One decision for the whole file, so that every split is in the same units: ``pixels`` auto
    follows :func:`looks_8bit`, 8bit needs values in [0, 255], as_is never scales. ``sequences`` have no
    pixel units: only their uint8 samples are scaled, and 8bit is refused."""
    if pixels == "8bit" and sequences:
        raise DataError(f"'{path}': train.data.pixels: 8bit is for images; the model's input is a sequence, whose "
                        f"numbers are taken as they are (uint8 ones scaled by 1/255 unless pixels: as_is)")
    if pixels == "as_is" or sequences:
        return False
    if pixels == "8bit":
        for x in xs:
            if x.size and (x.dtype.kind not in "iuf" or float(np.min(x)) < 0 or float(np.max(x)) > 255):
                raise DataError(f"'{path}': train.data.pixels is 8bit but x holds {x.dtype} values in "
                                f"[{np.min(x):g}, {np.max(x):g}]; expected values in [0, 255]")
        return True
    return all(looks_8bit(x) for x in xs)


def _as_values(targets: str, y: np.ndarray) -> bool:
    """Whether ``y`` holds values to regress: as configured, or (auto) floats with fractions."""
    if targets != "auto":
        return targets == "values"
    y = np.asarray(y)
    return y.dtype.kind == "f" and bool(np.isfinite(y).all()) and not np.array_equal(y, np.round(y))


def _classes_in(y: np.ndarray, ignore: int | None) -> np.ndarray:
    """The labels that are classes: all but the ignored (void) value."""
    return y if ignore is None else y[y != ignore]
