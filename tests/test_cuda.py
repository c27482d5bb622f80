"""The CuPy path on a real GPU: every op, whole networks, training, checkpoints and the CLI.

Skipped without CuPy and a CUDA device (CI has neither). Each result on the GPU is compared with the
same computation on the CPU in float64 (itself checked against PyTorch and finite differences by the
CPU tests), so a GPU-only mistake — a NumPy call on a CuPy array, a host round trip, a kernel that
differs — shows up here.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

cp = pytest.importorskip("cupy")
try:
    if cp.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("no CUDA device", allow_module_level=True)
except Exception as exc:  # noqa: BLE001 - any CUDA failure means there is no usable GPU
    pytest.skip(f"no usable CUDA device ({exc})", allow_module_level=True)

import cnngraph  # noqa: E402
from cnngraph.backend import to_numpy  # noqa: E402
from cnngraph.conformance import _Case, examples_for  # noqa: E402
from cnngraph.registry import get_registry  # noqa: E402

NETWORKS = ["specs/lenet5.yaml", "specs/resnet_small.yaml", "specs/inception_small.yaml",
            "specs/cifarnet.yaml", "specs/digits_cnn.yaml", "specs/examples/volumes3d.yaml"]


def _close(gpu, cpu, what, rtol=1e-9, floor=1e-12):
    assert isinstance(gpu, cp.ndarray), f"{what}: the GPU path returned {type(gpu).__name__}, not a CuPy array"
    got, want = to_numpy(gpu), np.asarray(cpu)
    assert got.shape == want.shape, f"{what}: shape {got.shape} on the GPU, {want.shape} on the CPU"
    scale = max(float(np.abs(want).max(initial=0.0)), floor)
    err = float(np.abs(got.astype(np.float64) - want).max(initial=0.0))
    assert err <= rtol * scale, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def _op_cases():
    reg = get_registry()
    for name in sorted(reg.ops):
        cls = reg.op(name)
        examples, _ = examples_for(cls)
        for k, (params, samples) in enumerate(examples):
            yield pytest.param(name, k, params, samples, id=f"{name}#{k + 1}")


@pytest.mark.parametrize("name,k,params,samples", list(_op_cases()))
def test_op_on_gpu_matches_cpu(name, k, params, samples):
    cls = get_registry().op(name)
    case = _Case(cls, params, samples, seed=17 * k, label=f"#{k + 1}")
    case.out_shape = tuple(case.op.infer_shape([tuple(s) for s in case.shapes]))
    init = case.op.init_params([tuple(s) for s in case.shapes], np.random.default_rng(3)) or {}
    rng = np.random.default_rng(5)
    params64 = {k_: (v.astype(np.float64) if k_ in case.buffers else v + 0.1 * rng.standard_normal(v.shape))
                for k_, v in init.items()}
    for training in (False, True):   # dropout draws its mask from ctx.rng (NumPy) on both devices
        ctx_c, y_c = case.forward(case.xs, params64, training, grad=True)
        xs_g = [cp.asarray(x) for x in case.xs]
        ctx_g, y_g = case.forward(xs_g, {k_: cp.asarray(v) for k_, v in params64.items()}, training, grad=True)
        _close(y_g, y_c, f"{name} forward ({'training' if training else 'inference'})")
        gy = np.random.default_rng(7).standard_normal(np.shape(y_c))
        gx_c, gp_c = case.backward(ctx_c, gy)
        gx_g, gp_g = case.backward(ctx_g, cp.asarray(gy))
        for i, (a, b) in enumerate(zip(gx_g, gx_c)):
            if b is not None:
                _close(a, b, f"{name} grad input {i}")
        for p in gp_c:
            _close(gp_g[p], gp_c[p], f"{name} grad {p}")


@pytest.mark.parametrize("spec", NETWORKS)
def test_network_on_gpu_matches_cpu(spec):
    cpu = cnngraph.compile(spec, seed=2, dtype="float64")
    gpu = cnngraph.compile(spec, seed=2, dtype="float64", device="cuda")
    name, spec_in = next(iter(cpu.spec.inputs.items()))
    x = np.random.default_rng(0).standard_normal((3, *spec_in.shape))
    out_c = cpu.forward({name: x}, training=True, grad=True)
    out_g = gpu.forward({name: cp.asarray(x)}, training=True, grad=True)
    gys = {k: np.random.default_rng(1).standard_normal(v.shape) for k, v in out_c.items()}
    for k in out_c:
        _close(out_g[k], out_c[k], f"{spec} output {k}")
    g_c = cpu.backward(gys)
    g_g = gpu.backward(gys)
    assert set(g_c) == set(g_g)
    # a conv bias right before batch norm has a gradient of exactly 0 in theory (1e-17 in rounding): compare each
    # gradient on the scale of the largest one
    largest = max(float(np.abs(g).max(initial=0.0)) for g in g_c.values())
    for k in g_c:
        _close(g_g[k], g_c[k], f"{spec} gradient {k}", rtol=1e-8, floor=1e-6 * largest)


@pytest.mark.parametrize("spec", ["specs/resnet_small.yaml", "specs/cifarnet.yaml"])
def test_inference_passes_on_gpu_match_cpu(spec):
    """Folded batch norm, fused relu and residual adds (resnet_small), max pools fused into the conv (cifarnet)."""
    from cnngraph.passes import optimize_for_inference
    cpu = cnngraph.compile(spec, seed=4)
    gpu = cnngraph.compile(spec, seed=4, device="cuda")
    x = np.random.default_rng(0).standard_normal((8, *cpu.spec.inputs["image"].shape)).astype(np.float32)
    want = cpu.forward({"image": x})["logits"]
    fast = optimize_for_inference(gpu)
    assert fast.report["pooled"] or fast.report["residual"]
    _close(fast.forward({"image": x})["logits"], want, f"{spec} optimised inference", rtol=1e-4)


def test_training_on_gpu_learns_and_checkpoint_loads_on_cpu(tmp_path):
    hist = cnngraph.train("specs/digits_cnn.yaml", epochs=8, device="cuda", out=tmp_path / "run", quiet=True)
    assert hist.test["test_accuracy"] >= 0.95, hist.test     # the CPU reaches 0.9867 in 8 epochs
    gpu_model = cnngraph.load_model(tmp_path / "run" / "checkpoint" / "best", device="cuda")
    cpu_model = cnngraph.load_model(tmp_path / "run" / "checkpoint" / "best")
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    _close(gpu_model.forward({"image": x})["logits"], cpu_model.forward({"image": x})["logits"],
           "checkpoint on GPU vs CPU", rtol=1e-4)


def test_gpu_and_cpu_training_agree(tmp_path):
    """Two epochs on each device from the same seed end at nearly the same weights (float32 sums differ)."""
    runs = {}
    for device in ("cpu", "cuda"):
        cnngraph.train("specs/digits_cnn.yaml", epochs=2, device=device, out=tmp_path / device, quiet=True)
        runs[device] = cnngraph.load_model(tmp_path / device / "checkpoint" / "last")
    for name, p in runs["cpu"].params.items():
        q = runs["cuda"].params[name]
        err = float(np.abs(to_numpy(q) - to_numpy(p)).max())
        assert err <= 1e-3 * max(float(np.abs(to_numpy(p)).max()), 1e-6), f"{name}: {err:.3g}"


@pytest.mark.parametrize("kind", ["segmentation", "regression"])
def test_segmentation_and_regression_training_on_gpu_agree_with_cpu(tmp_path, kind):
    """Per-pixel cross-entropy with class weights and void pixels, and an mse regression, on both devices."""
    rng = np.random.default_rng(0)
    x = rng.random((64, 1, 8, 8)).astype(np.float32)
    if kind == "segmentation":
        y = (x[:, 0] > 0.5).astype(np.int64) + (x[:, 0] > 0.8)
        y[:, 0, 0] = 255
        out, loss = 3, {"type": "cross_entropy", "output": "logits", "weight": [0.5, 1.0, 2.0], "ignore_index": 255}
        layers = [{"id": "c", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
                  {"id": "a", "type": "relu"}, {"id": "logits", "type": "conv2d", "out_channels": out, "kernel_size": 1}]
    else:
        y = x.mean(axis=(1, 2, 3))[:, None] + np.float32(0.01) * rng.random((64, 1), np.float32)
        loss = {"type": "mse", "output": "logits"}
        layers = [{"id": "flat", "type": "flatten"}, {"id": "h", "type": "dense", "out_features": 8},
                  {"id": "a", "type": "relu"}, {"id": "logits", "type": "dense", "out_features": 1}]
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = {"name": kind, "inputs": {"image": {"shape": [1, 8, 8]}}, "layers": layers, "outputs": ["logits"],
            "train": {"data": {"dataset": "npz", "path": str(tmp_path / "d.npz"), "test_fraction": 0.25},
                      "loss": loss, "optimizer": {"type": "adam", "lr": 0.01}, "batch_size": 16, "epochs": 2}}
    tests = {}
    for device in ("cpu", "cuda"):
        tests[device] = cnngraph.train(spec, device=device, out=tmp_path / device, quiet=True).test
    key = "test_mean_iou" if kind == "segmentation" else "test_mae"
    assert tests["cuda"][key] == pytest.approx(tests["cpu"][key], rel=1e-3, abs=1e-4), tests
    assert tests["cuda"]["test_loss"] == pytest.approx(tests["cpu"]["test_loss"], rel=1e-3)


def test_cli_train_and_run_on_cuda(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "cnngraph.cli", "train", "specs/digits_cnn.yaml", "--device", "cuda",
                        "--epochs", "5", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.9      # the CPU reaches 0.9156 in 5 epochs
    r = subprocess.run([sys.executable, "-m", "cnngraph.cli", "evaluate", "specs/digits_cnn.yaml", "--checkpoint",
                        str(out / "checkpoint" / "best"), "--device", "cuda"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32))
    r = subprocess.run([sys.executable, "-m", "cnngraph.cli", "predict", "specs/digits_cnn.yaml", "--checkpoint",
                        str(out / "checkpoint" / "best"), "--device", "cuda", str(tmp_path / "x.npy")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    np.save(tmp_path / "img.npy", np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32))
    r = subprocess.run([sys.executable, "-m", "cnngraph.cli", "run", "specs/resnet_small.yaml", "--device", "cuda",
                        "--input", str(tmp_path / "img.npy"), "--profile"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_onnx_import_runs_on_gpu(tmp_path):
    pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")
    from cnngraph.onnx import import_onnx
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 4)).eval()
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    model = import_onnx(path, device="cuda")
    got = model.forward({"x": cp.asarray(x.numpy())})["y"]
    _close(got, net(x).detach().numpy().astype(np.float64), "onnx import on GPU", rtol=1e-4)
