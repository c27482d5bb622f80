"""Training steps with and without relu fusion (``Model.forward(..., fuse=True)``, which
``cnngraph.train`` uses), alternating in one process: forward, cross-entropy, backward, SGD.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/fusion.py [--rounds 7] [--cases lenet5:256 ...]

Prints the median step time of each and the speed-up. Both give identical results (tests/test_fusion.py).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnngraph import compile  # noqa: E402
from cnngraph.bench import SPECS, CnnStep, _data  # noqa: E402

CASES = ["digits_cnn:64", "lenet5:256", "cifarnet:64", "cifarnet:256", "resnet_small:32"]


def step_time(step, inputs, labels, min_seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while True:
        step(inputs, labels)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-seconds", type=float, default=0.5)
    ap.add_argument("--cases", nargs="+", default=CASES, help="NET:BATCH with NET a spec in specs/")
    args = ap.parse_args()
    print(f"{'network':<14}{'batch':>6}{'unfused ms':>12}{'fused ms':>10}{'speed-up':>10}")
    for case in args.cases:
        net, batch = case.split(":")
        model = compile(SPECS / f"{net}.yaml", seed=0)
        x, y = _data(model, int(batch))
        inputs = {next(iter(model.spec.inputs)): x}
        steps = {fuse: CnnStep(model, "train", fuse=fuse) for fuse in (False, True)}
        times = {False: [], True: []}
        for step in steps.values():     # warm-up
            step(inputs, y)
        for _ in range(args.rounds):
            for fuse, step in steps.items():
                times[fuse].append(step_time(step, inputs, y, args.min_seconds))
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(f"{net:<14}{batch:>6}{off * 1e3:>12.2f}{on * 1e3:>10.2f}{off / on:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
