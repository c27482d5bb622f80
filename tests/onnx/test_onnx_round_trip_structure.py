"""Structural round trips: the import folds away what the export (or another exporter) writes only to express
cnngraph's semantics in ONNX, and nothing else. Every case compares the import with ONNX Runtime.

- An Unsqueeze that puts unit axes right after the batch axis, to align a lower-rank operand (ONNX broadcasting
  aligns whole tensors, cnngraph's aligns per-sample shapes), goes when its broadcasting consumer keeps the
  result's rank; it stays otherwise.
- A per-sample vector product, Unsqueeze → MatMul → Squeeze, is one matmul layer.
- A Reshape with the batch copied (0) is a reshape layer as written; a contiguous merge written otherwise (batch
  -1 or the batch size: cnngraph's partial flatten, torch's x.flatten(2), x.view(N, -1)) is a flatten.
- A constant-only model keeps its declared input, and its batch-1 constant output imports as a constant layer.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_build import compare, make_model, ort_run, rand

import cnngraph
from cnngraph.onnx import export_onnx, import_onnx

N = helper.make_node


def _types(model):
    return [layer.type for layer in model.spec.layers]


def _i64(*v):
    return np.array(v, np.int64)


# ---- rank-aligning Unsqueeze --------------------------------------------------------------------------------
def _unsqueeze(x, axes, out, opset):
    """Unsqueeze in the opset's form: axes as an attribute (up to 12) or as an input (13 on)."""
    if opset < 13:
        return [N("Unsqueeze", [x], [out], axes=list(axes))], {}
    return [N("Unsqueeze", [x, out + "_axes"], [out])], {out + "_axes": _i64(*axes)}


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Greater", "Equal"])
def test_aligning_unsqueeze_before_a_broadcasting_op_is_folded(op, opset):
    nodes, inits = _unsqueeze("v", [1], "vu", opset)
    nodes.append(N(op, ["x", "vu"], ["t"]))
    if op in ("Greater", "Equal"):
        nodes.append(N("Cast", ["t"], ["y"], to=TensorProto.FLOAT))
    else:
        nodes[-1].output[0] = "y"
    feeds = {"x": rand(2, 3, 4), "v": rand(2, 4)}
    if op == "Equal":
        feeds["v"] = np.round(feeds["v"])
        feeds["x"] = np.round(feeds["x"])
    m = compare(make_model(nodes, {"x": (2, 3, 4), "v": (2, 4)}, inits, opset=opset), feeds)
    kind = {"Add": "broadcast_add", "Max": "maximum", "Min": "minimum", "Greater": "compare", "Equal": "compare"}
    assert _types(m) == [kind.get(op, op.lower())]


def test_two_unsqueezes_fold_where_and_logic_read_through_their_casts():
    """Where(Cast(Unsqueeze(c)), a, Unsqueeze(b)) and Or(Cast(Unsqueeze(p)), Cast(q)): as cnngraph exports where and
    logical with lower-rank operands."""
    nodes = [N("Unsqueeze", ["c", "ax1"], ["cu"]), N("Cast", ["cu"], ["cb"], to=TensorProto.BOOL),
             N("Unsqueeze", ["b", "ax12"], ["bu"]), N("Where", ["cb", "a", "bu"], ["y"]),
             N("Unsqueeze", ["c", "ax1"], ["pu"]), N("Cast", ["pu"], ["pb"], to=TensorProto.BOOL),
             N("Cast", ["a"], ["qb"], to=TensorProto.BOOL), N("Or", ["pb", "qb"], ["o"]),
             N("Cast", ["o"], ["z"], to=TensorProto.FLOAT)]
    feeds = {"c": np.round(rand(2, 4)), "a": rand(2, 3, 4), "b": rand(2, 1)}
    feeds["a"][0, 1] = 0
    model = make_model(nodes, {"c": (2, 4), "a": (2, 3, 4), "b": (2, 1)}, {"ax1": _i64(1), "ax12": _i64(1)},
                       outputs=("y", "z"), opset=13)
    m = compare(model, feeds)
    assert sorted(_types(m)) == ["logical", "where"]


