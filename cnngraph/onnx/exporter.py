"""cnngraph spec + weights → ONNX model (dynamic batch dimension, chosen opset).

Each layer maps to ONNX nodes through the functions in ``EXPORTERS`` (keyed by op type). Weights
become initializers named ``<layer id>.<param>`` so an export → import round trip gives back the same
parameter names and bit-identical values. Loss layers and layers that reach no non-loss output are
not exported.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np

from .common import OnnxError, register_once, require_onnx
from .import_ops import COMPARE, LOGICAL, REDUCE, UNARY

__all__ = ["spec_to_onnx", "export_onnx", "plugin_exporters_used", "EXPORTERS", "MIN_OPSET"]

MIN_OPSET = 13
EXPORTERS: dict = {}


def exports(*types):
    """Register ``fn(c, layer_id, op, inputs, attrs)`` as the ONNX export of these op types. An op type
    that already has another export is an error: a plugin cannot silently change how relu exports."""
    def deco(fn):
        for t in types:
            register_once(EXPORTERS, t, fn, "the ONNX export of op type")
        return fn
    return deco


class _Ctx:
    def __init__(self, opset: int, graph, params: dict[str, np.ndarray]):
        from onnx import helper, numpy_helper
        self.helper, self.nh = helper, numpy_helper
        self.opset = opset
        self.g = graph
        self.params = params
        self.nodes: list = []
        self.inits: dict[str, Any] = {}
        self.counter = 0
        self.outputs: set = set()   # the exported outputs (set by spec_to_onnx)

    def init(self, name: str, arr) -> str:
        if name not in self.inits:
            self.inits[name] = self.nh.from_array(np.asarray(arr), name)
        return name

    def weight(self, layer: str, local: str) -> str:
        full = f"{layer}.{local}"
        return self.init(full, np.asarray(self.params[full], dtype=np.float32))

    def const(self, layer: str, tag: str, arr) -> str:
        return self.init(f"{layer}::{tag}", arr)

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=name, **attrs))


def _pads_onnx(p) -> list[int]:
    """(begin, end) per axis, e.g. (top, bottom, left, right), as ONNX's [begins..., ends...]."""
    return [*p[0::2], *p[1::2]]


def _window_pads(op, in_shape):
    if op.type == "conv2d":
        return list(op.pads(in_shape))
    return list(op.window()[2])


# ---- exporters: (ctx, layer id, op, input tensor names, attrs) → output tensor name ------------------

# Ops that become one ONNX node on the layer's own inputs: op type → (ONNX op, its attributes from op.p).
_ONE_NODE = {
    "identity": ("Identity", None),
    "relu": ("Relu", None), "sigmoid": ("Sigmoid", None), "tanh": ("Tanh", None),
    "leaky_relu": ("LeakyRelu", lambda p: {"alpha": float(p.negative_slope)}),
    "elu": ("Elu", lambda p: {"alpha": float(p.alpha)}),
    "selu": ("Selu", lambda p: {"alpha": float(p.alpha), "gamma": float(p.scale)}),
    "celu": ("Celu", lambda p: {"alpha": float(p.alpha)}),
    "softsign": ("Softsign", None),
    "unary": (None, None),   # ONNX op from the fn parameter
    "maximum": ("Max", None), "minimum": ("Min", None),
    "pixel_shuffle": ("DepthToSpace", lambda p: {"blocksize": int(p.upscale_factor), "mode": p.mode.upper()}),
    "hard_sigmoid": ("HardSigmoid", lambda p: {"alpha": float(p.alpha), "beta": float(p.beta)}),
    "softmax": ("Softmax", lambda p: {"axis": int(p.axis)}),
    "log_softmax": ("LogSoftmax", lambda p: {"axis": int(p.axis)}),
    "global_avg_pool2d": ("GlobalAveragePool", None), "global_max_pool2d": ("GlobalMaxPool", None),
    "transpose": ("Transpose", lambda p: {"perm": list(p.perm)}),
    "concat": ("Concat", lambda p: {"axis": int(p.axis)}),
}


def _onnx_names(table: dict) -> dict:
    """Invert an importer table (ONNX op → cnngraph name)."""
    return {v: k for k, v in table.items()}


_UNARY = _onnx_names(UNARY)
_REDUCE = _onnx_names(REDUCE)


@exports(*_ONE_NODE)
def _one_node(c, lid, op, ins, attrs):
    onnx_op, attributes = _ONE_NODE[op.type]
    if op.type == "unary":
        onnx_op = _UNARY[op.p.fn]
        if op.p.fn in ("isnan", "isinf"):   # ONNX gives booleans, cnngraph 1.0 / 0.0
            return _to_float(c, lid, lambda out: c.node(onnx_op, ins, [out], lid))
    if op.type in ("maximum", "minimum"):
        ins = _align_ranks(c, lid, ins, attrs)
    c.node(onnx_op, ins, [lid], lid, **(attributes(op.p) if attributes else {}))
    return lid


@exports("pow")
def _pow(c, lid, op, ins, attrs):
    c.node("Pow", [ins[0], c.const(lid, "exponent", np.array(op.p.exponent, np.float32))], [lid], lid)
    return lid


@exports("reduce")
def _reduce(c, lid, op, ins, attrs):
    """ReduceSum takes its axes as an input from opset 13, the other Reduce ops from opset 18."""
    onnx_op = _REDUCE[op.p.op]
    axes = list(op._axes(len(attrs["in_shapes"][0]) + 1))
    if onnx_op == "ReduceSum" or c.opset >= 18:
        c.node(onnx_op, [ins[0], c.const(lid, "axes", np.array(axes, np.int64))], [lid], lid,
               keepdims=int(op.p.keepdims))
    else:
        c.node(onnx_op, ins, [lid], lid, axes=axes, keepdims=int(op.p.keepdims))
    return lid


def _to_float(c, lid, make) -> str:
    """``make(out)`` writes a bool or int64 tensor to ``out``; Cast it to the float 0/1 or index cnngraph holds."""
    from onnx import TensorProto
    make(f"{lid}::raw")
    c.node("Cast", [f"{lid}::raw"], [lid], f"{lid}::float", to=TensorProto.FLOAT)
    return lid


def _to_bool(c, lid, name: str, i: int) -> str:
    from onnx import TensorProto
    c.node("Cast", [name], [f"{lid}::b{i}"], f"{lid}::bool{i}", to=TensorProto.BOOL)
    return f"{lid}::b{i}"


@exports("compare")
def _compare(c, lid, op, ins, attrs):
    ins = _align_ranks(c, lid, ins, attrs)
    return _to_float(c, lid, lambda out: c.node(_onnx_names(COMPARE)[op.p.op], ins, [out], lid))


@exports("logical")
def _logical(c, lid, op, ins, attrs):
    ins = [_to_bool(c, lid, name, i) for i, name in enumerate(_align_ranks(c, lid, ins, attrs))]
    return _to_float(c, lid, lambda out: c.node(_onnx_names(LOGICAL)[op.p.op], ins, [out], lid))


@exports("where")
def _where(c, lid, op, ins, attrs):
    cond, a, b = _align_ranks(c, lid, ins, attrs)
    c.node("Where", [_to_bool(c, lid, cond, 0), a, b], [lid], lid)
    return lid


@exports("argmax", "argmin")
def _arg_extremum(c, lid, op, ins, attrs):
    p = op.p
    return _to_float(c, lid, lambda out: c.node("ArgMax" if op.type == "argmax" else "ArgMin", ins, [out], lid,
                                                 axis=op._axis(len(attrs["in_shapes"][0]) + 1),
                                                 keepdims=int(p.keepdims), select_last_index=int(p.select_last_index)))


@exports("layer_norm")
def _layer_norm(c, lid, op, ins, attrs):
    """LayerNormalization from opset 17; before it the decomposition PyTorch writes (ReduceMean, Sub, Mul,
    ReduceMean, Add, Sqrt, Div, then Mul and Add by the weight and bias)."""
    shape = list(attrs["in_shapes"][0])
    k, eps = op.p.axes, float(op.p.eps)
    normalized = shape[len(shape) - k:]
    if op.p.affine:
        scale, bias = c.weight(lid, "weight"), c.weight(lid, "bias")
    if c.opset >= 17:
        if not op.p.affine:
            scale = c.const(lid, "scale", np.ones(normalized, np.float32))
            bias = c.const(lid, "shift", np.zeros(normalized, np.float32))
        c.node("LayerNormalization", [ins[0], scale, bias], [lid], lid, axis=-k, epsilon=eps)
        return lid
    axes = list(range(-k, 0))
    last = lid if not op.p.affine else f"{lid}::xhat"
    c.node("ReduceMean", ins, [f"{lid}::mean"], f"{lid}::mean", axes=axes, keepdims=1)
    c.node("Sub", [ins[0], f"{lid}::mean"], [f"{lid}::xc"], f"{lid}::center")
    c.node("Mul", [f"{lid}::xc", f"{lid}::xc"], [f"{lid}::sq"], f"{lid}::square")
    c.node("ReduceMean", [f"{lid}::sq"], [f"{lid}::var"], f"{lid}::var", axes=axes, keepdims=1)
    c.node("Add", [f"{lid}::var", c.const(lid, "eps", np.array(eps, np.float32))], [f"{lid}::vareps"], f"{lid}::eps")
    c.node("Sqrt", [f"{lid}::vareps"], [f"{lid}::std"], f"{lid}::std")
    c.node("Div", [f"{lid}::xc", f"{lid}::std"], [last], last)
    if op.p.affine:
        c.node("Mul", [last, scale], [f"{lid}::scaled"], f"{lid}::scale")
        c.node("Add", [f"{lid}::scaled", bias], [lid], lid)
    return lid


def _as_2d(op, in_shape):
    """A window op and its per-sample input shape in 2-D: a 1-D op (plugins/window1d.py) runs as its 2-D form
    on (C, 1, L); 2-D and 3-D ops (plugins/window3d.py) are their own form."""
    two_d = getattr(op, "as_2d", None)
    return (op, in_shape) if two_d is None else (two_d, (in_shape[0], 1, *in_shape[1:]))


def _window_node(c, lid, onnx_op, op, ins, window: dict, **attrs) -> str:
    """Add a Conv, ConvTranspose or pooling node; the ``window`` attributes, of ``op``'s 2-D form, keep only their
    L entries for a 1-D op (its H axis is the unit axis it adds; pads [top, left, bottom, right] → [left, right])."""
    if hasattr(op, "as_2d"):
        window = {k: v[1::2] if k == "pads" else v[1:] for k, v in window.items()}
    c.node(onnx_op, ins, [lid], lid, **window, **attrs)
    return lid


