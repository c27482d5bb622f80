"""cnngraph bench: the side-by-side benchmark against PyTorch."""
from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("bench", help="throughput vs PyTorch on lenet5, cifarnet and resnet_small (side by side)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)   # all options go to the benchmark's own parser
    p.set_defaults(func=lambda args: _run(args.rest))


def _run(rest) -> int:
    from ..bench import main
    return main(rest)
