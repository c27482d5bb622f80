"""Export: checker-clean models that ONNX Runtime runs like cnngraph (dynamic batch), for every
standard op; export → import round trips give the same structure and bit-identical weights."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import cnngraph
from cnngraph.onnx import export_onnx, import_onnx

RNG = np.random.default_rng(3)

CNN = {
    "name": "cnn",
    "inputs": {"image": {"shape": [3, 15, 14]}, "label": {"shape": [], "dtype": "int64"}},
    "layers": [
        {"id": "conv1", "type": "conv2d", "inputs": "image", "out_channels": 8, "kernel_size": 3,
         "padding": [0, 1, 1, 2]},
        {"id": "bn1", "type": "batch_norm2d", "eps": 0.001, "momentum": 0.2},
        {"id": "act1", "type": "relu"},
        {"id": "pool1", "type": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
        {"id": "b1", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1, "groups": 4},
        {"id": "b1a", "type": "leaky_relu", "negative_slope": 0.2},
        {"id": "b2", "type": "conv2d", "inputs": "pool1", "out_channels": 8, "kernel_size": 1, "bias": False},
        {"id": "b2a", "type": "elu", "alpha": 0.5},
        {"id": "sum", "type": "add", "inputs": ["b1a", "b2a", "pool1"]},
        {"id": "cat", "type": "concat", "inputs": ["sum", "b1a"]},
        {"id": "g", "type": "gelu"},
        {"id": "dil", "type": "conv2d", "out_channels": 6, "kernel_size": 3, "dilation": 2, "padding": "same"},
        {"id": "avg", "type": "avg_pool2d", "kernel_size": 2, "stride": 1, "padding": [1, 0, 0, 1],
         "count_include_pad": False},
        {"id": "th", "type": "tanh"},
        {"id": "gap", "type": "global_avg_pool2d"},
        {"id": "flat", "type": "flatten"},
        {"id": "drop", "type": "dropout", "p": 0.3},
        {"id": "fc", "type": "dense", "out_features": 5},
        {"id": "probs", "type": "softmax", "inputs": "fc"},
        {"id": "logp", "type": "log_softmax", "axis": -1, "inputs": "fc"},
        {"id": "sig", "type": "sigmoid", "inputs": "fc"},
        {"id": "loss", "type": "cross_entropy", "inputs": ["fc", "label"]},
    ],
    "outputs": ["probs", "logp", "sig", "loss"],
}

TENSOR = {
    "name": "tensor_ops",
    "inputs": {"x": {"shape": [4, 6, 5]}},
    "layers": [
        {"id": "scale", "type": "constant", "inputs": "x", "shape": [4, 1, 1]},
        {"id": "scaled", "type": "mul", "inputs": ["x", "scale"]},
        {"id": "shift", "type": "constant", "inputs": "scaled", "shape": [5]},
        {"id": "moved", "type": "sub", "inputs": ["scaled", "shift"]},
        {"id": "lrn", "type": "local_response_norm", "size": 3, "alpha": 0.01, "beta": 0.75, "k": 2.0},
        {"id": "padded", "type": "pad", "pads": [[0, 0], [1, 2], [0, 1]], "mode": "reflect"},
        {"id": "clipped", "type": "clip", "min": -1.5, "max": 1.5},
        {"id": "t", "type": "transpose", "perm": [0, 1, 3, 2]},
        {"id": "r", "type": "reshape", "shape": [4, 6, -1]},
        {"id": "w", "type": "constant", "inputs": "r", "shape": [4, 9, 3]},
        {"id": "mm", "type": "matmul", "inputs": ["r", "w"]},
        {"id": "den", "type": "constant", "inputs": "mm", "shape": [1, 1, 3], "fill": 2.0},
        {"id": "q", "type": "div", "inputs": ["mm", "den"]},
        {"id": "bias", "type": "constant", "inputs": "q", "shape": [6, 1]},
        {"id": "y", "type": "broadcast_add", "inputs": ["q", "bias"]},
        {"id": "rev", "type": "slice", "axis": 3, "step": -1},            # x[..., ::-1]
        {"id": "cut", "type": "slice", "axis": 2, "start": 4, "step": -2},  # rows 4, 2, 0
        {"id": "up", "type": "upsample2d", "scale_factor": [2, 1.5], "mode": "bilinear"},
        {"id": "near", "type": "upsample2d", "scale_factor": 2},
        {"id": "hs", "type": "hard_sigmoid", "alpha": 0.3},
        {"id": "out", "type": "identity"},
    ],
    "outputs": ["out"],
}

NORM = {
    "name": "norm_ops",
    "inputs": {"x": {"shape": [8, 5, 6]}},
    "layers": [
        {"id": "c1", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
        {"id": "p1", "type": "prelu"},
        {"id": "gn", "type": "group_norm", "num_groups": 4, "eps": 0.001},
        {"id": "inorm", "type": "group_norm", "num_groups": 8},
        {"id": "ps", "type": "pixel_shuffle", "upscale_factor": 2},
        {"id": "c2", "type": "conv2d", "out_channels": 8, "kernel_size": 1},
        {"id": "ps2", "type": "pixel_shuffle", "upscale_factor": 2, "mode": "dcr"},
        {"id": "sp", "type": "softplus"},
        {"id": "p2", "type": "prelu", "shared": True},
    ],
    "outputs": ["p2"],
}

MATH = {
    "name": "math_ops",
    "inputs": {"x": {"shape": [4, 5, 6]}},
    "layers": [
        {"id": "ln", "type": "layer_norm", "axes": 3, "eps": 0.001},
        {"id": "ln1", "type": "layer_norm"},
        {"id": "ln2", "type": "layer_norm", "axes": 2},
        {"id": "avg", "type": "reduce", "axes": [1], "keepdims": True},          # CBAM's channel statistics
        {"id": "top", "type": "reduce", "op": "max", "axes": [1], "keepdims": True, "inputs": "ln2"},
        {"id": "both", "type": "maximum", "inputs": ["avg", "top"]},
        {"id": "low", "type": "minimum", "inputs": ["ln2", "both"]},
        {"id": "total", "type": "reduce", "op": "sum", "axes": [3]},
        {"id": "row", "type": "reduce", "op": "max", "axes": [3], "inputs": "ln1"},
        {"id": "rowmax", "type": "maximum", "inputs": ["total", "row"]},
        {"id": "a", "type": "unary", "fn": "abs"},
        {"id": "s", "type": "unary", "fn": "sqrt"},
        {"id": "e", "type": "unary", "fn": "exp"},
        {"id": "l", "type": "unary", "fn": "log"},
        {"id": "r", "type": "unary", "fn": "reciprocal"},
        {"id": "n", "type": "unary", "fn": "neg"},
        {"id": "erf", "type": "unary", "fn": "erf"},
        {"id": "p2", "type": "pow", "exponent": 2.0},
        {"id": "p3", "type": "pow", "exponent": 1.5, "inputs": "s"},
        {"id": "prod", "type": "mul", "inputs": ["p2", "p3"]},
        {"id": "ss", "type": "softsign"},
        {"id": "se", "type": "selu"},
        {"id": "ce", "type": "celu", "alpha": 0.5},
        {"id": "se2", "type": "selu", "alpha": 1.5, "scale": 2.0},
    ],
    "outputs": ["se2", "low"],
}


def _random_params(model):
    for name in model.params:
        if name.endswith("running_var"):
            model.params[name] = RNG.uniform(0.5, 2.0, model.params[name].shape)
        else:
            model.params[name] = RNG.standard_normal(model.params[name].shape).astype(np.float32)


def _feeds(spec, batch):
    return {k: RNG.standard_normal((batch, *v["shape"])).astype(np.float32)
            for k, v in spec["inputs"].items() if v.get("dtype") != "int64"}


def _runtime_and_import_agree(model, spec, exported):
    """ONNX Runtime on the exported model (a path or a ModelProto), and cnngraph on its re-import, both
    give the model's own outputs."""
    source = exported.SerializeToString() if isinstance(exported, onnx.ModelProto) else exported
    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    feeds = _feeds(spec, 3)
    want = model.forward(feeds, outputs=names)
    back = import_onnx(exported).forward(feeds)
    for k, got in zip(names, sess.run(None, feeds)):
        np.testing.assert_allclose(got, want[k], rtol=1e-4, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(back[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def _structure(spec):
    """Layer id → (type, resolved inputs, params with paddings resolved) of the exported part."""
    g = spec.graph
    out = {}
    for layer in spec.layers:
        node = g.nodes[layer.id]
        if node.get("reduces_batch"):
            continue
        params = layer.params.model_dump()
        params.pop("fill", None)   # a constant's initial value is not part of the model
        op = node["op"]
        if layer.type == "conv2d":
            params["padding"] = op.pads(node["in_shapes"][0])
        if layer.type in ("max_pool2d", "avg_pool2d"):
            k, s, pads, _ = op.window()
            params.update(padding=pads, stride=s)
        out[layer.id] = (layer.type, tuple(node["inputs"]), params)
    return out


@pytest.mark.parametrize("spec_dict,opset", [(CNN, 13), (CNN, 17), (CNN, 20), (TENSOR, 17), (TENSOR, 18), (NORM, 21),
                                             (MATH, 17), (MATH, 18)])
def test_export_runs_in_onnxruntime_and_round_trips(spec_dict, opset, tmp_path):
    model = cnngraph.compile(spec_dict)
    _random_params(model)
    path = tmp_path / "m.onnx"
    proto = export_onnx(model, path, opset=opset)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert proto.opset_import[0].version == opset
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert "loss" not in names
    for batch in (1, 3):
        feeds = _feeds(spec_dict, batch)
        want = model.forward(feeds, outputs=names)
        got = dict(zip(names, sess.run(None, feeds)))
        for k in names:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)
    back = import_onnx(path)
    assert _structure(back.spec) == {k: v for k, v in _structure(model.spec).items()}
    ours = model.params.numpy()
    theirs = back.params.numpy()
    assert set(theirs) == set(ours)
    for k in ours:
        assert theirs[k].dtype == ours[k].dtype and np.array_equal(theirs[k], ours[k]), k


def test_export_rejects_bad_opset_and_loss_only_outputs():
    model = cnngraph.compile(CNN)
    with pytest.raises(cnngraph.CnnGraphError, match="opset"):
        export_onnx(model, opset=5)
    with pytest.raises(cnngraph.CnnGraphError, match="loss"):
        export_onnx(model, outputs=["loss"])


def test_export_without_weights_warns(tmp_path):
    with pytest.warns(UserWarning, match="random"):
        export_onnx(TENSOR, tmp_path / "t.onnx")


@pytest.mark.parametrize("opset", [13, 17])
def test_group_norm_before_opset_21_exports_as_torch_does_and_imports_back(opset, tmp_path):
    """Below opset 21 a group_norm with several channels per group is PyTorch's Reshape → InstanceNormalization
    → Reshape → Mul → Add (and softplus with beta ≠ 1 scales around Softplus): ONNX Runtime and the import agree."""
    spec = {**NORM, "layers": NORM["layers"] + [
        {"id": "flat_gn", "type": "group_norm", "num_groups": 2, "affine": False, "inputs": "gn"},
        {"id": "sp2", "type": "softplus", "beta": 2.0, "threshold": 40}], "outputs": ["p2", "flat_gn", "sp2"]}
    model = cnngraph.compile(spec)
    _random_params(model)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, opset=opset)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"InstanceNormalization", "PRelu", "Softplus", "DepthToSpace"} <= ops and "GroupNormalization" not in ops
    _runtime_and_import_agree(model, spec, str(path))


