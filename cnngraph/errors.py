"""Error types. Errors are data: each carries where it happened and what was expected.

The CLI formats them; nothing user-facing prints a traceback.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CnnGraphError", "Problem", "SpecError", "ShapeError", "PluginError",
    "BackendError", "RunError", "DataError", "CheckpointError",
]


class CnnGraphError(Exception):
    """Base of every error cnngraph raises on purpose."""


@dataclass
class Problem:
    """One located problem in a spec file."""

    message: str
    path: str = ""            # path inside the spec, e.g. "layers[3].kernel_size"
    file: str | None = None
    line: int | None = None   # 1-based
    column: int | None = None  # 1-based
    layer: str | None = None
    note: str | None = None   # e.g. "defined in block 'conv_bn_relu' at file:12:5"

    def format(self) -> str:
        where = self.file or "<spec>"
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        parts = [where + ":"]
        if self.path:
            parts.append(self.path + ":")
        if self.layer:
            parts.append(f"(layer '{self.layer}')")
        text = " ".join(parts) + " " + self.message
        if self.note:
            text += f"\n    {self.note}"
        return text


class SpecError(CnnGraphError):
    """A spec is invalid. ``problems`` lists every problem found, each located."""

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in spec"
        super().__init__(head + ":\n" + "\n".join("  " + p.format() for p in self.problems))


class ShapeError(CnnGraphError):
    """Raised by an op's shape inference; the graph compiler locates it.

    ``shapes``: the input shapes that do not fit together (add's, concat's). The message then ends in
    ", found (8, 14, 14), (8, 16, 16)"; in a spec, the compiler names the layer that gives each instead
    ("add needs inputs of one shape: c1 gives (8, 14, 14), c2 gives (8, 16, 16)").
    """

    def __init__(self, message: str, shapes=None):
        self.brief = message
        self.shapes = None if shapes is None else [tuple(s) for s in shapes]
        super().__init__(message if shapes is None else f"{message}, found {', '.join(map(str, self.shapes))}")


class PluginError(CnnGraphError):
    """A plugin failed to load, registered a duplicate, or an op broke its contract."""


class BackendError(CnnGraphError):
    """The requested device or array library is unavailable."""


class RunError(CnnGraphError):
    """Running a layer failed; the message names the layer, op and input shapes."""


class DataError(CnnGraphError):
    """A dataset or input file is missing, malformed or of the wrong shape."""


class CheckpointError(CnnGraphError):
    """A checkpoint is missing, corrupt or does not match the spec."""
