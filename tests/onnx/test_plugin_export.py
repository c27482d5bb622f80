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
    with pytest.raises(PluginError, match=r"the ONNX export of op type 'relu' already has"):
        exporter.exports("relu")(export_channel_scale)
    assert exporter.EXPORTERS["relu"] is not export_channel_scale


class _ThresholdedReluParams(cnngraph.OpParams):
    alpha: float = 1.0


class _ThresholdedRelu(cnngraph.Op):
    """x where x > alpha, else 0 (ONNX ThresholdedRelu, which cnngraph does not import itself)."""

    type = "test_thresholded_relu"
    Params = _ThresholdedReluParams

    def forward(self, ctx, inputs, params):
        x = inputs[0]
        keep = x > self.p.alpha
        ctx.save(keep=keep)
        return x * keep

    def backward(self, ctx, gy):
        return [gy * ctx.saved["keep"]], {}


class _ThresholdedReluPlugin:
    @cnngraph.hookimpl
    def cnngraph_register_ops(self, registry):
        registry.add(_ThresholdedRelu)


def import_thresholded_relu(imp, node, a):             # as in docs/plugins.md
    x = imp.dyn_of(node.input[0])
    return [imp.emit("test_thresholded_relu", [x], {"alpha": a.get("alpha", 1.0)})]


def export_thresholded_relu(c, lid, op, ins, attrs):
    c.node("ThresholdedRelu", ins, [lid], lid, alpha=float(op.p.alpha))
    return lid