@exports("conv2d", "conv1d", "conv3d", "conv_transpose2d", "conv_transpose1d", "conv_transpose3d")
def _conv(c, lid, op, ins, attrs):
    two_d, shape = _as_2d(op, attrs["in_shapes"][0])
    p = two_d.p
    inputs = [ins[0], c.weight(lid, "weight")] + ([c.weight(lid, "bias")] if p.bias else [])
    window = dict(kernel_shape=list(p.kernel_size), strides=list(p.stride), pads=_pads_onnx(two_d.pads(shape)),
                  dilations=list(p.dilation))
    if two_d.transposed:
        window["output_padding"] = list(p.output_padding)
        if any(o >= st for o, st in zip(p.output_padding, p.stride)):   # PyTorch allows o < max(stride, dilation)
            raise OnnxError(f"layer '{lid}' ({op.type}): output_padding {tuple(op.p.output_padding)} must be less than "
                            f"stride {tuple(op.p.stride)} on each axis for ONNX: ONNX Runtime refuses such a "
                            f"ConvTranspose, so the model would not run there")
    return _window_node(c, lid, "ConvTranspose" if two_d.transposed else "Conv", op, inputs, window, group=p.groups)


@exports("dense")
def _dense(c, lid, op, ins, attrs):
    inputs = [ins[0], c.weight(lid, "weight")] + ([c.weight(lid, "bias")] if op.p.bias else [])
    c.node("Gemm", inputs, [lid], lid, transB=1)
    return lid


@exports("max_pool2d", "avg_pool2d", "max_pool1d", "avg_pool1d", "max_pool3d", "avg_pool3d")
def _pool(c, lid, op, ins, attrs):
    two_d, _ = _as_2d(op, attrs["in_shapes"][0])
    k, s, pads, d = two_d.window()
    window = dict(kernel_shape=list(k), strides=list(s), pads=_pads_onnx(pads))
    if two_d.type.startswith("max_pool"):
        if any(v != 1 for v in d):
            window["dilations"] = list(d)
        return _window_node(c, lid, "MaxPool", op, ins, window, ceil_mode=int(op.p.ceil_mode))
    if op.p.ceil_mode and any(pads) and op.p.count_include_pad and c.opset < 19:
        # before opset 19 runtimes disagree on the divisor of windows overhanging the padding
        raise OnnxError(f"layer '{lid}': {op.type} with ceil_mode, padding and count_include_pad needs "
                        f"--opset 19 or newer")
    return _window_node(c, lid, "AveragePool", op, ins, window, ceil_mode=int(op.p.ceil_mode),
                        count_include_pad=int(op.p.count_include_pad))


@exports("batch_norm2d")
def _bn(c, lid, op, ins, attrs):
    ch = attrs["in_shapes"][0][0]
    if op.p.affine:
        scale, bias = c.weight(lid, "weight"), c.weight(lid, "bias")
    else:
        scale = c.const(lid, "scale", np.ones(ch, np.float32))
        bias = c.const(lid, "shift", np.zeros(ch, np.float32))
    c.node("BatchNormalization", [ins[0], scale, bias, c.weight(lid, "running_mean"), c.weight(lid, "running_var")],
           [lid], lid, epsilon=float(op.p.eps), momentum=float(1 - op.p.momentum))
    return lid


@exports("group_norm")
def _group_norm(c, lid, op, ins, attrs):
    """InstanceNormalization when each channel is a group; otherwise GroupNormalization from opset 21 (per-channel
    scale), and before it PyTorch's form: Reshape to (N, G, -1), InstanceNormalization, Reshape, Mul, Add."""
    shape = list(attrs["in_shapes"][0])
    ch, groups, eps = shape[0], op.p.num_groups, float(op.p.eps)
    if (groups == ch and len(shape) >= 2) or c.opset >= 21:
        if op.p.affine:
            scale, bias = c.weight(lid, "weight"), c.weight(lid, "bias")
        else:
            scale = c.const(lid, "scale", np.ones(ch, np.float32))
            bias = c.const(lid, "shift", np.zeros(ch, np.float32))
        if groups == ch and len(shape) >= 2:
            c.node("InstanceNormalization", [ins[0], scale, bias], [lid], lid, epsilon=eps)
        else:
            c.node("GroupNormalization", [ins[0], scale, bias], [lid], lid, epsilon=eps, num_groups=groups)
        return lid
    c.node("Reshape", [ins[0], c.const(lid, "groups", np.array([0, groups, -1], np.int64))], [f"{lid}::g"],
           f"{lid}::g")
    c.node("InstanceNormalization", [f"{lid}::g", c.const(lid, "ones", np.ones(groups, np.float32)),
                                     c.const(lid, "zeros", np.zeros(groups, np.float32))], [f"{lid}::n"],
           f"{lid}::norm", epsilon=eps)
    c.node("Reshape", [f"{lid}::n", c.const(lid, "shape", np.array([0, *shape], np.int64))],
           [f"{lid}::x" if op.p.affine else lid], f"{lid}::x" if op.p.affine else lid)
    if not op.p.affine:
        return lid
    per_channel = (ch,) + (1,) * (len(shape) - 1)
    c.node("Mul", [f"{lid}::x", c.init(f"{lid}.weight", np.asarray(c.params[f"{lid}.weight"], np.float32)
                                      .reshape(per_channel))], [f"{lid}::s"], f"{lid}::scale")
    c.node("Add", [f"{lid}::s", c.init(f"{lid}.bias", np.asarray(c.params[f"{lid}.bias"], np.float32)
                                      .reshape(per_channel))], [lid], lid)
    return lid


@exports("prelu")
def _prelu(c, lid, op, ins, attrs):
    # the slope broadcasts from the right in ONNX: one per channel is (C, 1, ..., 1)
    w = np.asarray(c.params[f"{lid}.weight"], np.float32)
    rest = 0 if op.p.shared else len(attrs["in_shapes"][0]) - 1
    c.node("PRelu", [ins[0], c.init(f"{lid}.weight", w.reshape(w.shape + (1,) * rest))], [lid], lid)
    return lid


