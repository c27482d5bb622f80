"""ONNX Einsum imports as the ``einsum`` layer (per-sample subscripts): torch.einsum in attention, bilinear pooling
and with a weight matches PyTorch forward and backward and exports back; equations whose batch axis is not first
are arranged (layouts.py); ellipses and sums over the batch are refused."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

from cnngraph.onnx import OnnxError, export_onnx, import_onnx
from onnx_build import compare, make_model, ort_run, rand

torch = pytest.importorskip("torch")   # the reference these tests compare with
nn = torch.nn
N = helper.make_node


class EinsumNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.proj = nn.Parameter(torch.randn(8, 6) * 0.3)
        self.fc = nn.Linear(8 * 8 + 6, 5)

    def forward(self, x):
        f = torch.relu(self.conv(x))                                  # (N, 8, 6, 6)
        bilinear = torch.einsum("nchw,ndhw->ncd", f, f) / 36          # bilinear pooling
        t = f.flatten(2)                                              # (N, 8, 36)
        att = torch.einsum("ncl,ncm->nlm", t, t).softmax(-1)          # attention over pixels
        mixed = torch.einsum("nlm,ncm->ncl", att, t)
        tokens = torch.einsum("ncl,ce->nle", mixed, self.proj)        # a weight
        time_major = torch.einsum("lne->nle", tokens.transpose(0, 1))
        return self.fc(torch.cat([bilinear.flatten(1), time_major.mean(1)], 1))


@pytest.mark.parametrize("opset", [13, 17])
def test_torch_einsum_matches_forward_backward_and_exports_back(opset, tmp_path):
    torch.manual_seed(0)
    net = EinsumNet().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 6, 6),), str(tmp_path / "m.onnx"), dynamo=False,
                          opset_version=opset, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    m = import_onnx(str(tmp_path / "m.onnx"))
    assert sum(layer.type == "einsum" for layer in m.spec.layers) == 5
    x = rand(3, 3, 6, 6)
    xt = torch.tensor(x, requires_grad=True)
    yt = net(xt)
    y = m.forward({"x": x}, training=True)["y"]
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    gy = rand(*y.shape)
    yt.backward(torch.tensor(gy))
    grads = m.backward({"y": gy})
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    weight = next(name for name in m.trainable_names if m.params[name].shape == (8, 6))   # the einsum weight
    np.testing.assert_allclose(grads[weight], net.proj.grad.numpy(), rtol=1e-4, atol=1e-5)
    proto = export_onnx(m)
    onnx.checker.check_model(proto, full_check=True)
    np.testing.assert_allclose(ort_run(proto, {"x": x})["y"], yt.detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("equation, inputs, inits", [
    ("bij,bjk->bik", {"x": (2, 3, 4), "z": (2, 4, 5)}, {}),
    ("bij,jk", {"x": (2, 3, 4)}, {"w": rand(4, 6)}),             # implicit output: 'bik'
    ("bij->ji b".replace(" ", ""), {"x": (2, 3, 4)}, {}),           # batch last: arranged
    ("ibj,bj->ib", {"x": (2, 3, 4), "z": (2, 4)}, {}),               # batch second in an operand
])
def test_einsum_nodes_match_onnxruntime(equation, inputs, inits):
    names = list(inputs) + list(inits)
    chain = [N("Einsum", names, ["e"], equation=equation)]
    if equation.startswith("bij->"):   # back to batch first for the graph output
        chain.append(N("Transpose", ["e"], ["y"], perm=[2, 0, 1]))
    elif equation.startswith("ibj"):
        chain = [N("Transpose", ["x"], ["xt"], perm=[1, 0, 2]), N("Einsum", ["xt", "z"], ["e"], equation=equation),
                 N("Transpose", ["e"], ["y"], perm=[1, 0])]
    else:
        chain[0].output[0] = "y"
    model = make_model(chain, inputs, inits)
    feeds = {k: rand(3, *shape[1:]) for k, shape in inputs.items()}
    m = compare(model, feeds)
    np.testing.assert_allclose(ort_run(export_onnx(m), feeds)["y"], m.forward(feeds)["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation, message", [
    ("b...,b...->b...", r"ellipsis \('\.\.\.'\) is not supported"),
    ("bij,bij->ij", r"sums over the batch axis \('b'\)"),
    ("bij,jbk->bik", r"the batch axis must lead every computed operand and the output"),
    ("bii,bij->bij", "repeats a letter"),
])
def test_einsum_refusals_say_why(equation, message):
    model = make_model([N("Einsum", ["x", "z"], ["y"], equation=equation)], {"x": (2, 3, 3), "z": (2, 3, 3)})
    with pytest.raises(OnnxError, match=message):
        import_onnx(model)

