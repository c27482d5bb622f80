"""Side-by-side throughput benchmark: cnngraph against PyTorch CPU on the same networks.

Each case builds the network in cnngraph and (when torch is installed) the identical network in
PyTorch with the same weights, checks that both give the same outputs, then times them alternately
after warm-up. Peak memory is measured in a fresh subprocess per framework and case.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .model import Model, compile
from .op import Context
from .summary import summarize

__all__ = ["CASES", "Case", "gemm_peak_gflops", "run_benchmarks", "format_table"]

SPECS = Path(__file__).resolve().parent.parent / "specs"


@dataclass(frozen=True)
class Case:
    net: str
    batch: int
    mode: str            # "train" (SGD step with cross-entropy) or "infer"


CASES = (Case("lenet5", 64, "train"), Case("lenet5", 256, "train"), Case("lenet5", 256, "infer"),
         Case("cifarnet", 64, "train"), Case("cifarnet", 256, "train"), Case("cifarnet", 64, "infer"),
         Case("resnet_small", 32, "infer"))


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of NumPy's matrix product on n×n matrices."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)
    best = min(_timed(lambda: np.matmul(a, a, out=out)) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class CnnStep:
    """One cnngraph training step (forward, cross-entropy, backward, SGD with momentum) or inference."""

    def __init__(self, model: Model, mode: str):
        from .registry import get_registry
        from .train.optim import build_optimizer
        self.model, self.mode = model, mode
        self.loss = get_registry().ops["cross_entropy"]()
        self.opt = build_optimizer({"type": "sgd", "lr": 0.01, "momentum": 0.9})
        self.fast = None
        if mode == "infer":
            from .passes import optimize_for_inference
            self.fast = optimize_for_inference(model)

    def __call__(self, x, y):
        name = self.model.spec.outputs[0]
        if self.mode == "infer":
            return self.fast.forward(x)[name]
        out = self.model.forward(x, training=True, fused=True)[name]
        ctx = Context(training=True, grad=True)
        self.loss.forward(ctx, [out, y], {})
        (g, _), _ = self.loss.backward(ctx, np.float32(1.0))
        grads = self.model.backward({name: g}, input_grads=False)
        self.opt.step(self.model.params._data, grads, 0.01)
        return out


class TorchStep:
    def __init__(self, model: Model, mode: str, device: str = "cpu"):
        import torch
        from .torchref import TorchNet
        self.torch, self.mode = torch, mode
        self.net = TorchNet(model).to(device)
        self.net.state = {k: v.to(device) for k, v in self.net.state.items()}   # buffers kept outside the Module
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)

    def __call__(self, x, y):
        torch = self.torch
        if self.mode == "infer":
            self.net.eval()
            with torch.no_grad():
                return self.net(x)
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        out = self.net(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        self.opt.step()
        return out


def _data(model: Model, batch: int):
    rng = np.random.default_rng(0)
    shape = model.spec.inputs[next(iter(model.spec.inputs))].shape
    return rng.standard_normal((batch, *shape)).astype(np.float32), rng.integers(0, 10, batch)


def _check_agree(model: Model, batch: int) -> float:
    """Max relative difference between cnngraph's and PyTorch's inference outputs on the same weights."""
    import torch
    from .torchref import TorchNet
    x, _ = _data(model, min(batch, 8))
    ours = model.forward(x)[model.spec.outputs[0]]
    net = TorchNet(model).eval()
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def _throughputs(case: Case, rounds: int, min_seconds: float, with_torch: bool) -> dict:
    model = compile(SPECS / f"{case.net}.yaml", seed=0)
    x, y = _data(model, case.batch)
    runners = {"cnngraph": (CnnStep(model, case.mode), x, y)}
    if with_torch:
        import torch
        runners["torch"] = (TorchStep(model, case.mode), torch.from_numpy(x), torch.from_numpy(y))
    for fn, xx, yy in runners.values():   # warm-up
        fn(xx, yy)
        fn(xx, yy)
    times = {k: [] for k in runners}
    for _ in range(rounds):                # alternate so both see the same machine state
        for k, (fn, xx, yy) in runners.items():
            n, start = 0, time.perf_counter()
            while True:
                fn(xx, yy)
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            times[k].append(elapsed / n)
    return {k: case.batch / min(v) for k, v in times.items()}


def _peak_rss_child(framework: str, case: Case) -> float:
    """Peak resident memory (MiB) of a fresh process running 3 steps of ``case``."""
    cmd = [sys.executable, "-m", "cnngraph.bench", "--child", framework, case.net, str(case.batch), case.mode]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        return float("nan")
    return float(out.stdout.strip().splitlines()[-1])


def _child(framework: str, net: str, batch: int, mode: str) -> None:
    case = Case(net, batch, mode)
    model = compile(SPECS / f"{case.net}.yaml", seed=0)
    x, y = _data(model, batch)
    if framework == "torch":
        import torch
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        step, x, y = TorchStep(model, mode), torch.from_numpy(x), torch.from_numpy(y)
    else:
        step = CnnStep(model, mode)
    for _ in range(3):
        step(x, y)
    print(_peak_rss_mib())


def _peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    exec from the parent, so a child started by a big benchmark process would report the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_benchmarks(cases=CASES, rounds: int = 3, min_seconds: float = 0.5, memory: bool = True) -> dict:
    """Run the cases; returns {"machine": ..., "gemm_peak_gflops": ..., "rows": [...]}."""
    try:
        import torch
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        with_torch = True
    except ImportError:
        with_torch = False
    peak = gemm_peak_gflops()
    rows = []
    for case in cases:
        model = compile(SPECS / f"{case.net}.yaml", seed=0)
        flops = summarize(model.graph, case.net).total_flops * 2          # multiply-adds → FLOPs
        work = flops * (3 if case.mode == "train" else 1)                 # backward ≈ 2× forward
        agree = _check_agree(model, case.batch) if with_torch else None
        if agree is not None and agree > 1e-3:
            raise RuntimeError(f"{case.net}: cnngraph and PyTorch disagree (relative difference {agree:.2e})")
        tp = _throughputs(case, rounds, min_seconds, with_torch)
        row = {**asdict(case), "cnngraph_img_s": tp["cnngraph"], "torch_img_s": tp.get("torch"),
               "ratio": tp["cnngraph"] / tp["torch"] if "torch" in tp else None,
               "cnngraph_gemm_fraction": tp["cnngraph"] * work / 1e9 / peak,
               "torch_gemm_fraction": tp["torch"] * work / 1e9 / peak if "torch" in tp else None,
               "max_rel_diff": agree}
        if memory:
            row["cnngraph_peak_mib"] = _peak_rss_child("cnngraph", case)
            row["torch_peak_mib"] = _peak_rss_child("torch", case) if with_torch else None
        rows.append(row)
        print(format_row(row), flush=True)
    return {"machine": _machine(), "gemm_peak_gflops": peak, "rows": rows}


def _machine() -> str:
    import platform
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{i['internal_api']} {i.get('architecture', '')} x{i['num_threads']}" for i in threadpool_info())
    except ImportError:
        blas = "threadpoolctl not installed"
    from .kernels._onednn import describe
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__} ({blas}); "
            f"convolutions: {describe()}")


HEADER = (f"{'network':<13}{'batch':>6} {'mode':<6}{'cnngraph img/s':>15}{'torch img/s':>13}{'ratio':>7}"
          f"{'GEMM-peak frac':>16}{'peak MiB (cg/torch)':>21}")


def _fmt(v, spec):
    return format(v, spec) if v is not None and v == v else "-"


def format_row(r: dict) -> str:
    frac = f"{_fmt(r['cnngraph_gemm_fraction'], '.2f')}/{_fmt(r.get('torch_gemm_fraction'), '.2f')}"
    mem = f"{_fmt(r.get('cnngraph_peak_mib'), '.0f')}/{_fmt(r.get('torch_peak_mib'), '.0f')}"
    return (f"{r['net']:<13}{r['batch']:>6} {r['mode']:<6}{r['cnngraph_img_s']:>15,.0f}"
            f"{_fmt(r['torch_img_s'], ',.0f'):>13}{_fmt(r['ratio'], '.2f'):>7}{frac:>16}{mem:>21}")


def format_table(result: dict) -> str:
    lines = [f"machine: {result['machine']}", f"NumPy float32 GEMM peak: {result['gemm_peak_gflops']:.0f} GFLOP/s",
             HEADER] + [format_row(r) for r in result["rows"]]
    return "\n".join(lines)


def _case(text: str) -> Case:
    """argparse type of --cases: NET:BATCH:MODE with NET a spec in specs/, BATCH >= 1, MODE train|infer."""
    import argparse
    parts = text.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) < 1 or parts[2] not in ("train", "infer"):
        raise argparse.ArgumentTypeError(f"expected NET:BATCH:MODE (e.g. cifarnet:256:train; BATCH >= 1, "
                                         f"MODE train or infer), found {text!r}")
    if not (SPECS / f"{parts[0]}.yaml").is_file():
        nets = ", ".join(sorted(f.stem for f in SPECS.glob("*.yaml")))
        raise argparse.ArgumentTypeError(f"no network '{parts[0]}' in {SPECS} (there: {nets})")
    return Case(parts[0], int(parts[1]), parts[2])


def main(argv=None) -> int:
    import argparse
    from .commands.common import whole_number
    p = argparse.ArgumentParser(prog="cnngraph bench", description=__doc__.splitlines()[0])
    p.add_argument("--child", nargs=4, metavar=("FRAMEWORK", "NET", "BATCH", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--cases", nargs="*", type=_case, metavar="NET:BATCH:MODE",
                   help="e.g. cifarnet:256:train (default: all)")
    p.add_argument("--rounds", type=whole_number(1), default=3)
    p.add_argument("--min-seconds", type=float, default=0.5)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.child:
        fw, net, batch, mode = args.child
        _child(fw, net, int(batch), mode)
        return 0
    cases = tuple(args.cases) if args.cases else CASES
    print(HEADER, flush=True)
    result = run_benchmarks(cases, args.rounds, args.min_seconds, not args.no_memory)
    print()
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