@exports("softplus")
def _softplus(c, lid, op, ins, attrs):
    beta, threshold = float(op.p.beta), float(op.p.threshold)
    # ONNX Softplus has no threshold; above one of 15 or more the two forms differ by under float32's resolution
    exact = threshold < 15
    x = bx = ins[0]
    if beta != 1.0:
        bx = f"{lid}::bx"
        c.node("Mul", [x, c.const(lid, "beta", np.array(beta, np.float32))], [bx], bx)
    sp = f"{lid}::sp" if beta != 1.0 or exact else lid
    c.node("Softplus", [bx], [sp], sp)
    y = sp
    if beta != 1.0:
        y = f"{lid}::div" if exact else lid
        c.node("Div", [sp, c.const(lid, "beta_div", np.array(beta, np.float32))], [y], y)
    if exact:   # torch's form: x itself where beta * x > threshold
        c.node("Greater", [bx, c.const(lid, "threshold", np.array(threshold, np.float32))], [f"{lid}::linear"],
               f"{lid}::linear")
        c.node("Where", [f"{lid}::linear", x, y], [lid], lid)
    return lid


@exports("dropout")
def _dropout(c, lid, op, ins, attrs):
    c.node("Dropout", [ins[0], c.const(lid, "ratio", np.array(op.p.p, np.float32))], [lid], lid)
    return lid


@exports("flatten")
def _flatten(c, lid, op, ins, attrs):
    nd = len(attrs["in_shapes"][0]) + 1
    start, end = op._dims(nd)
    if start == 1 and end == nd - 1:
        c.node("Flatten", ins, [lid], lid, axis=1)
    else:
        # ONNX's Flatten always merges into 2-D. The batch as -1 (inferred) tells the importer this Reshape is a
        # flatten: a reshape layer's export copies the batch (0), see _reshape
        shape = np.array([-1, *attrs["out_shape"]], np.int64)
        c.node("Reshape", [ins[0], c.const(lid, "shape", shape)], [lid], lid)
    return lid


@exports("gelu")
def _gelu(c, lid, op, ins, attrs):
    if c.opset >= 20:
        c.node("Gelu", ins, [lid], lid, approximate=op.p.approximate)
        return lid
    x = ins[0]
    if op.p.approximate == "tanh":   # 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))
        f = lambda v: c.const(lid, f"c{len(c.inits)}", np.array(v, np.float32))  # noqa: E731
        c.node("Mul", [x, x], [lid + "::x2"], lid + "::x2")
        c.node("Mul", [lid + "::x2", x], [lid + "::x3"], lid + "::x3")
        c.node("Mul", [lid + "::x3", f(0.044715)], [lid + "::a"], lid + "::a")
        c.node("Add", [x, lid + "::a"], [lid + "::b"], lid + "::b")
        c.node("Mul", [lid + "::b", f(math.sqrt(2 / math.pi))], [lid + "::c"], lid + "::c")
        c.node("Tanh", [lid + "::c"], [lid + "::t"], lid + "::t")
        c.node("Add", [lid + "::t", f(1.0)], [lid + "::u"], lid + "::u")
        c.node("Mul", [x, lid + "::u"], [lid + "::v"], lid + "::v")
        c.node("Mul", [lid + "::v", f(0.5)], [lid], lid)
        return lid
    # x · 0.5 · (1 + erf(x / √2)), as PyTorch's exporter writes it
    c.node("Div", [x, c.const(lid, "sqrt2", np.array(math.sqrt(2), np.float32))], [lid + "::d"], lid + "::div")
    c.node("Erf", [lid + "::d"], [lid + "::e"], lid + "::erf")
    c.node("Add", [lid + "::e", c.const(lid, "one", np.array(1, np.float32))], [lid + "::a"], lid + "::add")
    c.node("Mul", [x, lid + "::a"], [lid + "::m"], lid + "::mul")
    c.node("Mul", [lid + "::m", c.const(lid, "half", np.array(0.5, np.float32))], [lid], lid)
    return lid


@exports("add")
def _add(c, lid, op, ins, attrs):
    if len(ins) == 2:
        c.node("Add", ins, [lid], lid)
    else:
        c.node("Sum", ins, [lid], lid)
    return lid


