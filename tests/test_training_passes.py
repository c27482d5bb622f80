"""Training passes (Model.forward(..., fused=True), what cnngraph.train runs): max_pool2d before the relu that
alone feeds it, and a relu run inside the conv2d or dense layer that alone feeds it. Outputs and gradients must equal the
plain graph's, and the gradients float64 finite differences."""
from __future__ import annotations

import numpy as np
import pytest

import cnngraph
from cnngraph.errors import RunError
from cnngraph.passes import fuse_conv_relu, pool_before_relu, prune

from gradcheck import central_difference

CHAIN = {
    "name": "chain",
    "inputs": {"image": {"shape": [2, 9, 9]}},
    "layers": [
        {"id": "conv1", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"id": "act1", "type": "relu"},                        # fused into conv1
        {"id": "conv2", "type": "conv2d", "out_channels": 5, "kernel_size": 3, "padding": 1},
        {"id": "act2", "type": "relu"},                        # max pool runs first
        {"id": "pool", "type": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
        {"id": "conv3", "type": "conv2d", "out_channels": 3, "kernel_size": 2},
        {"id": "act3", "type": "relu"},                        # read twice: fused, not swapped
        {"id": "pool3", "type": "max_pool2d", "kernel_size": 2},
        {"id": "avg", "type": "avg_pool2d", "kernel_size": 2, "inputs": ["act3"]},
        {"id": "sum", "type": "add", "inputs": ["pool3", "avg"]},
        {"id": "flat", "type": "flatten"},
        {"id": "fc", "type": "dense", "out_features": 6},
        {"id": "act4", "type": "relu"},                        # fused into fc
        {"id": "logits", "type": "dense", "out_features": 3},
    ],
    "outputs": ["logits"],
}


def _run(model, x, gy, fused):
    model.rng = np.random.default_rng(3)
    out = model.forward({"image": x}, training=True, fused=fused)["logits"]
    return out, model.backward({"logits": gy})


def _data(model, n=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *model.spec.inputs["image"].shape)).astype(model.dtype)
    return x, rng.standard_normal((n, model.graph.nodes["logits"]["out_shape"][0])).astype(model.dtype)


@pytest.mark.parametrize("spec", [CHAIN, "specs/lenet5.yaml", "specs/cifarnet.yaml", "specs/digits_cnn.yaml"])
def test_fused_training_gives_the_plain_outputs_and_gradients(spec):
    model = cnngraph.compile(spec, seed=1)
    # negative biases: many windows whose every value the relu zeroes (ties at 0 in the plain max pool)
    for name in model.params:
        if name.endswith(".bias") and name.startswith("conv"):
            model.params[name] = model.params[name] - 0.5
    x, gy = _data(model)
    want_out, want = _run(model, x, gy, fused=False)
    got_out, got = _run(model, x, gy, fused=True)
    np.testing.assert_allclose(got_out, want_out, rtol=1e-6, atol=1e-7)
    seen = {False: [], True: []}
    for fused in seen:
        model.forward({"image": x}, training=True, fused=fused, on_output=lambda node, y: seen[fused].append(node))
    assert seen[True] != seen[False]     # the layers as run: each spec here has a conv2d + relu (+ max_pool2d)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6 * float(np.abs(want[k]).max()), err_msg=k)
    assert all(model.graph.nodes[n]["type"] in ("conv2d", "relu", "max_pool2d", "avg_pool2d", "add", "flatten",
                                                "dense", "dropout", "input") for n in model.graph)   # untouched


@pytest.mark.parametrize("spec", [CHAIN, "specs/digits_cnn.yaml"])
def test_fused_inference_gives_the_plain_outputs(spec):
    """Validation and evaluation run fused too (cnngraph.train.evaluate_arrays)."""
    model = cnngraph.compile(spec, seed=1)
    x, _ = _data(model, n=5)
    seen = []
    got = model.forward({"image": x}, fused=True, on_output=lambda node, y: seen.append(node))["logits"]
    np.testing.assert_allclose(got, model.forward({"image": x})["logits"], rtol=1e-6, atol=1e-7)
    assert "act1" not in seen and "conv1" in seen                     # act1 ran inside conv1
    np.testing.assert_array_equal(model.forward({"image": x}, fused=True, parallel=2)["logits"],
                                  model.forward({"image": x}, parallel=2)["logits"])   # parallel: the plain graph


