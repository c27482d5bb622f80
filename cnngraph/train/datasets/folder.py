"""``image_folder``: ``root/<class>/**/<image>``, classes sorted by folder name; or, when the root's
sub-folders are all named like splits (``train``, ``val``/``valid``/``validation``, ``test``), one such tree
per split: ``root/train/<class>/...``, ``root/val/<class>/...``.

Images are the files whose suffix :func:`~cnngraph.train.images.image_suffixes` names (PNG, JPEG, BMP, GIF,
TIFF, WebP), as ``predict`` reads them; other files are skipped, with one note counting them by suffix.
Images in sub-folders of a class folder belong to that class (as in torchvision's ImageFolder); linked
sub-folders are followed, each real folder read once (a link loop is read once, with a note).
Hidden files and folders (names starting with a dot: ``.DS_Store``, macOS's ``._x.png``) are skipped silently.
Every image that cannot be read is listed in one error (``skip_unreadable: true`` leaves them out, with a note)."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..images import image_channels_problem, image_suffixes, read_image
from ._common import RawSplits, resolve

__all__ = ["load_image_folder", "SPLIT_FOLDERS"]

# Folder names taken as splits when they are all the root holds (lower case).
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_SHOWN = 10   # unreadable files named in a message


def load_image_folder(cfg, input_shape, base_dir=None) -> RawSplits:
    """Read every image (resized to the input's H, W; grey or RGB by C) into one training pool, or into the
    splits the root's train/val/test folders hold."""
    root = resolve(cfg.path, base_dir, "image_folder")
    if not root.is_dir():
        raise DataError(f"dataset 'image_folder': expected a folder root/<class>/*.png, found file '{root}'")
    problem = image_channels_problem(input_shape)
    if problem:   # one message, not one per image
        raise DataError(f"'{root}': {problem}")
    top = _subfolders(root)
    if not top:
        raise DataError(f"'{root}': expected one sub-folder per class (root/<class>/*.png), found none")
    splits = _split_folders(root, top)
    skip = bool(getattr(cfg, "skip_unreadable", False))
    if splits is None:
        reader = _Reader(input_shape)
        x, y, classes = _read_classes(root, top, None, reader)
        return RawSplits(train=(x, y), classes=classes, source=f"image_folder:{root}", notes=reader.finish(root, skip))
    return _read_splits(root, splits, input_shape, skip)


def _subfolders(folder: Path) -> list[Path]:
    """The folder's non-hidden sub-folders (links to folders included), sorted by name."""
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _split_folders(root: Path, top: list[Path]) -> dict[str, Path] | None:
    """{split: folder} when every sub-folder of the root is named like a split, else None (class folders).

    Without this, root/{train,val}/{cat,dog} would train two classes named train and val."""
    if not all(d.name.lower() in SPLIT_FOLDERS for d in top):
        return None
    splits: dict[str, Path] = {}
    for d in top:
        split = SPLIT_FOLDERS[d.name.lower()]
        if split in splits:
            raise DataError(f"'{root}': folders '{splits[split].name}' and '{d.name}' both name the {split} split; "
                            f"keep one")
        splits[split] = d
    if "train" not in splits:
        raise DataError(f"'{root}': holds the split folder(s) {', '.join(d.name for d in top)} but no 'train' "
                        f"folder; expected root/train/<class>/*.png (and optionally val/, test/)")
    flat = [d.name for d in splits.values() if not _subfolders(d)]
    if flat:   # images straight in train/: no class folders to take labels from
        raise DataError(f"'{root}': its sub-folders {', '.join(d.name for d in top)} are named like splits, but "
                        f"{', '.join(flat)} hold no class folders; expected root/train/<class>/*.png (splits) or "
                        f"root/<class>/*.png (one pool of classes, split by val_fraction)")
    return splits


def _read_splits(root: Path, splits: dict[str, Path], input_shape, skip: bool) -> RawSplits:
    """Each split folder's class folders; the classes are the train folder's, matched by name."""
    reader = _Reader(input_shape)
    x, y, classes = _read_classes(splits["train"], _subfolders(splits["train"]), None, reader)
    out = {"train": (x, y)}
    for name in ("val", "test"):
        if name in splits:
            folder = splits[name]
            out[name] = _read_classes(folder, _subfolders(folder), classes, reader)[:2]
    notes = [f"note: '{root}' holds split folders ({', '.join(d.name for d in splits.values())}): read as the "
             f"{', '.join(splits)} splits, {len(classes)} classes from '{splits['train'].name}'"]
    return RawSplits(train=out["train"], val=out.get("val"), test=out.get("test"), classes=classes,
                     source=f"image_folder:{root}", notes=notes + reader.finish(root, skip))


def _read_classes(root: Path, class_dirs: list[Path], known: list[str] | None, reader: "_Reader"):
    """(x, y, class names) of one tree of class folders. ``known``: the training split's class names, which a
    validation or test tree must use (it may lack some: a note from ``finish_dataset`` says which)."""
    if known is not None:
        extra = [d.name for d in class_dirs if d.name not in known]
        if extra:
            raise DataError(f"'{root}': class folder(s) {', '.join(extra)} are not among the training classes "
                            f"({', '.join(known)}); expected the same class folder names in every split")
    names = [d.name for d in class_dirs] if known is None else known
    xs, ys, empty = [], [], []
    kinds = ", ".join(image_suffixes())
    for d in class_dirs:
        label = names.index(d.name)
        files = reader.images_in(d, label)
        if not files and known is None:
            empty.append(d.name)
        for f in files:
            x = reader.read(f)
            if x is not None:
                xs.append(x)
                ys.append(label)
    if not xs and not reader.unreadable and known is None:
        others = reader.skipped_text()
        raise DataError(f"'{root}': expected images ({kinds}) in the class folders "
                        f"{', '.join(d.name for d in class_dirs)} (or their sub-folders), found none"
                        + (f"; skipped other files: {others}" if others else ""))
    if empty:   # a class with no examples cannot be learned, and it would shift every later label
        raise DataError(f"'{root}': class folder(s) {', '.join(empty)} hold no images ({kinds}; sub-folders "
                        f"included); add images or remove the folder(s)")
    x = np.stack(xs) if xs else np.empty((0, *reader.shape), np.float32)
    return x, np.asarray(ys, dtype=np.int64), names


class _Reader:
    """Reads the images of one dataset, collecting what it skips: other files (by suffix), unreadable images,
    linked folders already read (a loop), and images that two classes share through links."""

    def __init__(self, input_shape):
        self.shape = tuple(int(s) for s in input_shape)
        self.skipped: Counter = Counter()
        self.unreadable: list[str] = []      # "'path': why", in reading order
        self.revisited: list[str] = []       # linked folders not read again
        self.owner: dict[str, int] = {}      # real path -> the class that read it
        self.shared: list[str] = []          # images read for two classes (links)

    def images_in(self, folder: Path, label: int) -> list[Path]:
        """The class folder's image files, sub-folders (linked ones too) included, in sorted path order; the
        other files are counted by suffix. Hidden files and folders are left out silently (they are system
        files: ``._x.png`` holds no image)."""
        found = []
        seen = {os.path.realpath(folder)}
        for top, dirs, files in os.walk(folder, followlinks=True):
            keep = []
            for d in sorted(d for d in dirs if not d.startswith(".")):
                real = os.path.realpath(os.path.join(top, d))
                if real in seen:   # a link back up (a loop) or a second link to a folder already read
                    self.revisited.append(os.path.join(top, d))
                else:
                    seen.add(real)
                    keep.append(d)
            dirs[:] = keep
            for f in (f for f in files if not f.startswith(".")):
                suffix = Path(f).suffix.lower()
                if suffix in image_suffixes():
                    found.append(Path(top, f))
                else:
                    self.skipped[suffix or "(no suffix)"] += 1
        for f in found:
            real = os.path.realpath(f)
            if self.owner.setdefault(real, label) != label:
                self.shared.append(str(f))
        return sorted(found)

    def read(self, path: Path) -> np.ndarray | None:
        """The image, or None (recorded) when it cannot be read."""
        try:
            return read_image(path, self.shape)
        except DataError as exc:
            self.unreadable.append(str(exc))
            return None

    def skipped_text(self) -> str:
        return ", ".join(f"{n} {suffix}" for suffix, n in
                         sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])))

    def finish(self, root: Path, skip_unreadable: bool) -> list[str]:
        """The notes on what was left out; DataError listing the unreadable images unless they are skipped."""
        bad = self.unreadable
        shown = "; ".join(bad[:_SHOWN]) + (f"; ... and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else "")
        if bad and not skip_unreadable:
            raise DataError(f"'{root}': {len(bad)} image file{'s' * (len(bad) > 1)} cannot be read: {shown}. "
                            f"Fix or remove {'them' if len(bad) > 1 else 'it'}, or set train.data.skip_unreadable: true to "
                            f"train without {'them' if len(bad) > 1 else 'it'}")
        notes = []
        if bad:
            notes.append(f"note: '{root}': skipped {len(bad)} unreadable image file{'s' * (len(bad) > 1)} "
                         f"(train.data.skip_unreadable): {shown}")
        if self.skipped:
            notes.append(f"note: '{root}': skipped {sum(self.skipped.values())} file(s) that are not images "
                         f"({', '.join(image_suffixes())}): {self.skipped_text()}")
        if self.revisited:
            notes.append(f"note: '{root}': did not read {len(self.revisited)} linked folder(s) again (a link loop, "
                         f"or a second link to a folder already read): {', '.join(self.revisited[:_SHOWN])}")
        if self.shared:
            notes.append(f"note: '{root}': {len(self.shared)} image(s) are in two class folders through links, and "
                         f"are read for both classes: {', '.join(sorted(self.shared)[:_SHOWN])}")
        return notes
