"""More architectures exported by torch.onnx.export: ShuffleNet V2's channel split (Slice/Split),
DenseNet's and SqueezeNet's concatenations, VGG- and AlexNet-style stacks, MobileNet V3's hardswish and
hardsigmoid gate, an encoder-decoder's ConvTranspose, ShuffleNet-style channel shuffle (Reshape →
Transpose → Reshape) with ``x.mean([2, 3])`` (ReduceMean), GoogLeNet-style LocalResponseNorm (which
torch writes as Mul/Reshape/Pad/AveragePool3d/If/Pow/Div, recognised as one local_response_norm), and
the export side of those: even-window LRN and vector matmuls run in ONNX Runtime and round-trip."""
from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import onnx
import pytest
torch = pytest.importorskip("torch")  # the reference these tests compare with
nn = torch.nn
F = torch.nn.functional
from onnx import helper

import cnngraph
from cnngraph.onnx import import_onnx
from cnngraph.onnx.exporter import spec_to_onnx
from onnx_build import compare, make_model, ort_run, rand

torch.manual_seed(0)


class ShuffleNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 12, 3, 2, 1), nn.BatchNorm2d(12)
        self.g = nn.Conv2d(12, 12, 1, groups=3)
        self.dw, self.b2 = nn.Conv2d(12, 12, 3, 1, 1, groups=12), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 7)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        y = F.relu(self.g(x))
        b, c, h, w = y.size()
        y = y.view(b, 3, c // 3, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)   # channel shuffle
        x = F.relu(x + self.b2(self.dw(y)))
        return self.fc(x.mean([2, 3]))


class ShuffleNetV2ish(nn.Module):
    """ShuffleNet V2's unit: channel split (x.chunk → Slice or Split), a branch, concat, shuffle."""

    def __init__(self):
        super().__init__()
        self.c, self.b1 = nn.Conv2d(3, 16, 3, 2, 1), nn.Conv2d(8, 8, 1)
        self.dw, self.b2 = nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.c(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, F.relu(self.b2(self.dw(F.relu(self.b1(b)))))], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DenseNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.bn1, self.c1 = nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3, 1, 1)
        self.bn2, self.c2, self.fc = nn.BatchNorm2d(12), nn.Conv2d(12, 4, 3, 1, 1), nn.Linear(16, 5)

    def forward(self, x):
        x = self.c(x)
        x = torch.cat([x, self.c1(F.relu(self.bn1(x)))], 1)
        x = torch.cat([x, self.c2(F.relu(self.bn2(x)))], 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.avg_pool2d(x, 2), 1), 1))


class SqueezeNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.sq = nn.Conv2d(3, 16, 3, 2), nn.Conv2d(16, 4, 1)
        self.e1, self.e3, self.cl = nn.Conv2d(4, 8, 1), nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(16, 5, 1)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c(x)), 3, 2, ceil_mode=True)
        q = F.relu(self.sq(x))
        x = F.dropout(torch.cat([F.relu(self.e1(q)), F.relu(self.e3(q))], 1), 0.5, training=False)
        return torch.flatten(F.adaptive_avg_pool2d(F.relu(self.cl(x)), 1), 1)


class VGGish(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c, self.fc = nn.Conv2d(8, 16, 3, padding=1), nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b(F.relu(self.a(x)))), 2)
        return self.fc(torch.flatten(F.max_pool2d(F.relu(self.c(x)), 2), 1))


class AlexNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 5, 2, 2), nn.Conv2d(8, 12, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(12, 16), nn.Linear(16, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 3, 2)
        x = torch.flatten(F.max_pool2d(F.relu(self.c2(x)), 3, 2), 1)
        return self.fc2(F.dropout(F.relu(self.fc1(F.dropout(x, 0.5, False))), 0.5, False))


class MobileNetV3ish(nn.Module):
    """Hardswish activations and a hardsigmoid squeeze-excitation gate (MobileNet V2's relu6 and
    inverted residual too)."""

    def __init__(self):
        super().__init__()
        self.c, self.e = nn.Conv2d(3, 16, 3, 2, 1), nn.Conv2d(16, 32, 1)
        self.dw, self.p = nn.Conv2d(32, 32, 3, 1, 1, groups=32), nn.Conv2d(32, 16, 1)
        self.se1, self.se2, self.fc = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1), nn.Linear(16, 5)

    def forward(self, x):
        x = F.hardswish(self.c(x))
        x = x + self.p(F.relu6(self.dw(F.relu6(self.e(x)))))
        x = x * F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Decoderish(nn.Module):
    """An encoder-decoder (segmentation/autoencoder style): ConvTranspose upsampling and a skip concat."""

    def __init__(self):
        super().__init__()
        self.e1, self.e2 = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 16, 3, 2, 1)
        self.d1 = nn.ConvTranspose2d(16, 8, 3, 2, 1, output_padding=1)
        self.d2 = nn.ConvTranspose2d(16, 4, 2, 2)

    def forward(self, x):
        a = F.relu(self.e1(x))
        y = F.relu(self.d1(F.relu(self.e2(a))))
        return self.d2(torch.cat([y, a], 1))


