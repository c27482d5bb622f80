"""Networks exported from PyTorch (torch.onnx.export) import into cnngraph and match PyTorch."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
torch = pytest.importorskip("torch")  # the reference these tests compare with
nn = torch.nn
F = torch.nn.functional

from cnngraph.onnx import import_onnx

torch.manual_seed(0)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.layer1 = nn.Sequential(Block(8, 8, 1), Block(8, 16, 2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.layer1(self.stem(x))
        y = F.adaptive_avg_pool2d(y, 1)
        return self.fc(y.view(y.size(0), -1))


class Inception(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.b1 = nn.Conv2d(cin, 4, 1)
        self.b2 = nn.Sequential(nn.Conv2d(cin, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
        self.b3 = nn.Sequential(nn.Conv2d(cin, 2, 1), nn.ReLU6(), nn.Conv2d(2, 4, 5, padding=2))
        self.b4 = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.Conv2d(cin, 3, 1))

    def forward(self, x):
        return torch.cat([F.relu(self.b1(x)), self.b2(x), self.b3(x), F.elu(self.b4(x))], 1)


class InceptionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.1),
                                  nn.MaxPool2d(3, 2, ceil_mode=True))
        self.inc = Inception(8)
        self.drop = nn.Dropout(0.4)
        self.fc = nn.Linear(17, 6)

    def forward(self, x):
        y = self.inc(self.stem(x))
        y = torch.flatten(F.adaptive_max_pool2d(y, 1), 1)
        return F.log_softmax(self.fc(self.drop(F.gelu(y))), dim=1), torch.sigmoid(y)


def _export(net, x, path, opset, names):
    net.eval()
    for m in net.modules():   # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=opset, input_names=["input.image"],
                          output_names=names, dynamic_axes={"input.image": {0: "batch"}},
                          do_constant_folding=False)


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("net_cls,names", [(ResNetish, ["logits"]), (InceptionNet, ["logp", "gate"])])
def test_torch_export_imports_and_matches(net_cls, names, opset, tmp_path):
    net = net_cls()
    x = torch.randn(2, 3, 32, 32)
    _export(net, x, tmp_path / "net.onnx", opset, names)
    model = import_onnx(tmp_path / "net.onnx")
    for batch in (1, 3):
        xb = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            want = net(xb)
        want = [want] if isinstance(want, torch.Tensor) else list(want)
        got = model.forward({"input.image": xb.numpy()})
        for name, w in zip(names, want):
            np.testing.assert_allclose(got[name], w.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    # imported models train: gradients flow to every parameter
    out = model.forward({"input.image": x.numpy()}, training=True)
    grads = model.backward({names[0]: np.ones_like(out[names[0]])})
    assert all(np.isfinite(grads[n]).all() for n in model.trainable_names)
    assert any(np.abs(grads[n]).sum() > 0 for n in model.trainable_names if n.endswith("weight"))


def test_fixed_batch_export_runs_at_any_batch(tmp_path):
    # exported without dynamic axes: Reshape targets hold the export batch size (2), which is the batch
    net = ResNetish().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 32, 32),), str(tmp_path / "f.onnx"), dynamo=False,
                          input_names=["x"], output_names=["y"])
    model = import_onnx(tmp_path / "f.onnx")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(model.forward({"x": x.numpy()})["y"], want, rtol=1e-4, atol=1e-5)


class NormNet(nn.Module):
    """GroupNorm, InstanceNorm2d(affine=True), PReLU (per channel and shared), Softplus and PixelShuffle."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn, self.act = nn.GroupNorm(4, 8), nn.PReLU(8)
        self.inorm, self.act2 = nn.InstanceNorm2d(8, affine=True), nn.PReLU()
        self.shuffle = nn.PixelShuffle(2)
        self.head = nn.Conv2d(2, 4, 3, padding=1)

    def forward(self, x):
        y = self.act(self.gn(self.conv(x)))
        y = self.shuffle(self.act2(self.inorm(y)))
        return F.softplus(self.head(y))


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_torch_norms_prelu_softplus_and_pixel_shuffle_import_and_match(opset, tmp_path):
    torch.manual_seed(2)
    net = NormNet()
    with torch.no_grad():   # affine parameters and slopes away from their initial constants
        for m in (net.gn, net.inorm):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
        net.act.weight.uniform_(-0.5, 0.5)
    _export(net, torch.randn(2, 3, 8, 8), tmp_path / "norm.onnx", opset, ["y"])
    model = import_onnx(tmp_path / "norm.onnx")
    types = [layer["type"] for layer in model.import_result.spec["layers"]]
    assert {"group_norm", "prelu", "pixel_shuffle", "softplus"} <= set(types)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            want = net(x).numpy()
        np.testing.assert_allclose(model.forward({"input.image": x.numpy()})["y"], want, rtol=1e-4, atol=1e-5)


class LayerNormNet(nn.Module):
    """nn.LayerNorm over (C, H, W), and over the channels after a permute to channels-last (ConvNeXt-style),
    CBAM-style channel statistics (mean and max over C), and the element-wise math ops."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.ln_chw = nn.LayerNorm((8, 6, 6))
        self.ln_c = nn.LayerNorm(8, eps=1e-3)
        self.spatial = nn.Conv2d(2, 1, 3, padding=1)
        self.act = nn.SELU()

    def forward(self, x):
        y = self.ln_chw(self.conv(x))
        y = self.ln_c(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        stats = torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)
        y = y * torch.sigmoid(self.spatial(stats))
        y = torch.maximum(self.act(y), F.celu(y, 0.5)) + torch.sqrt(y.abs() + 1) - torch.exp(-y.pow(2)) + torch.erf(y)
        return F.softsign(y) + y.sum(dim=(2, 3), keepdim=True) / torch.log(y.abs() + 2)


@pytest.mark.parametrize("opset", [13, 17])
def test_torch_layer_norm_cbam_statistics_and_math_import_and_match(opset, tmp_path):
    """At opset 17 nn.LayerNorm exports as LayerNormalization (axis -3, and -1 after the permute); at 13 as its
    decomposition, which imports as reduce / pow / unary layers."""
    torch.manual_seed(3)
    net = LayerNormNet()
    with torch.no_grad():
        for m in (net.ln_chw, net.ln_c):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
    _export(net, torch.randn(2, 3, 6, 6), tmp_path / "ln.onnx", opset, ["y"])
    model = import_onnx(tmp_path / "ln.onnx")
    types = [layer["type"] for layer in model.import_result.spec["layers"]]
    assert {"reduce", "maximum", "unary", "selu", "celu"} <= set(types)   # torch writes softsign as Div, Abs, Add
    assert ("layer_norm" in types) == (opset >= 17)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 6, 6)
        with torch.no_grad():
            want = net(x).numpy()
        np.testing.assert_allclose(model.forward({"input.image": x.numpy()})["y"], want, rtol=1e-4, atol=1e-5)
    out = model.forward({"input.image": x.numpy()}, training=True)
    grads = model.backward({"y": np.ones_like(out["y"])})
    assert all(np.isfinite(grads[n]).all() for n in model.trainable_names)
