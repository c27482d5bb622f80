"""1-D CNNs on (N, C, L) tensors: Conv, ConvTranspose, MaxPool, AveragePool, BatchNormalization and global pooling
import as conv1d, conv_transpose1d, max_pool1d, avg_pool1d, batch_norm2d and global pooling layers, match ONNX
Runtime for every attribute, train, and export back; a PyTorch audio-style net matches PyTorch, gradients included."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

from cnngraph.cli import main
from cnngraph.onnx import OnnxError, export_onnx, import_onnx
from cnngraph.train.optim import SGD
from gradcheck import check_gradients, one_layer_spec
from onnx_build import compare, make_model, ort_run, rand

N = helper.make_node
X = (2, 4, 11)   # (N, C, L)

# name: (node, initializers, opset)
CASES = {
    "conv": (N("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3], pads=[1, 1]), {"w": (6, 4, 3), "b": (6,)}, 17),
    "conv_strided_dilated_asym": (N("Conv", ["x", "w"], ["y"], strides=[2], dilations=[2], pads=[2, 0]),
                                  {"w": (5, 4, 3)}, 17),
    "conv_groups": (N("Conv", ["x", "w", "b"], ["y"], group=2, pads=[0, 1]), {"w": (6, 2, 2), "b": (6,)}, 17),
    "conv_depthwise": (N("Conv", ["x", "w", "b"], ["y"], group=4, kernel_shape=[5], pads=[2, 2]),
                       {"w": (8, 1, 5), "b": (8,)}, 17),
    "conv_same_upper": (N("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2]), {"w": (3, 4, 4)}, 17),
    "conv_same_lower": (N("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[3]), {"w": (3, 4, 4)}, 17),
    "conv_valid": (N("Conv", ["x", "w"], ["y"], auto_pad="VALID", strides=[3]), {"w": (3, 4, 2)}, 17),
    "conv_transpose": (N("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2], pads=[1, 0], output_padding=[1]),
                       {"w": (4, 3, 3), "b": (3,)}, 17),
    "conv_transpose_groups_dilated": (N("ConvTranspose", ["x", "w"], ["y"], group=2, dilations=[2], strides=[3],
                                        pads=[1, 2]), {"w": (4, 2, 3)}, 17),
    "conv_transpose_depthwise_valid": (N("ConvTranspose", ["x", "w", "b"], ["y"], group=4, strides=[2],
                                         auto_pad="VALID"), {"w": (4, 1, 2), "b": (4,)}, 17),
    "max_pool": (N("MaxPool", ["x"], ["y"], kernel_shape=[2], strides=[2]), {}, 17),
    "max_pool_ceil_padded": (N("MaxPool", ["x"], ["y"], kernel_shape=[3], strides=[2], pads=[1, 1], ceil_mode=1),
                             {}, 17),
    "max_pool_dilated_asym": (N("MaxPool", ["x"], ["y"], kernel_shape=[2], dilations=[3], pads=[1, 0]), {}, 17),
    "max_pool_same_upper": (N("MaxPool", ["x"], ["y"], kernel_shape=[4], strides=[3], auto_pad="SAME_UPPER"), {}, 17),
    "max_pool_same_lower": (N("MaxPool", ["x"], ["y"], kernel_shape=[2], auto_pad="SAME_LOWER"), {}, 17),
    "max_pool_valid": (N("MaxPool", ["x"], ["y"], kernel_shape=[3], strides=[2], auto_pad="VALID"), {}, 17),
    "avg_pool_exclude_pad": (N("AveragePool", ["x"], ["y"], kernel_shape=[3], strides=[2], pads=[1, 1]), {}, 17),
    "avg_pool_include_pad": (N("AveragePool", ["x"], ["y"], kernel_shape=[3], strides=[2], pads=[1, 1],
                               count_include_pad=1), {}, 17),
    "avg_pool_ceil": (N("AveragePool", ["x"], ["y"], kernel_shape=[3], strides=[2], pads=[1, 0], ceil_mode=1),
                      {}, 17),
    "avg_pool_ceil_include_pad": (N("AveragePool", ["x"], ["y"], kernel_shape=[3], strides=[2], pads=[1, 1],
                                    ceil_mode=1, count_include_pad=1), {}, 19),
    "avg_pool_same_upper": (N("AveragePool", ["x"], ["y"], kernel_shape=[4], strides=[2], auto_pad="SAME_UPPER"),
                            {}, 17),
    "avg_pool_same_lower": (N("AveragePool", ["x"], ["y"], kernel_shape=[2], auto_pad="SAME_LOWER",
                              count_include_pad=1), {}, 17),
    "batch_norm": (N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3, momentum=0.8),
                   {"s": (4,), "b": (4,), "m": (4,), "v": (4,)}, 17),
    "global_avg_pool": (N("GlobalAveragePool", ["x"], ["y"]), {}, 17),
    "global_max_pool": (N("GlobalMaxPool", ["x"], ["y"]), {}, 17),
}

LAYER = {"Conv": "conv1d", "ConvTranspose": "conv_transpose1d", "MaxPool": "max_pool1d", "AveragePool": "avg_pool1d",
         "BatchNormalization": "batch_norm2d", "GlobalAveragePool": "global_avg_pool2d",
         "GlobalMaxPool": "global_max_pool2d"}


def model_for(case):
    node, shapes, opset = CASES[case]
    inits = {k: np.abs(rand(*s)) + 0.5 if k == "v" else rand(*s) for k, s in shapes.items()}
    return make_model([node], {"x": X}, inits, opset=opset)


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_matches_onnxruntime_and_exports_back(case):
    model = model_for(case)
    feeds = {"x": rand(3, *X[1:])}
    m = compare(model, feeds)
    (layer,) = m.import_result.spec["layers"]
    assert layer["type"] == LAYER[CASES[case][0].op_type]
    assert m.spec.inputs["x"].shape == list(X[1:])
    proto = export_onnx(m, opset=CASES[case][2])
    onnx.checker.check_model(proto, full_check=True)
    (node,) = proto.graph.node
    assert node.op_type == CASES[case][0].op_type
    assert all(len(a.ints) == (2 if a.name == "pads" else 1) for a in node.attribute if a.ints)   # 1-D attributes
    np.testing.assert_allclose(ort_run(proto, feeds)["y"], m.forward(feeds)["y"], rtol=1e-5, atol=1e-5)
    back = import_onnx(proto)
    assert back.import_result.spec["layers"][0]["type"] == layer["type"]
    np.testing.assert_array_equal(back.forward(feeds)["y"], m.forward(feeds)["y"])


@pytest.mark.parametrize("layer", [
    {"type": "conv1d", "out_channels": 4, "kernel_size": 3, "stride": 2, "dilation": 2, "padding": [2, 0],
     "groups": 2},
    {"type": "conv1d", "out_channels": 6, "kernel_size": 3, "groups": 3, "padding": "same", "bias": False},
    {"type": "conv_transpose1d", "out_channels": 3, "kernel_size": 3, "stride": 2, "padding": [1, 0],
     "output_padding": 1, "groups": 3},
    {"type": "max_pool1d", "kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
    {"type": "avg_pool1d", "kernel_size": 3, "stride": 2, "padding": [1, 0], "count_include_pad": False},
    {"type": "batch_norm2d"},
    {"type": "global_avg_pool2d"},
    {"type": "global_max_pool2d"},
], ids=lambda layer: layer["type"])
def test_1d_layers_match_finite_differences(layer):
    """Backward of each 1-D layer in training (batch norm: batch statistics) against float64 finite differences."""
    x = np.random.default_rng(3).permutation(2 * 6 * 9).reshape(2, 6, 9) / 7.0 - 2   # no ties for the max
    check_gradients(one_layer_spec(layer, [(6, 9)]), {"x0": x}, training=True)


def _audio_net(torch):
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(3, 2, 1),
                         nn.Conv1d(8, 8, 3, padding=1, groups=4), nn.AvgPool1d(2), nn.AdaptiveAvgPool1d(1),
                         nn.Flatten(), nn.Linear(8, 5))


def _export(torch, net, path, fold: bool):
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 2, 32),), str(path), dynamo=False, opset_version=17,
                          do_constant_folding=fold, input_names=["audio"], output_names=["logits"],
                          dynamic_axes={"audio": {0: "batch"}})


@pytest.mark.parametrize("fold", [False, True], ids=["batch_norm_kept", "batch_norm_folded"])
def test_torch_conv1d_net_imports_matches_torch_and_exports_back(fold, tmp_path):
    torch = pytest.importorskip("torch")
    net = _audio_net(torch)
    with torch.no_grad():   # running statistics that are not the initial ones
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    _export(torch, net, tmp_path / "audio.onnx", fold)
    m = import_onnx(tmp_path / "audio.onnx")
    types = [layer["type"] for layer in m.import_result.spec["layers"]]
    assert {"conv1d", "max_pool1d", "avg_pool1d", "global_avg_pool2d"} <= set(types)
    assert ("batch_norm2d" in types) != fold
    x = torch.randn(3, 2, 32)
    with torch.no_grad():
        want = net(x).numpy()
    got = m.forward({"audio": x.numpy()})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    proto = export_onnx(m)
    onnx.checker.check_model(proto, full_check=True)
    np.testing.assert_allclose(ort_run(proto, {"audio": x.numpy()})["logits"], got, rtol=1e-5, atol=1e-5)


def test_imported_conv1d_net_trains_as_torch(tmp_path):
    """Training mode (batch statistics): the gradients of every parameter, the loss after one SGD step and the
    updated running statistics are torch's."""
    torch = pytest.importorskip("torch")
    net = _audio_net(torch)
    _export(torch, net, tmp_path / "audio.onnx", fold=False)
    m = import_onnx(tmp_path / "audio.onnx")
    rng = np.random.default_rng(5)
    x, labels = rng.standard_normal((6, 2, 32)).astype(np.float32), rng.integers(0, 5, 6)
    ours = {name: next(k for k, v in m.params.items() if v.shape == p.shape and np.array_equal(v, p.detach().numpy()))
            for name, p in net.named_parameters()}   # the imported weights are bit-identical: match them by value

    def loss_and_grads():
        logits = m.forward({"audio": x}, training=True)["logits"]
        shifted = logits - logits.max(1, keepdims=True)
        prob = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
        loss = -np.log(prob[np.arange(6), labels]).mean()
        prob[np.arange(6), labels] -= 1
        return loss, m.backward({"logits": prob / 6}, input_grads=False)

    loss, grads = loss_and_grads()
    net.train()
    ref = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(labels))
    ref.backward()
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-5)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(grads[ours[name]], p.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    SGD(lr=0.5).step({n: m.params[n] for n in m.trainable_names}, grads, 0.5)
    torch.optim.SGD(net.parameters(), lr=0.5).step()
    after, _ = loss_and_grads()
    with torch.no_grad():
        ref_after = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(labels)).item()
    assert abs(after - loss) > 1e-3
    np.testing.assert_allclose(after, ref_after, rtol=1e-4)
    bn = next(lay["id"] for lay in m.import_result.spec["layers"] if lay["type"] == "batch_norm2d")
    np.testing.assert_allclose(m.params[f"{bn}.running_mean"], net[1].running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.params[f"{bn}.running_var"], net[1].running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_cli_imports_runs_and_reexports_a_conv1d_model(tmp_path):
    model = model_for("conv_strided_dilated_asym")
    onnx.save(model, str(tmp_path / "m.onnx"))
    out = tmp_path / "m.yaml"
    assert main(["import-onnx", str(tmp_path / "m.onnx"), "-o", str(out), "--check"]) == 0
    assert "type: conv1d" in out.read_text() and "shape: [4, 11]" in out.read_text().replace("\n    - ", ", ")
    x = rand(2, *X[1:])
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--params", str(out.with_suffix(".npz")), "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ort_run(model, {"x": x})["y"], rtol=1e-5, atol=1e-5)
    back = tmp_path / "back.onnx"
    assert main(["export-onnx", str(out), "--params", str(out.with_suffix(".npz")), "-o", str(back)]) == 0
    np.testing.assert_allclose(ort_run(onnx.load(str(back)), {"x": x})["y"], np.load(tmp_path / "y.npy"), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("node,inits,x,message", [
    (N("ConvTranspose", ["x", "w"], ["y"]), {"w": (4, 3, 2, 2, 2, 2)}, (2, 4, 5, 6, 7, 3),
     "ConvTranspose node 'y': only 1-D, 2-D and 3-D transposed convolutions are supported (weight of shape "
     "(4, 3, 2, 2, 2, 2))"),
    (N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2, 2, 2]), {}, (2, 4, 5, 6, 7, 3),
     "MaxPool node 'y': only 1-D (N, C, L), 2-D (N, C, H, W) and 3-D (N, C, D, H, W) inputs are supported, found "
     "per-sample shape (4, 5, 6, 7, 3)"),
    (N("GlobalAveragePool", ["x"], ["y"]), {}, (2, 4, 5, 6, 7, 3),
     "GlobalAveragePool node 'y': only 1-D (N, C, L), 2-D (N, C, H, W) and 3-D (N, C, D, H, W) inputs are "
     "supported, found per-sample shape (4, 5, 6, 7, 3)"),
], ids=["conv_transpose3d", "max_pool4d", "global_avg_pool4d"])
def test_other_windows_are_refused_with_one_message(node, inits, x, message):
    """3-D windows import (tests/onnx/test_onnx_conv3d.py), but not transposed 3-D convolutions or 4-D windows."""
    model = make_model([node, N("Relu", ["y"], ["z"])], {"x": x}, {k: rand(*s) for k, s in inits.items()},
                       outputs=("z",))
    with pytest.raises(OnnxError) as err:
        import_onnx(model)
    assert str(err.value) == f"cannot import the ONNX model:\n1 node could not be converted:\n  {message}"


def test_window_attributes_of_the_wrong_rank_are_refused():
    model = make_model([N("MaxPool", ["x"], ["y"], kernel_shape=[2], pads=[1, 1, 1, 1])], {"x": X})
    with pytest.raises(OnnxError, match=r"pads \[1, 1, 1, 1\] need a begin and an end for each spatial axis of the "
                                        r"input \(2 entries\)"):
        import_onnx(model)
