"""Reading image files and .npy batches as model inputs (used by datasets, ``predict`` and ``explain``).

Images: PNG, JPEG, BMP, GIF, TIFF and WebP (where Pillow was built with it); :func:`image_suffixes`.
Mapping of an image to an input: the image is turned upright as its EXIF orientation tag says (what
viewers show; a GIF, TIFF or WebP with several frames gives its first), converted to grey ("L") when
C == 1, RGB when C == 3 and RGBA when C == 4 (transparent pixels are composited over white first for C 1 and 3),
resized to (H, W) (shrinking by area averaging, which keeps block-drawn images such as
docs/images/digit3.png exact; enlarging bilinearly), and scaled to [0, 1] by /255. 16-bit grey images
(Pillow modes I;16 and I, e.g. 16-bit PNGs) are scaled by /65535 instead and float images (mode F) are
taken as they are when within [0, 1]; other values in those modes are refused. ``invert`` turns
dark-ink-on-white scans into light-on-dark (what MNIST and the bundled digits use: 0 = background).
``scale`` then maps [0, 1] to the dataset's raw range (16 for the digits' grey levels 0..16;
``Dataset.pixel_scale`` gives it). Normalisation (mean/std) is applied afterwards by the caller.
"""
from __future__ import annotations

import math
import sys
import warnings
from functools import cache
from pathlib import Path
from typing import Sequence

import numpy as np

from ..arrayfile import array_file_kind, load_arrays
from ..errors import DataError
from .input_kinds import INPUT_KINDS

__all__ = ["image_suffixes", "image_channels_problem", "read_image", "read_inputs", "image_units_warning",
           "array_units_warning", "inputs_in_folder", "conversion_note", "polarity_note"]

_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")   # grey modes that convert("L") would clip at 255


def fmt_shape(shape) -> str:
    """Render a shape as ``(1, 28, 28)``."""
    return str(tuple(int(s) for s in shape))   # (1200,) for one dimension, as Python writes it


@cache
def image_suffixes() -> tuple[str, ...]:
    """The (lower-case) suffixes of the image files read: .webp only where Pillow can decode WebP."""
    from PIL import features
    return tuple(s for s in _SUFFIXES if s != ".webp" or features.check_module("webp"))


def image_channels_problem(input_shape: Sequence[int]) -> str | None:
    """Why images cannot feed a model of this (C, H, W) (a C other than 1, 3 or 4); None when they can."""
    c = int(input_shape[0])
    if c in _MODES:
        return None
    return (f"images can feed 1 (grey), 3 (RGB) or 4 (RGBA) channels; the model's input_shape "
            f"{fmt_shape(input_shape)} has {c}")


def _suffix_list() -> str:
    return ", ".join(image_suffixes())


def _open(path: Path):
    """Open and fully decode an image with Pillow, turned upright as its EXIF orientation says (as viewers
    show it); DataError naming the file otherwise. A multi-frame file (GIF, TIFF, WebP) gives its first frame."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # a note instead, naming the file
            im = Image.open(path)
        with im:
            _note_large(path, im, Image.MAX_IMAGE_PIXELS)
            im.load()  # decode now, so a truncated file fails here and not later
            return ImageOps.exif_transpose(im)   # a copy, upright; it outlives the file
    except FileNotFoundError:
        raise DataError(f"'{path}': image file does not exist") from None
    except Image.DecompressionBombError as exc:   # above twice the warning limit
        raise DataError(f"'{path}': the image is too large to read: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"'{path}': expected an image Pillow can read ({_suffix_list()}), found unreadable "
                        f"data ({exc})") from None


def _note_large(path: Path, im, limit: int | None) -> None:
    """One line instead of Pillow's DecompressionBombWarning: the image is read all the same."""
    if limit and im.width * im.height > limit:
        print(f"note: '{path}' is {im.width}x{im.height} pixels ({im.width * im.height / 1e6:.3g} megapixels, above "
              f"Pillow's warning limit of {limit / 1e6:.3g}); reading it takes a while and much memory", file=sys.stderr)


