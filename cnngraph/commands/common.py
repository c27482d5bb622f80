"""Options and helpers shared by CLI commands."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import CnnGraphError, DataError

__all__ = ["add_spec_options", "load_spec_args", "read_array"]


def add_spec_options(p: argparse.ArgumentParser) -> None:
    """--plugin FILE (repeatable) and --allow-plugins, for commands that load specs."""
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="load a plugin file or module before reading the spec (repeatable)")
    p.add_argument("--allow-plugins", action="store_true",
                   help="consent to import the plugin files the spec names under `plugins:`")


def load_spec_args(args: argparse.Namespace, path: str):
    """Load plugins named on the command line (explicit consent), then the spec."""
    from ..registry import load_plugin_file
    from ..spec import load_spec
    for plugin in getattr(args, "plugin", []) or []:
        load_plugin_file(plugin)
    return load_spec(path, allow_plugins=getattr(args, "allow_plugins", False))


def read_array(path: str) -> np.ndarray:
    """Read a .npy file without unpickling; DataError on anything else."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None


def fail(message: str) -> None:
    raise CnnGraphError(message)
