"""Options and helpers shared by CLI commands."""
from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np

from ..arrayfile import array_file_kind
from ..errors import CnnGraphError, DataError

__all__ = ["add_spec_options", "load_spec_args", "read_array"]


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


def add_spec_options(p: argparse.ArgumentParser) -> None:
    """--plugin FILE (repeatable) and --allow-plugins, for commands that load specs."""
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="load a plugin file or module before reading the spec (repeatable)")
    p.add_argument("--allow-plugins", action="store_true",
                   help="consent to import the plugin files the spec names under `plugins:`")


def load_spec_args(args: argparse.Namespace, path: str, check_shapes: bool = True):
    """Load plugins named on the command line (explicit consent), then the spec."""
    from ..registry import load_plugin_file
    from ..spec import load_spec
    for plugin in getattr(args, "plugin", []) or []:
        load_plugin_file(plugin)
    return load_spec(path, allow_plugins=getattr(args, "allow_plugins", False), check_shapes=check_shapes)


def read_array(path: str) -> np.ndarray:
    """Read a .npy file, or an .npz holding a single array, without unpickling; DataError on
    anything else."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found")
    kind, head = array_file_kind(p)
    if kind is None:
        raise DataError(f"{path}: not a .npy or .npz array file (it starts with {head!r})")
    try:
        data = np.load(p, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                if len(data.files) != 1:
                    raise DataError(f"{path}: an .npz must hold exactly one array here, found "
                                    f"{len(data.files)} ({', '.join(data.files) or 'none'})")
                data = data[data.files[0]]
        return data
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npy/.npz array ({exc})") from None


def fail(message: str) -> None:
    raise CnnGraphError(message)