@exports("broadcast_add", "sub", "mul", "div")
def _binary(c, lid, op, ins, attrs):
    ins = _align_ranks(c, lid, ins, attrs)
    c.node({"broadcast_add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}[op.type], ins, [lid], lid)
    return lid


def _align_ranks(c, lid, ins, attrs):
    """Per-sample shapes of different rank broadcast after the batch axis in cnngraph; ONNX aligns
    full shapes to the right, so lower-rank operands get unit axes after their batch axis."""
    shapes = attrs["in_shapes"]
    rank = max(len(s) for s in shapes)
    out = []
    for i, (name, s) in enumerate(zip(ins, shapes)):
        if len(s) < rank and name not in c.constants:   # constants carry a unit batch axis: no realignment
            axes = list(range(1, 1 + rank - len(s)))
            c.node("Unsqueeze", [name, c.const(lid, f"axes{i}", np.array(axes, np.int64))], [f"{lid}::u{i}"],
                   f"{lid}::unsqueeze{i}")
            name = f"{lid}::u{i}"
        out.append(name)
    return out


@exports("matmul")
def _matmul(c, lid, op, ins, attrs):
    a, b = attrs["in_shapes"]
    if len(a) == len(b) and len(a) >= 2:
        c.node("MatMul", ins, [lid], lid)
        return lid
    # per sample: numpy matmul of a[n] and b[n]. Vectors become (1, K) / (K, 1) matrices, the operand
    # with fewer per-sample dimensions gets unit axes after the batch, and the vector axes go at the end.
    ra, rb = max(len(a), 2), max(len(b), 2)
    names, drop = [], []
    for i, (x, shape, r) in enumerate(((ins[0], a, ra), (ins[1], b, rb))):
        axes = list(range(1, 1 + max(ra, rb) - r))
        if len(shape) == 1:
            axes.append(max(ra, rb) - 1 if i == 0 else max(ra, rb))
            drop.append(-2 if i == 0 else -1)
        if axes:
            c.node("Unsqueeze", [x, c.const(lid, f"axes{i}", np.array(axes, np.int64))], [f"{lid}::u{i}"],
                   f"{lid}::u{i}")
            x = f"{lid}::u{i}"
        names.append(x)
    if not drop:
        c.node("MatMul", names, [lid], lid)
        return lid
    c.node("MatMul", names, [f"{lid}::mm"], f"{lid}::mm")
    c.node("Squeeze", [f"{lid}::mm", c.const(lid, "drop", np.array(sorted(drop), np.int64))], [lid], lid)
    return lid


@exports("reshape")
def _reshape(c, lid, op, ins, attrs):
    # the batch copied (0), the shape as written; but [0, -1] is the usual spelling of a flatten (and imports as
    # one), so a reshape to [-1] writes its size
    shape = list(attrs["out_shape"]) if list(op.p.shape) == [-1] else list(op.p.shape)
    c.node("Reshape", [ins[0], c.const(lid, "shape", np.array([0, *shape], np.int64))], [lid], lid)
    return lid


@exports("pad")
def _pad(c, lid, op, ins, attrs):
    pads = [0] + [b for b, _ in op.p.pads] + [0] + [a for _, a in op.p.pads]
    inputs = [ins[0], c.const(lid, "pads", np.array(pads, np.int64))]
    if op.p.mode == "constant" and op.p.value:
        inputs.append(c.const(lid, "value", np.array(op.p.value, np.float32)))
    if op.p.mode == "wrap" and c.opset < 19:
        raise OnnxError(f"layer '{lid}': pad mode wrap needs --opset 19 or newer (ONNX Pad has it from opset 19)")
    c.node("Pad", inputs, [lid], lid, mode=op.p.mode)
    return lid


@exports("expand")
def _expand(c, lid, op, ins, attrs):
    # the input's batch size, then the per-sample shape (ONNX aligns right, a 1 keeps the other side's size)
    shape = c.const(lid, "shape", np.array([1, *op.p.shape], np.int64))
    c.node("Expand", [_align_ranks(c, lid, ins, {"in_shapes": [attrs["in_shapes"][0], op.p.shape]})[0], shape],
           [lid], lid)
    return lid


@exports("tile")
def _tile(c, lid, op, ins, attrs):
    c.node("Tile", [ins[0], c.const(lid, "repeats", np.array([1, *op.p.repeats], np.int64))], [lid], lid)
    return lid


@exports("upsample2d")
def _upsample(c, lid, op, ins, attrs):
    p = op.p
    if p.size is not None:   # sizes: (N, C) of the input, then (h, w)
        c.node("Shape", [ins[0]], [f"{lid}::shape"], f"{lid}_shape")
        c.node("Slice", [f"{lid}::shape", c.const(lid, "start", np.array([0], np.int64)),
                         c.const(lid, "end", np.array([2], np.int64))], [f"{lid}::nc"], f"{lid}_nc")
        c.node("Concat", [f"{lid}::nc", c.const(lid, "hw", np.array(p.size, np.int64))], [f"{lid}::sizes"],
               f"{lid}_sizes", axis=0)
        inputs = [ins[0], "", "", f"{lid}::sizes"]
    else:
        inputs = [ins[0], "", c.const(lid, "scales", np.array([1.0, 1.0, *p.scale_factor], np.float32))]
    if p.mode == "nearest":
        modes = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    else:
        modes = {"mode": "linear" if p.mode == "bilinear" else "cubic",
                 "coordinate_transformation_mode": "align_corners" if p.align_corners else "pytorch_half_pixel"}
        if p.mode == "bicubic":
            modes["cubic_coeff_a"] = p.cubic_coeff_a
    c.node("Resize", inputs, [lid], lid, **modes)
    return lid


@exports("slice")
def _slice(c, lid, op, ins, attrs):
    p = op.p
    first, last = (0, np.iinfo(np.int64).max) if p.step > 0 else (np.iinfo(np.int64).max, np.iinfo(np.int64).min)
    consts = {"starts": first if p.start is None else p.start, "ends": last if p.end is None else p.end,
              "axes": p.axis, "steps": p.step}
    c.node("Slice", [ins[0]] + [c.const(lid, k, np.array([v], np.int64)) for k, v in consts.items()], [lid], lid)
    return lid


@exports("einsum")
def _einsum(c, lid, op, ins, attrs):
    # every operand has its batch axis in ONNX (constants are expanded to it: einsum is no broadcasting op)
    terms, out = op.batched_terms()
    c.node("Einsum", ins, [lid], lid, equation=f"{','.join(terms)}->{out}")
    return lid


@exports("embedding")
def _embedding(c, lid, op, ins, attrs):
    from onnx import TensorProto
    indices = ins[0]
    if c.g.nodes[indices].get("dtype") != "int64":   # whole numbers held as floats (argmax): Gather takes integers
        c.node("Cast", [indices], [f"{lid}::indices"], f"{lid}_indices", to=TensorProto.INT64)
        indices = f"{lid}::indices"
    c.node("Gather", [c.weight(lid, "weight"), indices], [lid], lid, axis=0)
    return lid


@exports("take")
def _take(c, lid, op, ins, attrs):
    # a 0-d initializer for a single int: ONNX Gather then removes the axis, as take does
    c.node("Gather", [ins[0], c.const(lid, "indices", np.array(op.p.indices, np.int64))], [lid], lid, axis=op.p.axis)
    return lid

@exports("clip")
def _clip(c, lid, op, ins, attrs):
    inputs = [ins[0], c.const(lid, "min", np.array(op.p.min, np.float32)) if op.p.min is not None else ""]
    if op.p.max is not None:
        inputs.append(c.const(lid, "max", np.array(op.p.max, np.float32)))
    c.node("Clip", inputs, [lid], lid)
    return lid


@exports("local_response_norm")
def _lrn(c, lid, op, ins, attrs):
    p = op.p
    if p.size % 2 == 0:
        # Even windows: ONNX LRN centres them one channel later than torch, and ONNX Runtime refuses
        # even sizes; write torch's decomposition (which import-onnx recognises, with either window):
        # x / (k + alpha · AvgPool3d_(size,1,1)(Pad(x², channels)))^beta
        shape = list(attrs["in_shapes"][0])
        rest = math.prod(shape[1:])
        x, f = ins[0], np.float32
        c.node("Mul", [x, x], [f"{lid}::sq"], f"{lid}::sq")
        c.node("Reshape", [f"{lid}::sq", c.const(lid, "shape5", np.array([0, 1, shape[0], rest, 1], np.int64))],
               [f"{lid}::sq5"], f"{lid}::sq5")
        pads = np.zeros(10, np.int64)
        pads[2], pads[7] = (p.size // 2, (p.size - 1) // 2) if p.window == "torch" else ((p.size - 1) // 2, p.size // 2)
        c.node("Pad", [f"{lid}::sq5", c.const(lid, "pads", pads)], [f"{lid}::padded"], f"{lid}::pad")
        c.node("AveragePool", [f"{lid}::padded"], [f"{lid}::avg"], f"{lid}::avg", kernel_shape=[p.size, 1, 1],
               count_include_pad=1)
        c.node("Reshape", [f"{lid}::avg", c.const(lid, "shape", np.array([0, *shape], np.int64))],
               [f"{lid}::sum"], f"{lid}::unsq")
        c.node("Mul", [f"{lid}::sum", c.const(lid, "alpha", np.array(p.alpha, f))], [f"{lid}::scaled"], f"{lid}::alpha")
        c.node("Add", [f"{lid}::scaled", c.const(lid, "k", np.array(p.k, f))], [f"{lid}::base"], f"{lid}::k")
        c.node("Pow", [f"{lid}::base", c.const(lid, "beta", np.array(p.beta, f))], [f"{lid}::div"], f"{lid}::beta")
        c.node("Div", [x, f"{lid}::div"], [lid], lid)
        return lid
    c.node("LRN", ins, [lid], lid, size=p.size, alpha=float(p.alpha), beta=float(p.beta), bias=float(p.k))
    return lid


_BROADCASTING = {"broadcast_add", "sub", "mul", "div", "matmul", "maximum", "minimum", "where", "compare", "logical",
                 "pow", "constant"}   # (a constant only takes its input's batch size)


def _needs_batch(g, lid, outputs=()) -> bool:
    """Whether a constant layer with an input must be repeated to its batch size in ONNX: it feeds an op
    that does not broadcast a unit batch axis (a concat), or it is an output of the model (whose batch axis
    must be the input's, as cnngraph's forward gives it)."""
    return _batch_source(g, lid) is not None and (lid in outputs or any(
        g.nodes[s].get("type") not in _BROADCASTING for s in g.successors(lid)))


def _batch_source(g, lid):
    """The computed layer a constant takes its batch size from (through other constants), or None."""
    src = next(iter(g.predecessors(lid)), None)
    while src is not None and g.nodes[src].get("type") == "constant":
        src = next(iter(g.predecessors(src)), None)
    return src


@exports("constant")
def _constant(c, lid, op, ins, attrs):
    # the value with a leading unit (batch) axis: it broadcasts against any batch in ONNX too
    value = np.asarray(c.params[f"{lid}.value"], np.float32)
    # a fixed value gets a made-up name (lid::value), which the importer reads as not a parameter
    name = c.init(f"{lid}.value", value) if op.p.trainable else c.const(lid, "value", value)
    if not (ins and _needs_batch(c.g, lid, c.outputs)):
        c.node("Unsqueeze", [name, c.const(lid, "axes", np.array([0], np.int64))], [lid], lid)
        return lid
    # feeding a concat (or another op that does not broadcast): repeated to the input's batch size,
    # Expand(value, [Shape(input)[0], *shape])
    c.node("Unsqueeze", [name, c.const(lid, "axes", np.array([0], np.int64))], [f"{lid}::one"], lid + "_unsqueeze")
    c.node("Shape", [_batch_source(c.g, lid)], [f"{lid}::shape_in"], lid + "_shape")
    c.node("Slice", [f"{lid}::shape_in", c.const(lid, "start", np.array([0], np.int64)),
                     c.const(lid, "end", np.array([1], np.int64))], [f"{lid}::batch"], lid + "_batch")
    c.node("Concat", [f"{lid}::batch", c.const(lid, "per_sample", np.array(value.shape, np.int64))],
           [f"{lid}::shape"], lid + "_target", axis=0)
    c.node("Expand", [f"{lid}::one", f"{lid}::shape"], [lid], lid)
    return lid


# ---- driver -------------------------------------------------------------------------------------
def _export_order(g, outputs) -> list[str]:
    import networkx as nx
    from ..graph import topological_order
    needed = set(outputs)
    for o in outputs:
        needed |= nx.ancestors(g, o)
    return [n for n in topological_order(g) if n in needed]


def spec_to_onnx(spec, params: dict[str, np.ndarray], opset: int | None = None, outputs: list[str] | None = None,
                 name: str | None = None):
    """Build an ``onnx.ModelProto`` from a validated Spec and its parameters (name → array)."""
    onnx = require_onnx()
    from onnx import TensorProto, helper
    from . import DEFAULT_OPSET
    opset = DEFAULT_OPSET if opset is None else int(opset)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise OnnxError(f"--opset must lie in {MIN_OPSET}…{newest} (the onnx package's newest), found {opset}")
    g = spec.graph
    if isinstance(outputs, str):
        outputs = [outputs]
    if outputs is None:
        outputs = [o for o in spec.outputs if not g.nodes[o].get("reduces_batch")]
        dropped = [o for o in spec.outputs if g.nodes[o].get("reduces_batch")]
        if not outputs:
            losses = ", ".join(f"{o}: {g.nodes[o]['type']}" for o in dropped)
            raise OnnxError(f"every output of the spec is a loss ({losses}); losses are not exported. "
                            f"Name the outputs to export")
    for o in outputs:
        if o not in g:
            raise OnnxError(f"output '{o}' is not a layer of the spec")
        if g.nodes[o].get("reduces_batch"):
            raise OnnxError(f"output '{o}' is a loss ({g.nodes[o]['type']}); losses are not exported")
    order = _export_order(g, outputs)
    ctx = _Ctx(opset, g, params)
    ctx.const_outputs = set()
    ctx.outputs = set(outputs)
    ctx.constants = {n for n in order
                     if g.nodes[n].get("type") == "constant" and not _needs_batch(g, n, ctx.outputs)}
    unsupported: dict[str, list[str]] = {}
    for n in order:
        attrs = g.nodes[n]
        if attrs["kind"] == "layer" and attrs["type"] not in EXPORTERS:
            unsupported.setdefault(attrs["type"], []).append(n)
    if unsupported:
        listing = "; ".join(f"{t} ({', '.join(ns)})" for t, ns in sorted(unsupported.items()))
        raise OnnxError(f"no ONNX export for op type{'s' if len(unsupported) > 1 else ''}: {listing} (a plugin "
                        f"op adds one with cnngraph.onnx.exporter.exports: see docs/plugins.md)")
    graph_inputs = []
    for n in order:
        attrs = g.nodes[n]
        if attrs["kind"] == "input":
            graph_inputs.append(_graph_input(n, attrs))
            continue
        if attrs["type"] == "constant" and not attrs["inputs"]:
            ctx.const_outputs.add(n)
        _run_exporter(ctx, n, attrs)
    if not graph_inputs:
        # only constants without inputs are exported: the spec's inputs stay declared (unused), so the model still
        # takes what cnngraph's does and imports back (a model without inputs is no cnngraph model)
        graph_inputs = [_graph_input(n, g.nodes[n]) for n in spec.inputs]
    graph_outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", *g.nodes[o]["out_shape"]])
                     for o in outputs]
    for o in outputs:   # a constant output without inputs has batch 1
        if o in ctx.const_outputs:
            graph_outputs[outputs.index(o)] = helper.make_tensor_value_info(o, TensorProto.FLOAT,
                                                                            [1, *g.nodes[o]["out_shape"]])
    graph = helper.make_graph(ctx.nodes, name or spec.name, graph_inputs, graph_outputs, list(ctx.inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="cnngraph",
                              producer_version=_version())
    model.ir_version = min(model.ir_version, _max_ir(opset))
    if spec.description:
        model.doc_string = spec.description
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        used = plugin_exporters_used(spec)
        blame = (f"; plugin exporters were used for {', '.join(used)}: check them first" if used
                 else " (please report)")
        raise OnnxError(f"the exported model fails the ONNX checker{blame}: {exc}") from None
    return model


def _graph_input(name: str, attrs: dict):
    from onnx import TensorProto, helper
    elem = TensorProto.INT64 if attrs.get("dtype") == "int64" else TensorProto.FLOAT
    return helper.make_tensor_value_info(name, elem, ["batch", *attrs["out_shape"]])


def _builtin(fn) -> bool:
    return fn.__module__ == __name__


def plugin_exporters_used(spec) -> list[str]:
    """"op (plugin 'p')" for each layer type of ``spec`` that a plugin's exporter writes, not cnngraph's own."""
    types = {attrs.get("type") for _, attrs in spec.graph.nodes(data=True) if attrs.get("kind") == "layer"}
    return sorted(f"{t} (plugin '{_plugin_of(EXPORTERS[t])}')" for t in types if t in EXPORTERS and not _builtin(EXPORTERS[t]))


def _plugin_of(fn) -> str:
    """The plugin an exporter function comes from: the name its file was loaded under (--plugin FILE),
    else its module."""
    from ..blame import source_file
    from ..registry import _state
    return _state().files.get(source_file(fn) or "", fn.__module__)


def _run_exporter(ctx, lid: str, attrs: dict) -> None:
    """Run the export function of layer ``lid`` and check what it added, so that a broken plugin exporter is
    named here rather than by the ONNX checker at the end: it must not raise, its last node's outputs
    must include the layer id, and every node type must exist in the opset."""
    from ..blame import failed
    from ..errors import CnnGraphError, PluginError
    fn = EXPORTERS[attrs["type"]]
    subject = f"the ONNX exporter of op '{attrs['type']}' (plugin '{_plugin_of(fn)}') at layer '{lid}'"
    start = len(ctx.nodes)
    try:
        fn(ctx, lid, attrs["op"], list(attrs["inputs"]), attrs)
    except CnnGraphError:
        raise
    except Exception as exc:
        raise PluginError(failed(subject, fn.__name__, exc, fn)) from exc
    added = ctx.nodes[start:]
    if not added or lid not in added[-1].output:
        last = f"its last node's outputs are {list(added[-1].output)}" if added else "it added no node"
        raise PluginError(f"{subject}: {last}; the last node must output the layer id '{lid}' (the name the next "
                          f"layers read)")
    for node in added:
        if not _known_op(node.op_type, node.domain, ctx.opset):
            raise PluginError(f"{subject} added node '{node.name}' of type '{node.op_type}', which ONNX opset "
                              f"{ctx.opset} does not have (domain '{node.domain or 'ai.onnx'}')")


def _known_op(op_type: str, domain: str, opset: int) -> bool:
    from onnx import defs
    try:
        defs.get_schema(op_type, opset, domain)
        return True
    except defs.SchemaError:
        return False


def _version() -> str:
    from .. import __version__
    return __version__


def _max_ir(opset: int) -> int:
    # ONNX Runtime 1.17+ reads IR 9; newer opsets need newer IR versions
    from onnx import helper
    try:
        table = helper.VERSION_TABLE
        for _, ir, op, *_ in table:
            if op == opset:
                return max(ir, 8)
    except Exception:  # pragma: no cover
        pass
    return 10


def _prepend_normalization(proto, mean, std) -> None:
    """Make the first graph input raw: its consumers read (x - mean) / std per channel instead."""
    from onnx import helper, numpy_helper
    graph = proto.graph
    raw = graph.input[0].name
    normed = f"{raw}__normalized"
    for node in graph.node:
        node.input[:] = [normed if name == raw else name for name in node.input]
    for name, values in (("mean", mean), ("std", std)):
        rank = len(graph.input[0].type.tensor_type.shape.dim)   # (N, C, H, W) or a sequence's (N, C, L)
        arr = np.asarray(values, np.float32).reshape((-1,) + (1,) * (rank - 2))
        graph.initializer.append(numpy_helper.from_array(arr, f"{raw}__{name}"))
    steps = [helper.make_node("Sub", [raw, f"{raw}__mean"], [f"{raw}__centered"], name=f"{raw}__sub_mean"),
             helper.make_node("Div", [f"{raw}__centered", f"{raw}__std"], [normed], name=f"{raw}__div_std")]
    nodes = steps + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def export_onnx(model_or_spec, path: Union[str, Path, None] = None, *, params: Union[str, Path, dict, None] = None,
                opset: int | None = None, outputs: list[str] | None = None, seed: int = 0,
                allow_plugins: bool = False, include_normalization: bool = False):
    """Export a compiled Model (or a Spec / spec path with ``params``: an .npz, a checkpoint or run
    directory, or a dict) to ONNX; writes ``path`` when given and returns the ModelProto.
    Without parameters the seeded random initial weights are exported, with a warning.
    ``allow_plugins``: consent to import the plugin files a spec path names under ``plugins:``.

    Weights from a training checkpoint carry its data preparation (per-channel mean/std, class names,
    pixel scale): it is stored in the model's metadata as ``cnngraph.dataset`` (JSON), and with
    ``include_normalization`` also built into the graph (Sub, Div) so the model takes raw inputs, as
    ``cnngraph predict`` does; without it the model takes normalised inputs, as ``Model.forward``."""
    from ..model import Model
    from ..spec import Spec, load_spec
    if isinstance(model_or_spec, Model):
        model = model_or_spec
    else:
        spec = model_or_spec if isinstance(model_or_spec, Spec) else load_spec(model_or_spec,
                                                                                allow_plugins=allow_plugins)
        model = Model(spec, seed=seed)
        if params is None:
            warnings.warn("no checkpoint or parameters given: exporting seeded random initial weights", stacklevel=2)
    meta = getattr(model, "checkpoint_meta", None)
    if params is not None:
        if isinstance(params, dict):
            arrays = params
        else:
            from ..train.checkpoint import load_weights
            arrays, meta = load_weights(params)
        model.load_params(arrays)
    proto = spec_to_onnx(model.spec, model.params.numpy(), opset=opset, outputs=outputs)
    dataset = (meta or {}).get("dataset") or {}
    if dataset:
        import json
        entry = proto.metadata_props.add()
        entry.key, entry.value = "cnngraph.dataset", json.dumps(dataset)
    if include_normalization:
        if dataset.get("mean") is None or dataset.get("std") is None:
            raise OnnxError("including the normalisation (--include-normalization) needs the weights of a training checkpoint (a run folder), "
                                "which records the normalisation; these weights have none")
        _prepend_normalization(proto, dataset["mean"], dataset["std"])
    if path is not None:
        import onnx
        if not Path(path).parent.is_dir():
            raise OnnxError(f"{path}: the folder {Path(path).parent} does not exist")
        onnx.save(proto, str(path))
    return proto
