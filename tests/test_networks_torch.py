"""Whole networks against PyTorch autograd: outputs and every gradient, float32 vs a float64 reference."""
from __future__ import annotations

import glob

import numpy as np
import pytest

import cnngraph

torch = pytest.importorskip("torch")
from cnngraph.torchref import torch_graph  # noqa: E402

DEPTHWISE = {
    "name": "depthwise_separable",
    "inputs": {"image": {"shape": [3, 17, 17]}},
    "layers": [
        {"id": "stem", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1},
        {"id": "stem_act", "type": "relu"},
        {"id": "dw", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "groups": 8, "dilation": 2,
         "padding": 2, "bias": False},
        {"id": "dw_bn", "type": "batch_norm2d"},
        {"id": "dw_act", "type": "leaky_relu"},
        {"id": "pw", "type": "conv2d", "out_channels": 16, "kernel_size": 1},
        {"id": "pw_act", "type": "gelu"},
        {"id": "dw2", "type": "conv2d", "out_channels": 16, "kernel_size": 3, "groups": 16, "stride": 2},
        {"id": "pool", "type": "avg_pool2d", "kernel_size": 2, "ceil_mode": True},
        {"id": "flat", "type": "flatten"},
        {"id": "logits", "type": "dense", "out_features": 5},
    ],
    "outputs": ["logits"],
}

NETWORKS = {
    "lenet5": ("specs/lenet5.yaml", True),
    "resnet_small": ("specs/resnet_small.yaml", True),
    "inception_small": ("specs/inception_small.yaml", False),   # has dropout: compare in inference mode
    "depthwise_separable": (DEPTHWISE, True),
    "digits_segmentation": ("specs/digits_segmentation.yaml", True),   # per-pixel logits, upsampling, skip
}


def _close(ours, ref, name, rtol=1e-4):
    ref = ref.detach().numpy()
    scale = max(float(np.abs(ref).max()), 1e-6)
    err = float(np.abs(np.asarray(ours, np.float64) - ref).max())
    assert err <= rtol * scale, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("net", sorted(NETWORKS))
def test_network_forward_and_gradients_match_torch(net):
    source, training = NETWORKS[net]
    model = cnngraph.compile(source, seed=3)
    rng = np.random.default_rng(0)
    name, spec_in = next(iter(model.spec.inputs.items()))
    x = rng.standard_normal((4, *spec_in.shape)).astype(np.float32)
    out = model.forward({name: x}, training=training, grad=True)["logits"]
    g = rng.standard_normal(out.shape).astype(np.float32)
    grads = model.backward({"logits": g})

    ref_out, leaves, inputs = torch_graph(model, {name: x}, training=training)
    _close(out, ref_out["logits"], "logits")
    ref_out["logits"].backward(torch.from_numpy(g.astype(np.float64)))
    for pname in model.trainable_names:
        _close(grads[pname], leaves[pname].grad, pname)
    _close(grads[name], inputs[name].grad, name)
    assert set(grads) == set(model.trainable_names) | {name}


@pytest.mark.parametrize("path", sorted(glob.glob("specs/*.yaml")))
def test_shape_inference_agrees_with_forward(path):
    model = cnngraph.compile(path)
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((2, *s.shape)).astype(np.float32) for n, s in model.spec.inputs.items()}
    seen = {}
    model.forward(feeds, training=True, on_output=lambda node, y: seen.__setitem__(node, y.shape))
    for node, shape in seen.items():
        assert shape[1:] == model.graph.nodes[node]["out_shape"], node
    assert set(seen) == {layer.id for layer in model.spec.layers}


def test_torchnet_updates_its_running_statistics_like_cnngraph():
    """The benchmark's PyTorch twin must do the same work as cnngraph in training, buffers included."""
    from cnngraph.torchref import TorchNet
    spec = {"inputs": {"x": {"shape": [3, 5, 5]}},
            "layers": [{"id": "conv", "type": "conv2d", "out_channels": 4, "kernel_size": 3},
                       {"id": "bn", "type": "batch_norm2d", "momentum": 0.3}], "outputs": ["bn"]}
    model = cnngraph.compile(spec, seed=0)
    net = TorchNet(model).train()
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((4, 3, 5, 5)).astype(np.float32)
        model.forward({"x": x}, training=True)
        net(torch.from_numpy(x))
    for k in ("bn.running_mean", "bn.running_var"):
        np.testing.assert_allclose(net.state[k].numpy(), model.params[k], rtol=1e-5, atol=1e-6)
    assert np.abs(net.state["bn.running_mean"].numpy()).min() > 0   # moved from its initial zeros
