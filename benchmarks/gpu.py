"""cnngraph on CuPy against PyTorch on CUDA, side by side on one GPU.

    python benchmarks/gpu.py [--rounds 3] [--min-seconds 0.5]

Both frameworks get the same network and weights (the PyTorch side is cnngraph.torchref.TorchNet moved
to the GPU), their outputs are checked to agree, then they are timed alternately after warm-up, with a
device synchronisation after every step. Needs CuPy, a CUDA GPU and (for the comparison) PyTorch with CUDA.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from cnngraph.bench import CASES, SPECS, CnnStep, TorchStep, _data
from cnngraph.model import compile


def run(rounds: int, min_seconds: float) -> list[dict]:
    rows = []
    for case in CASES:
        try:
            rows.append(_compare(case, rounds, min_seconds))
        except Exception as exc:  # noqa: BLE001 - report the case and go on with the others
            print(f"{case.net} {case.batch} {case.mode}: FAILED {type(exc).__name__}: {exc}", flush=True)
    return rows


def _compare(case, rounds: int, min_seconds: float) -> dict:
    import cupy as cp
    import torch
    model = compile(SPECS / f"{case.net}.yaml", seed=0, device="cuda")
    x, y = _data(model, case.batch)
    ours = CnnStep(model, case.mode)
    theirs = TorchStep(model, case.mode, device="cuda")
    xg, yg = cp.asarray(x), cp.asarray(y)
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    with torch.no_grad():
        ref = theirs.net.eval()(xt[:8]).cpu().numpy()
    got = cp.asnumpy(model.forward(xg[:8])[model.spec.outputs[0]])
    agree = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
    runners = {"cnngraph": (ours, xg, yg, cp.cuda.Device().synchronize),
               "torch": (theirs, xt, yt, torch.cuda.synchronize)}
    for fn, a, b, sync in runners.values():
        for _ in range(3):
            fn(a, b)
        sync()
    best = {k: float("inf") for k in runners}
    for _ in range(rounds):
        for k, (fn, a, b, sync) in runners.items():
            n, start = 0, time.perf_counter()
            while True:
                fn(a, b)
                sync()
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            best[k] = min(best[k], elapsed / n)
    row = {"net": case.net, "batch": case.batch, "mode": case.mode, "agree": agree,
           "cnngraph_img_s": case.batch / best["cnngraph"], "torch_img_s": case.batch / best["torch"]}
    row["ratio"] = row["cnngraph_img_s"] / row["torch_img_s"]
    print(f"{row['net']:<13} {row['batch']:>5} {row['mode']:<5} cnngraph {row['cnngraph_img_s']:>10,.0f} img/s  "
          f"torch {row['torch_img_s']:>10,.0f} img/s  ratio {row['ratio']:.2f}  (outputs agree to {agree:.1e})",
          flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=0.5)
    args = ap.parse_args()
    import cupy as cp
    print(f"GPU: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    run(args.rounds, args.min_seconds)


if __name__ == "__main__":
    main()
