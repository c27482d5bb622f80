"""Train specs/digits_cnn.yaml with cnngraph and the same network, data, recipe and epochs with
PyTorch CPU (2 threads) in the same run; print test accuracy and wall time of both and the ratio.

Run as:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/digits.py [--epochs N] [--repeat N]
         [--checkpoint-interval SECONDS] [--no-torch]

The two frameworks train alternately ``--repeat`` times (default 3); the ratio printed last is the median of
the pairs' ratios (on a shared machine a burst of other load slows one run by up to a third).

``--blas-threads 1,2`` instead times cnngraph's training steps with each ``CNNGRAPH_BLAS_THREADS``
value, interleaved ``--repeat`` times (median and best), on this spec or ``--spec S --data NAME:PATH``
(e.g. specs/cifarnet.yaml on an npz file): the measurement behind the default of 1.

Both sides use the same normalised data splits, the same seeded shuffling order and the same
augmentation code (cnngraph's, on NumPy batches), SGD with the spec's settings, the spec's
learning-rate schedule, validation after every epoch and a final test evaluation. The cnngraph
time is the whole ``cnngraph.train`` call (it also writes checkpoints, see train.checkpoint_interval,
metrics and curves.png); ``epochs`` is the part spent in the epochs themselves (training + validation).

Both frameworks first train two untimed epochs (the schedule warms up for one), as PyTorch's side is
timed after ``import torch`` and its first calls: the first ``cnngraph.train`` call of a process imports the
modules it needs (pydantic, networkx, Pillow, ...; about 0.3 s here). That first call's time is printed too
("cold").
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cnngraph  # noqa: E402

SPEC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "specs", "digits_cnn.yaml")


def run_cnngraph(spec, epochs: int, out: str, verbose: bool, checkpoint_interval: float | None = None) -> dict:
    t = time.perf_counter()
    hist = cnngraph.train(spec, epochs=epochs, out=out, quiet=not verbose, checkpoint_interval=checkpoint_interval)
    wall = time.perf_counter() - t
    return {"accuracy": hist.test["test_accuracy"], "wall": wall,
            "epochs_s": sum(r["seconds"] for r in hist), "best_epoch": hist.best_epoch}


def run_torch(spec, epochs: int) -> dict:
    import torch
    from torch import nn
    from cnngraph.registry import get_registry
    from cnngraph.train.augment import build_augmentations
    from cnngraph.train.data import load_dataset
    from cnngraph.train.loop import epoch_steps
    torch.set_num_threads(2)
    ts = spec.train
    seed = ts.seed
    torch.manual_seed(seed)
    ds = load_dataset(ts.data, (1, 8, 8), seed=seed, base_dir=spec.base_dir)
    p = {l.id: l.params for l in spec.layers}
    net = nn.Sequential(
        nn.Conv2d(1, p["conv1"].out_channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(p["conv1"].out_channels, p["conv2"].out_channels, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(p["conv2"].out_channels * 16, p["fc1"].out_features), nn.ReLU(),
        nn.Dropout(p["drop"].p), nn.Linear(p["fc1"].out_features, 10))
    o = ts.optimizer.params
    opt = torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                          weight_decay=o.weight_decay)
    sched = get_registry().schedules[ts.schedule.type](ts.schedule.params)
    aug = build_augmentations(ts.augment, background=ds.background)
    ls = getattr(ts.loss.params, "label_smoothing", 0.0)
    rng = np.random.default_rng([seed, 1])
    (x, y), (xv, yv), (xt, yt) = ds.train, ds.val, ds.test
    bs = ts.batch_size
    steps = epoch_steps(len(x), bs)

    def evaluate(xs, ys):
        net.eval()
        with torch.no_grad():
            out = net(torch.from_numpy(xs))
        net.train()
        return (out.argmax(1).numpy() == ys).mean()

    t = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for step in range(steps):
            idx = order[step * bs:(step + 1) * bs if step < steps - 1 else None]
            xb = aug(x[idx], rng) if len(aug) else x[idx]
            for g in opt.param_groups:
                g["lr"] = sched.lr(o.lr, epoch, step, steps, epochs)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(torch.from_numpy(xb)), torch.from_numpy(y[idx]),
                                               label_smoothing=ls)
            loss.backward()
            opt.step()
        evaluate(xv, yv)
    acc = evaluate(xt, yt)
    return {"accuracy": float(acc), "wall": time.perf_counter() - t}


def compare_blas(spec, data, epochs: int, values: list[str], repeat: int) -> None:
    import statistics
    times: dict[str, list[float]] = {v: [] for v in values}
    for _ in range(repeat):
        for v in values:
            os.environ["CNNGRAPH_BLAS_THREADS"] = v
            with tempfile.TemporaryDirectory() as out:
                hist = cnngraph.train(spec, epochs=epochs, out=out, data=data, quiet=True)
            times[v].append(sum(r["train_seconds"] for r in hist))
    print(f"{spec.name}, {epochs} epochs, training steps only; load average {os.getloadavg()[0]:.2f} at the end")
    for v, ts in times.items():
        print(f"  CNNGRAPH_BLAS_THREADS={v}: median {statistics.median(ts):.2f}s, best {min(ts):.2f}s "
              f"({len(ts)} runs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, help="default: the spec's train.epochs")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--checkpoint-interval", type=float, metavar="SECONDS",
                    help="cnngraph's train.checkpoint_interval (default: the spec's, 2 s; 0 writes every epoch)")
    ap.add_argument("--verbose", action="store_true", help="show cnngraph's per-epoch lines")
    ap.add_argument("--blas-threads", help="comma-separated CNNGRAPH_BLAS_THREADS values to compare, e.g. 1,2")
    ap.add_argument("--repeat", type=int, default=3, help="alternating cnngraph/torch runs, or runs per "
                                                          "--blas-threads value (default 3)")
    ap.add_argument("--spec", default=SPEC, help="spec for --blas-threads (default specs/digits_cnn.yaml)")
    ap.add_argument("--data", help="dataset for --blas-threads, NAME:PATH (default: the spec's)")
    args = ap.parse_args()
    if args.blas_threads:
        spec = cnngraph.load_spec(args.spec)
        epochs = args.epochs or (spec.train.epochs if spec.train else 20)
        compare_blas(spec, args.data, epochs, args.blas_threads.split(","), args.repeat)
        return
    spec = cnngraph.load_spec(SPEC)
    epochs = args.epochs or spec.train.epochs
    with tempfile.TemporaryDirectory() as out:
        cold = run_cnngraph(spec, 2, out, False)["wall"]
    try:
        import torch  # noqa: F401
        have_torch = not args.no_torch
    except ImportError:
        have_torch = False
    if have_torch:
        run_torch(spec, 2)
    print(f"digits_cnn, {epochs} epochs, batch {spec.train.batch_size}; the first, 2-epoch cnngraph call took "
          f"{cold:.2f}s cold")
    ratios = []
    for i in range(args.repeat):    # alternating: a burst of other load on the machine hits one pair, not a side
        with tempfile.TemporaryDirectory() as out:
            ours = run_cnngraph(spec, epochs, out, args.verbose, args.checkpoint_interval)
        line = (f"  run {i + 1}: cnngraph test accuracy {ours['accuracy']:.4f} (best epoch {ours['best_epoch']}), "
                f"wall {ours['wall']:.2f}s (epochs {ours['epochs_s']:.2f}s)")
        if have_torch:
            ref = run_torch(spec, epochs)
            ratios.append(ours["wall"] / ref["wall"])
            line += (f"; torch test accuracy {ref['accuracy']:.4f} (final epoch), wall {ref['wall']:.2f}s "
                     f"(2 threads); ratio {ratios[-1]:.2f}")
        print(line)
    if not have_torch:
        print("  torch: " + ("skipped (--no-torch)" if args.no_torch else "not installed, skipped"))
        return
    import statistics
    print(f"  ratio cnngraph/torch wall time: median {statistics.median(ratios):.2f} over {len(ratios)} alternating "
          f"runs (min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
