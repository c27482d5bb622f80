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
    # a computed float cast to BOOL only for truth tests (nonzero is true, as in cnngraph's logic ops);
    # Relu makes about half the values exactly 0
    "bool_cast_truth_tests": ([N("Relu", ["x"], ["r"]), N("Cast", ["r"], ["b"], to=TensorProto.BOOL),
                               N("Not", ["b"], ["n"]), N("Where", ["b", "x", "zero"], ["w"]),
                               N("Cast", ["n"], ["nf"], to=TensorProto.FLOAT), N("Add", ["nf", "w"], ["y"])],
                              {"x": X4}, ZERO, 17, TensorProto.FLOAT),
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

PADS = {"p1": np.array([0, 0, -1, 2, 0, 0, 3, -2], np.int64)}   # crop 1 row on top, 2 columns on the right
CASES |= {
    **{f"pad_crop_{mode}": ([N("Pad", ["x", "p1"], ["y"], mode=mode)], {"x": X4}, PADS, 19)
       for mode in ("constant", "reflect", "edge", "wrap")},
    "pad_wrap_wide": ([N("Pad", ["x", "p"], ["y"], mode="wrap")], {"x": X4},
                      {"p": np.array([0, 1, 7, 2, 0, 2, 1, 8], np.int64)}, 19),   # wider than the input: wraps again
    "pad_crop_only": ([N("Pad", ["x", "p"], ["y"])], {"x": X4}, {"p": np.array([0, 0, -1, -2, 0, -1, 0, 0], np.int64)},
                      13),
    "expand_hw": ([N("Expand", ["x", "s"], ["y"])], {"x": (2, 4, 1, 6)}, {"s": np.array([5, 1], np.int64)}, 13),
    "expand_full_batch1": ([N("Expand", ["x", "s"], ["y"])], {"x": (2, 1, 5, 1)}, {"s": np.array([1, 4, 1, 6], np.int64)},
                           13),
    "expand_shape_of_x": ([N("Shape", ["x"], ["sx"]), N("Gather", ["sx", "i0"], ["n"]), N("Concat", ["n", "s3"], ["s"], axis=0),
                           N("Expand", ["x", "s"], ["y"])], {"x": (2, 1, 5, 1)},
                          {"i0": np.array([0], np.int64), "s3": np.array([3, 5, 2], np.int64)}, 13),
    "expand_keeps_larger": ([N("Expand", ["x", "s"], ["y"])], {"x": X4}, {"s": np.array([1, 1, 1], np.int64)}, 13),
    "tile": ([N("Tile", ["x", "r"], ["y"])], {"x": X4}, {"r": np.array([1, 2, 1, 3], np.int64)}, 13),
    "tile_const_into_add": ([N("Tile", ["c", "r"], ["t"]), N("Add", ["x", "t"], ["y"])], {"x": X4},
                            {"c": rand(1, 4, 5, 2), "r": np.array([1, 1, 1, 3], np.int64)}, 13),
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


def test_a_computed_tensor_cast_to_bool_for_other_uses_is_still_refused():
    """Cast to BOOL is taken as a no-op only where the result is only truth-tested (logic ops, Where's
    condition): cast back to float it would threshold values that cnngraph would keep."""
    model = make_model([N("Relu", ["x"], ["r"]), N("Cast", ["r"], ["b"], to=TensorProto.BOOL),
                        N("Cast", ["b"], ["y"], to=TensorProto.FLOAT)], {"x": X4}, {}, opset=17)
    with pytest.raises(cnngraph.CnnGraphError, match="casting a computed tensor to BOOL truncates or thresholds"):
        cnngraph.onnx.import_onnx(model)


@pytest.mark.parametrize("case", sorted(TYPED))
def test_bool_and_index_outputs_match_onnxruntime(case):
    """Booleans and int64 indices come out as floats of the same values."""
    model, inputs = typed_model(case)
    feeds = {k: np.round(rand(*s) * 2, 0 if "x2" in inputs else 3) for k, s in inputs.items()}   # ties in x2 cases
    m = compare(model, feeds)
    assert m.forward(feeds)["y"].dtype == np.float32


EXPORTED = ["ReduceL213_attr", "ReduceProd18_input", "ReduceLogSumExp13_keep0_hw", "Round", "Atan",
            "pad_crop_reflect", "pad_crop_only", "expand_hw", "expand_shape_of_x", "tile"]


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


def test_pad_wrap_exports_from_opset_19():
    nodes, inputs, inits, opset = CASES["pad_crop_wrap"]
    m = cnngraph.onnx.import_onnx(make_model(nodes, inputs, inits, opset=opset))
    with pytest.raises(cnngraph.onnx.OnnxError, match="wrap needs --opset 19"):
        export_onnx(m, opset=18)
    feeds = feeds_for("pad_crop_wrap", inputs)
    np.testing.assert_allclose(ort_run(export_onnx(m, opset=19), feeds)["y"], m.forward(feeds)["y"])


@pytest.mark.parametrize("nodes, inits, message", [
    ([N("Expand", ["x", "s"], ["y"])], {"s": np.array([3, 2, 4, 5, 6], np.int64)}, "moves the batch axis"),
    ([N("Expand", ["x", "s"], ["y"])], {"s": np.array([7, 4, 5, 6], np.int64)}, "expanding the batch axis to 7"),
    ([N("Tile", ["x", "r"], ["y"])], {"r": np.array([2, 1, 1, 1], np.int64)}, "tiling the batch axis"),
    ([N("ArgMax", ["x"], ["y"])], {}, "searching the batch axis"),
])
def test_batch_axis_changes_are_refused_clearly(nodes, inits, message):
    model = make_model(nodes, {"x": X4}, inits, opset=13)
    with pytest.raises(cnngraph.onnx.OnnxError, match=message):
        cnngraph.onnx.import_onnx(model)


def mask_net(torch):
    """The ops of this file as PyTorch writes them: an embedding norm, masks, torch.where, softshrink, circular
    padding, expand/repeat, element-wise math and a segmentation head's argmax."""
    F = torch.nn.functional

    class MaskNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.shrink = torch.nn.Softshrink(0.3)

        def forward(self, x):
            h = F.pad(self.conv(x), (1, 1, 1, 1), mode="circular")
            e = F.normalize(h, dim=1)
            m = torch.where((h > 0) & ~(h > 0.5), e, self.shrink(h))
            s = m + torch.floor(h) * 0.1 + torch.sin(h) + torch.atan(h) + torch.round(h) + torch.sign(h)
            s = s + h.amin(1, keepdim=True) + torch.logsumexp(h, 1, keepdim=True) + h[:, :1].expand(-1, 4, -1, -1)
            s = s + h.mean(1, keepdim=True).repeat(1, 4, 1, 1)
            return s, s.argmax(1)

    return MaskNet().eval()


@pytest.mark.parametrize("opset", [13, 17])
def test_torch_export_matches_torch(tmp_path, opset):
    torch = pytest.importorskip("torch")
    import warnings
    net = mask_net(torch)
    x = torch.randn(2, 3, 8, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(tmp_path / "m.onnx"), dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["s", "label"], dynamic_axes={"x": {0: "batch"}})
    m = cnngraph.onnx.import_onnx(tmp_path / "m.onnx")
    x = torch.randn(3, 3, 8, 9)
    with torch.no_grad():
        want = [t.numpy() for t in net(x)]
    got = m.forward({"x": x.numpy()})
    np.testing.assert_allclose(got["s"], want[0], rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(got["label"], want[1])
    feeds = {"x": x.numpy()}
    np.testing.assert_allclose(ort_run(export_onnx(m, opset=19), feeds)["s"], got["s"], rtol=1e-5, atol=2e-5)
