"""Decompositions that import as one layer (cnngraph/onnx/patterns.py): swish (torch's SiLU), hard_swish, mish,
GELU's tanh approximation, softplus with beta, group_norm below opset 21 and the contrib squeeze_excitation, as
torch.onnx.export writes them; and near misses (a wrong constant, an intermediate read twice or a graph output, a
shape that rules the pattern out) that do not fuse and still match ONNX Runtime."""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import cnngraph
from cnngraph.onnx import import_onnx
from onnx_build import compare, make_model, ort_run, rand

torch = pytest.importorskip("torch")  # the reference for the torch exports
nn, F = torch.nn, torch.nn.functional
N = helper.make_node

if "swish" not in cnngraph.get_registry().ops:   # the contrib ops (cnngraph-contrib) are needed throughout
    pytest.skip("cnngraph-contrib is not installed", allow_module_level=True)


class GeluTanh(nn.Module):
    def forward(self, x):
        return F.gelu(x, approximate="tanh")


class SE(nn.Module):
    """Squeeze-and-excitation as torchvision writes it: pool, 1x1 convolutions, sigmoid gate."""

    def __init__(self, ch, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(ch, hidden, 1), nn.Conv2d(hidden, ch, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


def _torch_onnx(net, shape, opset):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.randn(*shape),), f, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return onnx.load_from_string(f.getvalue())


def _layers(model):
    return [(lay.type, lay.params.model_dump(exclude_defaults=True)) for lay in model.spec.layers]


@pytest.mark.parametrize("net,shape,opset,layer", [
    (nn.SiLU(), (2, 3, 4, 4), 17, ("swish", {})),
    (nn.SiLU(), (2, 5), 13, ("swish", {})),
    (nn.Hardswish(), (2, 3, 4, 4), 13, ("hard_swish", {})),   # HardSigmoid + Mul below opset 14
    (nn.Hardswish(), (2, 3, 4, 4), 17, ("hard_swish", {})),   # HardSwish
    (nn.Mish(), (2, 3, 4, 4), 17, ("mish", {})),
    (nn.Mish(), (2, 3, 4, 4), 18, ("mish", {})),
    (GeluTanh(), (2, 3, 4, 4), 17, ("gelu", {"approximate": "tanh"})),
    (GeluTanh(), (2, 7), 20, ("gelu", {"approximate": "tanh"})),
    (nn.GroupNorm(2, 4), (2, 4, 3, 3), 17, ("group_norm", {"num_groups": 2})),
    (nn.GroupNorm(3, 6, eps=1e-3), (2, 6, 5), 13, ("group_norm", {"num_groups": 3, "eps": 1e-3})),
    (nn.GroupNorm(2, 4, affine=False), (2, 4, 3, 3), 17, ("group_norm", {"num_groups": 2, "affine": False})),
    (nn.Softplus(beta=2.0), (2, 6), 17, ("softplus", {"beta": 2.0})),
    (SE(8, 2), (2, 8, 4, 4), 17, ("squeeze_excitation", {})),
    (SE(6, 3), (2, 6, 3, 5), 13, ("squeeze_excitation", {"reduction": 2})),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else None)
def test_torch_exports_import_as_one_layer_and_match(net, shape, opset, layer):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():   # weights away from the initial ones and zeros
            p.uniform_(-1.0, 1.0)
    proto = _torch_onnx(net, shape, opset)
    model = import_onnx(proto)
    assert _layers(model) == [layer]
    x = (torch.randn(3, *shape[1:]) * 3).numpy()   # batch 3: the batch stays dynamic
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = model.forward({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, ort_run(proto, {"x": x})["y"], rtol=1e-5, atol=1e-5)
    theirs = {name: p.detach().numpy() for name, p in net.named_parameters()}
    if isinstance(net, nn.GroupNorm) and net.affine:   # the weights come back bit-identical in their own shape
        for k in ("weight", "bias"):
            assert model.params[f"{model.spec.layers[0].id}.{k}"].tobytes() == theirs[k].tobytes()
    if isinstance(net, SE):
        ours = model.params.numpy()
        lid = model.spec.layers[0].id
        for k, t in (("w1", "fc1.weight"), ("b1", "fc1.bias"), ("w2", "fc2.weight"), ("b2", "fc2.bias")):
            got = ours[f"{lid}.{k}"]
            assert got.shape == theirs[t].shape[:2] and got.tobytes() == theirs[t].tobytes()


class Block(nn.Module):
    """An EfficientNet-style block: several patterns side by side, an SE gate after a SiLU."""

    def __init__(self):
        super().__init__()
        self.conv, self.gn, self.se = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), SE(8, 2)

    def forward(self, x):
        y = self.se(F.silu(self.gn(self.conv(x))))
        return F.mish(y) + F.gelu(y, approximate="tanh") + F.hardswish(y)


@pytest.mark.parametrize("opset", [13, 17])
def test_torch_block_imports_each_pattern_as_one_layer(opset):
    torch.manual_seed(1)
    net = Block()
    proto = _torch_onnx(net, (2, 3, 8, 8), opset)
    model = import_onnx(proto)
    types = [lay.type for lay in model.spec.layers]
    assert sorted(types) == sorted(["conv2d", "group_norm", "swish", "squeeze_excitation", "mish", "gelu",
                                    "hard_swish", "add", "add"])
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(model.forward({"x": x.numpy()})["y"], want, rtol=1e-4, atol=1e-5)


# ---- near misses: each is one change away from a pattern; it imports node by node and matches ONNX Runtime ----

def _const(name, value):
    return N("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, np.float32)))


def _gelu_tanh(kappa=0.044715, half=0.5):
    return [N("Mul", ["x", "x"], ["x2"]), N("Mul", ["x2", "x"], ["x3"]), _const("k", kappa),
            N("Mul", ["x3", "k"], ["a"]), N("Add", ["x", "a"], ["b"]), _const("s", math.sqrt(2 / math.pi)),
            N("Mul", ["b", "s"], ["c"]), N("Tanh", ["c"], ["t"]), _const("one", 1.0), N("Add", ["t", "one"], ["u"]),
            N("Mul", ["x", "u"], ["v"]), _const("h", half), N("Mul", ["v", "h"], ["y"])]


def _group_norm(groups=2, scale=(1.0, 1.0), back=(0, 4, 3, 3), weight_shape=(4, 1, 1)):
    inits = {"g": np.array([0, groups, -1], np.int64), "ones": np.array(scale, np.float32),
             "zeros": np.zeros(len(scale), np.float32), "back": np.array(back, np.int64),
             "gn.weight": rand(*weight_shape), "gn.bias": rand(*weight_shape)}
    nodes = [N("Reshape", ["x", "g"], ["r"]), N("InstanceNormalization", ["r", "ones", "zeros"], ["n"]),
             N("Reshape", ["n", "back"], ["m"]), N("Mul", ["m", "gn.weight"], ["s"]), N("Add", ["s", "gn.bias"], ["y"])]
    return nodes, inits


def _se(gate_of="x", bias=True):
    inits = {"w1": rand(2, 8, 1, 1), "b1": rand(2), "w2": rand(8, 2, 1, 1), "b2": rand(8)}
    nodes = [N("GlobalAveragePool", ["x"], ["p"]), N("Conv", ["p", "w1", "b1"] if bias else ["p", "w1"], ["h"]),
             N("Relu", ["h"], ["r"]), N("Conv", ["r", "w2", "b2"], ["l"]), N("Sigmoid", ["l"], ["g"]),
             N("Mul", [gate_of, "g"], ["y"])]
    return nodes, inits


IMAGE = (2, 4, 3, 3)


def _fused(nodes, inits=None, shape=IMAGE, outputs=("y",)):
    """The imported layer types, after checking the import against ONNX Runtime."""
    model = make_model(nodes, {"x": shape}, inits, outputs=outputs)
    x = rand(*shape) * 3
    if len(shape) == 4 and shape[1] == 8:
        x = x + 1.0   # SE: a positive mean keeps some of the hidden units alive
    m = compare(model, {"x": x}, rtol=1e-5, atol=2e-5)
    return [lay.type for lay in m.spec.layers]


def test_the_exact_forms_fuse():
    # the controls of the near misses below
    assert _fused([N("Sigmoid", ["x"], ["g"]), N("Mul", ["g", "x"], ["y"])]) == ["swish"]
    assert _fused(_gelu_tanh()) == ["gelu"]
    assert _fused(*_group_norm()) == ["group_norm"]
    assert _fused(*_se(), shape=(2, 8, 3, 3)) == ["squeeze_excitation"]
    assert _fused(*_se(bias=False), shape=(2, 8, 3, 3)) == ["squeeze_excitation"]


@pytest.mark.parametrize("case", ["swish-other-tensor", "swish-gate-output", "swish-beta-read-twice",
                                  "hard-swish-alpha", "mish-tanh-read-twice", "gelu-kappa", "gelu-half",
                                  "gelu-cube-output", "softplus-beta-differs", "softplus-threshold-operand"])
def test_activation_near_misses_do_not_fuse(case):
    outputs = ("y",)
    if case == "swish-other-tensor":   # sigmoid(x) * x²
        nodes = [N("Sigmoid", ["x"], ["g"]), N("Mul", ["x", "x"], ["q"]), N("Mul", ["q", "g"], ["y"])]
    elif case == "swish-gate-output":   # the gate is a graph output too
        nodes, outputs = [N("Sigmoid", ["x"], ["g"]), N("Mul", ["x", "g"], ["y"])], ("y", "g")
    elif case == "swish-beta-read-twice":   # β x feeds the gate and the result
        nodes = [_const("b", 1.7), N("Mul", ["x", "b"], ["bx"]), N("Sigmoid", ["bx"], ["g"]),
                 N("Mul", ["x", "g"], ["p"]), N("Add", ["p", "bx"], ["y"])]
    elif case == "hard-swish-alpha":   # HardSigmoid's default alpha 0.2, not 1/6
        nodes = [N("HardSigmoid", ["x"], ["g"]), N("Mul", ["x", "g"], ["y"])]
    elif case == "mish-tanh-read-twice":
        nodes = [N("Softplus", ["x"], ["s"]), N("Tanh", ["s"], ["t"]), N("Mul", ["x", "t"], ["m"]),
                 N("Add", ["m", "t"], ["y"])]
    elif case == "gelu-kappa":
        nodes = _gelu_tanh(kappa=0.04471)
    elif case == "gelu-half":
        nodes = _gelu_tanh(half=0.25)
    elif case == "gelu-cube-output":
        nodes, outputs = _gelu_tanh(), ("y", "x3")
    elif case == "softplus-beta-differs":   # Mul by 2, Div by 2.5
        nodes = [_const("b", 2.0), _const("d", 2.5), N("Mul", ["x", "b"], ["bx"]), N("Softplus", ["bx"], ["s"]),
                 N("Div", ["s", "d"], ["y"])]
    else:   # Where(Greater(βx, 1), x, ·) with β x instead of x as the linear branch
        nodes = [_const("b", 2.0), _const("t", 1.0), N("Mul", ["x", "b"], ["bx"]), N("Softplus", ["bx"], ["s"]),
                 N("Div", ["s", "b"], ["sp"]), N("Greater", ["bx", "t"], ["lin"]),
                 N("Where", ["lin", "bx", "sp"], ["y"])]
    types = _fused(nodes, outputs=outputs)
    assert len(types) > 1 and not {"swish", "hard_swish", "mish"} & set(types), types
    assert "gelu" not in types


def test_softplus_with_beta_and_threshold_fuses():
    nodes = [_const("b", 2.0), _const("t", 1.0), N("Mul", ["x", "b"], ["bx"]), N("Softplus", ["bx"], ["s"]),
             N("Div", ["s", "b"], ["sp"]), N("Greater", ["bx", "t"], ["lin"]), N("Where", ["lin", "x", "sp"], ["y"])]
    model = make_model(nodes, {"x": IMAGE})
    assert _fused(nodes) == ["softplus"]
    layer = import_onnx(model).spec.layers[0]
    assert (layer.params.beta, layer.params.threshold) == (2.0, 1.0)


@pytest.mark.parametrize("case", ["scale-not-one", "reshape-back-elsewhere", "groups-split-channels",
                                  "weight-misaligned", "normalized-read-twice"])
def test_group_norm_near_misses_do_not_fuse(case):
    shape, outputs, nodes = IMAGE, ("y",), None
    if case == "scale-not-one":
        nodes, inits = _group_norm(scale=(1.0, 2.0))
    elif case == "reshape-back-elsewhere":   # back to (C, W, H) of a (C, H, W) input: dropped at the walk
        nodes, inits = _group_norm(back=(0, 4, 2, 3))
        shape = (2, 4, 3, 2)
    elif case == "groups-split-channels":   # 3 groups of a 3 x 2 x 2 input with 12 values: not per channel
        nodes, inits = _group_norm(groups=4, scale=(1.0,) * 4, back=(0, 3, 2, 2), weight_shape=(3, 1, 1))
        shape = (2, 3, 2, 2)
    elif case == "weight-misaligned":   # (C, 1) against a (C, H, W) input scales along H
        nodes, inits = _group_norm(back=(0, 4, 4, 3), weight_shape=(4, 1))
        shape = (2, 4, 4, 3)
    else:
        nodes, inits = _group_norm()
        nodes.append(N("Relu", ["n"], ["n2"]))
        outputs = ("y", "n2")
    types = _fused(nodes, inits, shape=shape, outputs=outputs)
    assert types[:3] == ["reshape", "group_norm", "reshape"], types   # the per-group normalization alone


def test_group_norm_dropped_at_the_walk_keeps_its_constant_nodes():
    # the Reshape targets come from Constant nodes, which the walk must still fold once the pattern is dropped
    nodes, inits = _group_norm(back=(0, 4, 2, 3))
    for name in ("g", "back"):
        nodes.insert(0, N("Constant", [], [name], value=numpy_helper.from_array(inits.pop(name))))
    types = _fused(nodes, inits, shape=(2, 4, 3, 2))
    assert types.count("reshape") == 2 and "group_norm" in types   # the inner per-group normalization only


@pytest.mark.parametrize("case", ["gate-scales-other", "strided-conv", "relu-read-twice", "pool-output"])
def test_squeeze_excitation_near_misses_do_not_fuse(case):
    shape, outputs = (2, 8, 3, 3), ("y",)
    nodes, inits = _se()
    if case == "gate-scales-other":   # the gate multiplies relu(x), not x
        nodes, _ = _se(gate_of="rx")
        nodes.insert(0, N("Relu", ["x"], ["rx"]))
    elif case == "strided-conv":
        nodes[1] = N("Conv", ["p", "w1", "b1"], ["h"], strides=[2, 2])
    elif case == "relu-read-twice":
        nodes.append(N("Sigmoid", ["r"], ["r2"]))
        outputs = ("y", "r2")
    else:
        outputs = ("y", "p")
    types = _fused(nodes, inits, shape=shape, outputs=outputs)
    assert "squeeze_excitation" not in types and "sigmoid" in types