class FPNish(nn.Module):
    """A feature pyramid / U-Net decoder that upsamples with F.interpolate (Resize): nearest, bilinear, bicubic."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        a = F.relu(self.c1(x))
        b = F.relu(self.c2(a))
        top = a + F.interpolate(b, scale_factor=2, mode="nearest")
        return self.head(F.interpolate(top, scale_factor=2, mode="bilinear", align_corners=False)
                         + F.interpolate(top, scale_factor=2, mode="bicubic", align_corners=True))


class GoogLeNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 5, 2, 2)
        self.lrn1 = nn.LocalResponseNorm(5)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1)
        self.lrn2 = nn.LocalResponseNorm(4, alpha=1e-2, beta=0.7, k=2.0)   # even: torch's own window
        self.b1, self.b2 = nn.Conv2d(12, 4, 1), nn.Conv2d(12, 6, 3, padding=1)
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        x = self.lrn1(F.max_pool2d(F.relu(self.c1(x)), 3, 2, ceil_mode=True))
        x = self.lrn2(F.relu(self.c2(x)))
        x = torch.cat([F.relu(self.b1(x)), F.relu(self.b2(x))], 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _structure(model):
    return [(layer.id, layer.type, tuple(model.graph.nodes[layer.id]["inputs"]), layer.params.model_dump())
            for layer in model.spec.layers]


def _export(net, path, opset, dynamic):
    net.eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 16, 16),), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}} if dynamic else None)


@pytest.mark.parametrize("opset,dynamic", [(11, True), (13, False), (17, True)])
@pytest.mark.parametrize("net_cls", [ShuffleNetish, GoogLeNetish, ShuffleNetV2ish, DenseNetish, SqueezeNetish,
                                     VGGish, AlexNetish, MobileNetV3ish, Decoderish, FPNish])
def test_torch_nets_import_match_and_round_trip(net_cls, opset, dynamic, tmp_path):
    torch.manual_seed(1)
    net = net_cls()
    _export(net, tmp_path / "a.onnx", opset, dynamic)
    model = import_onnx(tmp_path / "a.onnx")
    types = [layer.type for layer in model.spec.layers]
    if net_cls is GoogLeNetish:
        assert types.count("local_response_norm") == 2 and "pow" not in types
        lrn2 = next(layer for layer in model.spec.layers if layer.id == "lrn2")
        assert (lrn2.params.size, lrn2.params.window, lrn2.params.k) == (4, "torch", 2.0)
    elif net_cls is ShuffleNetish:
        assert {"reshape", "transpose", "global_avg_pool2d"} <= set(types)
    elif net_cls is ShuffleNetV2ish:
        assert types.count("slice") == 2 and "concat" in types
    elif net_cls is FPNish:
        assert types.count("upsample2d") == 3
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(model.forward({"x": x.numpy()})["y"], want, rtol=1e-4, atol=1e-5)
    # export → check → ONNX Runtime → import: same structure, bit-identical weights
    proto = spec_to_onnx(model.spec, model.params.numpy(), opset=max(opset, 13))
    onnx.checker.check_model(proto, full_check=True)
    np.testing.assert_allclose(ort_run(proto, {"x": x.numpy()})["y"], want, rtol=1e-4, atol=1e-5)
    back = import_onnx(proto)
    assert _structure(back) == _structure(model)
    assert sorted(back.params) == sorted(model.params)
    assert all(back.params[k].tobytes() == model.params[k].tobytes() for k in model.params)


def test_imported_lrn_net_fine_tunes():
    torch.manual_seed(2)
    net = GoogLeNetish()
    with tempfile.TemporaryDirectory() as d:
        _export(net, os.path.join(d, "lrn.onnx"), 17, True)
        model = import_onnx(os.path.join(d, "lrn.onnx"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 5, 8)
    losses = []
    for _ in range(4):
        out = model.forward({"x": x}, training=True)["y"]
        p = np.exp(out - out.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        losses.append(float(-np.log(p[np.arange(8), y]).mean()))
        g = p.copy()
        g[np.arange(8), y] -= 1
        grads = model.backward({"y": (g / 8).astype(np.float32)})
        assert np.abs(grads["c1.weight"]).sum() > 0
        for n in model.trainable_names:
            model.params[n] = model.params[n] - 0.5 * grads[n]
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("window", ["torch", "onnx"])
def test_even_lrn_exports_for_onnxruntime_and_round_trips(window):
    spec = {"name": "lrn", "inputs": {"x": {"shape": [6, 3, 4]}},
            "layers": [{"id": "n", "type": "local_response_norm", "size": 4, "alpha": 0.3, "beta": 0.6, "k": 1.5,
                        "window": window}], "outputs": ["n"]}
    model = cnngraph.compile(spec)
    proto = spec_to_onnx(model.spec, model.params.numpy(), opset=17)
    x = rand(2, 6, 3, 4)
    np.testing.assert_allclose(ort_run(proto, {"x": x})["n"], model.forward({"x": x})["n"], rtol=1e-5, atol=1e-6)
    back = import_onnx(proto)
    assert _structure(back) == _structure(model)


@pytest.mark.parametrize("a,b", [((4,), (4, 5)), ((2, 3, 4), (4,)), ((2, 3, 4), (4, 5)), ((4,), (2, 4, 3))])
def test_matmul_of_unequal_ranks_exports(a, b):
    spec = {"name": "mm", "inputs": {"a": {"shape": list(a)}, "b": {"shape": list(b)}},
            "layers": [{"id": "m", "type": "matmul", "inputs": ["a", "b"]}], "outputs": ["m"]}
    model = cnngraph.compile(spec)
    proto = spec_to_onnx(model.spec, {}, opset=17)
    onnx.checker.check_model(proto, full_check=True)
    feeds = {"a": rand(3, *a), "b": rand(3, *b)}
    np.testing.assert_allclose(ort_run(proto, feeds)["m"], model.forward(feeds)["m"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("opset,keepdims,axes", [(13, 0, [2, 3]), (13, 1, [-1, -2]), (18, 0, [3, 2])])
def test_spatial_reduce_is_global_pooling(op, opset, keepdims, axes):
    if opset >= 18:
        node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)
        inits = {"axes": np.array(axes, np.int64)}
    else:
        node = helper.make_node(op, ["x"], ["y"], keepdims=keepdims, axes=axes)
        inits = {}
    compare(make_model([node], {"x": (2, 3, 5, 4)}, inits, opset=opset), {"x": rand(2, 3, 5, 4)})


def test_reductions_over_the_batch_are_reported():
    node = helper.make_node("ReduceMean", ["x"], ["y"], keepdims=0, axes=[0, 1], name="rm")
    with pytest.raises(cnngraph.CnnGraphError, match=r"rm.*batch axis is not supported"):
        import_onnx(make_model([node], {"x": (2, 3, 5, 4)}))


def test_dead_nodes_are_skipped():
    # an unsupported node whose output nothing uses does not block the import
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Cos", ["x"], ["unused"], name="dead")]
    compare(make_model(nodes, {"x": (2, 3)}), {"x": rand(2, 3)})
