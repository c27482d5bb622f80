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


# -- from a Python-API probe --------------------------------------------------------------------------
SEG = {"inputs": {"image": {"shape": [4]}, "label": {"shape": [], "dtype": "int64"}},
       "layers": [{"id": "fc", "type": "dense", "out_features": 3, "inputs": "image"},
                  {"id": "p", "type": "sigmoid", "inputs": "fc"},
                  {"id": "loss", "type": "cross_entropy", "inputs": ["fc", "label"]}],
       "outputs": ["p", "loss"]}


def test_changing_arrays_the_tape_holds_cannot_corrupt_gradients():
    """PyTorch raises when a saved tensor is modified in place; so must cnngraph, or stay unaffected."""
    m = cnngraph.compile(SEG, dtype="float64", seed=1)
    x = np.random.default_rng(0).standard_normal((5, 4))
    y = np.array([0, 1, 2, 0, 1])
    m.forward({"image": x, "label": y}, training=True)
    want = m.backward({"p": np.ones((5, 3))})["fc.weight"]
    out = m.forward({"image": x, "label": y}, training=True)
    with pytest.raises(ValueError, match="read-only"):
        out["p"] -= 0.5                                 # the output the sigmoid saved
    x *= 10                                             # the caller's input, which the dense layer saved
    np.testing.assert_array_equal(m.backward({"p": np.ones((5, 3))})["fc.weight"], want)
    assert m.forward({"image": x, "label": y})["p"].flags.writeable   # inference results are the caller's


def test_input_mistakes_are_named():
    m = cnngraph.compile(SEG)
    x = np.ones((2, 4), np.float32)
    with pytest.raises(RunError, match=r"holds integers \(int64; class labels\), found values with a fraction"):
        m.forward({"image": x, "label": np.array([0.5, 1.0])})
    with pytest.raises(RunError, match=r"missing input 'image'; unknown input 'imgae' \(did you mean 'image'\?\)"):
        m.forward({"imgae": x, "label": np.array([0, 1])})
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="parallel must be a whole number of threads"):
            m.forward({"image": x, "label": np.array([0, 1])}, parallel=bad)
    with pytest.raises(ValueError, match="parallel= runs inference only"):
        m.forward({"image": x, "label": np.array([0, 1])}, training=True, parallel=2)


def test_predict_takes_a_dict_and_needs_only_the_inputs_of_its_output():
    m = cnngraph.compile(SEG)
    x = np.random.default_rng(0).random((5, 4)).astype(np.float32)
    want = m.forward({"image": x}, outputs=["p"])["p"]
    np.testing.assert_array_equal(m.predict(x, output="p", batch_size=2), want)   # the loss's labels not needed
    np.testing.assert_array_equal(m.predict({"image": x}, output="p", batch_size=2), want)


def test_backward_names_what_dropped_its_tape_and_takes_wrt_as_a_string():
    m = cnngraph.compile(SEG)
    feeds = {"image": np.ones((2, 4), np.float32), "label": np.array([0, 1])}
    m.forward(feeds, training=True)
    m.forward(feeds)                                    # a validation pass in between
    with pytest.raises(RunError, match=r"an inference forward \(grad=False\) ran since the last training forward"):
        m.backward({"p": np.ones((2, 3), np.float32)})
    m.forward(feeds, training=True)
    assert m.backward({"p": np.ones((2, 3), np.float32)}, wrt="fc")["fc"].shape == (2, 3)


def test_save_converts_numpy_meta_and_names_what_json_cannot_hold(tmp_path):
    m = cnngraph.compile(SEG)
    m.save(tmp_path / "a", meta={"epoch": np.int64(3), "acc": np.float32(0.5)})
    assert cnngraph.load_model(tmp_path / "a").checkpoint_meta["epoch"] == 3
    with pytest.raises(ValueError, match="meta must hold JSON values"):
        m.save(tmp_path / "b", meta={"x": object()})


def test_register_op_mistakes_are_named(fresh):
    from cnngraph.errors import PluginError

    class First(cnngraph.Op):
        type = "probe_dup_op"

    class Second(cnngraph.Op):
        type = "probe_dup_op"

    class Spaced(cnngraph.Op):
        type = "Bad Name!"

    cnngraph.register_op(First)
    with pytest.raises(PluginError, match=r"as 'test_register_op_mistakes_are_named\.<locals>\.First' "
                                          r"\(test_api_bad_input\.py:\d+\) and by plugin 'test_api_bad_input' as .*Second"):
        cnngraph.register_op(Second)
    with pytest.raises(PluginError, match="takes an Op subclass, found an instance of First"):
        cnngraph.register_op(First())
    with pytest.raises(PluginError, match="op types are snake_case"):
        cnngraph.register_op(Spaced)
