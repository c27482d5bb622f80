"""Relu fusion in training (Model.forward(..., fuse=True), used by cnngraph.train): the same outputs
and gradients as the plain graph, bit for bit; the plain graph is checked against PyTorch elsewhere."""
from __future__ import annotations

import numpy as np
import pytest

import cnngraph
from cnngraph.errors import RunError
from cnngraph.kernels import conv2d_backward, conv2d_forward

# Every conv kernel path is covered: flat columns (digits, lenet5 conv1), exact columns with a
# stride (STRIDED), the transposed backward from gy's columns (cifarnet), 1x1 convs, the generic
# grouped path, add+relu (resnet_small) and dense+relu.
STRIDED = {
    "name": "strided", "inputs": {"image": {"shape": [3, 12, 12]}},
    "layers": [
        {"id": "c1", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1},
        {"id": "r1", "type": "relu"},
        {"id": "c2", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1, "groups": 2},
        {"id": "r2", "type": "relu"},
        {"id": "c3", "type": "conv2d", "out_channels": 6, "kernel_size": 1},
        {"id": "r3", "type": "relu"},
        {"id": "lr", "type": "leaky_relu"},
        {"id": "flat", "type": "flatten"},
        {"id": "fc", "type": "dense", "out_features": 5},
    ],
    "outputs": ["fc"],
}
SPECS = ["specs/digits_cnn.yaml", "specs/lenet5.yaml", "specs/cifarnet.yaml", "specs/resnet_small.yaml",
         "specs/inception_small.yaml", STRIDED]


def _step(model, x, fuse):
    name, out = next(iter(model.spec.inputs)), model.spec.outputs[0]
    model.rng = np.random.default_rng(7)              # the same dropout masks both times
    y = model.forward({name: x}, training=True, fuse=fuse)[out]
    gy = np.random.default_rng(3).standard_normal(y.shape)
    return y, model.backward({out: gy})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s if isinstance(s, str) else s["name"])
def test_fused_training_step_equals_plain(spec, dtype):
    model = cnngraph.compile(spec, seed=2, dtype=dtype)
    shape = next(iter(model.spec.inputs.values())).shape
    x = np.random.default_rng(1).standard_normal((5, *shape)).astype(dtype)
    y0, g0 = _step(model, x, fuse=False)
    y1, g1 = _step(model, x, fuse=True)
    assert model._fused_plans[()][2], "expected relus to fuse"
    np.testing.assert_array_equal(y1, y0)
    assert g1.keys() == g0.keys()
    for name in g0:
        np.testing.assert_array_equal(g1[name], g0[name], err_msg=name)


def test_what_fuses():
    model = cnngraph.compile(STRIDED)
    fused = model._fused_plan(None)[2]
    # c1/c2/c3 each alone feed a relu; the leaky_relu is not fused in training
    assert fused == {"c1": "r1", "c2": "r2", "c3": "r3"}
    assert model.graph.nodes["c1"]["type"] == "conv2d", "the model's own graph is left alone"


def test_a_requested_relu_output_is_not_fused():
    model = cnngraph.compile("specs/digits_cnn.yaml")
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    out = model.forward({"image": x}, training=True, outputs=["act1", "logits"], fuse=True)
    assert set(out) == {"act1", "logits"} and (out["act1"] >= 0).all()
    assert "act1" not in model._fused_plans[("act1", "logits")][2].values()
    grads = model.backward({"logits": np.ones((2, 10), np.float32)}, wrt=["act1"])
    assert grads["act1"].shape == (2, 16, 8, 8)


@pytest.mark.parametrize("name", ["act1", "conv1"])
def test_wrt_a_fused_layer_is_refused_with_advice(name):
    model = cnngraph.compile("specs/digits_cnn.yaml")
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    model.forward({"image": x}, training=True, fuse=True)
    with pytest.raises(RunError, match="fuse"):
        model.backward({"logits": np.ones((2, 10), np.float32)}, wrt=[name])


def test_hooks_see_every_layer_and_no_fusion():
    model = cnngraph.compile("specs/digits_cnn.yaml")
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    seen = []
    model.forward({"image": x}, training=True, fuse=True, on_output=lambda node, y: seen.append(node))
    assert "act1" in seen and "conv1" in seen


@pytest.mark.parametrize("C,O,k,stride,pad,groups,size", [
    (4, 6, 3, 1, 1, 1, 6),      # flat columns
    (3, 8, 3, 2, 1, 1, 9),      # exact columns
    (8, 8, 3, 1, 1, 1, 12),     # transposed backward (output wider than 8)
    (4, 8, 3, 1, 1, 2, 6),      # generic grouped path
])
def test_conv_backward_with_relu_out_masks_gy(C, O, k, stride, pad, groups, size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, C, size, size))
    w = rng.standard_normal((O, C // groups, k, k))
    b = rng.standard_normal(O)
    args = ((stride, stride), (pad,) * 4, (1, 1), groups)
    y, saved = conv2d_forward(x, w, b, *args, save=True, relu=True)
    assert (y >= 0).all() and (y == 0).any()
    gy = rng.standard_normal(y.shape)
    fused = conv2d_backward(gy, saved, relu_out=y)
    _, saved = conv2d_forward(x, w, b, *args, save=True)
    plain = conv2d_backward(gy * (y > 0), saved)
    for got, want in zip(fused, plain):
        np.testing.assert_array_equal(got, want)
