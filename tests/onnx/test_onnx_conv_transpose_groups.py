"""Grouped ConvTranspose (group > 1, depthwise included): import vs ONNX Runtime, PyTorch's
nn.ConvTranspose2d(groups=...) vs PyTorch, and export → ONNX Runtime → import again. ConvTranspose with
output_shape or SAME auto_pad (pads derived as the ONNX specification says) vs ONNX Runtime."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_build import compare, make_model, ort_run, rand

from cnngraph.onnx import export_onnx, import_onnx

N = helper.make_node
X4 = (2, 4, 5, 6)

# name: (ConvTranspose attributes, weight (C_in, C_out/group, kH, kW), with a bias)
CASES = {
    "group2": ({"group": 2, "strides": [2, 2], "pads": [1, 0, 1, 2], "output_padding": [1, 0]}, (4, 3, 3, 3), True),
    "depthwise": ({"group": 4, "strides": [2, 1], "dilations": [1, 2]}, (4, 1, 2, 3), False),
    "group4_wide": ({"group": 4, "pads": [1, 1, 1, 1]}, (4, 2, 3, 3), True),
}


def model_for(case):
    attrs, wshape, bias = CASES[case]
    inits = {"w": rand(*wshape)} | ({"b": rand(wshape[1] * attrs["group"])} if bias else {})
    return make_model([N("ConvTranspose", ["x", "w"] + (["b"] if bias else []), ["y"], **attrs)], {"x": X4}, inits,
                      opset=13)


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_and_export_match_onnxruntime(case):
    feeds = {"x": rand(3, *X4[1:])}
    m = compare(model_for(case), feeds, rtol=1e-5, atol=1e-5)
    proto = export_onnx(m)
    onnx.checker.check_model(proto, full_check=True)
    np.testing.assert_allclose(ort_run(proto, feeds)["y"], m.forward(feeds)["y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(import_onnx(proto).forward(feeds)["y"], m.forward(feeds)["y"])


def test_torch_grouped_decoder_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                        nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1, groups=8),   # depthwise
                        nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, groups=2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 5, 6),), str(tmp_path / "m.onnx"), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}})
    m = import_onnx(tmp_path / "m.onnx")
    x = torch.randn(3, 3, 5, 6)
    with torch.no_grad():
        want = net(x).numpy()
    got = m.forward({"x": x.numpy()})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ort_run(export_onnx(m), {"x": x.numpy()})["y"], got, rtol=1e-5, atol=1e-5)


# name: (input shape, weight shape, ConvTranspose attributes); natural output sizes in the comments
SIZED = {
    "crop_odd": ((2, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "output_shape": [10, 12]}),        # 11, 13
    "crop_even_pads_ignored": ((2, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "output_shape": [9, 11],
                                                            "pads": [1, 0, 0, 1]}),
    "same_upper_given": ((2, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "output_shape": [10, 12],
                                                      "auto_pad": "SAME_UPPER"}),
    "same_lower_given": ((2, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "output_shape": [10, 12],
                                                      "auto_pad": "SAME_LOWER"}),
    "same_upper": ((2, 4, 5, 6), (4, 3, 4, 3), {"strides": [2, 3], "auto_pad": "SAME_UPPER"}),
    "same_lower_dilated": ((2, 4, 5, 6), (4, 3, 3, 2), {"strides": [2, 2], "dilations": [2, 1],
                                                        "auto_pad": "SAME_LOWER"}),
    "grow_past_natural": ((2, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "output_shape": [12, 14]}),
    "grouped_1d": ((2, 4, 7), (4, 2, 3), {"strides": [3], "group": 2, "output_shape": [20]}),         # 21
    "volume": ((2, 2, 3, 4, 5), (2, 3, 2, 3, 3), {"strides": [2, 2, 2], "output_shape": [5, 8, 10]}),  # 6, 9, 11
}


@pytest.mark.parametrize("case", sorted(SIZED))
def test_output_shape_and_same_auto_pad_match_onnxruntime(case):
    xshape, wshape, attrs = SIZED[case]
    proto = make_model([N("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)], {"x": xshape},
                       {"w": rand(*wshape), "b": rand(wshape[1] * attrs.get("group", 1))}, opset=17)
    feeds = {"x": rand(3, *xshape[1:])}
    m = compare(proto, feeds, rtol=1e-5, atol=1e-5)
    want = attrs.get("output_shape") or [n * s for n, s in zip(xshape[2:], attrs["strides"])]
    assert m.forward(feeds)["y"].shape[2:] == tuple(want)
    again = export_onnx(m)   # as explicit pads and output_padding
    np.testing.assert_allclose(ort_run(again, feeds)["y"], m.forward(feeds)["y"], rtol=1e-5, atol=1e-5)
