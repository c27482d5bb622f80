"""cnngraph-contrib ops against PyTorch (forward and autograd) and through a whole cnngraph model."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import cnngraph  # noqa: E402
from cnngraph.conformance import check_op  # noqa: E402
from cnngraph.op import Context  # noqa: E402

import cnngraph_contrib as contrib  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _registered():
    """Registered through the entry point when installed; otherwise register the module directly."""
    reg = cnngraph.get_registry()
    if "swish" not in reg.ops:
        cnngraph.register_plugin(contrib, name="contrib")
    return reg


def run_op(op_cls, params: dict, x: np.ndarray, weights: dict | None = None, gy: np.ndarray | None = None):
    op = op_cls(op_cls.Params(**params))
    ctx = Context(training=True, grad=True)
    y = op.forward(ctx, [x], weights or {})
    gy = np.ones_like(y) if gy is None else gy
    (dx,), pgrads = op.backward(ctx, gy)
    return y, dx, pgrads


def torch_grad(fn, x: np.ndarray, gy: np.ndarray, *extra):
    tx = torch.tensor(x, requires_grad=True)
    textra = [torch.tensor(e, requires_grad=True) for e in extra]
    y = fn(tx, *textra)
    y.backward(torch.tensor(gy))
    return y.detach().numpy(), tx.grad.numpy(), [t.grad.numpy() for t in textra]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,op_cls,params,ref", [
    ("swish", contrib.Swish, {}, F.silu),
    ("swish beta", contrib.Swish, {"beta": 1.7}, lambda t: t * torch.sigmoid(1.7 * t)),
    ("mish", contrib.Mish, {}, F.mish),
    ("hard_swish", contrib.HardSwish, {}, F.hardswish),
])
def test_activation_matches_torch(name, op_cls, params, ref, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 3, 5, 5)) * 4).astype(dtype)   # covers both sides of hard_swish's kinks
    x[0, 0, 0, :4] = [-30.0, 30.0, -3.5, 3.5]                    # saturated regions
    gy = rng.standard_normal(x.shape).astype(dtype)
    y, dx, _ = run_op(op_cls, params, x, gy=gy)
    ty, tdx, _ = torch_grad(ref, x, gy)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(y, ty, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, tdx, rtol=tol * 10, atol=tol * 10)


def test_swish_beta_zero_is_half_identity():
    x = np.linspace(-3, 3, 7)[None]
    y, dx, _ = run_op(contrib.Swish, {"beta": 0.0}, x)
    np.testing.assert_allclose(y, x / 2)
    np.testing.assert_allclose(dx, np.full_like(x, 0.5))


def torch_se(x, w1, b1, w2, b2):
    s = x.mean(dim=(2, 3))
    g = torch.sigmoid(F.linear(F.relu(F.linear(s, w1, b1)), w2, b2))
    return x * g[:, :, None, None]


@pytest.mark.parametrize("reduction,shape", [(4, (3, 8, 5, 6)), (2, (2, 6, 3, 3)), (16, (2, 3, 4, 4))])
def test_squeeze_excitation_matches_torch(reduction, shape):
    rng = np.random.default_rng(1)
    op = contrib.SqueezeExcitation(contrib.SEParams(reduction=reduction))
    w = {k: v.astype(np.float64) for k, v in op.init_params([shape[1:]], rng).items()}
    w = {k: v + 0.2 * rng.standard_normal(v.shape) for k, v in w.items()}   # non-zero biases, some dead units
    assert w["w1"].shape == (max(1, shape[1] // reduction), shape[1])
    x = rng.standard_normal(shape)
    gy = rng.standard_normal(shape)
    y, dx, pg = run_op(contrib.SqueezeExcitation, {"reduction": reduction}, x, w, gy)
    ty, tdx, (tw1, tb1, tw2, tb2) = torch_grad(torch_se, x, gy, w["w1"], w["b1"], w["w2"], w["b2"])
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, tdx, rtol=1e-10, atol=1e-12)
    for name, ref in zip(("w1", "b1", "w2", "b2"), (tw1, tb1, tw2, tb2)):
        np.testing.assert_allclose(pg[name], ref, rtol=1e-10, atol=1e-12, err_msg=name)


def test_squeeze_excitation_rejects_flat_input():
    spec = {"inputs": {"x": {"shape": [8]}}, "layers": [{"id": "se", "type": "squeeze_excitation"}],
            "outputs": ["se"]}
    with pytest.raises(cnngraph.SpecError, match=r"expects a \(C, H, W\) input"):
        cnngraph.load_spec(spec)


@pytest.mark.parametrize("name", ["swish", "mish", "hard_swish", "squeeze_excitation"])
def test_conformance_suite_passes(name):
    results = check_op(name)
    failed = [r.line() for r in results if r.ok is False]
    assert not failed, "\n".join(failed)
    assert any(r.check.startswith("gradient") and r.ok for r in results)


def test_model_with_contrib_ops_trains_one_step_like_torch():
    """A small network using every contrib op: forward and parameter gradients match torch."""
    spec = cnngraph.load_spec({
        "inputs": {"x": {"shape": [4, 6, 6]}},
        "layers": [
            {"id": "c", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
            {"id": "a1", "type": "swish", "beta": 1.3},
            {"id": "se", "type": "squeeze_excitation", "reduction": 4},
            {"id": "a2", "type": "mish"},
            {"id": "a3", "type": "hard_swish"},
            {"id": "gap", "type": "global_avg_pool2d"},
            {"id": "flat", "type": "flatten"},
        ],
        "outputs": ["flat"]})
    model = cnngraph.compile(spec, dtype="float64", seed=3)
    assert model.graph.nodes["se"]["plugin"] == "contrib"
    x = np.random.default_rng(2).standard_normal((2, 4, 6, 6))
    y = model.forward({"x": x}, training=True, grad=True)["flat"]
    grads = model.backward({"flat": np.ones_like(y)})
    p = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.numpy().items()}
    t = F.conv2d(torch.tensor(x), p["c.weight"], p["c.bias"], padding=1)
    t = t * torch.sigmoid(1.3 * t)
    t = torch_se(t, p["se.w1"], p["se.b1"], p["se.w2"], p["se.b2"])
    t = F.hardswish(F.mish(t)).mean(dim=(2, 3))
    t.sum().backward()
    np.testing.assert_allclose(y, t.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name in ("c.weight", "se.w1", "se.b2"):
        np.testing.assert_allclose(grads[name], p[name].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_contrib_ops_export_to_onnx_and_run_in_onnxruntime(opset, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from cnngraph.onnx import export_onnx
    spec = {"inputs": {"x": {"shape": [8, 5, 5]}},
            "layers": [{"id": "a", "type": "swish"}, {"id": "b", "type": "swish", "beta": 1.7},
                       {"id": "c", "type": "mish"}, {"id": "d", "type": "hard_swish"},
                       {"id": "se", "type": "squeeze_excitation", "reduction": 2}],
            "outputs": ["se"]}
    model = cnngraph.compile(spec, seed=3)
    x = (np.random.default_rng(0).standard_normal((3, 8, 5, 5)) * 3).astype(np.float32)
    path = tmp_path / "contrib.onnx"
    export_onnx(model, path, opset=opset)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, model.forward({"x": x})["se"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opset,types", [(18, ["mish"]), (17, ["mish"])])
def test_mish_export_imports_back(opset, types, tmp_path):
    """Opset 18's Mish node imports as mish (the handler this package registers); below 18 the gated
    Softplus → Tanh → Mul chain is fused back into one mish by the importer (cnngraph/onnx/patterns.py)."""
    pytest.importorskip("onnxruntime")
    from cnngraph.onnx import export_onnx, import_onnx
    model = cnngraph.compile({"inputs": {"x": {"shape": [3, 4, 4]}}, "layers": [{"id": "m", "type": "mish"}],
                              "outputs": ["m"]})
    path = tmp_path / "mish.onnx"
    export_onnx(model, path, opset=opset)
    back = import_onnx(path)
    assert [layer["type"] for layer in back.import_result.spec["layers"]] == types
    x = (np.random.default_rng(1).standard_normal((2, 3, 4, 4)) * 4).astype(np.float32)
    np.testing.assert_allclose(back.forward({"x": x})["m"], model.forward({"x": x})["m"], rtol=1e-5, atol=1e-6)


def test_squeeze_excitation_sees_the_whole_map_in_summary():
    from cnngraph.summary import receptive_fields
    spec = cnngraph.load_spec({"inputs": {"x": {"shape": [4, 16, 12]}},
                               "layers": [{"id": "c", "type": "conv2d", "out_channels": 8, "kernel_size": 3,
                                           "padding": 1},
                                          {"id": "se", "type": "squeeze_excitation"}], "outputs": ["se"]})
    assert receptive_fields(spec.graph)["se"] == "global"   # the pooled gate: like global pooling
