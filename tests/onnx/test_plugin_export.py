"""A plugin op gets an ONNX export by registering a function (docs/plugins.md); without one the export
names the op and says how."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import cnngraph  # noqa: E402
from cnngraph.onnx import exporter  # noqa: E402
from cnngraph.onnx.common import OnnxError  # noqa: E402

SPEC = "specs/examples/uses_my_layers.yaml"


def export_channel_scale(c, lid, op, ins, attrs):      # as in docs/plugins.md
    scale = np.asarray(c.params[f"{lid}.scale"], np.float32)
    shape = (-1,) + (1,) * (len(attrs["out_shape"]) - 1)
    c.node("Mul", [ins[0], c.const(lid, "scale", scale.reshape(shape))], [lid], lid)
    return lid


def test_a_plugin_op_exports_once_it_registers_a_function(tmp_path, monkeypatch):
    model = cnngraph.compile(SPEC, allow_plugins=True, seed=0)
    model.params["scale.scale"] = np.linspace(0.5, 2.0, model.params["scale.scale"].size)
    with pytest.raises(OnnxError, match=r"no ONNX export for op type: channel_scale \(scale\) .*docs/plugins.md"):
        exporter.export_onnx(model, tmp_path / "a.onnx")
    monkeypatch.setitem(exporter.EXPORTERS, "channel_scale", export_channel_scale)
    exporter.export_onnx(model, tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")), full_check=True)
    x = np.random.default_rng(0).standard_normal((2, *model.spec.inputs["image"].shape)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
    want = model.forward({"image": x})[model.spec.outputs[0]]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    back = cnngraph.import_onnx(tmp_path / "m.onnx")
    assert "mul" in {layer["type"] for layer in back.import_result.spec["layers"]}
    # a spec path that names plugin files exports with the same consent as load_spec
    with pytest.warns(UserWarning, match="random initial weights"):
        cnngraph.export_onnx(SPEC, tmp_path / "s.onnx", allow_plugins=True)
    onnx.checker.check_model(onnx.load(str(tmp_path / "s.onnx")), full_check=True)


def test_a_plugin_cannot_replace_a_builtin_export():
    from cnngraph.errors import PluginError
    with pytest.raises(PluginError, match=r"op type 'relu' already has an ONNX export"):
        exporter.exports("relu")(export_channel_scale)
    assert exporter.EXPORTERS["relu"] is not export_channel_scale
