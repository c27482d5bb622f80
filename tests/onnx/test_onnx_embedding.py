"""ONNX Gather of a constant table by computed indices (nn.Embedding: a class-conditional CNN's label lookup)
imports as the ``embedding`` layer, matches PyTorch forward and backward, and exports back as Gather."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from cnngraph.onnx import export_onnx, import_onnx
from onnx import helper

from onnx_build import compare, make_model, ort_run, rand

torch = pytest.importorskip("torch")   # the reference these tests compare with
nn = torch.nn


class Conditional(nn.Module):
    """A class-conditional CNN: an int64 label looked up in nn.Embedding scales the conv features (FiLM-like)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.embed = nn.Embedding(5, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x, label):
        f = torch.relu(self.conv(x)) * self.embed(label)[:, :, None, None]
        return self.fc(f.mean((2, 3)))


def test_embedding_lookup_by_a_label_input_imports_trains_and_exports_back(tmp_path):
    """Gather of a table by computed (int64 input) indices is an ``embedding`` layer: forward and gradients equal
    PyTorch's (the table's rows sum the gradients of repeated labels), and it exports back as Gather."""
    torch.manual_seed(0)
    net = Conditional().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 6, 6), torch.tensor([1, 3])), str(tmp_path / "m.onnx"), dynamo=False,
                          opset_version=17, input_names=["x", "label"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "label": {0: "n"}, "y": {0: "n"}})
    m = import_onnx(str(tmp_path / "m.onnx"))
    assert [layer.type for layer in m.spec.layers].count("embedding") == 1
    x, label = rand(4, 3, 6, 6), np.array([0, 4, 4, 2], np.int64)
    xt = torch.tensor(x, requires_grad=True)
    yt = net(xt, torch.tensor(label))
    y = m.forward({"x": x, "label": label}, training=True)["y"]
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    gy = rand(*y.shape)
    yt.backward(torch.tensor(gy))
    grads = m.backward({"y": gy})
    table = next(n for n in m.trainable_names if m.params[n].shape == (5, 8))
    np.testing.assert_allclose(grads[table], net.embed.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    proto = export_onnx(m)
    onnx.checker.check_model(proto, full_check=True)
    np.testing.assert_allclose(ort_run(proto, {"x": x, "label": label})["y"], yt.detach().numpy(), rtol=1e-4,
                               atol=1e-5)


def test_embedding_of_argmax_indices_matches_onnxruntime():
    """Whole numbers computed as floats (ArgMax, cast to int64 in ONNX) index the table too."""
    N = helper.make_node
    nodes = [N("ArgMax", ["x"], ["a"], axis=1, keepdims=0), N("Cast", ["a"], ["ai"], to=onnx.TensorProto.INT64),
             N("Gather", ["w", "ai"], ["y"])]
    m = compare(make_model(nodes, {"x": (2, 4, 5)}, {"w": rand(4, 3)}), {"x": rand(3, 4, 5)})
    assert [layer.type for layer in m.spec.layers][-1] == "embedding"