def test_expand_of_an_aligning_unsqueeze_is_one_expand():
    nodes = [N("Unsqueeze", ["x", "ax"], ["xu"]), N("Expand", ["xu", "shape"], ["y"])]
    model = make_model(nodes, {"x": (2, 3, 1)}, {"ax": _i64(1), "shape": _i64(1, 2, 1, 4)}, opset=13)
    m = compare(model, {"x": rand(2, 3, 1)})
    assert _types(m) == ["expand"] and m.spec.layers[0].params.shape == [2, 1, 4]


def test_matmul_of_an_aligned_matrix_stack_is_one_matmul():
    nodes = [N("Unsqueeze", ["a", "ax"], ["au"]), N("MatMul", ["au", "b"], ["y"])]
    model = make_model(nodes, {"a": (2, 3, 4), "b": (2, 2, 4, 5)}, {"ax": _i64(1)}, opset=13)
    m = compare(model, {"a": rand(2, 3, 4), "b": rand(2, 2, 4, 5)})
    assert _types(m) == ["matmul"]


def test_aligned_operand_against_a_constant_of_its_rank_is_folded():
    nodes = [N("Unsqueeze", ["v", "ax"], ["vu"]), N("Mul", ["vu", "c"], ["y"])]
    model = make_model(nodes, {"v": (2, 4)}, {"ax": _i64(1), "c": rand(1, 3, 4)}, opset=13)
    m = compare(model, {"v": rand(2, 4)})
    assert _types(m) == ["constant", "mul"]


@pytest.mark.parametrize("case", ["axis_not_after_batch", "constant_other", "vector_matmul"])
def test_unsqueeze_that_changes_the_result_is_kept(case):
    """Not folded: unit axes not right after the batch axis; an Unsqueeze whose operand sets the result's rank
    (the constant it meets has fewer axes); a 1-D operand of MatMul (a vector to cnngraph)."""
    inits = {"ax": _i64(2 if case == "axis_not_after_batch" else 1)}
    inputs = {"x": (2, 3, 4), "v": (2, 3) if case == "axis_not_after_batch" else (2, 4)}
    other, op = "x", "Add"
    if case == "constant_other":
        del inputs["x"]
        inits["x"] = rand(4)
    if case == "vector_matmul":
        inputs["x"], op = (2, 4, 5), "MatMul"
    nodes = [N("Unsqueeze", ["v", "ax"], ["vu"]), N(op, ["vu", other], ["y"])]
    m = compare(make_model(nodes, inputs, inits, opset=13), {k: rand(*s) for k, s in inputs.items()})
    assert "reshape" in _types(m)


def test_unsqueeze_read_by_other_ops_too_stays_for_them_only():
    nodes = [N("Unsqueeze", ["v", "ax"], ["vu"]), N("Add", ["x", "vu"], ["y"]), N("Relu", ["vu"], ["z"])]
    model = make_model(nodes, {"x": (2, 3, 4), "v": (2, 4)}, {"ax": _i64(1)}, outputs=("y", "z"), opset=13)
    m = compare(model, {"x": rand(2, 3, 4), "v": rand(2, 4)})
    assert sorted(_types(m)) == ["broadcast_add", "relu", "reshape"]
    add = next(layer for layer in m.spec.layers if layer.type == "broadcast_add")
    assert "v" in add.inputs   # the add reads the vector itself