def test_layer_norm_below_opset_17_exports_as_its_decomposition():
    """Before LayerNormalization (opset 17) a layer_norm is ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div (and
    Mul, Add by its weights); ONNX Runtime and the import (now as primitive layers) agree with cnngraph. A layer_norm
    without affine weights exports with unit scale and zero bias (and so imports back with weights)."""
    spec = {**MATH, "layers": MATH["layers"] + [
        {"id": "plain", "type": "layer_norm", "axes": 2, "affine": False, "eps": 0.01, "inputs": "ln"}],
        "outputs": MATH["outputs"] + ["plain"]}
    model = cnngraph.compile(spec)
    _random_params(model)
    for opset in (13, 16, 17):
        proto = export_onnx(model, opset=opset)
        ops = {n.op_type for n in proto.graph.node}
        assert ("LayerNormalization" in ops) == (opset >= 17)
        assert {"ReduceMean", "Max", "Min", "ReduceSum", "Pow", "Sqrt", "Erf", "Selu", "Celu", "Softsign"} <= ops
        _runtime_and_import_agree(model, spec, proto)


def test_a_transposed_conv_that_onnx_runtime_would_refuse_is_not_exported():
    """output_padding >= stride is valid in PyTorch (when below the dilation) but ONNX Runtime refuses it."""
    import cnngraph
    from cnngraph.onnx import OnnxError
    from cnngraph.onnx.exporter import spec_to_onnx
    spec = {"name": "t", "inputs": {"x": {"shape": [2, 5, 5]}},
            "layers": [{"id": "up", "type": "conv_transpose2d", "out_channels": 3, "kernel_size": 3, "stride": 1,
                        "dilation": 2, "output_padding": 1}], "outputs": ["up"]}
    model = cnngraph.compile(spec)
    with pytest.raises(OnnxError, match=r"layer 'up' \(conv_transpose2d\): output_padding \(1, 1\) must be less than "
                                        r"stride \(1, 1\) on each axis"):
        spec_to_onnx(model.spec, model.params.numpy())