def read_image(path: str | Path, input_shape: Sequence[int], scale: float = 1.0,
               invert: bool = False, notes: list | None = None) -> np.ndarray:
    """Read one image as float32 (C, H, W) in [0, scale].

    Parameters
    ----------
    path : an image file (:func:`image_suffixes`).
    input_shape : the model's (C, H, W); C picks grey (1), RGB (3) or RGBA (4).
    scale : multiply the [0, 1] values by this (the dataset's raw range, e.g. 16 for digits).
    invert : use 1 - value (dark ink on white -> light on dark) before scaling.
    notes : a list that gets a note when the aspect ratio or the colours change to fit (for predict and explain;
        datasets pass none, their images are many).
    """
    from PIL import Image
    c, h, w = (int(v) for v in input_shape)
    problem = image_channels_problem(input_shape)
    if problem:
        raise DataError(f"'{path}': {problem}")
    im = _open(Path(path))
    note = conversion_note(path, im, input_shape) if notes is not None else None
    if note:
        notes.append(note)
    if im.mode in _WIDE_MODES:
        grey = np.asarray(_resize(Image.fromarray(_wide_grey(im, path)), w, h), dtype=np.float32)
        planes = [grey] * min(c, 3) + [np.ones_like(grey)] * (c == 4)    # grey as RGB(A): opaque
        arr = np.stack(planes)
    else:
        arr = _eight_bit(im, c, w, h)
    if invert:
        arr = 1.0 - arr
    return np.ascontiguousarray(arr * np.float32(scale), dtype=np.float32)


def conversion_note(path, im, input_shape: Sequence[int]) -> str | None:
    """A note naming the image's size and mode when fitting it to (C, H, W) changes its aspect ratio by more than
    10% or its colours (colour to grey, grey to colour, transparency flattened onto white); None otherwise."""
    c, h, w = (int(v) for v in input_shape)
    changes = []
    if abs(math.log(im.width / im.height * h / w)) > math.log(1.1):
        changes.append(f"stretched to {w}x{h}")
    colour, transparent = _looks(im)
    if colour and c == 1:
        changes.append("converted from colour to grey")
    elif not colour and c in (3, 4):
        changes.append("converted from grey to RGB" + "A" * (c == 4))
    if transparent and c != 4:
        changes.append("its transparent pixels flattened onto white")
    if not changes:
        return None
    return (f"note: '{path}' ({im.width}x{im.height}, mode {im.mode}) was {', '.join(changes)} to fit the model's "
            f"input {fmt_shape(input_shape)}")


def _looks(im) -> tuple[bool, bool]:
    """(has colour, has transparent pixels): an RGB image whose pixels are all grey (within JPEG noise) is grey."""
    if im.mode in _WIDE_MODES:
        return False, False
    transparent = ("A" in im.getbands() or "transparency" in im.info) and \
        im.convert("RGBA").getchannel("A").getextrema()[0] < 255
    rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    colour = len(im.getbands()) > 2 or im.mode == "P"
    colour = colour and int(np.abs(np.diff(rgb, axis=2)).max(initial=0)) > 8
    return colour, transparent


def polarity_note(path, raw: np.ndarray, scale: float, mean, inverted: bool) -> str | None:
    """A note when an image is probably the wrong way round (dark ink on light read as light on dark, or the
    reverse): its mean brightness (``raw`` in [0, scale], before normalisation) is far from the training data's
    ``mean`` and inverting it would bring it at least twice as close. Natural photos, whose training mean is
    near the middle, never qualify: inverting moves them no closer."""
    if mean is None or not scale or Path(path).suffix.lower() not in image_suffixes():
        return None
    trained = float(np.mean(mean)) / scale
    seen = float(np.mean(raw)) / scale
    off = abs(seen - trained)
    if not 0 <= trained <= 1 or off < 0.3 or abs(1 - seen - trained) > off / 2:
        return None
    how = "drop --invert if it is already light on dark" if inverted else "add --invert if it is dark on light"
    return (f"note: '{path}'{' (inverted)' if inverted else ''} is mostly {'light' if seen > trained else 'dark'} "
            f"(mean {seen:.2f} of 1) while the training images average {trained:.2f}: it may be the wrong way "
            f"round; {how}")


def _resize(im, w: int, h: int):
    """Shrink by area averaging, enlarge bilinearly (see the module docstring)."""
    from PIL import Image
    if im.size == (w, h):
        return im
    shrink = im.size[0] >= w and im.size[1] >= h
    return im.resize((w, h), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)


def _eight_bit(im, c: int, w: int, h: int) -> np.ndarray:
    """An 8-bit image as float32 (C, H, W) in [0, 1]."""
    from PIL import Image
    if c != 4 and ("A" in im.getbands() or "transparency" in im.info):
        # Transparent pixels have arbitrary colour (often black): show them as a viewer would, on white.
        rgba = im.convert("RGBA")
        im = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im.alpha_composite(rgba)
    arr = np.asarray(_resize(im.convert(_MODES[c]), w, h), dtype=np.float32) / np.float32(255.0)
    return arr[None] if arr.ndim == 2 else np.transpose(arr, (2, 0, 1))


