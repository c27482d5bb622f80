"""The ``cnngraph`` command: parses arguments, calls the API, prints. No logic lives here.

Each command family lives in ``cnngraph/commands/<family>.py`` with a ``register(subparsers)``
function. Errors raised on purpose (CnnGraphError), and OSErrors on a path the user gave, are printed
without a traceback and give exit 1.
"""
from __future__ import annotations

import argparse
import importlib
import sys

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
    try:
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
    try:
        return int(args.func(args) or 0)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
