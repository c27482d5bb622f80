"""Model API: parameters, inputs, backward contract, devices and run-time errors."""
from __future__ import annotations

import numpy as np
import pytest

import cnngraph
from cnngraph import BackendError, RunError

SPEC = {"name": "tiny", "inputs": {"image": {"shape": [1, 6, 6]}},
        "layers": [{"id": "conv", "type": "conv2d", "out_channels": 2, "kernel_size": 3},
                   {"id": "act", "type": "relu"},
                   {"id": "left", "type": "flatten"},
                   {"id": "right", "type": "global_avg_pool2d", "inputs": "act"},
                   {"id": "right_flat", "type": "flatten"},
                   {"id": "both", "type": "concat", "inputs": ["left", "right_flat"]},
                   {"id": "logits", "type": "dense", "out_features": 3}],
        "outputs": ["logits"]}


def test_graph_nodes_carry_op_params_and_shapes():
    model = cnngraph.compile(SPEC)
    node = model.graph.nodes["conv"]
    assert node["type"] == "conv2d" and node["out_shape"] == (2, 4, 4) and node["params"].out_channels == 2
    assert model.graph.nodes["both"]["out_shape"] == (34,)
    assert set(model.graph.predecessors("both")) == {"left", "right_flat"}


def test_params_are_live_and_checked():
    model = cnngraph.compile(SPEC, seed=0)
    assert model.params["conv.weight"].shape == (2, 1, 3, 3)
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    before = model.forward({"image": x})["logits"]
    model.params["logits.bias"] = model.params["logits.bias"] + 1
    np.testing.assert_allclose(model.forward({"image": x})["logits"], before + 1, rtol=1e-6)
    with pytest.raises(ValueError, match=r"has shape \(3,\), the new array has \(4,\)"):
        model.params["logits.bias"] = np.zeros(4)
    with pytest.raises(KeyError, match="no parameter named 'nope'"):
        model.params["nope"] = np.zeros(1)


def test_seeded_initialisation_is_reproducible_and_torch_like():
    a, b = cnngraph.compile(SPEC, seed=5), cnngraph.compile(SPEC, seed=5)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert not np.array_equal(a.params["conv.weight"], cnngraph.compile(SPEC, seed=6).params["conv.weight"])
    w = cnngraph.compile("specs/cifarnet.yaml").params["conv3.weight"]   # fan_in = 32*9: U(±1/sqrt(288))
    assert abs(w).max() <= 1 / np.sqrt(288) and abs(w).max() > 0.9 / np.sqrt(288)


def test_gradient_accumulates_where_a_tensor_feeds_two_layers():
    model = cnngraph.compile(SPEC, dtype="float64")
    x = np.random.default_rng(1).standard_normal((2, 1, 6, 6))
    out = model.forward({"image": x}, training=True)["logits"]
    grads = model.backward({"logits": np.ones_like(out)})
    assert set(grads) == {"conv.weight", "conv.bias", "logits.weight", "logits.bias", "image"}
    eps, flat = 1e-6, model.params["conv.bias"]
    f = lambda: model.forward({"image": x})["logits"].sum()
    flat[0] += eps
    up = f()
    flat[0] -= 2 * eps
    down = f()
    flat[0] += eps
    assert abs((up - down) / (2 * eps) - grads["conv.bias"][0]) < 1e-6


def test_backward_requires_a_recording_forward():
    model = cnngraph.compile(SPEC)
    x = np.zeros((1, 1, 6, 6), np.float32)
    model.forward({"image": x})
    with pytest.raises(RunError, match="backward needs a forward pass with training=True or grad=True"):
        model.backward({"logits": np.zeros((1, 3))})
    model.forward({"image": x}, grad=True)
    with pytest.raises(RunError, match=r"gradient for 'logits' has shape \(2, 3\), the output has \(1, 3\)"):
        model.backward({"logits": np.zeros((2, 3))})