def test_fused_training_gradients_match_finite_differences():
    model = cnngraph.compile(CHAIN, seed=2, dtype="float64")
    x, gy = _data(model, n=2, seed=5)
    _, grads = _run(model, x, gy, fused=True)

    def objective():
        return float(np.sum(model.forward({"image": x}, training=True, grad=False)["logits"] * gy))

    rng = np.random.default_rng(0)
    for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv3.weight", "fc.weight", "fc.bias"):
        p = model.params[name]
        for idx in map(tuple, rng.integers(0, p.shape, size=(6, p.ndim))):
            assert grads[name][idx] == pytest.approx(central_difference(objective, p, idx), rel=1e-5, abs=1e-7), \
                (name, idx)


def test_training_passes_rewire_only_what_they_may():
    model = cnngraph.compile(CHAIN)
    g = prune(model.graph, ["logits"])
    aliases = {"logits": "logits"}
    assert pool_before_relu(g, aliases) == [("act2", "pool")]
    assert g.nodes["pool"]["inputs"] == ["conv2"] and g.nodes["act2"]["inputs"] == ["pool"]
    assert g.nodes["conv3"]["inputs"] == ["act2"]
    assert g.nodes["act2"]["out_shape"] == g.nodes["pool"]["out_shape"] == (5, 5, 5)
    assert fuse_conv_relu(g, aliases) == [("conv1", "act1"), ("conv3", "act3"), ("fc", "act4")]
    assert g.nodes["conv1"]["type"] == "conv2d+relu" and "act1" not in g and "act3" not in g
    assert g.nodes["fc"]["type"] == "dense+relu" and "act4" not in g
    assert g.nodes["conv2"]["type"] == "conv2d"                          # its relu comes after the pool now
    assert set(g.successors("conv3")) == {"pool3", "avg"}
    assert model.graph.nodes["conv1"]["type"] == "conv2d" and "act1" in model.graph   # the model's graph stays


def test_requested_outputs_and_frozen_layers_are_left_alone():
    model = cnngraph.compile(CHAIN)
    g = prune(model.graph, ["act2", "logits"])
    assert pool_before_relu(g, {"act2": "act2", "logits": "logits"}) == []
    assert pool_before_relu(prune(model.graph, ["pool", "logits"]), {"pool": "pool", "logits": "logits"}) == []
    assert fuse_conv_relu(g, {"act2": "act2", "logits": "logits"}, keep=frozenset({"conv1"})) == [("conv3", "act3"),
                                                                                              ("fc", "act4")]
    x, gy = _data(model)
    model.forward({"image": x}, training=True, fused=True, outputs=["act2", "logits"])
    model.freeze(["conv3"])
    _, got = _run(model, x, gy, fused=True)
    _, want = _run(model, x, gy, fused=False)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_wrt_a_layer_the_passes_changed_is_refused_and_a_fused_relu_is_served():
    model = cnngraph.compile(CHAIN)
    x, gy = _data(model)
    model.forward({"image": x}, training=True)
    want = model.backward({"logits": gy}, wrt=["act1"])["act1"]
    model.forward({"image": x}, training=True, fused=True)
    np.testing.assert_allclose(model.backward({"logits": gy}, wrt=["act1"])["act1"], want, rtol=1e-6, atol=1e-8)
    for layer in ("conv1", "act2", "pool"):
        model.forward({"image": x}, training=True, fused=True)
        with pytest.raises(RunError, match=f"wrt: '{layer}' ran fused with its relu or swapped"):
            model.backward({"logits": gy}, wrt=[layer])
