"""The tensor ops added for ONNX (plugins/tensor.py, plugins/lrn.py): forward vs PyTorch, backward vs
float64 finite differences."""
from __future__ import annotations

import numpy as np
import pytest
torch = pytest.importorskip("torch")  # the reference these tests compare with
nn = torch.nn

import cnngraph
from onnx_testutil import gradcheck, one_layer

RNG = np.random.default_rng(7)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


T = torch.from_numpy

# name: (layer, per-sample shapes, torch reference on batched tensors, positive-second-input)
CASES = {
    "broadcast_add": ({"type": "broadcast_add"}, [(2, 3, 4), (2, 1, 4)], lambda a, b: a + b),
    "broadcast_add_rank": ({"type": "broadcast_add"}, [(3, 4), (4,)], lambda a, b: a + b[:, None, :]),
    "sub": ({"type": "sub"}, [(2, 3, 4), (3, 1)], lambda a, b: a - b[:, None]),
    "mul": ({"type": "mul"}, [(2, 3, 4), (2, 1, 1)], lambda a, b: a * b),
    "div": ({"type": "div"}, [(2, 3, 4), (2, 1, 4)], lambda a, b: a / b),
    "matmul": ({"type": "matmul"}, [(3, 4), (4, 5)], lambda a, b: a @ b),
    "matmul_vec_mat": ({"type": "matmul"}, [(4,), (4, 5)], lambda a, b: (a[:, None, :] @ b)[:, 0]),
    "matmul_mat_vec": ({"type": "matmul"}, [(2, 3, 4), (4,)], lambda a, b: (a @ b[:, None, :, None])[..., 0]),
    "matmul_bcast": ({"type": "matmul"}, [(2, 3, 4), (1, 4, 2)], lambda a, b: a @ b),
    "reshape": ({"type": "reshape", "shape": [4, -1]}, [(2, 3, 4)], lambda a: a.reshape(a.shape[0], 4, -1)),
    "transpose": ({"type": "transpose", "perm": [0, 2, 3, 1]}, [(2, 3, 4)], lambda a: a.permute(0, 2, 3, 1)),
    "pad_constant": ({"type": "pad", "pads": [[0, 0], [1, 2], [2, 1]], "value": 0.5}, [(2, 4, 5)],
                     lambda a: torch.nn.functional.pad(a, (2, 1, 1, 2), value=0.5)),
    "pad_reflect": ({"type": "pad", "pads": [[0, 0], [1, 2], [2, 1]], "mode": "reflect"}, [(2, 4, 5)],
                    lambda a: torch.nn.functional.pad(a, (2, 1, 1, 2), mode="reflect")),
    "pad_edge": ({"type": "pad", "pads": [[0, 0], [1, 2], [3, 1]], "mode": "edge"}, [(2, 4, 5)],
                 lambda a: torch.nn.functional.pad(a, (3, 1, 1, 2), mode="replicate")),
    "clip": ({"type": "clip", "min": -0.5, "max": 0.7}, [(3, 4)], lambda a: a.clamp(-0.5, 0.7)),
    "clip_min": ({"type": "clip", "min": 0.1}, [(5,)], lambda a: a.clamp(min=0.1)),
    "identity": ({"type": "identity"}, [(3, 4)], lambda a: a),
    "slice_reverse": ({"type": "slice", "step": -1}, [(3, 4)], lambda a: a.flip(1)),
    "slice_from_end": ({"type": "slice", "axis": -1, "start": -2, "step": -2}, [(2, 5)], lambda a: a.flip(2)[..., 1::2]),
    "lrn": ({"type": "local_response_norm", "size": 3, "alpha": 0.1, "beta": 0.75, "k": 2.0}, [(6, 3, 3)],
            lambda a: torch.nn.functional.local_response_norm(a, 3, 0.1, 0.75, 2.0)),
    "lrn_even": ({"type": "local_response_norm", "size": 4, "alpha": 0.2, "beta": 0.6, "k": 1.0}, [(7, 2, 3)],
                 lambda a: torch.nn.functional.local_response_norm(a, 4, 0.2, 0.6, 1.0)),
}


def feeds_for(name, shapes, batch=3):
    feeds = {f"x{i}": rand(batch, *s) for i, s in enumerate(shapes)}
    if name == "div":
        feeds["x1"] = (np.abs(feeds["x1"]) + 0.5).astype(np.float32)
    if name.startswith("clip"):   # away from the kinks
        feeds["x0"] = np.where(np.abs(feeds["x0"] - 0.7) < 0.05, 0.0, feeds["x0"])
        feeds["x0"] = np.where(np.abs(feeds["x0"] + 0.5) < 0.05, 0.0, feeds["x0"])
        feeds["x0"] = np.where(np.abs(feeds["x0"] - 0.1) < 0.05, 0.3, feeds["x0"]).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_torch(name):
    layer, shapes, ref = CASES[name]
    model = cnngraph.compile(one_layer(layer, shapes))
    feeds = feeds_for(name, shapes)
    ours = model.forward(feeds)["op"]
    want = ref(*[T(feeds[f"x{i}"]) for i in range(len(shapes))]).numpy()
    assert ours.shape == want.shape
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_backward_matches_finite_differences(name):
    layer, shapes, _ = CASES[name]
    gradcheck(one_layer(layer, shapes), feeds_for(name, shapes))


def test_constant_broadcasts_and_trains():
    spec = {"inputs": {"x": {"shape": [3, 2, 2]}},
            "layers": [{"id": "c", "type": "constant", "shape": [3, 1, 1], "fill": 2.0, "inputs": []},
                       {"id": "op", "type": "mul", "inputs": ["x", "c"]}],
            "outputs": ["op"]}
    m = cnngraph.compile(spec)
    x = rand(4, 3, 2, 2)
    np.testing.assert_allclose(m.forward({"x": x})["op"], 2 * x)
    gradcheck(spec, {"x": x})


def test_examples_compile():
    reg = cnngraph.get_registry()
    for t in ("reshape", "transpose", "broadcast_add", "sub", "mul", "div", "matmul", "pad", "clip", "constant",
              "identity", "local_response_norm"):
        for params, shapes in reg.ops[t].examples():
            spec = one_layer({"type": t, **params}, shapes)
            cnngraph.compile(spec)


def test_bad_params_are_clear():
    with pytest.raises(cnngraph.SpecError, match="moves the batch axis"):
        cnngraph.load_spec(one_layer({"type": "transpose", "perm": [1, 0, 2]}, [(2, 3)]))
    with pytest.raises(cnngraph.SpecError, match="do not broadcast"):
        cnngraph.load_spec(one_layer({"type": "mul"}, [(2, 3), (4,)]))
    with pytest.raises(cnngraph.SpecError, match="cannot reshape"):
        cnngraph.load_spec(one_layer({"type": "reshape", "shape": [5]}, [(2, 3)]))
