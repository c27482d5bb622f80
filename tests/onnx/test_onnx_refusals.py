"""Models cnngraph must refuse clearly rather than import with wrong numbers (from an ONNX probe), and
the one it now imports (integer image data cast to float)."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
torch = pytest.importorskip("torch")  # the reference these tests compare with
nn = torch.nn
from onnx import TensorProto as T
from onnx import helper as H
from onnx import numpy_helper as NH

from cnngraph.onnx import OnnxError, import_onnx
from onnx_build import ort_run


def _model(nodes, inputs, outputs, inits=(), opset=17):
    m = H.make_model(H.make_graph(nodes, "g", inputs, outputs, list(inits)), opset_imports=[H.make_opsetid("", opset)])
    m.ir_version = 9
    return m


def _vi(name, shape, elem=T.FLOAT):
    return H.make_tensor_value_info(name, elem, shape)


def _torch(module, opset=17, **kw):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 4, 6, 6),), f, input_names=["x"], dynamic_axes={"x": {0: "N"}},
                          dynamo=False, opset_version=opset, **kw)
    return onnx.load_from_string(f.getvalue())


class _DivByBatch(torch.nn.Module):
    def forward(self, t):
        return t / t.shape[0]


class _ZerosOfBatch(torch.nn.Module):
    def forward(self, t):
        return t + torch.zeros(t.shape[0], 4, 1, 1)


def test_the_batch_size_used_as_a_value_is_refused_and_never_shown_as_the_stand_in():
    with pytest.raises(OnnxError, match=r"is computed from the batch size .* cannot use it as a value") as info:
        import_onnx(_torch(_DivByBatch()))
    assert "999983" not in str(info.value)


def test_a_constant_of_the_batch_size_is_a_constant_layer_of_any_batch():
    """torch.zeros(t.shape[0], ...) (ConstantOfShape of Shape(t)) becomes a constant layer that t lends its batch
    size to: no array of the batch stand-in's size is built, and it runs at any batch size."""
    m = import_onnx(_torch(_ZerosOfBatch()))
    x = np.random.default_rng(0).standard_normal((5, 4, 6, 6)).astype(np.float32)
    (y,) = m.forward({"x": x}).values()
    np.testing.assert_array_equal(y, x)


def test_training_mode_exports_are_refused():
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm2d(4)).train()
    with pytest.raises(OnnxError, match="training-mode BatchNormalization"):
        import_onnx(_torch(net, opset=13, training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False))
    m = _model([H.make_node("Dropout", ["x", "r", "t"], ["y"])], [_vi("x", ["N", 4])], [_vi("y", None)],
               [NH.from_array(np.array(0.3, np.float32), "r"), NH.from_array(np.array(True), "t")], opset=13)
    with pytest.raises(OnnxError, match="training-mode Dropout"):
        import_onnx(m)


def test_constant_graph_outputs_control_flow_and_batch_one_squeeze_are_refused():
    x = [_vi("x", ["N", 4, 6, 6])]
    shape_out = _model([H.make_node("Shape", ["x"], ["s"]), H.make_node("Relu", ["x"], ["y"])], x,
                       [_vi("y", None), _vi("s", None, T.INT64)])
    init_out = _model([H.make_node("Relu", ["x"], ["y"])], x, [_vi("y", None), _vi("B", [4])],
                      [NH.from_array(np.ones(4, np.float32), "B")])
    for m, name in ((shape_out, "s"), (init_out, "B")):
        with pytest.raises(OnnxError, match=f"graph output '{name}' is a constant"):
            import_onnx(m)
    then = H.make_graph([H.make_node("Relu", ["x"], ["t"])], "then", [], [_vi("t", None)])
    other = H.make_graph([H.make_node("Sigmoid", ["x"], ["e"])], "else", [], [_vi("e", None)])
    branch = _model([H.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], x, [_vi("y", None)],
                    [NH.from_array(np.array(True), "c")])
    with pytest.raises(OnnxError, match=r"unsupported op type.*\n\s+If ×1"):
        import_onnx(branch)
    squeeze = _model([H.make_node("GlobalAveragePool", ["x"], ["g"]), H.make_node("Squeeze", ["g"], ["s"])],
                     [_vi("x", [1, 4, 6, 6])], [_vi("s", [4])], opset=13)
    with pytest.raises(OnnxError, match="Squeeze without axes removes the batch axis"):
        import_onnx(squeeze)


