"""3-D windows on (C, D, H, W) volumes (plugins/window3d.py): PyTorch's tie and NaN rules for max_pool3d, the
parameter forms and shape errors, receptive fields per axis, threads, and a C3D-style network against PyTorch.
(Forward and gradient parity of each op with torch in float64 and finite differences: tests/test_ops.py.)"""
from __future__ import annotations

import numpy as np
import pytest

import cnngraph
from cnngraph.commands.summary_format import format_summary
from cnngraph.summary import receptive_fields, summarize
from gradcheck import one_layer_spec

torch = pytest.importorskip("torch")
F = torch.nn.functional
SPEC = "specs/examples/volumes3d.yaml"


@pytest.mark.parametrize("layer,pool", [
    ({"type": "max_pool3d", "kernel_size": 2}, lambda x: F.max_pool3d(x, 2)),
    ({"type": "max_pool3d", "kernel_size": 3, "stride": 2, "padding": 1}, lambda x: F.max_pool3d(x, 3, 2, 1)),
    ({"type": "max_pool3d", "kernel_size": [2, 3, 2], "stride": 1, "dilation": [2, 1, 1], "ceil_mode": True},
     lambda x: F.max_pool3d(x, (2, 3, 2), 1, 0, (2, 1, 1), ceil_mode=True)),
], ids=["tiled", "padded", "dilated_ceil"])
@pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])
def test_max_pool3d_breaks_ties_and_propagates_nan_as_torch(layer, pool, grad):
    """Integer volumes (ties in nearly every window) with NaNs: the same values, and every gradient routed to the
    same position as torch's (its first maximum in (d, h, w) order; the last NaN)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (2, 3, 5, 6, 5)).astype(np.float64)
    x[0, 0, 1, 1, 1] = x[1, 2, 2, 0, 1] = x[1, 2, 2, 1, 1] = x[1, 2, 3, 0, 1] = np.nan
    model = cnngraph.compile(one_layer_spec(layer, [x.shape[1:]]), dtype="float64")
    y = model.forward({"x0": x}, grad=grad)["op"]
    tx = torch.tensor(x, requires_grad=True)
    ty = pool(tx)
    np.testing.assert_array_equal(y, ty.detach().numpy())   # NaN where torch has NaN
    assert np.isnan(y).any()
    if grad:
        gy = 2.0 ** rng.integers(-4, 4, y.shape)   # powers of two: sums are exact whatever their order
        ty.backward(torch.from_numpy(gy))
        np.testing.assert_array_equal(model.backward({"op": gy})["x0"], tx.grad.numpy())


@pytest.mark.parametrize("layer,message", [
    ({"type": "conv3d", "out_channels": 2, "kernel_size": [3, 3]},
     r"kernel_size: \(layer 'op'\) expected an integer >= 1 or a list \[d, h, w\] of them, found \[3, 3\]"),
    ({"type": "conv3d", "out_channels": 2, "kernel_size": 3, "padding": [1, 1, 1, 1]},
     r"expected 'same', 'valid', an integer, \[d, h, w\] or \[front, back, top, bottom, left, right\], found "
     r"\[1, 1, 1, 1\]"),
    ({"type": "max_pool3d", "kernel_size": 2, "stride": [2, 0, 2]}, r"expected integers >= 1, found \[2, 0, 2\]"),
    ({"type": "avg_pool3d", "kernel_size": 2, "padding": "same"}, r"padding 'same' is not supported for pooling"),
    ({"type": "conv3d", "out_channels": 3, "kernel_size": 3, "groups": 2}, r"groups=2 must divide both input "
                                                                           r"channels \(4\) and out_channels \(3\)"),
    ({"type": "conv3d", "out_channels": 2, "kernel_size": [7, 1, 1]},
     r"kernel extent 7 \(kernel_size 7, dilation 1\) is larger than the padded input D=5"),
    ({"type": "conv_transpose3d", "out_channels": 2, "kernel_size": 2, "padding": "same"},
     r"padding: \(layer 'op'\) expected an integer, \[d, h, w\] or \[front, back, top, bottom, left, right\], found "
     r"'same': a transposed convolution's padding crops its output, so 'same' and 'valid' do not apply"),
    ({"type": "conv_transpose3d", "out_channels": 2, "kernel_size": 2, "padding": [1, 2]},
     r"expected an integer, \[d, h, w\] or \[front, back, top, bottom, left, right\], found \[1, 2\]"),
    ({"type": "conv_transpose3d", "out_channels": 2, "kernel_size": 2, "stride": 2, "output_padding": [0, 2, 0]},
     r"output_padding 2 must be smaller than the stride or the dilation"),
    ({"type": "conv_transpose3d", "out_channels": 2, "kernel_size": 1, "padding": [3, 0, 0]},
     r"padding 3 \+ 3 \(D\) leaves no output from an input of size 5"),
    ({"type": "max_pool3d", "kernel_size": 2, "padding": [2, 1, 1]},
     r"padding 2 must be at most half the kernel size 2"),
])
def test_3d_parameters_and_shapes_are_checked_with_clear_messages(layer, message):
    with pytest.raises(cnngraph.SpecError, match=message):
        cnngraph.load_spec(one_layer_spec(layer, [(4, 5, 6, 6)]))


@pytest.mark.parametrize("op", ["conv3d", "max_pool3d", "avg_pool3d"])
def test_3d_ops_refuse_images_and_2d_ops_refuse_volumes(op):
    layer = {"type": op, "kernel_size": 2} | ({"out_channels": 2} if op == "conv3d" else {})
    with pytest.raises(cnngraph.SpecError, match=rf"{op} expects a \(C, D, H, W\) input per sample, found 3-D"):
        cnngraph.load_spec(one_layer_spec(layer, [(2, 6, 6)]))
    layer2d = dict(layer, type=op.replace("3d", "2d"))
    with pytest.raises(cnngraph.SpecError, match=r"expects a \(C, H, W\) input per sample, found 4-D"):
        cnngraph.load_spec(one_layer_spec(layer2d, [(2, 4, 6, 6)]))


def test_receptive_fields_of_3d_layers_match_the_gradients():
    """(d, h, w) per layer, as far as the gradient of one output voxel reaches into the input."""
    spec = cnngraph.load_spec({
        "inputs": {"volume": {"shape": [1, 24, 40, 40]}},
        "layers": [{"id": "c1", "type": "conv3d", "out_channels": 2, "kernel_size": [3, 5, 3], "padding": [1, 2, 1]},
                   {"id": "p1", "type": "avg_pool3d", "kernel_size": [1, 2, 2]},   # max: gradients reach one voxel
                   {"id": "c2", "type": "conv3d", "out_channels": 2, "kernel_size": 3, "dilation": [2, 1, 1],
                    "padding": [2, 1, 1]},
                   {"id": "p2", "type": "avg_pool3d", "kernel_size": 2},
                   {"id": "c3", "type": "conv3d", "out_channels": 2, "kernel_size": 3, "stride": 2, "padding": 1},
                   {"id": "g", "type": "global_avg_pool2d"}],
        "outputs": ["g"]})
    rf = receptive_fields(spec.graph)
    assert (rf["c1"], rf["p1"], rf["c2"], rf["p2"], rf["c3"], rf["g"]) == (
        (3, 5, 3), (3, 6, 4), (7, 10, 8), (8, 12, 10), (12, 20, 18), "global")
    model = cnngraph.compile(spec, dtype="float64", seed=1)
    for name in model.params:
        model.params[name] = np.abs(np.asarray(model.params[name])) + 0.1
    x = np.ones((1, 1, 24, 40, 40))
    for layer in ("c1", "p1", "c2", "p2", "c3"):
        assert _measured_field(model, x, layer, range(-1, 2)) == rf[layer], layer
    assert " 12x20x18 " in format_summary(summarize(spec.graph))
    as_max = spec.to_dict()
    as_max["layers"][1]["type"] = "max_pool3d"
    assert receptive_fields(cnngraph.load_spec(as_max).graph) == rf


def _measured_field(model, x, layer, offsets) -> tuple:
    """(d, h, w) extent of the input voxels with a non-zero gradient for single output voxels of ``layer`` at these
    offsets around the centre (the field is the widest over the output voxels)."""
    widest = np.zeros(3, int)
    for offset in offsets:
        out = model.forward({"volume": x}, grad=True, outputs=[layer])[layer]
        g = np.zeros_like(out)
        g[(0, 0, *(n // 2 + offset for n in out.shape[2:]))] = 1
        hit = np.nonzero(model.backward({layer: g}, input_grads=True)["volume"][0, 0])
        widest = np.maximum(widest, [h.max() - h.min() + 1 for h in hit])
    return tuple(int(v) for v in widest)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_conv3d_on_batch_chunks_matches_torch(threads, monkeypatch):
    """A batch big enough for the 2-D kernels to split into chunks over the threads (the slab of a batch is
    N * D_out samples) gives torch's values and gradients."""
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", threads)
    layer = {"type": "conv3d", "out_channels": 16, "kernel_size": 3, "padding": 1, "stride": [1, 2, 2]}
    model = cnngraph.compile(one_layer_spec(layer, [(8, 8, 24, 24)]), dtype="float64", seed=2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 8, 8, 24, 24))
    y = model.forward({"x0": x}, grad=True)["op"]
    gy = rng.standard_normal(y.shape)
    grads = model.backward({"op": gy})
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(model.params["op.weight"], requires_grad=True)
    tb = torch.tensor(model.params["op.bias"], requires_grad=True)
    ty = F.conv3d(tx, tw, tb, (1, 2, 2), 1)
    ty.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    for ours, theirs in ((grads["x0"], tx), (grads["op.weight"], tw), (grads["op.bias"], tb)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_strided_conv_transpose3d_as_the_conv3d_adjoint_matches_torch(threads, monkeypatch):
    """conv_transpose3d on NumPy (strided, no groups) is the input gradient of the conv3d it transposes: in tiny
    batch chunks on one and two threads, with output_padding, dilation and asymmetric cropping, its output and all
    gradients equal torch's in float64."""
    from cnngraph.kernels import _conv_fast
    monkeypatch.setattr(_conv_fast, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(_conv_fast, "_PARALLEL_FLOPS", 0)
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", threads)
    calls = []
    data = _conv_fast.FastConv.backward_data
    monkeypatch.setattr(_conv_fast.FastConv, "backward_data", lambda *a: calls.append(1) or data(*a))
    layer = {"type": "conv_transpose3d", "out_channels": 3, "kernel_size": [3, 2, 3], "stride": [2, 2, 3],
             "padding": [1, 0, 0, 1, 1, 2], "output_padding": [1, 0, 2], "dilation": [1, 2, 1]}
    model = cnngraph.compile(one_layer_spec(layer, [(4, 3, 4, 5)]), dtype="float64", seed=2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4, 3, 4, 5))
    y = model.forward({"x0": x}, grad=True)["op"]
    assert calls
    gy = rng.standard_normal(y.shape)
    grads = model.backward({"op": gy})
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(model.params["op.weight"], requires_grad=True)
    tb = torch.tensor(model.params["op.bias"], requires_grad=True)
    full = F.conv_transpose3d(tx, tw, tb, (2, 2, 3), 0, (1, 0, 2), 1, (1, 2, 1))
    ty = full[:, :, 1:, 0:full.shape[3] - 1, 1:full.shape[4] - 2]
    ty.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    for ours, theirs in ((grads["x0"], tx), (grads["op.weight"], tw), (grads["op.bias"], tb)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-11, atol=1e-11)


def test_c3d_example_network_matches_torch_in_training():
    """specs/examples/volumes3d.yaml compiles, and its forward (batch statistics), every gradient and the updated
    running statistics are those of the same network in PyTorch (float64)."""
    from cnngraph.torchref import torch_graph
    model = cnngraph.compile(SPEC, dtype="float64", seed=3)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 1, 8, 16, 16))
    out = model.forward({"volume": x}, training=True, grad=True)["logits"]
    gy = rng.standard_normal(out.shape)
    grads = model.backward({"logits": gy})
    before = {k: np.array(v) for k, v in cnngraph.compile(SPEC, dtype="float64", seed=3).params.items()}
    fresh = cnngraph.compile(SPEC, dtype="float64", seed=3)
    ref, leaves, inputs = torch_graph(fresh, {"volume": x}, training=True)
    ref["logits"].backward(torch.from_numpy(gy))
    assert out.shape == (4, 3)
    np.testing.assert_allclose(out, ref["logits"].detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, t in {**leaves, **inputs}.items():
        if t.requires_grad:
            np.testing.assert_allclose(grads[name], t.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
        else:   # running statistics, updated by both from the same starting values
            assert not np.array_equal(model.params[name], before[name]), name
            np.testing.assert_allclose(model.params[name], t.detach().numpy(), rtol=1e-12, atol=1e-14,
                                       err_msg=name)


def test_receptive_fields_through_conv_transpose3d_match_the_gradients_and_summary_shows_them():
    """A 3-D U-Net's up path: conv_transpose3d declares itself transposed, so its fields per (d, h, w) follow the
    gradients, and the summary lists the layer."""
    spec = cnngraph.load_spec({
        "inputs": {"volume": {"shape": [1, 12, 16, 16]}},
        "layers": [{"id": "e1", "type": "conv3d", "out_channels": 2, "kernel_size": 3, "padding": 1},
                   {"id": "down", "type": "conv3d", "out_channels": 2, "kernel_size": 2, "stride": 2},
                   {"id": "e2", "type": "conv3d", "out_channels": 2, "kernel_size": 3, "padding": 1},
                   {"id": "up", "type": "conv_transpose3d", "out_channels": 2, "kernel_size": [2, 3, 3],
                    "stride": 2, "padding": [0, 1, 1], "output_padding": [0, 1, 1]},
                   {"id": "cat", "type": "concat", "inputs": ["up", "e1"]},
                   {"id": "dec", "type": "conv3d", "out_channels": 2, "kernel_size": 3, "padding": 1}],
        "outputs": ["dec"]})
    rf = receptive_fields(spec.graph)
    model = cnngraph.compile(spec, dtype="float64", seed=1)
    for name in model.params:
        model.params[name] = np.abs(np.asarray(model.params[name])) + 0.1
    x = np.ones((1, 1, 12, 16, 16))
    for layer in ("up", "dec"):
        assert model.forward({"volume": x}, outputs=[layer])[layer].shape[2:] == (12, 16, 16)
        assert _measured_field(model, x, layer, range(-2, 3)) == rf[layer], layer
    assert "conv_transpose3d" in format_summary(summarize(spec.graph))
