"""Gather with constant indices on a computed tensor (the `take` op): import vs ONNX Runtime, PyTorch's
x[:, [2, 0, 1]] / x[:, :, -1] / index_select vs PyTorch, export → ONNX Runtime, and the refusals."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_build import compare, make_model, ort_run, rand

from cnngraph.onnx import OnnxError, export_onnx, import_onnx

N = helper.make_node
X4 = (2, 4, 5, 6)
I64 = np.int64

# name: (axis, indices)
CASES = {
    "scalar_axis1": (1, np.array(2, I64)),
    "scalar_negative_axis2": (2, np.array(-1, I64)),
    "list_repeats_axis1": (1, np.array([3, 0, 3, 1], I64)),
    "bgr_axis1": (1, np.array([2, 0, 1], I64)),
    "list_negative_axis3": (3, np.array([-1, 0, -2, -1], I64)),
    "list_axis_minus2": (-2, np.array([4, 0], I64)),
    "single_list_axis3": (3, np.array([5], I64)),   # a 1-D index keeps the axis
}


def gather_model(axis, idx):
    return make_model([N("Gather", ["x", "i"], ["y"], axis=axis)], {"x": X4}, {"i": idx}, opset=13)


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_matches_onnxruntime(case):
    model = gather_model(*CASES[case])
    m = compare(model, {"x": rand(3, *X4[1:])}, rtol=0, atol=0)
    assert [layer.type for layer in m.spec.layers][-1] == "take"


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_round_trip_matches_onnxruntime(case):
    m = import_onnx(gather_model(*CASES[case]))
    proto = export_onnx(m)
    onnx.checker.check_model(proto, full_check=True)
    feeds = {"x": rand(3, *X4[1:])}
    np.testing.assert_array_equal(ort_run(proto, feeds)["y"], m.forward(feeds)["y"])
    np.testing.assert_array_equal(import_onnx(proto).forward(feeds)["y"], m.forward(feeds)["y"])


def test_gradient_accumulates_repeated_indices():
    m = import_onnx(gather_model(1, np.array([3, 0, 3, 3], I64)))
    m.forward({"x": rand(2, *X4[1:])}, grad=True)
    dx = m.backward({"y": np.ones((2, 4, 5, 6), np.float32)})["x"]
    np.testing.assert_array_equal(dx[:, :, 0, 0], [[1, 0, 0, 3]] * 2)


@pytest.mark.parametrize("nodes, inits, message", [
    ([N("Gather", ["x", "i"], ["y"], axis=0)], {"i": np.array([1, 0], I64)}, "along the batch axis"),
    ([N("Gather", ["x", "i"], ["y"], axis=-4)], {"i": np.array(0, I64)}, "along the batch axis"),
    ([N("Gather", ["x", "i"], ["y"], axis=1)], {"i": np.array([[0, 1]], I64)}, r"indices of shape \(1, 2\)"),
    ([N("Gather", ["x", "i"], ["y"], axis=1)], {"i": np.array([4], I64)}, "out of range"),
    ([N("ArgMax", ["x"], ["a"], axis=1, keepdims=0), N("Cast", ["a"], ["ai"], to=onnx.TensorProto.INT64),
      N("Gather", ["x", "ai"], ["y"], axis=1)], {}, "as an embedding lookup only"),
])
def test_refusals_are_clear(nodes, inits, message):
    with pytest.raises(OnnxError, match=message):
        import_onnx(make_model(nodes, {"x": X4}, inits, opset=13))


def pick_net(torch):
    class Pick(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.register_buffer("cols", torch.tensor([4, 0, 4], dtype=torch.int64))

        def forward(self, x):
            bgr = x[:, [2, 0, 1]]                                # RGB ↔ BGR
            h = self.conv(bgr)
            last_row = h[:, :, -1]                               # (N, 4, W)
            cols = h.index_select(3, self.cols)                  # (N, 4, H, 3)
            return h + last_row[:, :, None, :], cols, h[:, 1]

    return Pick().eval()


@pytest.mark.parametrize("opset", [13, 17])
def test_torch_export_matches_torch(tmp_path, opset):
    torch = pytest.importorskip("torch")
    net = pick_net(torch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 6, 7),), str(tmp_path / "m.onnx"), dynamo=False,
                          opset_version=opset, input_names=["x"], output_names=["a", "b", "c"],
                          dynamic_axes={"x": {0: "batch"}})
    m = import_onnx(tmp_path / "m.onnx")
    assert "take" in {layer.type for layer in m.spec.layers}
    x = torch.randn(3, 3, 6, 7)
    with torch.no_grad():
        want = [t.numpy() for t in net(x)]
    got = m.forward({"x": x.numpy()})
    for k, w in zip("abc", want):
        np.testing.assert_allclose(got[k], w, rtol=1e-5, atol=1e-5, err_msg=k)
    proto = export_onnx(m)
    again = ort_run(proto, {"x": x.numpy()})
    for k in "abc":
        np.testing.assert_allclose(again[k], got[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_check_op_take():
    r = subprocess.run([sys.executable, "-m", "cnngraph.cli", "check-op", "take"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout
