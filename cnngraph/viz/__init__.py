"""Pictures of networks: graph drawings, training plots, feature maps, filters and Grad-CAM."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import CnnGraphError

__all__ = ["require_matplotlib", "make_parent", "check_not_folder", "check_not_an_input", "wrote"]


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


def check_not_an_input(out, inputs) -> bool:
    """A CnnGraphError when ``out`` is the same file as one of ``inputs`` ((what, path) pairs, e.g.
    ("--image", "mine.png")): writing the picture would destroy that input. Call it before any work.
    Returns whether ``out`` exists, so the success line can say that another file was replaced."""
    real = os.path.realpath(out)   # 'new/../x.png' is x.png once 'new' is created
    if not os.path.exists(real):
        return False
    for what, path in inputs:
        if path and os.path.exists(path) and os.path.samefile(real, path):
            raise CnnGraphError(f"cannot write '{out}': it is the {what} file this command reads; give "
                                f"another output file (-o)")
    return True


def wrote(out, *notes: str, size=None, replaced: bool = False) -> str:
    """The success line's start: 'wrote OUT (notes)', with the size in pixels for a PNG only (a PDF or SVG
    has none) and whether an existing file was replaced."""
    notes = list(notes) + ([f"{size[0]}x{size[1]} px"] if size and Path(out).suffix.lower() == ".png" else [])
    if replaced:
        notes.append("replaced the existing file")
    return f"wrote {out}" + (f" ({', '.join(notes)})" if notes else "")
