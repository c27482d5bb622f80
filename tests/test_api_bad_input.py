"""Misuse of the Python API: clear errors, and a failed call leaves the model as it was (cases
found by probing the API with wrong names, shapes, types and call orders)."""
from __future__ import annotations

import numpy as np
import pytest

import cnngraph
from cnngraph.errors import CnnGraphError, RunError
from cnngraph.passes import optimize_for_inference


@pytest.fixture
def model():
    return cnngraph.compile("specs/lenet5.yaml", seed=0)


X = np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32)


def test_a_failed_parameter_load_changes_nothing(model):
    before = model.params.numpy()
    arrays = model.params.numpy()
    arrays["conv1.weight"] += 1
    arrays["fc1.weight"] = np.full(arrays["fc1.weight"].shape, "x")
    with pytest.raises(ValueError, match="parameter 'fc1.weight': expected a real numeric array"):
        model.load_params(arrays)
    with pytest.raises(ValueError, match="parameter 'fc1.weight'"):
        model.params.update(arrays)
    for k, v in model.params.numpy().items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ValueError, match="parameter 'conv1.bias': expected an array of shape \\(6,\\), found None"):
        model.params["conv1.bias"] = None
    with pytest.raises(KeyError, match="no parameter named 'nope'"):
        model.params["nope"]


def test_a_failed_backward_keeps_the_forward_and_a_failed_forward_drops_the_old_one(model):
    model.forward(X, training=True)
    with pytest.raises(RunError, match=r"has shape \(2, 5\), the output has \(2, 10\)"):
        model.backward({"logits": np.ones((2, 5))})
    with pytest.raises(TypeError, match="backward takes a dict of output name"):
        model.backward(np.ones((2, 10)))
    with pytest.raises(RunError, match="the gradient for 'logits' is None"):
        model.backward({"logits": None})
    assert "conv1.weight" in model.backward({"logits": np.ones((2, 10))})      # the tape survived
    model.forward(X, training=True)
    with pytest.raises(RunError):
        model.forward(X[:, :, :5], training=True)
    with pytest.raises(RunError, match="backward needs a forward pass"):
        model.backward({"logits": np.ones((2, 10))})                           # not the older batch's


def test_inputs_and_outputs_are_checked(model):
    with pytest.raises(TypeError, match=r"write outputs=\['conv1'\]"):
        model.forward(X, outputs="conv1")
    with pytest.raises(RunError, match="no layer or input named 'nope'"):
        model.forward(X, outputs=["nope"])
    with pytest.raises(RunError, match="input 'image' is None"):
        model.forward({"image": None})
    with pytest.raises(ValueError, match="seed must be a whole number >= 0, found -1"):
        cnngraph.compile("specs/lenet5.yaml", seed=-1)
    assert model.forward(np.zeros((0, 1, 28, 28), np.float32))["logits"].shape == (0, 10)
    two = cnngraph.compile({"inputs": {"x": {"shape": [3]}, "y": {"shape": [4]}},
                            "layers": [{"id": "d", "type": "dense", "out_features": 2, "inputs": "x"}],
                            "outputs": ["d"]})
    with pytest.raises(RunError, match=r"input 'y' must have shape \(batch, 4\), found \(5, 99\)"):
        two.forward({"x": np.ones((2, 3)), "y": np.ones((5, 99))})              # unused, still checked


def test_imported_onnx_models_predict_and_refuse_a_tensor_named_twice(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Relu", ["in"], ["out"])], "g",
                              [helper.make_tensor_value_info("in", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    m = cnngraph.import_onnx(path)
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    np.testing.assert_array_equal(m.predict(x), np.maximum(x, 0))
    np.testing.assert_array_equal(m.predict(x, output="out"), np.maximum(x, 0))
    spec_in = m.onnx_inputs["in"]
    if spec_in != "in":
        with pytest.raises(RunError, match="given twice"):
            m.forward({"in": x, spec_in: x})
    with pytest.raises(TypeError, match="expected the path of an .onnx file or an onnx.ModelProto"):
        cnngraph.import_onnx(None)
    with pytest.raises(CnnGraphError, match="is a folder"):
        cnngraph.import_onnx(tmp_path)


def test_argument_types_are_checked_by_name(model, tmp_path):
    with pytest.raises(RunError, match="input 'image' must hold real numbers, found dtype object"):
        model.forward(np.full((1, 1, 28, 28), None, dtype=object))
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1, found 0"):
        model.predict(X, batch_size=0)
    with pytest.raises(ValueError, match="meta may not set spec"):
        model.save(tmp_path / "m", meta={"spec": 1})
    with pytest.raises(TypeError, match="optimize_for_inference takes a compiled Model"):
        optimize_for_inference(None)
    for kw, text in (({"epochs": 1.7}, "epochs must be a whole number >= 1, found 1.7"),
                     ({"lr": "abc"}, "lr must be a number, found 'abc'"),
                     ({"seed": -1}, "seed must be a whole number >= 0, found -1")):
        with pytest.raises(CnnGraphError, match=text):
            cnngraph.train("specs/digits_cnn.yaml", out=tmp_path / "r", quiet=True, **kw)
