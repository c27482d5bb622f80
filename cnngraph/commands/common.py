"""Options and helpers shared by CLI commands."""
from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np

from ..arrayfile import array_file_kind, load_arrays
from ..errors import CnnGraphError, DataError

__all__ = ["add_spec_options", "load_spec_args", "read_array", "read_model_inputs"]


def whole_number(minimum: int):
    """An argparse type accepting whole numbers >= ``minimum``, with a message naming the bound."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, found {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, found {v}")
        return v
    return parse


seed_value = whole_number(0)   # NumPy's generators refuse negative seeds


def add_spec_options(p: argparse.ArgumentParser, reads_spec: bool = True) -> None:
    """--plugin FILE (repeatable) and --allow-plugins, for commands that load specs (and, with
    reads_spec=False, for those that only list or check what plugins register)."""
    before = "before reading the spec" if reads_spec else "first"
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help=f"load a plugin file or module {before} (repeatable)")
    p.add_argument("--allow-plugins", action="store_true",
                   help="consent to import the plugin files the spec names under `plugins:`" if reads_spec else
                   "no effect here: this command reads no spec (kept so a shared command line works)")


def load_spec_args(args: argparse.Namespace, path: str, check_shapes: bool = True):
    """Load plugins named on the command line (explicit consent), then the spec."""
    from ..registry import load_plugin_file
    from ..spec import load_spec
    for plugin in getattr(args, "plugin", []) or []:
        load_plugin_file(plugin)
    return load_spec(path, allow_plugins=getattr(args, "allow_plugins", False), check_shapes=check_shapes)


def _existing_file(path: str) -> Path:
    """``path`` as a Path when it is a regular file; DataError naming what it is otherwise."""
    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "is not a regular file" if p.exists() else "file not found"
        raise DataError(f"{path}: {what}; expected a .npy or .npz array file")
    return p


def read_array(path: str) -> np.ndarray:
    """Read a .npy file, or an .npz holding a single array, without unpickling; DataError on
    anything else."""
    p = _existing_file(path)
    kind, head = array_file_kind(p)
    if kind is None:
        raise DataError(f"{path}: not a .npy or .npz array file (it starts with {head!r})")
    try:
        data = load_arrays(p)
        if isinstance(data, dict):
            if len(data) != 1:
                raise DataError(f"{path}: an .npz must hold exactly one array here, found "
                                f"{len(data)} ({', '.join(data) or 'none'})")
            (data,) = data.values()
        return data
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npy/.npz array ({exc})") from None


def read_model_inputs(path: str, inputs: dict) -> dict[str, np.ndarray]:
    """The arrays for a model's ``inputs`` (name -> InputSpec): for one input a .npy, or an .npz holding
    one array; for several an .npz holding one array per input, named as the spec names them. A single
    sample (no batch axis) becomes a batch of one."""
    if len(inputs) == 1:
        arrays = {next(iter(inputs)): read_array(path)}
    else:
        arrays = _read_named_arrays(path, list(inputs))
    for name, x in arrays.items():
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            which = f" of '{name}'" if len(inputs) > 1 else ""
            raise DataError(f"{path}: {int((~np.isfinite(x)).sum())} of {x.size} values{which} are NaN or infinite")
        if x.ndim == len(inputs[name].shape):
            arrays[name] = x = x[None]
        _refuse_channels_last(path, name, x, tuple(inputs[name].shape), len(inputs) > 1)
    return arrays


_AXES = {2: "L", 3: "H, W", 4: "D, H, W"}   # per-sample axes after the channels


def _refuse_channels_last(path: str, name: str, x: np.ndarray, shape: tuple, several: bool) -> None:
    """An image batch saved (N, H, W, C), as NumPy/PIL/Keras hold images, for a (C, H, W) input: say so, with
    the fix, rather than only that the shape is wrong."""
    if len(shape) >= 2 and x.ndim == len(shape) + 1 and x.shape[1:] != shape and \
            x.shape[1:] == shape[1:] + shape[:1]:
        which = f" for input '{name}'" if several else ""
        axes = _AXES.get(len(shape), "...")
        raise DataError(f"{path}: array of shape {x.shape}{which} looks channels-last (N, {axes}, C); "
                        f"the model takes (N, {', '.join(map(str, shape))}): save np.moveaxis(x, -1, 1)")


def _read_named_arrays(path: str, names: list[str]) -> dict[str, np.ndarray]:
    want = f"an .npz holding one array per model input, named {', '.join(names)}"
    p = _existing_file(path)
    if array_file_kind(p)[0] != "npz":
        raise DataError(f"{path}: this model takes {len(names)} inputs; give {want} "
                        f"(np.savez(FILE, {', '.join(f'{n}=...' for n in names)}))")
    try:
        data = load_arrays(p)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz array file ({exc})") from None
    missing = [n for n in names if n not in data]
    extra = [n for n in data if n not in names]
    if missing or extra:
        parts = ([f"missing {', '.join(map(repr, missing))}"] if missing else []) + \
                ([f"unknown {', '.join(map(repr, extra))}"] if extra else [])
        raise DataError(f"{path}: {'; '.join(parts)}; expected {want}")
    return {n: data[n] for n in names}


def fail(message: str) -> None:
    raise CnnGraphError(message)