# ---- vector matmul ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("case", ["row", "column", "row_broadcast", "dot"])
def test_vector_matmul_is_one_matmul(case, opset):
    """How cnngraph (and torch) write a product with a per-sample vector: the vector unsqueezed to a (1, K) row or a
    (K, 1) column after the batch axis, MatMul, the unit axis squeezed away."""
    a, b, ua, ub, drop = {"row": ("v", "m", [1], None, [-2]), "column": ("m3", "v", None, [1, 3], [-1]),
                          "row_broadcast": ("v", "m3t", [1, 2], None, [-2]),
                          "dot": ("v", "w", [1], [2], [-2, -1])}[case]
    shapes = {"v": (2, 4), "w": (2, 4), "m": (2, 4, 5), "m3": (2, 2, 3, 4), "m3t": (2, 2, 4, 5)}
    nodes, inits = [], {}
    for name, axes, tag in ((a, ua, "a"), (b, ub, "b")):
        if axes is not None:
            more, extra = _unsqueeze(name, axes, f"u{tag}", opset)
            nodes += more
            inits |= extra
    nodes.append(N("MatMul", ["ua" if ua else a, "ub" if ub else b], ["mm"]))
    if opset < 13:
        nodes.append(N("Squeeze", ["mm"], ["y"], axes=drop))
    else:
        nodes.append(N("Squeeze", ["mm", "drop"], ["y"]))
        inits["drop"] = _i64(*drop)
    inputs = {k: shapes[k] for k in {a, b}}
    m = compare(make_model(nodes, inputs, inits, opset=opset), {k: rand(*s) for k, s in inputs.items()})
    assert _types(m) == ["matmul"]


@pytest.mark.parametrize("case", ["product_read_twice", "squeezed_axis_not_the_vectors", "product_is_an_output"])
def test_vector_matmul_keeps_its_layers_when_the_squeeze_is_not_just_the_vector_axis(case):
    nodes = [N("Unsqueeze", ["v", "ax"], ["vu"]), N("MatMul", ["vu", "m"], ["mm"]),
             N("Squeeze", ["mm", "drop"], ["y"])]
    inputs, outputs = {"v": (2, 4), "m": (2, 4, 5)}, ("y",)
    drop = _i64(-2)
    if case == "product_read_twice":
        nodes.append(N("Relu", ["mm"], ["z"]))
        outputs = ("y", "z")
    if case == "product_is_an_output":
        outputs = ("y", "mm")
    if case == "squeezed_axis_not_the_vectors":   # (1, 4) @ (4, 1): the column is an input, not a vector
        inputs["m"], drop = (2, 4, 1), _i64(-1)
    model = make_model(nodes, inputs, {"ax": _i64(1), "drop": drop}, outputs=outputs, opset=13)
    m = compare(model, {k: rand(*s) for k, s in inputs.items()})
    assert "reshape" in _types(m) and "matmul" in _types(m)


# ---- flatten and reshape -----------------------------------------------------------------------------------
def _round_trip(layer: dict, shape):
    spec = {"name": "rt", "inputs": {"x": {"shape": list(shape)}}, "layers": [{"id": "op", **layer}],
            "outputs": ["op"]}
    model = cnngraph.compile(spec)
    proto = export_onnx(model)
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    want = model.forward({"x": x})["op"]
    np.testing.assert_allclose(ort_run(proto, {"x": x})["op"], want, rtol=1e-6)
    back = import_onnx(proto)
    np.testing.assert_allclose(back.forward({"x": x})["op"], want, rtol=1e-6)
    return [(lay.type, {k: v for k, v in lay.params.model_dump().items()}) for lay in back.spec.layers], proto


@pytest.mark.parametrize("layer,shape,back", [
    ({"type": "flatten", "start_dim": 2}, (2, 3, 4), ("flatten", {"start_dim": 2, "end_dim": -1})),
    ({"type": "flatten", "end_dim": -2}, (2, 3, 4), ("flatten", {"start_dim": 1, "end_dim": -2})),
    ({"type": "flatten", "start_dim": 2, "end_dim": 3}, (2, 3, 4, 5), ("flatten", {"start_dim": 2, "end_dim": -2})),
    ({"type": "flatten"}, (2, 3, 4), ("flatten", {"start_dim": 1, "end_dim": -1})),
    ({"type": "reshape", "shape": [6]}, (2, 3), ("reshape", {"shape": [6]})),
    ({"type": "reshape", "shape": [6, 4]}, (2, 3, 4), ("reshape", {"shape": [6, 4]})),
    ({"type": "reshape", "shape": [3, -1]}, (3, 4, 5), ("reshape", {"shape": [3, -1]})),
    ({"type": "reshape", "shape": [-1]}, (2, 3), ("reshape", {"shape": [6]})),   # [0, -1] would read as a flatten
])
def test_flatten_and_reshape_export_and_import_as_themselves(layer, shape, back):
    layers, _ = _round_trip(layer, shape)
    assert layers == [back]


