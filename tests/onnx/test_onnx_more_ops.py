"""ONNX ops added for real models (reductions, element-wise math, ArgMax/ArgMin, comparisons and logic, Where,
Expand, Tile, Pad wrap and cropping): cnngraph's import vs ONNX Runtime, then export → ONNX Runtime again."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_build import compare, make_model, ort_run, rand

import cnngraph
from cnngraph.onnx import export_onnx

N = helper.make_node
X4 = (2, 4, 5, 6)
AX = {"a": np.array([1], np.int64)}

REDUCE_OPS = ["ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "ReduceLogSum"]
UNARY_OPS = ["Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan", "Atan", "Asin", "Acos"]


def reduce_cases():
    cases = {}
    for op in REDUCE_OPS:
        cases[f"{op}13_attr"] = ([N(op, ["x"], ["y"], axes=[1])], {"x": X4}, {}, 13)
        cases[f"{op}13_keep0_hw"] = ([N(op, ["x"], ["y"], axes=[-1, 2], keepdims=0)], {"x": X4}, {}, 13)
        cases[f"{op}18_input"] = ([N(op, ["x", "a"], ["y"])], {"x": X4}, AX, 18)
        cases[f"{op}18_noop"] = ([N(op, ["x", "e"], ["y"], noop_with_empty_axes=1)], {"x": X4},
                                 {"e": np.array([], np.int64)}, 18)
    return cases


CASES = reduce_cases() | {f"{op}": ([N(op, ["x"], ["y"])], {"x": X4}, {}, 17) for op in UNARY_OPS}
ZERO = {"zero": np.array(0, np.float32)}
THIRD = {"third": rand(4, 1, 1)}   # compared per channel
COMPARE_OPS = ["Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual"]
# name: (nodes, inputs, initializers, opset, ONNX type of y)
TYPED = {
    **{f"{op}": ([N(op, ["x", "x2"], ["y"])], {"x": X4, "x2": (2, 1, 5, 1)}, {}, 17, TensorProto.BOOL)
       for op in COMPARE_OPS},
    "greater_const": ([N("Greater", ["x", "third"], ["y"])], {"x": X4}, THIRD, 17, TensorProto.BOOL),
    "and_or_xor_not": ([N("Greater", ["x", "zero"], ["p"]), N("Less", ["x", "third"], ["q"]), N("And", ["p", "q"], ["a"]),
                        N("Or", ["p", "q"], ["o"]), N("Xor", ["a", "o"], ["e"]), N("Not", ["e"], ["y"])],
                       {"x": X4}, ZERO | THIRD, 17, TensorProto.BOOL),
    "where": ([N("Greater", ["x", "x2"], ["c"]), N("Where", ["c", "x", "x2"], ["y"])], {"x": X4, "x2": (2, 4, 1, 6)},
              {}, 17, TensorProto.FLOAT),
    "where_const": ([N("Less", ["x", "zero"], ["c"]), N("Where", ["c", "zero", "x"], ["y"])], {"x": X4}, ZERO, 17,
                    TensorProto.FLOAT),
    "argmax": ([N("ArgMax", ["x"], ["y"], axis=1)], {"x": X4}, {}, 13, TensorProto.INT64),
    "argmax_keep0_last": ([N("Round", ["x"], ["r"]), N("ArgMax", ["r"], ["y"], axis=-1, keepdims=0, select_last_index=1)],
                          {"x": X4}, {}, 13, TensorProto.INT64),
    "argmin_first_tie": ([N("Round", ["x"], ["r"]), N("ArgMin", ["r"], ["y"], axis=2)], {"x": X4}, {}, 11,
                         TensorProto.INT64),
    "argmax_cast_float": ([N("ArgMax", ["x"], ["i"], axis=1, keepdims=0), N("Cast", ["i"], ["y"], to=TensorProto.FLOAT)],
                          {"x": X4}, {}, 17, TensorProto.FLOAT),
    "mask_cast": ([N("Greater", ["x", "zero"], ["c"]), N("Cast", ["c"], ["f"], to=TensorProto.FLOAT),
                   N("Cast", ["f"], ["b"], to=TensorProto.BOOL), N("Cast", ["b"], ["i"], to=TensorProto.INT64),
                   N("Cast", ["i"], ["y"], to=TensorProto.FLOAT)], {"x": X4}, ZERO, 17, TensorProto.FLOAT),
}


def feeds_for(case, inputs):
    feeds = {k: rand(*s) * 2 for k, s in inputs.items()}
    if "LogSum" in case and "Exp" not in case:
        feeds = {k: np.abs(v) + 0.1 for k, v in feeds.items()}   # log of a positive sum
    if case in ("Asin", "Acos"):
        feeds = {k: np.tanh(v) for k, v in feeds.items()}
    if case == "Round":   # exact halves too: they go to the even neighbour
        feeds["x"].reshape(-1)[:6] = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5]
    return feeds


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_matches_onnxruntime(case):
    nodes, inputs, inits, opset = CASES[case]
    model = make_model(nodes, inputs, inits, opset=opset)
    compare(model, feeds_for(case, inputs), rtol=1e-5, atol=1e-5)


def typed_model(case):
    nodes, inputs, inits, opset, elem = TYPED[case]
    model = make_model(nodes, inputs, inits, opset=opset)
    model.graph.output[0].type.tensor_type.elem_type = elem
    return model, inputs


@pytest.mark.parametrize("case", sorted(TYPED))
def test_bool_and_index_outputs_match_onnxruntime(case):
    """Booleans and int64 indices come out as floats of the same values."""
    model, inputs = typed_model(case)
    feeds = {k: np.round(rand(*s) * 2, 0 if "x2" in inputs else 3) for k, s in inputs.items()}   # ties in x2 cases
    m = compare(model, feeds)
    assert m.forward(feeds)["y"].dtype == np.float32


EXPORTED = ["ReduceL213_attr", "ReduceProd18_input", "ReduceLogSumExp13_keep0_hw", "Round", "Atan"]


@pytest.mark.parametrize("case", EXPORTED + sorted(TYPED))
@pytest.mark.parametrize("opset", [13, 18])
def test_export_matches_onnxruntime(case, opset):
    """Import, export at both axes conventions (attribute / input), run the export in ONNX Runtime."""
    if case in TYPED:
        model, inputs = typed_model(case)
    else:
        nodes, inputs, inits, model_opset = CASES[case]
        model = make_model(nodes, inputs, inits, opset=model_opset)
    feeds = feeds_for(case, inputs)
    m = cnngraph.onnx.import_onnx(model)
    proto = export_onnx(m, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    got = ort_run(proto, feeds)["y"]
    np.testing.assert_allclose(got, m.forward(feeds)["y"], rtol=1e-5, atol=1e-6)
    again = cnngraph.onnx.import_onnx(proto)   # and back
    np.testing.assert_array_equal(again.forward(feeds)["y"], m.forward(feeds)["y"])
