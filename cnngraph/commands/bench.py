"""cnngraph bench: the side-by-side benchmark against PyTorch.

``cli.main`` hands every argument after ``bench`` to :func:`cnngraph.bench.main` before argparse runs
(argparse cannot forward options); this entry only lists the command in ``cnngraph --help``.
"""
from __future__ import annotations

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("bench", help="throughput vs PyTorch on lenet5, cifarnet and resnet_small (side by side)")
    p.set_defaults(func=lambda args: _run())


def _run() -> int:
    from ..bench import main
    return main([])
