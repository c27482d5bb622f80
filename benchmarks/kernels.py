"""Benchmark the conv/pool kernels against PyTorch CPU on the cifarnet, LeNet-5 and digits_cnn layers.

Run as:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/kernels.py [--reps N] [--batch 64 256] [--only NAME]
Ours and torch alternate after warm-up; the median of the repetitions is reported. torch uses 2 threads.
Backward of each net's first conv skips dx (as in training), for both. The "x" column is
torch time / our time (> 1: we are faster).

Small kernels of ours are timed right after a torch call, whose OpenMP threads keep spinning on the
cores for a while: digits' conv2 forward reads 2-2.5 ms here against 0.9-1.0 ms run alone (one untimed
call first did not help). Judge the networks with benchmarks/run.py, whose rounds last 0.5 s per framework.

Timings on a shared machine swing by 2-5x with other load, and torch's OpenMP threads suffer far
more from a busy core than our kernels (which pull chunks dynamically): compare runs made while
/proc/loadavg is near 1 (this benchmark alone), or look at ratios from the same run only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnngraph.kernels import (conv2d_backward, conv2d_forward, max_pool2d_backward,  # noqa: E402
                              max_pool2d_forward)

# name, C, H, W, O, k, pad, first (input gradient not needed)
CONVS = [
    ("cifar.conv1", 3, 32, 32, 32, 3, 1, True),
    ("cifar.conv2", 32, 32, 32, 32, 3, 1, False),
    ("cifar.conv3", 32, 16, 16, 64, 3, 1, False),
    ("cifar.conv4", 64, 16, 16, 64, 3, 1, False),
    ("lenet.conv1", 1, 28, 28, 6, 5, 2, True),
    ("lenet.conv2", 6, 14, 14, 16, 5, 0, False),
    ("digits.conv1", 1, 8, 8, 16, 3, 1, True),
    ("digits.conv2", 16, 8, 8, 32, 3, 1, False),
]
# name, C, H, W, k
POOLS = [
    ("cifar.pool1", 32, 32, 32, 2),
    ("cifar.pool2", 64, 16, 16, 2),
    ("lenet.pool1", 6, 28, 28, 2),
    ("digits.pool", 32, 8, 8, 2),
    ("lenet.pool2", 16, 10, 10, 2),
]


def timed(f):
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def bench_pair(ours_f, ours_b, torch_f, torch_b, reps):
    """Median (fwd, bwd) seconds for ours and torch, alternating after one warm-up round."""
    times = {k: [] for k in ("of", "ob", "tf", "tb")}
    for r in range(reps + 1):
        dt_of, state = timed(ours_f)
        dt_ob, _ = timed(lambda: ours_b(state))
        dt_tf, tstate = timed(torch_f)
        dt_tb, _ = timed(lambda: torch_b(tstate))
        if r:
            for k, v in zip(("of", "ob", "tf", "tb"), (dt_of, dt_ob, dt_tf, dt_tb)):
                times[k].append(v)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_conv(torch, name, N, C, H, W, O, k, pad, first, reps):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = rng.standard_normal((O, C, k, k), dtype=np.float32) * 0.1
    b = rng.standard_normal(O, dtype=np.float32)
    args = ((1, 1), (pad,) * 4, (1, 1), 1)
    y, _ = conv2d_forward(x, w, b, *args, save=False)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    tx, tw, tb, tgy = (torch.from_numpy(a) for a in (x, w, b, gy))
    conv_bwd = torch.ops.aten.convolution_backward

    t = bench_pair(
        lambda: conv2d_forward(x, w, b, *args, save=True)[1],
        lambda saved: conv2d_backward(gy, saved, need_dx=not first),
        lambda: torch.nn.functional.conv2d(tx, tw, tb, padding=pad),
        lambda _: conv_bwd(tgy, tx, tw, [O], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                           [not first, True, True]),
        reps)
    Ho, Wo = y.shape[2:]
    flop = 2.0 * N * O * C * k * k * Ho * Wo
    bflop = flop * (1 if first else 2)
    print(f"{name:12s} N={N:<4d} fwd {t['of']*1e3:7.2f} ms {flop/t['of']/1e9:6.1f} GF/s | torch {t['tf']*1e3:7.2f} ms "
          f"{flop/t['tf']/1e9:6.1f} GF/s | x{t['tf']/t['of']:.2f}   "
          f"bwd {t['ob']*1e3:7.2f} ms {bflop/t['ob']/1e9:6.1f} GF/s | torch {t['tb']*1e3:7.2f} ms | x{t['tb']/t['ob']:.2f}")
    return t


def bench_pool(torch, name, N, C, H, W, k, reps):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    y, _ = max_pool2d_forward(x, (k, k), (k, k), (0,) * 4, (1, 1), False, save=False)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    tx, tgy = torch.from_numpy(x), torch.from_numpy(gy)

    def torch_f():
        return torch.ops.aten.max_pool2d_with_indices(tx, [k, k], [k, k])

    t = bench_pair(
        lambda: max_pool2d_forward(x, (k, k), (k, k), (0,) * 4, (1, 1), False, save=True)[1],
        lambda saved: max_pool2d_backward(gy, saved),
        torch_f,
        lambda yi: torch.ops.aten.max_pool2d_with_indices_backward(tgy, tx, [k, k], [k, k], [0, 0], [1, 1],
                                                                   False, yi[1]),
        reps)
    print(f"{name:12s} N={N:<4d} fwd {t['of']*1e3:7.2f} ms | torch {t['tf']*1e3:7.2f} ms | x{t['tf']/t['of']:.2f}   "
          f"bwd {t['ob']*1e3:7.2f} ms | torch {t['tb']*1e3:7.2f} ms | x{t['tb']/t['ob']:.2f}")
    return t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--only", default="", help="substring filter on layer names")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="hold NumPy's BLAS at this many threads, as training does (0: leave it)")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OPENBLAS_L2_SIZE"):
        print("warning: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE set; NumPy GEMM will be slow", file=sys.stderr)
    totals = {}
    if a.blas_threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(a.blas_threads, user_api="blas")   # stays in force for the run
    for N in a.batch:
        for name, *spec in CONVS:
            if a.only in name:
                t = bench_conv(torch, name, N, *spec, a.reps)
                totals.setdefault((name.split(".")[0], N), []).append(t)
        for name, *spec in POOLS:
            if a.only in name:
                t = bench_pool(torch, name, N, *spec, a.reps)
                totals.setdefault((name.split(".")[0], N), []).append(t)
    for (net, N), ts in totals.items():
        ours = sum(t["of"] + t["ob"] for t in ts)
        theirs = sum(t["tf"] + t["tb"] for t in ts)
        print(f"total {net:6s} N={N:<4d} ours {ours*1e3:8.2f} ms  torch {theirs*1e3:8.2f} ms  ratio x{theirs/ours:.2f}")


if __name__ == "__main__":
    main()