@pytest.mark.parametrize("target,want", [
    ((0, 12), ("reshape", {"shape": [12]})),         # the batch copied: a reshape as written
    ((0, 3, -1), ("reshape", {"shape": [3, -1]})),
    ((0, -1), ("flatten", {})),                      # the usual spelling of a flatten
    ((-1, 12), ("flatten", {})),                     # torch's view(-1, 12)
    ((-1, 3, 4), None),                              # no merge at all: a no-op
    ((0, 0, -1), ("flatten", {"start_dim": 2})),     # on (3, 4, 5), copies after the batch: not cnngraph's
    ((-1, 4, 3), ("reshape", {"shape": [4, 3]})),    # not a merge of adjacent axes
])
def test_reshape_import_tells_flatten_from_reshape_by_how_it_is_written(target, want):
    shape = (2, 3, 4, 5) if target == (0, 0, -1) else (2, 3, 4)
    model = make_model([N("Reshape", ["x", "s"], ["y"])], {"x": shape}, {"s": _i64(*target)}, opset=13)
    m = compare(model, {"x": rand(*shape)})
    layers = [(lay.type, lay.params.model_dump(exclude_defaults=True)) for lay in m.spec.layers]
    assert layers == ([want] if want else [("identity", {})])


torch = pytest.importorskip("torch")


class _Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("fn,want", [
    (lambda x: x.flatten(1), {}), (lambda x: x.view(x.size(0), -1), {}), (lambda x: x.flatten(2), {"start_dim": 2}),
    (lambda x: x.flatten(1, 2), {"end_dim": -2}), (lambda x: x.view(-1, 144), {}),
], ids=["flatten1", "view_n_minus1", "flatten2", "flatten1_2", "view_minus1_n"])
def test_torch_flattens_import_as_flatten(fn, want):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Fn(fn), (torch.randn(2, 4, 6, 6),), f, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}}, dynamo=False, opset_version=17)
    m = compare(onnx.load_from_string(f.getvalue()), {"x": rand(3, 4, 6, 6)})
    assert [(lay.type, lay.params.model_dump(exclude_defaults=True)) for lay in m.spec.layers] == [("flatten", want)]


# ---- a constant without inputs -----------------------------------------------------------------------------
@pytest.mark.parametrize("trainable", [True, False])
def test_constant_only_model_keeps_its_input_and_imports_back(trainable):
    spec = {"name": "c", "inputs": {"x": {"shape": [5]}},
            "layers": [{"id": "op", "type": "constant", "inputs": [], "shape": [3, 1, 2], "trainable": trainable}],
            "outputs": ["op"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # x feeds nothing
        model = cnngraph.compile(spec)
    model.params["op.value"] = np.arange(6, dtype=np.float32).reshape(3, 1, 2) / 7
    proto = export_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["x"]
    x = rand(4, 5)
    want = model.forward({"x": x})["op"]
    np.testing.assert_array_equal(ort_run(proto, {"x": x})["op"], want)   # batch 1, as cnngraph's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = import_onnx(proto)
    [layer] = back.spec.layers
    assert (layer.id, layer.type, layer.inputs, layer.params.trainable) == ("op", "constant", [], trainable)
    assert back.params["op.value"].tobytes() == model.params["op.value"].tobytes()
    np.testing.assert_array_equal(back.forward({"x": x})["op"], want)


def test_constant_output_of_batch_one_imports_but_other_constants_are_refused():
    c = rand(1, 3)
    model = make_model([N("Relu", ["x"], ["y"])], {"x": (2, 4)}, {"c": c}, outputs=("y", "c"))
    m = compare(model, {"x": rand(2, 4)})
    assert sorted(_types(m)) == ["constant", "relu"]
    from cnngraph.onnx import OnnxError
    for bad in (rand(2, 3), np.ones((1, 3), np.int64)):   # a batch other than 1; not float
        with pytest.raises(OnnxError, match="graph output 'c' is a constant"):
            import_onnx(make_model([N("Relu", ["x"], ["y"])], {"x": (2, 4)}, {"c": bad}, outputs=("y", "c")))