def test_input_errors_are_clear():
    model = cnngraph.compile(SPEC)
    with pytest.raises(RunError, match=r"input 'image' must have shape \(batch, 1, 6, 6\), found \(1, 6, 6\)"):
        model.forward({"image": np.zeros((1, 6, 6))})
    with pytest.raises(RunError, match="missing input 'image'"):
        model.forward({"img": np.zeros((1, 1, 6, 6))})
    assert model.forward(np.zeros((2, 1, 6, 6)))["logits"].shape == (2, 3)   # bare array for one input


def test_intermediate_outputs_and_pruned_plan():
    model = cnngraph.compile(SPEC)
    out = model.forward(np.ones((1, 1, 6, 6)), outputs=["act"])
    assert list(out) == ["act"] and out["act"].shape == (1, 2, 4, 4)
    assert model.plan(["act"]).order == ["conv", "act"]


def test_run_error_names_layer_op_and_shapes():
    class Boom(cnngraph.Op):
        type = "boom_for_test"

        def forward(self, ctx, inputs, params):
            raise ZeroDivisionError("kaboom")
    cnngraph.register_op(Boom)
    spec = {"inputs": {"x": {"shape": [3]}}, "layers": [{"id": "b", "type": "boom_for_test"}], "outputs": ["b"]}
    with pytest.raises(RunError, match=r"while running b \(boom_for_test, plugin '.*'\) on \(2, 3\) at "
                                       r"test_model.py:\d+: ZeroDivisionError: kaboom"):
        cnngraph.compile(spec).forward({"x": np.zeros((2, 3))})


def test_cuda_without_cupy_fails_clearly():
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendError, match=r"device 'cuda' needs CuPy.*pip install 'cnngraph\[gpu\]'"):
        cnngraph.compile(SPEC, device="cuda")
    with pytest.raises(BackendError, match="unknown device 'tpu'"):
        cnngraph.compile(SPEC, device="tpu")


def test_int_targets_and_loss_in_graph():
    spec = {"inputs": {"x": {"shape": [4]}, "y": {"shape": [], "dtype": "int64"}},
            "layers": [{"id": "fc", "type": "dense", "out_features": 3, "inputs": "x"},
                       {"id": "loss", "type": "cross_entropy", "inputs": ["fc", "y"]}],
            "outputs": ["loss", "fc"]}
    model = cnngraph.compile(spec, dtype="float64")
    out = model.forward({"x": np.ones((5, 4)), "y": np.array([0, 1, 2, 0, 1])}, training=True)
    assert out["loss"].shape == ()
    grads = model.backward({"loss": np.array(1.0)})
    assert set(grads) == {"fc.weight", "fc.bias", "x"}   # integer targets get no gradient


