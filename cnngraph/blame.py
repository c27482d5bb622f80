"""Naming the plugin behind a failure: its component, the plugin that registered it and the line of the
plugin's file that raised, so a broken component reads as one line instead of a traceback."""
from __future__ import annotations

import inspect
import os

__all__ = ["source_file", "source_line", "defined_at", "class_name", "owner", "who", "failed"]


def source_file(obj) -> str | None:
    """The real path of the file that defines ``obj`` (a class, function or instance), else None."""
    target = obj if inspect.isclass(obj) or inspect.isroutine(obj) else type(obj)
    try:
        path = inspect.getsourcefile(target) or inspect.getfile(target)
    except (TypeError, OSError):   # built-in or made at run time: no file to point at
        return None
    return os.path.realpath(path)


def source_line(exc: BaseException, obj) -> str:
    """' at file.py:12': the innermost frame of ``exc``'s traceback that lies in ``obj``'s file ('' if none)."""
    path = source_file(obj)
    if path is None:
        return ""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if os.path.realpath(tb.tb_frame.f_code.co_filename) == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" at {os.path.basename(path)}:{line}" if line else ""


def defined_at(fn) -> str:
    """'file.py:12', where function ``fn`` is defined (for what it returned: no traceback points there), else ''."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if code is None or source_file(fn) is None:
        return ""
    return f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}"


def class_name(obj) -> str:
    """"'P' (my_ops.py:7)": a class by its own name and where it is written (a plugin file's module name is
    made up by the loader, so it means nothing to the user); anything else by its repr."""
    if not inspect.isclass(obj):
        return repr(obj)
    path = source_file(obj)
    try:
        line = inspect.getsourcelines(obj)[1] if path else None
    except (OSError, TypeError):
        line = None
    where = f"{os.path.basename(path)}:{line}" if line else (os.path.basename(path) if path else obj.__module__)
    return f"'{obj.__qualname__}' ({where})"


def owner(table: str, name: str) -> str | None:
    """The plugin that registered ``name`` in the registry's ``table`` ('optimizers' ...), else None."""
    from .registry import get_registry
    return get_registry().owner.get((table, name))


def who(kind: str, name: str, table: str | None = None) -> str:
    """"optimizer 'x' (plugin 'p')", the plugin looked up in the registry table (left out when unknown)."""
    plugin = owner(table, name) if table else None
    return f"{kind} '{name}'" + (f" (plugin '{plugin}')" if plugin else "")


def failed(subject: str, action: str, exc: BaseException, obj) -> str:
    """"<subject> failed in <action> at file.py:12: ValueError: ..." for an exception raised by ``obj``."""
    return f"{subject} failed in {action}{source_line(exc, obj)}: {type(exc).__name__}: {exc}"
