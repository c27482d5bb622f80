"""The ``cnngraph`` command: parses arguments, calls the API, prints. No logic lives here.

Each command family lives in ``cnngraph/commands/<family>.py`` with a ``register(subparsers)``
function. Errors raised on purpose (CnnGraphError), OSErrors on a path the user gave, and standard output
that cannot be written (a full disk) are printed without a traceback and give exit 1. Characters that
the output's encoding lacks print as '?'.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from .errors import CnnGraphError, SpecError

__all__ = ["main", "COMMAND_MODULES"]

COMMAND_MODULES = (
    "cnngraph.commands.core",
    "cnngraph.commands.train",
    "cnngraph.commands.extend",
    "cnngraph.commands.viz",
    "cnngraph.commands.onnx",
    "cnngraph.commands.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnngraph",
        description="Declarative convolutional networks: validate, inspect, run, train, visualise and convert.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"cnngraph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:   # a command family not part of this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):   # an ASCII terminal: table bars, '—', non-ASCII paths
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        with warnings.catch_warnings():   # restores Python's own display when main() returns (tests, notebooks)
            warnings.showwarning = _warning_line
            return _main(argv)
    except KeyboardInterrupt:   # also during the start-up imports (see cnngraph/__init__.py)
        print("interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:   # the benchmark parses its own options (argparse cannot forward them)
        from .bench import main as bench_main
        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    stdout, sys.stdout = sys.stdout, _Stdout(sys.stdout)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()   # now, not at exit: a full disk is reported like any other error
        return code
    except _StdoutError as exc:
        print(f"error: cannot write to standard output: {exc}", file=sys.stderr)
        return 1
    except SpecError as exc:   # already "N problems in spec:" with one located line each
        print(exc, file=sys.stderr)
        return 1
    except CnnGraphError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `cnngraph ops | head`
        return 0
    except OSError as exc:   # a path the user gave cannot be read or written (missing folder, read-only, ...)
        if exc.filename is None:
            raise
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        sys.stdout = stdout


def _warning_line(message, category, filename, lineno, file=None, line=None):
    """A warning as one 'warning: ...' line on stderr, like the errors: not Python's two lines naming the
    cnngraph source line that raised it."""
    print(f"warning: {message}", file=sys.stderr if file is None else file)


class _StdoutError(Exception):
    """Standard output cannot be written (a full disk, /dev/full)."""


class _Stdout:
    """sys.stdout while a command runs, telling a failed write apart from other OSErrors without a file
    name (a closed pipe stays a BrokenPipeError: `cnngraph ops | head` ends quietly)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._guard(self._stream.write, text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)

    @staticmethod
    def _guard(call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutError(exc.strerror or exc) from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