def _wide_grey(im, path) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grey image as float32 (H, W) in [0, 1]."""
    raw = np.asarray(im)
    lo, hi = (float(raw.min()), float(raw.max())) if raw.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        arr = raw.astype(np.float32) / np.float32(65535.0)   # I: how Pillow may hold a 16-bit PNG
    elif im.mode == "F" and np.isfinite(raw).all() and lo >= 0 and hi <= 1:
        arr = raw.astype(np.float32)
    else:
        expected = "0..65535 (16-bit)" if im.mode == "I" else "finite values in [0, 1]"
        raise DataError(f"'{path}': grey image of mode {im.mode} holds values {lo:g}..{hi:g}; expected "
                        f"{expected}: save it as an 8- or 16-bit PNG")
    t = im.info.get("transparency")
    if isinstance(t, int):   # a transparent grey level: on white, as for 8-bit images
        arr[raw == t] = 1.0
    return arr


def _read_npy(path: Path, input_shape: tuple[int, ...], scale: float, eight_bit: bool, as_is: bool = False) -> np.ndarray:
    """A .npy batch: (N, C, H, W), (C, H, W) or (H, W) (and (N, H, W) when C == 1), channels last too; for a
    sequence input (C, L) likewise (N, C, L), (C, L), (L,), (N, L) and (N, L, C).

    uint8 arrays are mapped like images (/255 * scale); so are other numbers that look like 8-bit
    pixels when ``eight_bit`` and ``scale`` is 1 (the npz dataset's rule, ``looks_8bit``); other
    arrays are taken to be in the dataset's raw units already and are used as they are. ``as_is`` (a model
    trained with train.data.pixels: as_is): every array, uint8 too, is used as it is.
    """
    try:
        kind, head = array_file_kind(path)
        if kind != "npy":
            raise DataError(f"'{path}': expected a .npy array (np.save), found " +
                            ("an .npz archive" if kind == "npz" else f"a file starting with {head!r}"))
        arr = load_arrays(path)
    except FileNotFoundError:
        raise DataError(f"'{path}': file does not exist") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"'{path}': expected a .npy array (np.save), found unreadable data ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise DataError(f"'{path}': expected a numeric .npy array, found {getattr(arr, 'dtype', type(arr))}")
    c, *space = input_shape
    first, last, r = (c, *space), (*space, c), len(input_shape)
    if last != first and arr.shape[-r:] == last and arr.ndim in (r, r + 1):
        arr = np.moveaxis(arr, -1, -r)   # channels-last (NHWC / HWC, NLC / LC), as the npz dataset also accepts
    if arr.shape == first:
        arr = arr[None]
    elif c == 1 and arr.shape == tuple(space):
        arr = arr[None, None]
    elif c == 1 and arr.ndim == r and arr.shape[1:] == tuple(space):
        arr = arr[:, None]
    elif not (arr.ndim == r + 1 and arr.shape[1:] == first):
        dims = ", ".join(map(str, space))
        forms = [f"(N, {c}, {dims})", f"({c}, {dims})"]
        if last != first:   # channels last, accepted above
            forms += [f"(N, {dims}, {c})", f"({dims}, {c})"]
        if c == 1:
            forms += [f"({dims}{',' * (r == 2)})", f"(N, {dims})"]
        raise DataError(f"'{path}': expected an array of shape {', '.join(forms[:-1])} or {forms[-1]} "
                        f"for the model's input_shape {fmt_shape(input_shape)}, found {fmt_shape(arr.shape)}")
    if len(arr) == 0:
        raise DataError(f"'{path}': holds no {INPUT_KINDS[r][1]} (shape {fmt_shape(arr.shape)}); "
                        f"expected at least one")
    if arr.dtype == np.uint8 and not as_is:
        return arr.astype(np.float32) * np.float32(scale / 255.0)
    from .datasets._common import looks_8bit
    if not as_is and eight_bit and scale == 1.0 and looks_8bit(arr):   # as the npz loader read the training data
        print(f"note: '{path}' holds {arr.dtype} values in [{arr.min():g}, {arr.max():g}]; taken as 8-bit pixels "
              f"and scaled by 1/255 like uint8 images", file=sys.stderr)
        return arr.astype(np.float32) / np.float32(255.0)
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise DataError(f"'{path}': expected finite values, found NaN or inf")
    return out


def read_inputs(paths: Sequence[str | Path], input_shape: Sequence[int], scale: float = 1.0,
                invert: bool = False, eight_bit: bool = True, as_is: bool = False,
                notes: list | None = None) -> np.ndarray:
    """Read image files and .npy batches into one float32 (N, C, H, W) array (not normalised); for a
    sequence input (C, L) or a volume input (C, D, H, W), .npy batches into an (N, C, L) / (N, C, D, H, W) array.

    Images are read with :func:`read_image`; ``invert`` applies to images only. ``eight_bit``: .npy
    numbers in 0..255 are scaled to [0, 1] (see ``_read_npy``; never for sequences); pass False for a model
    trained on data outside [0, 1] (:func:`image_units_warning` tells). ``notes``: see :func:`read_image`.
    """
    shape = tuple(int(v) for v in input_shape)
    parts = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            raise DataError(f"'{p}': is a folder; expected image files ({_suffix_list()}) or an .npy file")
        if p.suffix.lower() == ".npy":   # sequences have no 8-bit rule (as the npz dataset reads them)
            parts.append(_read_npy(p, shape, scale, eight_bit and len(shape) != 2, as_is))
        elif len(shape) != 3:
            kind, _, form = INPUT_KINDS.get(len(shape), ("input", "", str(shape)))[:3]
            raise DataError(f"'{p}': the model's input is a {kind} {form} = {fmt_shape(shape)}; expected an .npy "
                            f"file of shape (N, {form[1:-1]}) or {form}")
        elif p.suffix.lower() in image_suffixes():
            parts.append(read_image(p, shape, scale=scale, invert=invert, notes=notes)[None])
        else:
            raise DataError(f"'{p}': expected an image ({_suffix_list()}) or an .npy file, found suffix "
                            f"'{p.suffix or '(none)'}'")
    if not parts:
        raise DataError(f"no input files given; expected at least one image ({_suffix_list()}) or .npy file")
    return np.concatenate(parts).astype(np.float32, copy=False)


def image_units_warning(paths: Sequence[str | Path], pixel_range, scale: float) -> str | None:
    """A warning when image ``paths`` feed a model whose raw training pixels spanned ``pixel_range``
    (the checkpoint's ``dataset.pixel_range``), outside the [0, scale] images are read in."""
    from .data import pixel_range_fits
    images = [str(p) for p in paths if Path(p).suffix.lower() in image_suffixes()]
    if not images or pixel_range_fits(pixel_range, scale):
        return None
    lo, hi = pixel_range
    return (f"warning: the model was trained on pixel values in [{lo:g}, {hi:g}], not images in [0, {scale:g}]; "
            f"{images[0]}{' and the other images' if len(images) > 1 else ''} (read in [0, {scale:g}]) may be "
            f"predicted wrongly: feed .npy arrays in the training data's units instead")


def array_units_warning(path: str | Path, x: np.ndarray, pixel_range) -> str | None:
    """A warning when an .npy input's values (as read, before normalisation) lie far outside the raw training
    data's ``pixel_range``: beyond it by more than its own width (e.g. 0..255 numbers for a model trained on
    [0, 1] standardised data), the units differ and the predictions are likely wrong."""
    if not isinstance(pixel_range, (list, tuple)) or len(pixel_range) != 2 or x.size == 0:
        return None
    lo, hi = (float(v) for v in pixel_range)
    span = max(hi - lo, 1e-6)
    a, b = float(np.min(x)), float(np.max(x))
    if a >= lo - span and b <= hi + span:
        return None
    return (f"warning: '{path}' holds values in [{a:g}, {b:g}] (as read), far outside the training data's "
            f"[{lo:g}, {hi:g}]; it may be predicted wrongly: give it in the training data's units")


def inputs_in_folder(folder: str | Path) -> tuple[list[Path], int]:
    """The image and .npy files directly in ``folder``, sorted by name (hidden files left out), and the count
    of the other files; DataError when it holds none."""
    folder = Path(folder)
    files = sorted((f for f in folder.iterdir() if not f.name.startswith(".") and f.is_file()), key=lambda f: f.name)
    kinds = (*image_suffixes(), ".npy")
    found = [f for f in files if f.suffix.lower() in kinds]
    if not found:
        raise DataError(f"'{folder}': is a folder without image files ({_suffix_list()}) or .npy files; expected "
                        f"at least one (sub-folders are not searched)")
    return found, len(files) - len(found)
