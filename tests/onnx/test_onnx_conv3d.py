"""3-D CNNs on (N, C, D, H, W) tensors: Conv, ConvTranspose, MaxPool, AveragePool, BatchNormalization and global
pooling import as conv3d, conv_transpose3d, max_pool3d, avg_pool3d, batch_norm2d and global pooling layers, match ONNX Runtime for every attribute and
export back; a PyTorch C3D-style net and a 3-D encoder-decoder (U-Net style) exported by torch.onnx match PyTorch,
gradients included."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

import cnngraph
from cnngraph.onnx import export_onnx, import_onnx
from onnx_build import compare, make_model, ort_run, rand

N = helper.make_node
X = (2, 4, 5, 6, 7)   # (N, C, D, H, W)

# name: (node, initializers, opset)
CASES = {
    "conv": (N("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3, 3], pads=[1, 1, 1, 1, 1, 1]),
             {"w": (6, 4, 3, 3, 3), "b": (6,)}, 17),
    "conv_strided_dilated_asym": (N("Conv", ["x", "w"], ["y"], strides=[2, 1, 2], dilations=[2, 1, 1],
                                    pads=[1, 0, 2, 0, 1, 1]), {"w": (5, 4, 2, 3, 2)}, 17),
    "conv_groups": (N("Conv", ["x", "w", "b"], ["y"], group=2, pads=[0, 1, 0, 1, 0, 1]),
                    {"w": (6, 2, 2, 2, 2), "b": (6,)}, 17),
    "conv_depthwise": (N("Conv", ["x", "w", "b"], ["y"], group=4, kernel_shape=[3, 3, 3], pads=[1, 1, 1, 1, 1, 1]),
                       {"w": (8, 1, 3, 3, 3), "b": (8,)}, 17),
    "conv_same_upper": (N("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2, 1]),
                        {"w": (3, 4, 2, 3, 4)}, 17),
    "conv_same_lower": (N("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[1, 2, 3]),
                        {"w": (3, 4, 2, 2, 3)}, 17),
    "conv_transpose": (N("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2, 2], pads=[1, 1, 1, 1, 1, 1],
                          output_padding=[1, 1, 1]), {"w": (4, 3, 3, 3, 3), "b": (3,)}, 17),
    "conv_transpose_asym_dilated": (N("ConvTranspose", ["x", "w"], ["y"], strides=[1, 2, 3], dilations=[2, 1, 1],
                                      pads=[1, 0, 2, 0, 1, 1], output_padding=[0, 1, 2]),
                                    {"w": (4, 2, 2, 3, 2)}, 17),
    "conv_transpose_groups": (N("ConvTranspose", ["x", "w", "b"], ["y"], group=2, strides=[2, 2, 2]),
                              {"w": (4, 3, 2, 2, 2), "b": (6,)}, 17),
    "conv_transpose_depthwise_valid": (N("ConvTranspose", ["x", "w"], ["y"], group=4, auto_pad="VALID",
                                         kernel_shape=[3, 2, 3], strides=[2, 1, 2]), {"w": (4, 1, 3, 2, 3)}, 17),
    "max_pool": (N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2, 2], strides=[2, 2, 2]), {}, 17),
    "max_pool_ceil_padded": (N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3, 3], strides=[2, 2, 2],
                               pads=[1, 1, 1, 1, 1, 1], ceil_mode=1), {}, 17),
    "max_pool_dilated_asym": (N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2, 2], dilations=[2, 1, 2],
                                pads=[1, 0, 1, 0, 1, 0]), {}, 17),
    "max_pool_same_upper": (N("MaxPool", ["x"], ["y"], kernel_shape=[2, 3, 2], strides=[2, 2, 3],
                              auto_pad="SAME_UPPER"), {}, 17),
    "avg_pool_exclude_pad": (N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3, 3], strides=[2, 2, 2],
                               pads=[1, 1, 1, 1, 1, 1]), {}, 17),
    "avg_pool_include_pad": (N("AveragePool", ["x"], ["y"], kernel_shape=[3, 2, 3], strides=[2, 1, 2],
                               pads=[1, 1, 1, 1, 0, 1], count_include_pad=1), {}, 17),
    "avg_pool_ceil": (N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3, 3], strides=[2, 2, 2],
                        pads=[1, 0, 1, 0, 1, 0], ceil_mode=1), {}, 17),
    "avg_pool_ceil_include_pad": (N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3, 3], strides=[2, 2, 2],
                                    pads=[1, 1, 1, 1, 1, 1], ceil_mode=1, count_include_pad=1), {}, 19),
    "batch_norm": (N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3, momentum=0.8),
                   {"s": (4,), "b": (4,), "m": (4,), "v": (4,)}, 17),
    "global_avg_pool": (N("GlobalAveragePool", ["x"], ["y"]), {}, 17),
    "global_max_pool": (N("GlobalMaxPool", ["x"], ["y"]), {}, 17),
    "reduce_mean_dhw": (N("ReduceMean", ["x"], ["y"], axes=[2, 3, 4]), {}, 17),
}

LAYER = {"Conv": "conv3d", "ConvTranspose": "conv_transpose3d", "MaxPool": "max_pool3d", "AveragePool": "avg_pool3d", "BatchNormalization": "batch_norm2d",
         "GlobalAveragePool": "global_avg_pool2d", "GlobalMaxPool": "global_max_pool2d",
         "ReduceMean": "global_avg_pool2d"}
EXPORTED = {"ReduceMean": "GlobalAveragePool"}


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
    op_type = CASES[case][0].op_type
    assert layer["type"] == LAYER[op_type]
    assert m.spec.inputs["x"].shape == list(X[1:])
    proto = export_onnx(m, opset=CASES[case][2])
    onnx.checker.check_model(proto, full_check=True)
    (node,) = proto.graph.node
    assert node.op_type == EXPORTED.get(op_type, op_type)
    assert all(len(a.ints) == (6 if a.name == "pads" else 3) for a in node.attribute if a.ints)   # 3-D attributes
    np.testing.assert_allclose(ort_run(proto, feeds)["y"], m.forward(feeds)["y"], rtol=1e-5, atol=1e-5)
    back = import_onnx(proto)
    assert back.import_result.spec["layers"][0]["type"] == layer["type"]
    np.testing.assert_array_equal(back.forward(feeds)["y"], m.forward(feeds)["y"])


def _c3d_net(torch):
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(), nn.MaxPool3d((1, 2, 2)),
                         nn.Conv3d(8, 8, (3, 3, 3), padding=(1, 0, 1), groups=4), nn.AvgPool3d(2, ceil_mode=True),
                         nn.Conv3d(8, 8, 3, padding=1, groups=8, bias=False), nn.MaxPool3d(3, 2, 1),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 4))


@pytest.mark.parametrize("fold", [False, True], ids=["batch_norm_kept", "batch_norm_folded"])
def test_torch_conv3d_net_imports_matches_torch_and_exports_back(fold, tmp_path):
    torch = pytest.importorskip("torch")
    net = _c3d_net(torch)
    with torch.no_grad():   # running statistics that are not the initial ones
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 2, 6, 10, 10),), str(tmp_path / "c3d.onnx"), dynamo=False,
                          opset_version=17, do_constant_folding=fold, input_names=["clip"], output_names=["logits"],
                          dynamic_axes={"clip": {0: "batch"}})
    m = import_onnx(tmp_path / "c3d.onnx")
    types = [layer["type"] for layer in m.import_result.spec["layers"]]
    assert {"conv3d", "max_pool3d", "avg_pool3d", "global_avg_pool2d"} <= set(types)
    assert ("batch_norm2d" in types) != fold
    x = torch.randn(3, 2, 6, 10, 10)
    with torch.no_grad():
        want = net(x).numpy()
    got = m.forward({"clip": x.numpy()})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    proto = export_onnx(m)
    onnx.checker.check_model(proto, full_check=True)
    np.testing.assert_allclose(ort_run(proto, {"clip": x.numpy()})["logits"], got, rtol=1e-5, atol=1e-5)
    if fold:
        return
    # training mode (batch statistics): every parameter's gradient as torch's
    net.train()
    x64 = x.double()
    net64 = net.double()
    model = cnngraph.compile(m.spec, dtype="float64")
    model.load_params({k: np.asarray(v, np.float64) for k, v in m.params.numpy().items()})
    out = model.forward({"clip": x64.numpy()}, training=True, grad=True)["logits"]
    gy = np.random.default_rng(0).standard_normal(out.shape)
    grads = model.backward({"logits": gy})
    ref = net64(x64)
    ref.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, p in net64.named_parameters():   # the imported weights keep their values: match them by value
        ours = next(k for k, v in model.params.items() if v.shape == p.shape and np.allclose(v, p.detach().numpy()))
        np.testing.assert_allclose(grads[ours], p.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


def _unet3d(torch):
    nn = torch.nn

    class EncoderDecoder(nn.Module):
        """A 3-D U-Net in miniature: a stride-2 Conv3d down, ConvTranspose3d up, a skip concatenation."""

        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU())
            self.down = nn.Sequential(nn.Conv3d(4, 8, 3, stride=2, padding=1), nn.ReLU())
            self.up = nn.ConvTranspose3d(8, 4, 3, stride=2, padding=1, output_padding=1)
            self.up2 = nn.ConvTranspose3d(8, 6, (1, 2, 2), stride=(1, 2, 2), groups=2, bias=False)
            self.head = nn.Conv3d(6, 3, 1)

        def forward(self, x):
            e = self.enc(x)
            u = torch.relu(self.up(self.down(e)))
            return self.head(self.up2(torch.cat([u, e], 1)))

    torch.manual_seed(0)
    return EncoderDecoder()


def test_torch_3d_encoder_decoder_with_conv_transpose3d_imports_matches_torch_and_exports_back(tmp_path):
    torch = pytest.importorskip("torch")
    net = _unet3d(torch).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 2, 4, 6, 6),), str(tmp_path / "unet3d.onnx"), dynamo=False,
                          opset_version=17, input_names=["volume"], output_names=["logits"],
                          dynamic_axes={"volume": {0: "batch"}})
    m = import_onnx(tmp_path / "unet3d.onnx")
    types = [layer["type"] for layer in m.import_result.spec["layers"]]
    assert types.count("conv_transpose3d") == 2 and types.count("conv3d") == 3
    x = torch.randn(3, 2, 4, 6, 6)
    with torch.no_grad():
        want = net(x).numpy()
    got = m.forward({"volume": x.numpy()})["logits"]
    assert got.shape == (3, 3, 4, 12, 12)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    proto = export_onnx(m)
    onnx.checker.check_model(proto, full_check=True)
    assert sum(node.op_type == "ConvTranspose" for node in proto.graph.node) == 2
    np.testing.assert_allclose(ort_run(proto, {"volume": x.numpy()})["logits"], got, rtol=1e-5, atol=1e-5)
    # gradients of every parameter and the input as torch's, in float64
    x64, net64 = x.double().requires_grad_(), net.double()
    model = cnngraph.compile(m.spec, dtype="float64")
    model.load_params({k: np.asarray(v, np.float64) for k, v in m.params.numpy().items()})
    out = model.forward({"volume": x64.detach().numpy()}, grad=True)["logits"]
    gy = np.random.default_rng(0).standard_normal(out.shape)
    grads = model.backward({"logits": gy}, input_grads=True)
    ref = net64(x64)
    ref.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["volume"], x64.grad.numpy(), rtol=1e-9, atol=1e-11)
    for name, p in net64.named_parameters():   # the imported weights keep their values: match them by value
        ours = next(k for k, v in model.params.items() if v.shape == p.shape and np.allclose(v, p.detach().numpy()))
        np.testing.assert_allclose(grads[ours], p.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)
