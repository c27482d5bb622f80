"""``image_folder``: ``root/<class>/**/<image>``, classes sorted by folder name.

Images are the files whose suffix :func:`~cnngraph.train.images.image_suffixes` names (PNG, JPEG, BMP, GIF,
TIFF, WebP), as ``predict`` reads them; other files are skipped, with one note counting them by suffix.
Images in sub-folders of a class folder belong to that class (as in torchvision's ImageFolder).
Hidden files and folders (names starting with a dot: ``.DS_Store``, macOS's ``._x.png``) are skipped silently."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..images import image_suffixes, read_image
from ._common import RawSplits, resolve

__all__ = ["load_image_folder"]


def load_image_folder(cfg, input_shape, base_dir=None) -> RawSplits:
    """Read every image (resized to the input's H, W; grey or RGB by C) into one training pool."""
    root = resolve(cfg.path, base_dir, "image_folder")
    if not root.is_dir():
        raise DataError(f"dataset 'image_folder': expected a folder root/<class>/*.png, found file '{root}'")
    class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: d.name)
    if not class_dirs:
        raise DataError(f"'{root}': expected one sub-folder per class (root/<class>/*.png), found none")
    xs, ys, empty, skipped = [], [], [], Counter()
    for label, d in enumerate(class_dirs):
        files = _images_in(d, skipped)
        if not files:
            empty.append(d.name)
        for f in files:
            xs.append(read_image(f, input_shape))
            ys.append(label)
    kinds = ", ".join(image_suffixes())
    others = ", ".join(f"{n} {suffix}" for suffix, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])))
    if not xs:
        raise DataError(f"'{root}': expected images ({kinds}) in the class folders "
                        f"{', '.join(d.name for d in class_dirs)} (or their sub-folders), found none"
                        + (f"; skipped other files: {others}" if skipped else ""))
    if empty:   # a class with no examples cannot be learned, and it would shift every later label
        raise DataError(f"'{root}': class folder(s) {', '.join(empty)} hold no images ({kinds}; sub-folders "
                        f"included); add images or remove the folder(s)")
    notes = [f"note: '{root}': skipped {sum(skipped.values())} file(s) that are not images ({kinds}): {others}"
             ] if skipped else []
    return RawSplits(train=(np.stack(xs), np.asarray(ys, dtype=np.int64)),
                     classes=[d.name for d in class_dirs], source=f"image_folder:{root}", notes=notes)


def _images_in(folder: Path, skipped: Counter) -> list[Path]:
    """The class folder's image files, sub-folders included, in sorted path order; the other files are
    counted by suffix in ``skipped``. Hidden files and folders are left out silently (they are system
    files: ``._x.png`` holds no image)."""
    found = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in (f for f in files if not f.startswith(".")):
            suffix = Path(f).suffix.lower()
            if suffix in image_suffixes():
                found.append(Path(top, f))
            else:
                skipped[suffix or "(no suffix)"] += 1
    return sorted(found)