def test_probability_targets_pass_their_gradient_upstream_as_in_torch():
    """Distillation: the soft targets come from a trainable teacher, which must get a gradient too."""
    torch = pytest.importorskip("torch")
    spec = {"inputs": {"x": {"shape": [4]}},
            "layers": [{"id": "student", "type": "dense", "out_features": 3, "inputs": "x"},
                       {"id": "teacher", "type": "dense", "out_features": 3, "inputs": "x"},
                       {"id": "soft", "type": "softmax", "inputs": "teacher"},
                       {"id": "loss", "type": "cross_entropy", "label_smoothing": 0.1, "inputs": ["student", "soft"]}],
            "outputs": ["loss"]}
    model = cnngraph.compile(spec, dtype="float64", seed=2)
    x = np.random.default_rng(0).standard_normal((6, 4))
    model.forward({"x": x}, training=True)
    grads = model.backward({"loss": np.array(1.0)})
    tp = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in model.params.items()}
    tx = torch.tensor(x)
    soft = torch.softmax(tx @ tp["teacher.weight"].T + tp["teacher.bias"], 1)
    torch.nn.functional.cross_entropy(tx @ tp["student.weight"].T + tp["student.bias"], soft,
                                      label_smoothing=0.1).backward()
    for name, t in tp.items():
        assert np.abs(t.grad.numpy()).max() > 1e-5, name   # not trivially zero
        np.testing.assert_allclose(grads[name], t.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_backward_with_wrong_parameter_gradient_names_names_the_plugin():
    class Misnamed(cnngraph.Op):
        type = "misnamed_grad_for_test"

        def init_params(self, in_shapes, rng):
            return {"w": np.ones(in_shapes[0], np.float32)}

        def forward(self, ctx, inputs, params):
            ctx.save(x=inputs[0])
            return inputs[0] * params["w"]

        def backward(self, ctx, gy):
            return [gy], {"ww": gy.sum(axis=0)}
    cnngraph.register_op(Misnamed)
    spec = {"inputs": {"x": {"shape": [3]}}, "layers": [{"id": "m", "type": "misnamed_grad_for_test"}],
            "outputs": ["m"]}
    model = cnngraph.compile(spec)
    out = model.forward({"x": np.ones((2, 3))}, training=True)["m"]
    with pytest.raises(cnngraph.PluginError, match=r"op 'misnamed_grad_for_test' \(plugin '.*'\) returned parameter "
                                                   r"gradients \['ww'\] .* layer 'm', expected exactly \['w'\]"):
        model.backward({"m": np.ones_like(out)})


def test_backward_returning_none_for_a_needed_input_gradient_is_an_error_not_a_zero():
    """A None gradient would silently stop every layer upstream from learning."""
    class NoGrad(cnngraph.Op):
        type = "no_grad_for_test"

        def forward(self, ctx, inputs, params):
            return inputs[0] * 2

        def backward(self, ctx, gy):
            return [None], {}
    cnngraph.register_op(NoGrad)
    spec = {"inputs": {"x": {"shape": [3]}}, "layers": [{"id": "fc", "type": "dense", "out_features": 3},
                                                        {"id": "m", "type": "no_grad_for_test"}], "outputs": ["m"]}
    model = cnngraph.compile(spec)
    out = model.forward({"x": np.ones((2, 3), np.float32)}, training=True, grad=True)["m"]
    with pytest.raises(cnngraph.PluginError, match=r"op 'no_grad_for_test' \(plugin '.*'\) returned no gradient "
                                                   r"\(None\) for input 0 \('fc'\) from backward at layer 'm'"):
        model.backward({"m": np.ones_like(out)})


def test_allocator_tuning_is_applied_on_glibc_and_can_be_turned_off():
    import os
    import subprocess
    import sys
    code = "import cnngraph; from cnngraph import backend; cnngraph.compile('specs/lenet5.yaml'); print(backend._TUNED)"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "CNNGRAPH_MALLOC_TUNING": "0"}).stdout.strip()
    assert off == "False"
    if sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION"):
        assert on == "True"


def test_loss_and_grad_on_plain_arrays_matches_torch():
    """For hand-written loops whose spec has no loss layer: the value and d/d(prediction) of any loss op."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4))
    labels, soft = rng.integers(0, 4, 5), rng.random((5, 4))
    cases = [("cross_entropy", labels, {"label_smoothing": 0.1},
              lambda t: F.cross_entropy(t, torch.tensor(labels), label_smoothing=0.1)),
             ("cross_entropy", soft, {}, lambda t: F.cross_entropy(t, torch.tensor(soft))),
             ("binary_cross_entropy", soft > 0.5, {"reduction": "sum"},
              lambda t: F.binary_cross_entropy_with_logits(t, torch.tensor((soft > 0.5) * 1.0), reduction="sum")),
             ("mse", soft, {}, lambda t: F.mse_loss(t, torch.tensor(soft)))]
    for kind, target, params, ref in cases:
        value, grad = cnngraph.loss_and_grad(kind, x, target, **params)
        t = torch.tensor(x, requires_grad=True)
        want = ref(t)
        want.backward()
        assert abs(value - want.item()) < 1e-12, kind
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-14, err_msg=kind)
    with pytest.raises(cnngraph.CnnGraphError, match="unknown loss 'crossentropy' \\(did you mean 'cross_entropy'"):
        cnngraph.loss_and_grad("crossentropy", x, labels)
