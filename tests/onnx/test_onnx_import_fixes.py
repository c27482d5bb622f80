"""Import fixes found by probing: fixed constants, refused attributes, opsets, casts, readable ids."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnngraph.onnx import OnnxError, export_onnx, import_onnx
from cnngraph.train.optim import SGD
from onnx_build import make_model, ort_run, rand

N = helper.make_node


def _step(m, feeds, out="y"):
    """One SGD step on the sum of the output; the parameters before it."""
    before = {k: np.array(m.params[k]) for k in m.params}
    y = m.forward(feeds, training=True)[out]
    grads = m.backward({out: np.ones_like(y)}, input_grads=False)
    SGD(lr=0.1).step({n: m.params[n] for n in m.trainable_names}, grads, 0.1)
    return before


def test_exporter_made_up_constants_are_fixed_and_parameters_train():
    # y = (x * blk.gamma[:, None, None] - 0.5) @ W + onnx::Mul_3 * 2, with W named as torch names a folded weight
    x_shape = (2, 3, 4, 5)
    nodes = [N("Constant", [], ["half"], name="/Constant", value=numpy_helper.from_array(np.array(0.5, np.float32))),
             N("Unsqueeze", ["blk.gamma", "ax"], ["g3"], name="/blk/Unsqueeze"),
             N("Mul", ["x", "g3"], ["a"], name="/blk/Mul"),
             N("Sub", ["a", "half"], ["b"], name="/Sub"),
             N("MatMul", ["b", "onnx::MatMul_7"], ["c"], name="/MatMul"),
             N("Mul", ["c", "onnx::Mul_3"], ["y"], name="/Mul")]
    inits = {"blk.gamma": rand(3), "ax": np.array([1, 2], np.int64), "onnx::MatMul_7": rand(5, 6),
             "onnx::Mul_3": np.array(2.0, np.float32)}
    model = make_model(nodes, {"x": x_shape}, inits)
    feeds = {"x": rand(*x_shape)}
    m = import_onnx(model)
    np.testing.assert_allclose(m.forward(feeds)["y"], ort_run(model, feeds)["y"], rtol=1e-5, atol=1e-5)
    fixed = {lay["id"] for lay in m.import_result.spec["layers"] if lay.get("trainable") is False}
    assert len(fixed) == 2, m.import_result.spec["layers"]   # 0.5 and onnx::Mul_3
    before = _step(m, feeds)
    for k in m.params:
        changed = not np.array_equal(before[k], np.asarray(m.params[k]))
        assert changed == (k.split(".value")[0] not in fixed), k
    assert len(m.trainable_names) == 2   # gamma (through the Unsqueeze) and the MatMul weight


def test_a_fixed_constant_exports_and_imports_back_fixed(tmp_path):
    import cnngraph
    spec = {"name": "k", "inputs": {"x": {"shape": [3, 4]}},
            "layers": [{"id": "k", "type": "constant", "shape": [3, 1], "trainable": False},
                       {"id": "w", "type": "constant", "shape": [3, 1]},
                       {"id": "m", "type": "mul", "inputs": ["x", "k"]},
                       {"id": "y", "type": "broadcast_add", "inputs": ["m", "w"]}], "outputs": ["y"]}
    model = cnngraph.compile(spec)
    assert model.trainable_names == ["w.value"]
    model.load_params({"k.value": rand(3, 1), "w.value": rand(3, 1)})
    proto = export_onnx(model, tmp_path / "k.onnx")
    x = rand(2, 3, 4)
    np.testing.assert_allclose(ort_run(proto, {"x": x})["y"], model.forward(x)["y"], rtol=1e-6)
    back = import_onnx(proto)
    layers = {lay["id"]: lay for lay in back.import_result.spec["layers"]}
    assert layers["k"].get("trainable") is False and "trainable" not in layers["w"]
    assert back.trainable_names == ["w.value"]


def test_resize_and_broadcast_forms_without_an_exact_import_are_refused_together():
    x = (2, 3, 8, 8)
    scales = np.array([1, 1, 0.5, 0.5], np.float32)
    nodes = [N("Resize", ["x", "", "s"], ["a"], name="aa", mode="linear", antialias=1),
             N("Resize", ["x", "", "", "sz"], ["b"], name="keep", mode="nearest", axes=[2, 3],
               keep_aspect_ratio_policy="not_larger"),
             N("Mul", ["x", "c5"], ["c"], name="rank5"),
             N("Conv", ["x", "w"], ["d"], name="conv", kernel_shape=[1, 1], unknown_attr=3)]
    model = make_model(nodes, {"x": x}, {"s": scales, "sz": np.array([4, 6], np.int64), "c5": rand(1, 1, 1, 1, 8),
                                         "w": rand(3, 3, 1, 1)}, outputs=("a", "b", "c", "d"), opset=19)
    with pytest.raises(OnnxError) as e:
        import_onnx(model)
    msg = str(e.value)
    assert "Resize node 'aa': antialias=1" in msg
    assert "Resize node 'keep': keep_aspect_ratio_policy 'not_larger' is not supported" in msg
    assert "Mul node 'rank5': a constant of rank 5 broadcasts a computed tensor of rank 4" in msg
    assert "Conv node 'conv': attribute unknown_attr not supported" in msg


def test_resize_with_axes_matches_onnxruntime():
    from onnx_build import compare
    x = (2, 3, 5, 6)
    for inputs, inits in ((["x", "", "s"], {"s": np.array([2, 1.5], np.float32)}),
                          (["x", "", "", "sz"], {"sz": np.array([10, 9], np.int64)})):
        model = make_model([N("Resize", inputs, ["y"], mode="linear", axes=[2, 3])], {"x": x}, inits, opset=18)
        compare(model, {"x": rand(*x)})


def test_a_missing_default_opset_is_an_error_and_a_newer_one_warns():
    from onnx.defs import onnx_opset_version
    model = make_model([N("Relu", ["x"], ["y"])], {"x": (2, 3)})
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(OnnxError, match="declares no opset for the default ONNX domain"):
        import_onnx(model)
    model.opset_import.append(helper.make_opsetid("", 99))
    with pytest.warns(UserWarning, match=f"opset 99 is newer .* read with opset {onnx_opset_version()}'s semantics"):
        m = import_onnx(model)
    x = rand(2, 3)
    np.testing.assert_array_equal(m.forward({"x": x})["y"], np.maximum(x, 0))


@pytest.mark.parametrize("beta, threshold", [(1.0, 1.0), (2.0, 0.5), (0.5, -1.0), (2.0, 20.0)])
def test_softplus_threshold_exports_exactly(beta, threshold, tmp_path):
    torch = pytest.importorskip("torch")
    import cnngraph
    spec = {"name": "sp", "inputs": {"x": {"shape": [50]}},
            "layers": [{"id": "y", "type": "softplus", "beta": beta, "threshold": threshold}], "outputs": ["y"]}
    model = cnngraph.compile(spec)
    proto = export_onnx(model, tmp_path / "sp.onnx")
    onnx.checker.check_model(proto, full_check=True)
    x = np.linspace(-4, 4, 100, dtype=np.float32).reshape(2, 50)
    want = torch.nn.functional.softplus(torch.from_numpy(x), beta=beta, threshold=threshold).numpy()
    np.testing.assert_allclose(ort_run(proto, {"x": x})["y"], want, rtol=1e-5, atol=1e-5)


def test_casts_that_change_values_are_refused():
    for to, why in ((TensorProto.FLOAT16, "FLOAT16 rounds"), (TensorProto.INT64, "INT64 truncates"),
                    (TensorProto.BOOL, "BOOL truncates")):
        model = make_model([N("Cast", ["x"], ["c"], name="cast", to=to), N("Cast", ["c"], ["y"], to=TensorProto.FLOAT)],
                           {"x": (2, 3)})
        with pytest.raises(OnnxError, match=f"Cast node 'cast': casting a computed tensor to {why}"):
            import_onnx(model)
    model = make_model([N("Cast", ["x"], ["y"], to=TensorProto.DOUBLE)], {"x": (2, 3)})
    x = rand(2, 3)
    np.testing.assert_array_equal(import_onnx(model).forward({"x": x})["y"], x)


def test_dynamo_node_ids_come_from_the_module_path():
    def node(op, ins, outs, name, scopes, classes):
        n = N(op, ins, outs, name=name)
        for key, value in (("pkg.torch.onnx.name_scopes", scopes), ("pkg.torch.onnx.class_hierarchy", classes)):
            p = n.metadata_props.add()
            p.key, p.value = key, repr(value)
        return n
    nodes = [node("Conv", ["x", "stem.0.weight"], ["a"], "node_conv2d", ["", "stem", "stem.0", "conv2d"],
                  ["M", "torch.nn.modules.container.Sequential", "torch.nn.modules.conv.Conv2d", "aten.conv2d.default"]),
             node("Relu", ["a"], ["b"], "node_relu", ["", "b1", "relu"], ["M", "models.Block", "aten.relu.default"]),
             node("Sigmoid", ["b"], ["y"], "node_sigmoid", ["", "sigmoid"], ["M", "aten.sigmoid.default"])]
    m = import_onnx(make_model(nodes, {"x": (2, 3, 4, 4)}, {"stem.0.weight": rand(2, 3, 1, 1)}))
    assert [lay["id"] for lay in m.import_result.spec["layers"]] == ["stem.0", "b1.relu", "y"]
