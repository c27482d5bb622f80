"""Pictures of networks: graph drawings, training plots, feature maps, filters and Grad-CAM."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import CnnGraphError

__all__ = ["require_matplotlib", "make_parent", "check_not_folder"]


def require_matplotlib(what: str) -> None:
    """One clear error, not an import traceback halfway through, when matplotlib is missing (it is
    only needed for PNG/PDF drawings and the plots). ``what`` names what needs it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CnnGraphError(f"{what} needs matplotlib (pip install matplotlib)") from None


def make_parent(out: Path) -> None:
    """Create ``out``'s folder; a file in the way is named (mkdir's own message is 'File exists')."""
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CnnGraphError(f"cannot write '{out}': '{parent}' is a file, not a folder")
            break
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CnnGraphError(f"cannot create the folder for '{out}': {exc.strerror or exc}") from None


def check_not_folder(out, example: str) -> None:
    """A CnnGraphError when ``out`` (as given) is a folder or ends in a path separator, before its
    extension is judged ('unknown format (no extension)' would miss the point); ``example`` is a file
    name to suggest in it."""
    text = str(out)
    if text.endswith(("/", os.sep)) or Path(text).is_dir():
        raise CnnGraphError(f"cannot write '{text}': it is a folder; give a file name, such as "
                            f"'{Path(text) / example}'")