def test_integer_image_data_cast_to_float_imports_as_a_float_input():
    w = np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32)
    m = _model([H.make_node("Cast", ["img"], ["x"], to=T.FLOAT), H.make_node("Conv", ["x", "W"], ["y"])],
               [_vi("img", ["N", 4, 6, 6], T.INT64)], [_vi("y", None)], [NH.from_array(w, "W")])
    model = import_onnx(m)
    assert model.spec.inputs["img"].dtype == "float32"
    img = np.random.default_rng(1).integers(0, 3, (2, 4, 6, 6))
    np.testing.assert_allclose(model.forward({"img": img})["y"], ort_run(m, {"img": img})["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_first", [True, False])
def test_exact_gelu_is_one_layer_whichever_mul_comes_first(x_first):
    """TorchScript writes Mul(x, 1 + erf) then Mul(., 0.5); the dynamo exporter Mul(0.5, 1 + erf) then Mul(x, .)."""
    c = {"r2": np.array(np.sqrt(2), np.float32), "one": np.array(1, np.float32), "half": np.array(0.5, np.float32)}
    muls = ([H.make_node("Mul", ["x", "a"], ["m"]), H.make_node("Mul", ["m", "half"], ["y"])] if x_first else
            [H.make_node("Mul", ["half", "a"], ["m"]), H.make_node("Mul", ["x", "m"], ["y"])])
    m = _model([H.make_node("Div", ["x", "r2"], ["d"]), H.make_node("Erf", ["d"], ["e"]),
                H.make_node("Add", ["e", "one"], ["a"]), *muls], [_vi("x", ["N", 5])], [_vi("y", None)],
               [NH.from_array(v, k) for k, v in c.items()], opset=18)
    model = import_onnx(m)
    assert [layer.type for layer in model.spec.layers] == ["gelu"]
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_allclose(model.forward({"x": x})["y"], ort_run(m, {"x": x})["y"], rtol=1e-5, atol=1e-6)


def test_check_feeds_integer_inputs_in_their_own_type(tmp_path, capsys):
    """--check used to feed float32 to every input, and ONNX Runtime's refusal was a traceback."""
    from cnngraph.cli import main
    w = np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32)
    m = _model([H.make_node("Cast", ["img"], ["x"], to=T.FLOAT), H.make_node("Conv", ["x", "W"], ["y"])],
               [_vi("img", ["N", 4, 6, 6], T.INT64)], [_vi("y", None)], [NH.from_array(w, "W")])
    onnx.save(m, str(tmp_path / "int.onnx"))
    assert main(["import-onnx", str(tmp_path / "int.onnx"), "-o", str(tmp_path / "int.yaml"), "--check"]) == 0
    assert "check vs ONNX Runtime" in capsys.readouterr().out


def test_unreadable_initializer_and_missing_export_folder_are_named(tmp_path):
    from cnngraph.onnx import export_onnx
    init = NH.from_array(np.ones((4, 4, 1, 1), np.float32), "W")
    init.data_location = onnx.TensorProto.EXTERNAL
    init.ClearField("raw_data")
    init.external_data.add(key="location", value="missing_weights.bin")
    m = _model([H.make_node("Conv", ["x", "W"], ["y"])], [_vi("x", ["N", 4, 6, 6])], [_vi("y", None)], [init])
    with pytest.raises(OnnxError, match="initializer 'W' cannot be read .*import the model from its path"):
        import_onnx(m)
    import cnngraph
    model = cnngraph.compile({"inputs": {"x": {"shape": [3]}}, "layers": [{"id": "r", "type": "relu"}],
                              "outputs": ["r"]})
    with pytest.raises(OnnxError, match=r"the folder .*no_such_folder does not exist"):
        export_onnx(model, tmp_path / "no_such_folder" / "m.onnx")


@pytest.mark.parametrize("op", ["Add", "Mul", "Max", "Greater"])
def test_computed_tensors_of_different_ranks_are_refused(op):
    """(N, 3, 4) + (N, 4): ONNX aligns the second one's batch axis with the first one's axis 1 (ONNX Runtime
    adds b[j] to a[i, j] for N == 3), while a per-sample broadcast would add b[i]; refused, not imported wrong."""
    model = _model([H.make_node(op, ["a", "b"], ["y"], name="mix")], [_vi("a", ["N", 3, 4]), _vi("b", ["N", 4])],
                   [_vi("y", ["N", 3, 4], T.BOOL if op == "Greater" else T.FLOAT)])
    with pytest.raises(OnnxError, match=rf"{op} node 'mix': computed tensors of ranks 2 and 3 broadcast against each "
                                        rf"other, which lines the batch axis"):
        import_onnx(model)