def test_a_plugin_op_imports_once_it_registers_a_handler(tmp_path, monkeypatch):
    from onnx import TensorProto, helper
    from cnngraph.onnx import import_ops
    graph = helper.make_graph(
        [helper.make_node("ThresholdedRelu", ["x"], ["y"], name="act", alpha=0.5)], "thresholded_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])])
    path = tmp_path / "thresholded.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(OnnxError, match=r"ThresholdedRelu"):
        cnngraph.import_onnx(path)
    cnngraph.register_plugin(_ThresholdedReluPlugin(), name="test-thresholded-relu-plugin")
    monkeypatch.setitem(import_ops.HANDLERS, "ThresholdedRelu", import_thresholded_relu)
    model = cnngraph.import_onnx(path)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(model.forward({"x": x})["y"], want, rtol=1e-6, atol=1e-7)
    # and back out: the same ThresholdedRelu through the plugin's exporter
    monkeypatch.setitem(exporter.EXPORTERS, "test_thresholded_relu", export_thresholded_relu)
    exporter.export_onnx(model, tmp_path / "back.onnx")
    (again,) = ort.InferenceSession(str(tmp_path / "back.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(again, want, rtol=1e-6, atol=1e-7)


def test_a_plugin_cannot_replace_a_builtin_import():
    from cnngraph.errors import PluginError
    from cnngraph.onnx import import_ops
    with pytest.raises(PluginError, match=r"the import of ONNX op type 'Conv' already has"):
        import_ops.handles("Conv")(import_thresholded_relu)


PLUGIN_FILE = '''
import cnngraph
from cnngraph.onnx.import_ops import handles


class ThresholdedReluParams(cnngraph.OpParams):
    alpha: float = 1.0


class ThresholdedRelu(cnngraph.Op):
    type = "cli_thresholded_relu"
    Params = ThresholdedReluParams

    def forward(self, ctx, inputs, params):
        return inputs[0] * (inputs[0] > self.p.alpha)


@cnngraph.hookimpl
def cnngraph_register_ops(registry):
    registry.add(ThresholdedRelu)


@handles("ThresholdedRelu")
def import_thresholded_relu(imp, node, a):
    return [imp.emit("cli_thresholded_relu", [imp.dyn_of(node.input[0])], {"alpha": a.get("alpha", 1.0)})]
'''


def test_import_onnx_cli_loads_plugin_files_for_their_importers(tmp_path, capsys):
    from onnx import TensorProto, helper
    from cnngraph.cli import main
    from cnngraph.onnx import import_ops
    graph = helper.make_graph(
        [helper.make_node("ThresholdedRelu", ["x"], ["y"], name="act", alpha=0.25)], "thresholded_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3, 3])])
    model = tmp_path / "t.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    plugin = tmp_path / "thresholded.py"
    plugin.write_text(PLUGIN_FILE)
    try:
        assert main(["import-onnx", str(model), "-o", str(tmp_path / "t.yaml"), "--plugin", str(plugin),
                     "--check"]) == 0
    finally:
        import_ops.HANDLERS.pop("ThresholdedRelu", None)   # other tests import without the plugin
    out = capsys.readouterr().out
    text = (tmp_path / "t.yaml").read_text()
    assert "cli_thresholded_relu" in text and "--allow-plugins" in text
    assert "max" in out.lower()
    # the spec names the plugin (relative to itself), so it loads without --plugin
    import yaml
    assert yaml.safe_load(text)["plugins"] == ["thresholded.py"]
    assert main(["validate", str(tmp_path / "t.yaml"), "--allow-plugins"]) == 0


@pytest.mark.parametrize("wrong", [False, True])
def test_export_onnx_checks_a_plugin_exporters_numbers_in_onnx_runtime(tmp_path, monkeypatch, capsys, wrong):
    """The ONNX checker catches structure only: a plugin exporter with the wrong maths (here the scale left out)
    must not give a model that silently computes something else. The CLI compares with ONNX Runtime whenever a
    plugin exporter wrote part of the model."""
    from cnngraph.cli import main

    def export_without_scale(c, lid, op, ins, attrs):
        c.node("Identity", [ins[0]], [lid], lid)
        return lid
    monkeypatch.setitem(exporter.EXPORTERS, "channel_scale", export_without_scale if wrong else export_channel_scale)
    model = cnngraph.compile(SPEC, allow_plugins=True, seed=0)
    params = model.params.numpy()
    params["scale.scale"] = np.linspace(0.5, 2.0, params["scale.scale"].size).reshape(params["scale.scale"].shape)
    np.savez(tmp_path / "w.npz", **params)
    code = main(["export-onnx", SPEC, "--allow-plugins", "--params", str(tmp_path / "w.npz"), "-o", str(tmp_path / "m.onnx")])
    out, err = capsys.readouterr()
    assert "check vs ONNX Runtime (batch 2 and 3, random input)" in out
    if wrong:
        assert code == 1 and "gives other outputs in ONNX Runtime than cnngraph" in err
        assert "plugin exporters wrote channel_scale (plugin" in err and "do not deploy it" in err
    else:
        assert code == 0, err


def test_export_onnx_check_with_normalization_of_a_sequence_model(tmp_path, capsys):
    """--check feeds ONNX Runtime raw inputs and cnngraph the normalised ones; a 1-D model's (C, L) input takes
    the per-channel mean/std as (C, 1) (they were once shaped for images only)."""
    from cnngraph.cli import main
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "seq.npz", x=rng.uniform(0, 9, (40, 2, 16)).astype(np.float32), y=rng.integers(0, 2, 40))
    spec = {"name": "seq", "inputs": {"x": {"shape": [2, 16]}},
            "layers": [{"id": "c", "type": "conv1d", "out_channels": 3, "kernel_size": 3},
                       {"id": "p", "type": "global_avg_pool2d"}, {"id": "f", "type": "flatten"},
                       {"id": "fc", "type": "dense", "out_features": 2}],
            "outputs": ["fc"],
            "train": {"data": {"dataset": "npz", "path": str(tmp_path / "seq.npz")}, "epochs": 1, "batch_size": 8}}
    import yaml
    (tmp_path / "seq.yaml").write_text(yaml.safe_dump(spec))
    assert main(["train", str(tmp_path / "seq.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["export-onnx", str(tmp_path / "seq.yaml"), "--checkpoint", str(tmp_path / "run"),
                 "--include-normalization", "--check", "-o", str(tmp_path / "seq.onnx")]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    diff = float(out.split("max relative difference ")[1].split()[0])
    assert diff < 1e-5
