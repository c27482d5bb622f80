"""ONNX operator → cnngraph layer handlers, with the attribute defaults of the ONNX spec (opsets 7+).

A handler takes (importer, node, attributes) and returns one result per node output: a ``Dyn``
(computed by layers it emitted), a NumPy array (a constant), or None (an output it does not
produce). Nodes whose inputs are all constants are folded before any handler sees them, except the
ones in ``FOLD_NEVER``.
"""
from __future__ import annotations

import math

import numpy as np

from .common import register_once
from .folding import BATCH, BATCH_ALT, Dyn, f32

__all__ = ["HANDLERS", "FOLD_NEVER", "handles", "unknown_attributes"]

HANDLERS: dict = {}
FOLD_NEVER = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
              "Bernoulli", "If", "Loop", "Scan"}   # random, or control flow: listed as unsupported


# The attributes each of these handlers reads (or, for Resize, checks have no effect); any other one is refused
# rather than ignored, so an attribute a newer opset adds cannot change the result silently.
WINDOW = {"auto_pad", "dilations", "kernel_shape", "pads", "strides"}
ATTRIBUTES = {
    "Conv": WINDOW | {"group"},
    "ConvTranspose": WINDOW | {"group", "output_padding", "output_shape"},
    "MaxPool": WINDOW | {"ceil_mode", "storage_order"},   # storage_order: the layout of Indices (refused)
    "AveragePool": WINDOW | {"ceil_mode", "count_include_pad"},
    "Pad": {"mode", "pads", "value", "paddings"},
    "Resize": {"mode", "coordinate_transformation_mode", "nearest_mode", "antialias", "keep_aspect_ratio_policy",
               "exclude_outside", "axes",
               "cubic_coeff_a", "extrapolation_value"},   # cubic; tf_crop_and_resize only (a refused mode)
    "Upsample": {"mode", "scales"},
}


def unknown_attributes(node, attrs: dict) -> list[str]:
    """Attributes of ``node`` its handler does not implement (none for op types not audited)."""
    known = ATTRIBUTES.get(node.op_type)
    return [] if known is None else sorted(set(attrs) - known)


def handles(*names):
    """Register ``fn(imp, node, attrs) -> [outputs]`` as the import of these ONNX op types (plugins may
    add op types cnngraph does not import; see docs/plugins.md). An op type that already has another
    handler is an error: a plugin cannot silently change how Conv imports."""
    def deco(fn):
        for n in names:
            register_once(HANDLERS, n, fn, "the import of ONNX op type")
        return fn
    return deco


def _compact(v):
    """Per-axis values as one int when they are all equal (``kernel_size: 3``), else as a list."""
    return int(v[0]) if all(x == v[0] for x in v) else [int(x) for x in v]


def _padding(pads):
    """ONNX pads [begin..., end...] → cnngraph's padding: [begin, end] in 1-D, [top, bottom, left, right] in 2-D,
    [front, back, top, bottom, left, right] in 3-D (compact when each axis is symmetric)."""
    n = len(pads) // 2
    pairs = [(int(pads[i]), int(pads[n + i])) for i in range(n)]
    if all(b == e for b, e in pairs):
        return _compact([b for b, _ in pairs])
    return [p for pair in pairs for p in pair]


def _spatial_rank(imp, x: Dyn) -> int:
    """1, 2 or 3: the spatial axes of an (N, C, L), (N, C, H, W) or (N, C, D, H, W) input. 1-D and 3-D ops import
    as the 1-D and 3-D layers (conv1d, max_pool1d, ...; see plugins/window1d.py and window3d.py), keeping the ONNX
    shapes and weight layouts."""
    if len(x.shape) not in (2, 3, 4):
        raise imp.fail(f"only 1-D (N, C, L), 2-D (N, C, H, W) and 3-D (N, C, D, H, W) inputs are supported, found "
                       f"per-sample shape {x.shape}")
    return len(x.shape) - 1


def _spatial(imp, node, x: Dyn, kernel, a):
    """Resolved (strides, dilations, ONNX-order pads) of a 1-D, 2-D or 3-D window op."""
    n = _spatial_rank(imp, x)
    strides = list(a.get("strides", [1] * n))
    dil = list(a.get("dilations", [1] * n))
    if not len(kernel) == len(strides) == len(dil) == n:
        raise imp.fail(f"kernel_shape {kernel}, strides {strides} and dilations {dil} need one entry per spatial "
                       f"axis of the input ({n})")
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads_b, pads_e = [], []
        for size, k, s, d in zip(x.shape[1:], kernel, strides, dil):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads_b.append(small if auto == "SAME_UPPER" else big)
            pads_e.append(big if auto == "SAME_UPPER" else small)
        pads = pads_b + pads_e
    elif auto == "VALID":
        pads = [0] * (2 * n)
    elif auto in ("NOTSET", ""):
        pads = list(a.get("pads", [0] * (2 * n)))
    else:
        raise imp.fail(f"unknown auto_pad {auto!r}")
    if len(pads) != 2 * n:
        raise imp.fail(f"pads {pads} need a begin and an end for each spatial axis of the input ({2 * n} entries)")
    return strides, dil, pads


# ---- convolution, dense -------------------------------------------------------------------------
def _conv_layer(imp, node, a, transposed: bool) -> Dyn:
    """Conv as conv1d/conv2d/conv3d, ConvTranspose as conv_transpose1d/2d/3d; the weights keep their
    layout: (C_out, C_in/group, k...), transposed (C_in, C_out/group, k...)."""
    x = imp.dyn_of(node.input[0])
    w = imp.const(node.input[1], "weight")
    b = imp.const(node.input[2], "bias") if len(node.input) > 2 and node.input[2] else None
    if w.ndim not in (3, 4, 5):
        kind = "transposed convolutions" if transposed else "convolutions"
        raise imp.fail(f"only 1-D, 2-D and 3-D {kind} are supported (weight of shape {w.shape})")
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    strides, dil, pads = _spatial(imp, node, x, kernel, a)
    n, group = len(kernel), int(a.get("group", 1))
    params = {"out_channels": int(w.shape[1]) * group if transposed else int(w.shape[0]),
              "kernel_size": _compact(kernel)}
    if strides != [1] * n:
        params["stride"] = _compact(strides)
    if any(pads):
        params["padding"] = _padding(pads)
    if dil != [1] * n:
        params["dilation"] = _compact(dil)
    if group != 1:
        params["groups"] = group
    out_pad = list(a.get("output_padding", [0] * n))
    if len(out_pad) != n:
        raise imp.fail(f"output_padding {out_pad} needs one entry per spatial axis of the input ({n})")
    if any(out_pad):
        params["output_padding"] = _compact(out_pad)
    if b is None:
        params["bias"] = False
    weights = {"weight": w} | ({} if b is None else {"bias": b})
    return imp.emit(f"conv{'_transpose' * transposed}{n}d", [x], params, weights)


@handles("Conv")
def conv(imp, node, a):
    return [_conv_layer(imp, node, a, transposed=False)]


@handles("ConvTranspose")
def conv_transpose(imp, node, a):
    if a.get("output_shape") is not None or a.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        a = _transposed_pads(imp, node, a)
    return [_conv_layer(imp, node, a, transposed=True)]


def _transposed_pads(imp, node, a) -> dict:
    """ConvTranspose attributes with output_shape (or SAME auto_pad: the input size times the stride) turned into
    pads and output_padding, as the ONNX specification and ONNX Runtime do: the pads crop the difference to the
    natural output size (pads ignored), the odd one at the start unless SAME_UPPER; a larger output_shape grows
    the output at the end, as output_padding does."""
    x = imp.dyn_of(node.input[0])
    n = _spatial_rank(imp, x)
    w = imp.const(node.input[1], "weight")
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    strides, dil = list(a.get("strides", [1] * n)), list(a.get("dilations", [1] * n))
    out_pad = list(a.get("output_padding", [0] * n))
    sizes = x.shape[1:]
    target = a.get("output_shape")
    target = [size * s for size, s in zip(sizes, strides)] if target is None else list(target)
    if not len(target) == len(kernel) == len(strides) == len(dil) == len(out_pad) == n:
        raise imp.fail(f"output_shape {target}, kernel_shape {kernel}, strides {strides}, dilations {dil} and "
                       f"output_padding {out_pad} need one entry per spatial axis of the input ({n})")
    upper = a.get("auto_pad") == "SAME_UPPER"
    heads, tails, grow = [], [], []
    for size, k, s, d, op, want in zip(sizes, kernel, strides, dil, out_pad, target):
        total = s * (size - 1) + op + (k - 1) * d + 1 - int(want)
        if int(want) < 1:
            raise imp.fail(f"output_shape {target} must be positive")
        small, big = max(total, 0) // 2, max(total, 0) - max(total, 0) // 2
        heads.append(small if upper else big)
        tails.append(big if upper else small)
        grow.append(op + max(-total, 0))
    return {**a, "auto_pad": "NOTSET", "pads": heads + tails, "output_padding": grow, "output_shape": None}


@handles("Gemm")
def gemm(imp, node, a):
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if a.get("transA", 0):
        raise imp.fail("transA=1 would move the batch axis; only transA=0 is supported")
    x = imp.dyn_of(node.input[0])
    if len(x.shape) != 1:
        raise imp.fail(f"A must be (batch, features), found per-sample shape {x.shape}")
    bmat = imp.const(node.input[1], "B")
    w = bmat if a.get("transB", 0) else bmat.T
    w = w * np.float32(alpha) if alpha != 1 else w
    cin = imp.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    params = {"out_features": int(w.shape[0])}
    weights = {"weight": w}
    if isinstance(cin, np.ndarray) and cin.size in (1, w.shape[0]) and cin.ndim <= 2 and (cin.ndim < 2 or cin.shape[0] == 1):
        weights["bias"] = np.broadcast_to(cin.reshape(-1) * np.float32(beta), (w.shape[0],))
        return [imp.emit("dense", [x], params, weights)]
    params["bias"] = False
    y = imp.emit("dense", [x], params, weights)
    if cin is None or beta == 0:
        return [y]
    if isinstance(cin, np.ndarray):
        c = imp.dyn_of(node.input[2], 2, y) if beta == 1 else None
        if c is None:
            imp.consts[node.input[2] + "::beta"] = cin * np.float32(beta)
            c = imp.dyn_of(node.input[2] + "::beta", 2, y)
    else:
        c = cin
        if beta != 1:
            imp.consts[node.name + "::beta"] = np.float32(beta).reshape(1)
            c = imp.emit("mul", [cin, imp.dyn_of(node.name + "::beta", 2, cin)], suffix=".beta")
    return [imp.emit("broadcast_add", [y, c], suffix=".add")]


@handles("MatMul")
def matmul(imp, node, a):
    av, bv = imp.get(node.input[0]), imp.get(node.input[1])
    if isinstance(av, Dyn) and isinstance(bv, np.ndarray) and len(av.shape) == 1 and bv.ndim == 2:
        return [imp.emit("dense", [av], {"out_features": int(bv.shape[1]), "bias": False}, {"weight": bv.T})]
    rank = 1 + max(len(av.shape) if isinstance(av, Dyn) else av.ndim - 1,
                   len(bv.shape) if isinstance(bv, Dyn) else bv.ndim - 1)
    # a constant multiplied into a computed tensor is a weight, whatever the exporter named it (onnx::MatMul_82)
    weight = [(n in imp.initializers or n in imp.params) or None for n in node.input[:2]]
    return [imp.emit("matmul", _operands(imp, node.input[:2], rank, weight, min_rank=2))]


@handles("Einsum")
def einsum(imp, node, a):
    """torch.einsum with the batch axis leading every computed operand and the output (``bij,bjk->bik``) as an
    ``einsum`` layer on the per-sample axes; constant operands (no batch letter) become constant layers, weights
    when they are initializers (as MatMul's)."""
    terms, out = _einsum_terms(imp, a["equation"])
    vals = [imp.get(n) for n in node.input]
    if len(terms) != len(vals):
        raise imp.fail(f"equation {a['equation']!r} has {len(terms)} operands, the node {len(vals)} inputs")
    batch = {t[0] for t, v in zip(terms, vals) if isinstance(v, Dyn) and t}
    if len(batch) != 1 or out[:1] != next(iter(batch)):
        raise imp.fail(f"equation {a['equation']!r}: the batch axis must lead every computed operand and the output "
                       f"with one letter")
    b = out[0]
    if any(b in t for t, v in zip(terms, vals) if not isinstance(v, Dyn)):
        raise imp.fail(f"equation {a['equation']!r}: a constant operand has the batch letter '{b}'")
    ins, per_sample = [], []
    for name, term, v in zip(node.input, terms, vals):
        if isinstance(v, Dyn):
            ins.append(v)
            per_sample.append(term[1:])
        else:
            weight = name in imp.initializers or name in imp.params
            ins.append(imp.dyn_of(name, trainable=weight or None))
            per_sample.append(term)
    return [imp.emit("einsum", ins, {"equation": f"{','.join(per_sample)}->{out[1:]}"})]


def _einsum_terms(imp, equation: str) -> tuple[list[str], str]:
    """(input terms, output term) of an ONNX Einsum equation; an implicit output is the letters used once, in
    alphabetical order (the numpy rule ONNX follows)."""
    eq = equation.replace(" ", "")
    if "..." in eq:
        raise imp.fail(f"equation {equation!r}: ellipsis ('...') is not supported; name the axes")
    lhs, _, out = eq.partition("->")
    terms = lhs.split(",")
    if "->" not in eq:
        letters = "".join(terms)
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, out


# ---- pooling ------------------------------------------------------------------------------------
def _pool(imp, node, a, kind):
    x = imp.dyn_of(node.input[0])
    kernel = list(a["kernel_shape"])
    strides, dil, pads = _spatial(imp, node, x, kernel, a)
    n = len(kernel)
    params = {"kernel_size": _compact(kernel)}
    if strides != kernel:   # cnngraph's default stride is the kernel size, ONNX's is 1
        params["stride"] = _compact(strides)
    if any(pads):
        params["padding"] = _padding(pads)
    if a.get("ceil_mode", 0):
        params["ceil_mode"] = True
    if kind == "max":
        if dil != [1] * n:
            params["dilation"] = _compact(dil)
        if len(node.output) > 1 and node.output[1] and imp.consumers[node.output[1]]:
            raise imp.fail("the Indices output is not supported")
        return [imp.emit(f"max_pool{n}d", [x], params), None]
    if dil != [1] * n:
        raise imp.fail("dilated average pooling is not supported")
    if not a.get("count_include_pad", 0):   # ONNX's default is 0, cnngraph's True
        params["count_include_pad"] = False
    return [imp.emit(f"avg_pool{n}d", [x], params)]


@handles("MaxPool")
def max_pool(imp, node, a):
    return _pool(imp, node, a, "max")


@handles("AveragePool")
def avg_pool(imp, node, a):
    return _pool(imp, node, a, "avg")


@handles("GlobalAveragePool", "GlobalMaxPool")
def global_pool(imp, node, a):
    x = imp.dyn_of(node.input[0])
    _spatial_rank(imp, x)   # (N, C, L) gives (N, C, 1), (N, C, D, H, W) (N, C, 1, 1, 1), as ONNX
    return [imp.emit("global_avg_pool2d" if node.op_type == "GlobalAveragePool" else "global_max_pool2d", [x])]


# ---- normalisation ------------------------------------------------------------------------------
@handles("BatchNormalization")
def batch_norm(imp, node, a):
    x = imp.dyn_of(node.input[0])
    scale, bias, mean, var = (imp.const(n, "statistic") for n in node.input[1:5])
    if any(node.output[1:]):   # opset <= 13 marks training mode by these outputs alone
        raise imp.fail("a training-mode BatchNormalization (with running-statistics outputs) is not supported; "
                       "export the model in inference mode (model.eval())")
    if a.get("training_mode", 0):
        raise imp.fail("training_mode=1 is not supported; export the model in inference mode")
    if len(x.shape) not in (1, 2, 3, 4):
        raise imp.fail(f"batch_norm2d takes (C, H, W), (C, L), (C, D, H, W) or (C,) per sample, found {x.shape}")
    params = {}
    eps = float(a.get("epsilon", 1e-5))
    if abs(eps - 1e-5) > 1e-12:
        params["eps"] = eps
    momentum = float(f"{1.0 - float(a.get('momentum', 0.9)):.6g}")
    if abs(momentum - 0.1) > 1e-7:
        params["momentum"] = min(max(momentum, 0.0), 1.0)
    weights = {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var}
    return [imp.emit("batch_norm2d", [x], params, weights)] + [None] * (len(node.output) - 1)


def _channel_vector(imp, x, value, what):
    """A per-channel input of an (N, C, ...) node (scale, bias, slope) as a (C,) array."""
    v = np.asarray(value, np.float32).reshape(-1)
    if v.size != x.shape[0]:
        raise imp.fail(f"{what} has {v.size} values for {x.shape[0]} channels")
    return v


@handles("InstanceNormalization")
def instance_norm(imp, node, a):
    """Per-sample, per-channel normalisation over the positions: group_norm with one group per channel."""
    x = imp.dyn_of(node.input[0])
    if len(x.shape) < 2:
        raise imp.fail(f"InstanceNormalization needs (N, C, D1, ...) inputs, found per-sample shape {x.shape}")
    scale, bias = (_channel_vector(imp, x, imp.const(n, w), w) for n, w in zip(node.input[1:3], ("scale", "B")))
    return [_group_norm(imp, x, int(x.shape[0]), a, scale, bias)]


def _group_norm(imp, x, groups: int, a, scale, bias):
    params = {"num_groups": groups}
    eps = float(a.get("epsilon", 1e-5))
    if abs(eps - 1e-5) > 1e-12:
        params["eps"] = eps
    return imp.emit("group_norm", [x], params, {"weight": scale, "bias": bias})


@handles("GroupNormalization")
def group_norm(imp, node, a):
    """Opset 21's per-channel scale and bias, or opset 18's per-group ones (each repeated over its group's
    channels, which is the same function)."""
    x = imp.dyn_of(node.input[0])
    groups = int(a["num_groups"])
    if len(x.shape) < 1 or groups < 1 or x.shape[0] % groups:
        raise imp.fail(f"{groups} groups do not split per-sample shape {x.shape} into equal channel groups")
    scale, bias = (np.asarray(imp.const(n, w), np.float32).reshape(-1) for n, w in zip(node.input[1:3], ("scale", "bias")))
    if imp.opset < 21:
        if scale.size != groups or bias.size != groups:
            raise imp.fail(f"opset {imp.opset}'s GroupNormalization takes one scale and bias per group ({groups}), "
                           f"found {scale.size} and {bias.size}")
        scale, bias = (np.repeat(v, x.shape[0] // groups) for v in (scale, bias))
    scale, bias = _channel_vector(imp, x, scale, "scale"), _channel_vector(imp, x, bias, "bias")
    return [_group_norm(imp, x, groups, a, scale, bias)]


@handles("LayerNormalization")
def layer_norm(imp, node, a):
    """Normalisation over the axes from ``axis`` to the last (never the batch) as ``layer_norm``; the scale and
    bias broadcast to the normalised shape (a missing bias is zero)."""
    x = imp.dyn_of(node.input[0])
    if any(o and imp.consumers[o] for o in node.output[1:]):
        raise imp.fail("the Mean and InvStdDev outputs are not supported")
    rank = len(x.shape) + 1
    axis = int(a.get("axis", -1))
    if not -rank <= axis < rank or axis % rank == 0:
        raise imp.fail(f"axis {axis} normalises over the batch axis (or is out of range for a rank-{rank} tensor); "
                       f"only axes after the batch are supported")
    k = rank - axis % rank
    normalized = tuple(x.shape[len(x.shape) - k:])
    weights = {}
    for i, what in ((1, "weight"), (2, "bias")):
        v = imp.const(node.input[i], "scale" if i == 1 else "bias") if len(node.input) > i and node.input[i] else None
        v = np.zeros(normalized, np.float32) if v is None else np.asarray(v, np.float32)
        try:
            weights[what] = np.broadcast_to(v, normalized)
        except ValueError:
            raise imp.fail(f"{'scale' if i == 1 else 'bias'} of shape {v.shape} does not broadcast to the normalised "
                           f"shape {normalized}") from None
    params = {"axes": k} if k != 1 else {}
    eps = float(a.get("epsilon", 1e-5))
    if abs(eps - 1e-5) > 1e-12:
        params["eps"] = eps
    return [imp.emit("layer_norm", [x], params, weights)] + [None] * (len(node.output) - 1)


@handles("LRN")
def lrn(imp, node, a):
    x = imp.dyn_of(node.input[0])
    size = int(a["size"])
    params = {"size": size, "alpha": float(a.get("alpha", 1e-4)), "beta": float(a.get("beta", 0.75)),
              "k": float(a.get("bias", 1.0))}
    if size % 2 == 0:
        params["window"] = "onnx"
    return [imp.emit("local_response_norm", [x], params)]


# ---- activations --------------------------------------------------------------------------------
@handles("Relu", "Sigmoid", "Tanh")
def simple_act(imp, node, a):
    return [imp.emit(node.op_type.lower(), [imp.dyn_of(node.input[0])])]


@handles("HardSigmoid")
def hard_sigmoid(imp, node, a):
    return [imp.emit("hard_sigmoid", [imp.dyn_of(node.input[0])],
                     {"alpha": f32(a.get("alpha", 0.2)), "beta": f32(a.get("beta", 0.5))})]


@handles("HardSwish")
def hard_swish(imp, node, a):
    """One hard_swish layer where a plugin registers it (cnngraph-contrib); otherwise x * HardSigmoid(x) with
    alpha 1/6, beta 0.5 (the ONNX definition), as two layers."""
    x = imp.dyn_of(node.input[0])
    if "hard_swish" in imp.registry.ops:
        return [imp.emit("hard_swish", [x])]
    gate = imp.emit("hard_sigmoid", [x], {"alpha": f32(1 / 6), "beta": 0.5}, suffix="_gate")
    return [imp.emit("mul", [x, gate])]


@handles("LeakyRelu")
def leaky(imp, node, a):
    return [imp.emit("leaky_relu", [imp.dyn_of(node.input[0])], {"negative_slope": float(a.get("alpha", 0.01))})]


@handles("PRelu")
def prelu(imp, node, a):
    """A constant slope that is one value, or one per channel (axis 1) after ONNX's right-aligned broadcast:
    (C, 1, 1) for images, (C,) only for (N, C) inputs."""
    x = imp.dyn_of(node.input[0])
    slope = np.asarray(imp.const(node.input[1], "slope"), np.float32)
    rank = len(x.shape) + 1
    if slope.size == 1 and slope.ndim <= rank:
        return [imp.emit("prelu", [x], {"shared": True}, {"weight": slope.reshape(1)})]
    full = (1,) * (rank - slope.ndim) + slope.shape
    if len(full) != rank or full[1] != x.shape[0] or math.prod(full) != x.shape[0]:
        raise imp.fail(f"only a shared slope or one per channel is supported: slope of shape {slope.shape} "
                       f"against per-sample shape {x.shape} (per channel would be {(x.shape[0],) + (1,) * (rank - 2)})")
    return [imp.emit("prelu", [x], {}, {"weight": slope.reshape(-1)})]


@handles("Softplus")
def softplus(imp, node, a):
    return [imp.emit("softplus", [imp.dyn_of(node.input[0])])]


@handles("Elu")
def elu(imp, node, a):
    return [imp.emit("elu", [imp.dyn_of(node.input[0])], {"alpha": float(a.get("alpha", 1.0))})]


@handles("Gelu")
def gelu(imp, node, a):
    approx = a.get("approximate", "none")
    return [imp.emit("gelu", [imp.dyn_of(node.input[0])], {"approximate": approx} if approx != "none" else {})]


@handles("Softmax", "LogSoftmax")
def softmax(imp, node, a):
    x = imp.dyn_of(node.input[0])
    rank = len(x.shape) + 1
    kind = "softmax" if node.op_type == "Softmax" else "log_softmax"
    if imp.opset >= 13:
        raw = int(a.get("axis", -1))
        if raw % rank == 0:
            raise imp.fail("softmax over the batch axis is not supported")
        return [imp.emit(kind, [x], {"axis": raw} if raw != 1 else {})]
    axis = int(a.get("axis", 1)) % rank
    if axis == 0:
        raise imp.fail("softmax over the batch axis (axis=0, flattened) is not supported")
    if axis == rank - 1:
        return [imp.emit(kind, [x], {"axis": -1 if rank > 2 else 1})]
    # pre-13 semantics: the tensor is flattened to (prod(dims[:axis]), prod(dims[axis:]))
    inner = x.shape[axis - 1:]
    flat = imp.emit("reshape", [x], {"shape": list(x.shape[:axis - 1]) + [math.prod(inner)]}, suffix=".flat")
    y = imp.emit(kind, [flat], {"axis": -1}, suffix=".softmax")
    return [imp.emit("reshape", [y], {"shape": list(x.shape)})]


@handles("Clip")
def clip(imp, node, a):
    x = imp.dyn_of(node.input[0])
    if imp.opset < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        lo = imp.const(node.input[1], "min") if len(node.input) > 1 and node.input[1] else None
        hi = imp.const(node.input[2], "max") if len(node.input) > 2 and node.input[2] else None
        lo = None if lo is None else f32(np.asarray(lo).reshape(()))
        hi = None if hi is None else f32(np.asarray(hi).reshape(()))
    params = {}
    if lo is not None and lo > -3.4e38:
        params["min"] = float(lo)
    if hi is not None and hi < 3.4e38:
        params["max"] = float(hi)
    return [imp.emit("clip", [x], params)]


@handles("Dropout")
def dropout(imp, node, a):
    x = imp.dyn_of(node.input[0])
    if len(node.output) > 1 and node.output[1] and imp.consumers[node.output[1]]:
        raise imp.fail("the mask output is not supported")
    ratio = a.get("ratio", 0.5)
    if len(node.input) > 1 and node.input[1]:
        ratio = f32(np.asarray(imp.const(node.input[1], "ratio")).reshape(()))
    if len(node.input) > 2 and node.input[2] and bool(np.asarray(imp.const(node.input[2], "training_mode"))):
        raise imp.fail("a training-mode Dropout (training_mode true) is not supported; export the model in "
                       "inference mode (model.eval())")
    return [imp.emit("dropout", [x], {"p": float(ratio)} if ratio != 0.5 else {}), None]


@handles("Identity")
def identity(imp, node, a):
    x = imp.get(node.input[0])
    return [x if isinstance(x, np.ndarray) else imp.emit("identity", [x])]


@handles("Cast")
def cast(imp, node, a):
    from onnx import TensorProto
    to = a.get("to")
    if _exact_cast(imp, imp.get(node.input[0]), to, node.output[0]):
        return [imp.get(node.input[0])]
    if to not in (TensorProto.FLOAT, TensorProto.DOUBLE):   # float32 holds float64's values as cnngraph computes
        name = TensorProto.DataType.Name(to) if to in TensorProto.DataType.values() else str(to)
        why = "rounds to float16's precision" if to in (TensorProto.FLOAT16, TensorProto.BFLOAT16) else \
            "truncates or thresholds the values"
        raise imp.fail(f"casting a computed tensor to {name} {why}, which cnngraph does not do; not supported")
    x = imp.get(node.input[0])
    if isinstance(x, Dyn) and imp.spec_inputs.get(x.id, {}).get("dtype") == "int64":
        # integer image data cast to float: the spec input takes floats (cnngraph converts arrays itself)
        if any(n.op_type != "Cast" for n in imp.graph.node if node.input[0] in n.input):
            raise imp.fail(f"input '{node.input[0]}' is int64 and also used uncast; not supported")
        del imp.spec_inputs[x.id]["dtype"]
    return [x]


INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


def _values_kind(imp, x) -> str:
    """'bool' for a layer output that is 0.0 or 1.0 (comparisons, logic), 'int' for one of whole numbers (indices,
    floor, round, ...), else 'float'."""
    layer = imp.by_id.get(x.id, {}) if isinstance(x, Dyn) else {}
    if layer.get("type") in ("compare", "logical") or layer.get("fn") in ("isnan", "isinf"):
        return "bool"
    if layer.get("type") in ("argmax", "argmin") or layer.get("fn") in ("floor", "ceil", "round", "sign"):
        return "int"
    return "float"


def _exact_cast(imp, x, to, output: str = "") -> bool:
    """Whether casting layer output ``x`` to ONNX type ``to`` keeps its values (cnngraph holds booleans and
    indices as floats): to bool from a comparison, to an integer type from booleans or whole numbers; also
    to bool when the cast's ``output`` only feeds logical ops and Where's condition, which read nonzero as
    true just as the cast does (cnngraph's own export writes such casts)."""
    from onnx import TensorProto
    name = TensorProto.DataType.Name(to) if to in TensorProto.DataType.values() else ""
    kind = _values_kind(imp, x)
    if name == "BOOL" and output and _only_truth_tested(imp, output):
        return True
    return (name == "BOOL" and kind == "bool") or (name in INT_TYPES and kind in ("bool", "int"))


def _only_truth_tested(imp, tensor: str) -> bool:
    """Whether every use of ``tensor`` is an input of And/Or/Xor/Not or the condition of a Where (and it is no
    graph output)."""
    uses = [(n, i) for n in imp.graph.node for i, name in enumerate(n.input) if name == tensor]
    outputs = {o.name for o in imp.graph.output}
    return bool(uses) and tensor not in outputs and all(
        n.op_type in ("And", "Or", "Xor", "Not") or (n.op_type == "Where" and i == 0) for n, i in uses)


# ---- arithmetic ---------------------------------------------------------------------------------
def _rank(v):
    return len(v.shape) + 1 if isinstance(v, Dyn) else v.ndim


@handles("Add", "Sub", "Mul", "Div")
def binary(imp, node, a):
    if imp.opset < 7 and a.get("broadcast"):
        raise imp.fail("legacy broadcast attribute (opset < 7) is not supported")
    av, bv = imp.get(node.input[0]), imp.get(node.input[1])
    rank = max(_rank(av), _rank(bv))
    op = node.op_type
    if op == "Add" and isinstance(av, Dyn):
        fused = _fuse_bias(imp, node, av, bv)
        if fused is not None:
            return [fused]
    ops = _operands(imp, node.input[:2], rank)
    if op == "Add" and isinstance(av, Dyn) and isinstance(bv, Dyn) and ops[0].shape == ops[1].shape:
        return [imp.emit("add", ops)]
    return [imp.emit("broadcast_add" if op == "Add" else op.lower(), ops)]


def _operands(imp, names, rank, trainable=None, min_rank: int = 0):
    """Layer outputs for the inputs ``names``; constants take their batch size from a computed one (and are
    trainable as ``trainable`` says per input: True, False, or None for as :func:`is_parameter_name` does).
    Unsqueezes that only align ranks are bypassed (see :func:`_drop_alignment`)."""
    vals = [imp.get(n) for n in names]
    computed = sorted({_rank(v) for v in vals if isinstance(v, Dyn)})
    if len(computed) > 1:
        # ONNX right-aligns whole tensors: the lower-rank one's batch axis would meet a per-sample axis
        raise imp.fail(f"computed tensors of ranks {' and '.join(map(str, computed))} broadcast against each other, "
                       f"which lines the batch axis of one up with another axis of the other; not supported "
                       f"(unsqueeze the lower-rank one after its batch axis first)")
    # (a constant only takes its batch size from ``like``: not from an Unsqueeze that may be dropped)
    like = next((_leading_units(imp, v) or v for v in vals if isinstance(v, Dyn)), None)
    if rank > max(_rank(v) for v in vals if isinstance(v, Dyn)):
        raise imp.fail(f"a constant of rank {rank} broadcasts a computed tensor of rank "
                       f"{max(_rank(v) for v in vals if isinstance(v, Dyn))} to a higher rank, which moves its batch "
                       f"axis; not supported")
    ops = [imp.dyn_of(n, rank, like, t) for n, t in zip(names, trainable or [None] * len(names))]
    return _drop_alignment(imp, ops, min_rank)


def _leading_units(imp, x: Dyn) -> Dyn | None:
    """The input of the Unsqueeze that made ``x`` when all it did was put unit axes right after the batch axis."""
    src, axes = imp.unsqueezed.get(x.id, (None, ()))
    return src if list(axes) == list(range(1, 1 + len(axes))) else None


def _drop_alignment(imp, ops: list, min_rank: int = 0) -> list:
    """ONNX broadcasting aligns whole tensors to the right, so an operand of fewer per-sample axes is unsqueezed
    right after its batch axis to line up (cnngraph's exporter does so). cnngraph's broadcasting ops align the
    per-sample shapes to the right themselves: those unit axes change nothing while another operand keeps the
    result's rank, and the Unsqueeze's input is used instead (its reshape layer is dropped when nothing else reads
    it). ``min_rank``: only sources of at least so many axes (matmul, where a 1-D operand is a vector)."""
    ops = list(ops)
    rank = max(len(o.shape) for o in ops)
    for i, o in enumerate(ops):
        src = _leading_units(imp, o)
        others = [len(p.shape) for j, p in enumerate(ops) if j != i]
        if src is not None and len(src.shape) >= min_rank and others and max(others) == rank:
            ops[i] = src
    return ops


def _fuse_bias(imp, node, av, bv):
    """MatMul → Add(bias) where the MatMul became a bias-free dense layer used only here: one dense."""
    if not isinstance(bv, np.ndarray) or len(av.shape) != 1:
        return None
    layer = imp.by_id.get(av.id)
    if layer is None or layer["type"] != "dense" or layer.get("bias", True) is not False:
        return None
    if bv.size != av.shape[0] or (bv.ndim == 2 and bv.shape[0] != 1) or bv.ndim > 2:
        return None
    users = [t for t, d in imp.dyn.items() if d.id == av.id]
    if any(imp.consumers[t] != 1 for t in users) or imp.layers[-1] is not layer:
        return None
    if any(t in imp.output_names for t in users):
        return None
    del layer["bias"]
    imp.weights[f"{av.id}.bias"] = np.ascontiguousarray(bv.reshape(-1), dtype=np.float32)
    return av


@handles("Sum")
def sum_(imp, node, a):
    vals = [imp.get(n) for n in node.input]
    if len(vals) == 1:
        return [vals[0]]
    if all(isinstance(v, Dyn) and v.shape == vals[0].shape for v in vals):
        return [imp.emit("add", vals)]
    rank = max(_rank(v) for v in vals)
    ops = _operands(imp, node.input, rank)
    y = ops[0]
    for i, v in enumerate(ops[1:], 1):
        y = imp.emit("broadcast_add", [y, v], suffix=f".{i}" if i < len(vals) - 1 else "")
    return [y]


@handles("Concat")
def concat(imp, node, a):
    vals = [imp.get(n) for n in node.input]
    if not all(isinstance(v, Dyn) for v in vals):
        raise imp.fail("concatenating computed tensors with constants is not supported")
    rank = len(vals[0].shape) + 1
    axis = int(a["axis"]) % rank
    if axis == 0:
        raise imp.fail("concatenation along the batch axis is not supported")
    return [imp.emit("concat", vals, {"axis": axis} if axis != 1 else {})]


# ---- shapes ---------------------------------------------------------------------------------------
@handles("Shape")
def shape(imp, node, a):
    x = imp.get(node.input[0])
    start, end = a.get("start", 0), a.get("end")
    if isinstance(x, Dyn):   # the batch size: two stand-ins tell which folded values depend on it
        imp.alt[node.output[0]] = np.array([BATCH_ALT, *x.shape], dtype=np.int64)[start:end]
        imp.batch_of[node.output[0]] = x
        return [np.array([BATCH, *x.shape], dtype=np.int64)[start:end]]
    return [np.array(np.shape(x), dtype=np.int64)[start:end]]


@handles("Size")
def size(imp, node, a):
    x = imp.get(node.input[0])
    if not isinstance(x, Dyn):
        return [np.array(np.size(x), dtype=np.int64)]
    imp.alt[node.output[0]] = np.array(BATCH_ALT * math.prod(x.shape), dtype=np.int64)
    imp.batch_of[node.output[0]] = x
    return [np.array(BATCH * math.prod(x.shape), dtype=np.int64)]


def _reshape_to(imp, node, x: Dyn, per_sample: list[int]):
    per_sample = [int(d) for d in per_sample]
    if tuple(per_sample) == tuple(x.shape):
        return x
    if len(per_sample) == 1 and per_sample[0] in (-1, math.prod(x.shape)) and len(x.shape) > 1:
        return imp.emit("flatten", [x])
    return imp.emit("reshape", [x], {"shape": per_sample})


@handles("Flatten")
def flatten(imp, node, a):
    x = imp.dyn_of(node.input[0])
    rank = len(x.shape) + 1
    axis = int(a.get("axis", 1)) % rank if a.get("axis", 1) != rank else rank
    if axis == 1:
        return [imp.emit("flatten", [x]) if len(x.shape) != 1 else x]
    if axis == 0 or any(d != 1 for d in x.shape[:axis - 1]):
        raise imp.fail(f"Flatten(axis={a.get('axis', 1)}) would merge the batch axis with others")
    return [_reshape_to(imp, node, x, [math.prod(x.shape[axis - 1:])])]


@handles("Reshape")
def reshape(imp, node, a):
    x = imp.get(node.input[0])
    target = [int(d) for d in imp.const(node.input[1], "shape")] if len(node.input) > 1 else list(a["shape"])
    allowzero = a.get("allowzero", 0)
    full = [BATCH, *x.shape]
    t = [full[i] if d == 0 and not allowzero and i < len(full) else d for i, d in enumerate(target)]
    n = math.prod(x.shape)
    rest = t[1:]
    if not t:
        raise imp.fail("reshape to a scalar is not supported")
    bad = [d for d in rest if d != -1 and d % BATCH == 0 and d]
    # the batch stays first when the target starts with it: symbolically (Shape(x)[0] or 0 = copy), as
    # the batch size the model was exported with, or as -1 with the rest covering one sample exactly
    batch_first = t[0] == BATCH or (imp.declared_batch is not None and t[0] == imp.declared_batch)
    if t[0] == -1 and -1 not in rest and math.prod(rest) == n:
        batch_first = True
    if bad or not batch_first:
        raise imp.fail(f"reshape to {target} changes the batch axis; only reshapes that keep the batch "
                       f"first are supported (input {tuple(full)} with the batch as {BATCH})")
    known = math.prod(d for d in rest if d != -1)
    if -1 in rest:
        if known == 0 or n % known:
            raise imp.fail(f"cannot reshape per-sample {x.shape} to {rest}")
    elif known != n:
        raise imp.fail(f"cannot reshape per-sample {x.shape} to {rest}")
    if tuple(rest) == tuple(x.shape):
        return [x]
    resolved = [n // known if d == -1 else d for d in rest]
    # cnngraph's reshape layers export as the batch copied (0) and their shape: import them as written. A flatten
    # exports with the batch inferred (-1), torch's x.flatten(2) and x.view(N, -1) with the batch size
    written = target[0] == 0 and 0 not in target[1:] and rest != [-1]
    merged = None if written else _merged_axes(x.shape, resolved)
    if merged is not None:
        return [imp.emit("flatten", [x], merged)]
    return [imp.emit("reshape", [x], {"shape": rest})]


def _merged_axes(shape: tuple, target: list[int]) -> dict | None:
    """flatten's parameters when per-sample ``target`` is ``shape`` with one run of two or more axes merged, else
    None (start_dim counts the batch as 0; end_dim from the end, as torch's default -1)."""
    run = len(shape) - len(target) + 1
    if run < 2:
        return None
    for i in range(len(target)):
        if (list(shape[:i]) == target[:i] and math.prod(shape[i:i + run]) == target[i]
                and list(shape[i + run:]) == target[i + 1:]):
            end = i + run - len(shape) - 1   # the run's last axis, counted from the end
            return ({"start_dim": i + 1} if i else {}) | ({"end_dim": end} if end != -1 else {})
    return None


@handles("Squeeze", "Unsqueeze")
def squeeze(imp, node, a):
    x = imp.get(node.input[0])
    axes = a.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in imp.const(node.input[1], "axes")]
    full = [None, *x.shape]
    if node.op_type == "Squeeze":
        if axes is None:
            if imp.declared_batch == 1:
                raise imp.fail("Squeeze without axes removes the batch axis of this batch-1 model, which cnngraph "
                               "keeps; export with a dynamic batch or squeeze named axes")
            axes = {i + 1 for i, d in enumerate(x.shape) if d == 1}
        else:
            axes = {ax % len(full) for ax in axes}
            if 0 in axes:
                raise imp.fail("squeezing the batch axis is not supported")
            if any(full[ax] != 1 for ax in axes):
                raise imp.fail(f"cannot squeeze axes {sorted(axes)} of shape {tuple(full)}")
        out = [d for i, d in enumerate(full) if i not in axes][1:]
        fused = _vector_matmul(imp, node, x, {ax - 1 for ax in axes}, out)
        if fused is not None:
            return [fused]
    else:
        rank = len(full) + len(axes)
        axes = sorted(ax % rank for ax in axes)
        if 0 in axes:
            raise imp.fail("unsqueezing before the batch axis is not supported")
        out = list(x.shape)
        for ax in axes:
            out.insert(ax - 1, 1)
        y = _reshape_to(imp, node, x, out)
        imp.unsqueezed[y.id] = (x, tuple(axes))   # a broadcasting consumer may not need it (_drop_alignment)
        return [y]
    return [_reshape_to(imp, node, x, out)]


def _vector_matmul(imp, node, x, removed: set[int], out: list[int]):
    """ONNX's MatMul treats a 1-D tensor as a vector, but a per-sample vector has a batch axis: exporters (cnngraph's
    too) unsqueeze it to a (1, K) row or (K, 1) column after the batch axis, multiply, and squeeze that unit axis
    away. cnngraph's matmul takes per-sample vectors itself: when ``x`` is such a product, read only by this
    Squeeze, and the Squeeze removes exactly the axes the vectors gained, the matmul layer takes the vectors and
    this Squeeze's shape (the Unsqueezes' reshape layers are then unused and dropped); else None."""
    layer = imp.by_id.get(x.id) if isinstance(x, Dyn) else None
    outputs = {o.name for o in imp.graph.output}
    if (layer is None or layer["type"] != "matmul" or imp.consumers[node.input[0]] != 1 or node.input[0] in outputs
            or not removed or not removed <= {len(x.shape) - 2, len(x.shape) - 1}):
        return None
    ins = [Dyn(i, imp.shapes[i]) for i in layer["inputs"]]
    for i, axis in ((0, len(x.shape) - 2), (1, len(x.shape) - 1)):   # a row vector, a column vector
        if axis in removed:
            vec = _unsqueezed_vector(imp, ins[i], row=i == 0)
            if vec is None:
                return None
            ins[i] = vec
    op_cls = imp.registry.ops["matmul"]
    try:
        shape = tuple(op_cls(op_cls.Params()).infer_shape([v.shape for v in ins]))
    except Exception:  # noqa: BLE001 - not a product of these shapes: keep the layers
        return None
    if shape != tuple(out):
        return None
    layer["inputs"] = [v.id for v in ins]
    imp.shapes[x.id] = shape
    return Dyn(x.id, shape)


def _unsqueezed_vector(imp, v: Dyn, row: bool):
    """The per-sample vector (K,) that an Unsqueeze made into ``v``: (1, ..., 1, K) for a row, (1, ..., K, 1) for a
    column (unit axes after the batch axis, then the vector's own unit axis); else None."""
    src, axes = imp.unsqueezed.get(v.id, (None, ()))
    if src is None or len(src.shape) != 1:
        return None
    lead = list(range(1, len(v.shape) if row else len(v.shape) - 1))
    return src if list(axes) == (lead if row else lead + [len(v.shape)]) else None


@handles("Transpose")
def transpose(imp, node, a):
    x = imp.dyn_of(node.input[0])
    rank = len(x.shape) + 1
    perm = [int(p) % rank for p in a.get("perm", list(range(rank))[::-1])]
    if perm[0] != 0:
        raise imp.fail(f"perm {perm} moves the batch axis; only permutations keeping axis 0 first are supported")
    if perm == list(range(rank)):
        return [x]
    return [imp.emit("transpose", [x], {"perm": perm})]


def _python_slice(start: int, end: int, step: int, dim: int) -> tuple[int, int | None]:
    """ONNX Slice's start/end for one axis of size ``dim`` (negative = from the end, clamped, huge
    values = open) as Python slice bounds; end None runs to the end (or the beginning for step < 0)."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        return start, (None if end == dim else end)
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return start, (None if end == -1 else end)


@handles("Slice")
def slice_(imp, node, a):
    x = imp.dyn_of(node.input[0])
    rank = len(x.shape) + 1
    if imp.opset < 10:
        starts, ends = [int(v) for v in a["starts"]], [int(v) for v in a["ends"]]
        axes = [int(v) for v in a.get("axes", range(len(starts)))]
        steps = [1] * len(starts)
    else:
        def ints(i, what, default):
            return [int(v) for v in imp.const(node.input[i], what)] if len(node.input) > i and node.input[i] else default
        starts, ends = ints(1, "starts", None), ints(2, "ends", None)
        axes, steps = ints(3, "axes", list(range(len(starts)))), ints(4, "steps", [1] * len(starts))
    cuts = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= rank
        if step == 0:
            raise imp.fail("a step of 0 is not a slice")
        if axis == 0:
            if (step, start) == (1, 0) and end >= 2**31 - 1:
                continue                       # the whole batch
            raise imp.fail("slicing the batch axis is not supported")
        lo, hi = _python_slice(start, end, step, x.shape[axis - 1])
        if (lo, hi, step) != (0, None, 1):     # else the whole axis
            first = 0 if step > 0 else x.shape[axis - 1] - 1     # where start: null begins
            params = {"axis": axis, "start": None if lo == first else lo, "end": hi, "step": step}
            cuts.append({k: v for k, v in params.items() if v != SLICE_DEFAULTS[k]})
    out = x
    for cut in cuts:   # one layer per sliced axis, named after the node (suffixed when there are several)
        out = imp.emit("slice", [out], cut, suffix=f"_{cut.get('axis', 1)}" if len(cuts) > 1 else "")
    return [out]


SLICE_DEFAULTS = {"axis": 1, "start": None, "end": None, "step": 1}


@handles("Split")
def split(imp, node, a):
    x = imp.dyn_of(node.input[0])
    rank = len(x.shape) + 1
    axis = int(a.get("axis", 0)) % rank
    if axis == 0:
        raise imp.fail("splitting the batch axis is not supported")
    dim, n = x.shape[axis - 1], len(node.output)
    if imp.opset < 13:
        sizes = a.get("split")
    else:
        sizes = imp.const(node.input[1], "split") if len(node.input) > 1 and node.input[1] else None
    if sizes is None:                          # equal parts, the last one smaller (opset 18's num_outputs)
        part = -(-dim // n)
        sizes = [min(part, dim - i * part) for i in range(n)]
    sizes = [int(v) for v in sizes]
    if len(sizes) != n or sum(sizes) != dim or min(sizes) <= 0:
        raise imp.fail(f"split sizes {sizes} do not cut axis {axis} of size {dim} into {n} parts")
    outs, start = [], 0
    for i, size in enumerate(sizes):
        params = {"axis": axis, "start": start or None, "end": start + size if start + size < dim else None}
        outs.append(imp.emit("slice", [x], {k: v for k, v in params.items() if v != SLICE_DEFAULTS[k]},
                             suffix=f"_{i}"))
        start += size
    return outs


@handles("Resize", "Upsample")
def resize(imp, node, a):
    """Nearest (floor of dst / scale), bilinear and bicubic resizing of H and W, as torch exports F.interpolate."""
    x = imp.dyn_of(node.input[0])
    if len(x.shape) != 3:
        raise imp.fail(f"only 4-D (N, C, H, W) inputs can be resized, found per-sample shape {tuple(x.shape)}")
    _refuse_resize_options(imp, a)
    if node.op_type == "Upsample" and imp.opset < 9:
        scales = a.get("scales")
    else:   # Upsample 9 / Resize 10: X, scales; Resize 11+: X, roi, scales, sizes
        at = 1 if node.op_type == "Upsample" or imp.opset < 11 else 2
        scales = imp.const(node.input[at], "scales") if len(node.input) > at and node.input[at] else None
        if (scales is None or np.size(scales) == 0) and len(node.input) > 3 and node.input[3]:
            return [_resize_to_sizes(imp, node, a, x)]
    scales = [float(v) for v in (scales if scales is not None else [])]
    if a.get("axes") is not None and scales:   # opset 18: scales or sizes for these axes only
        full = [1.0] * 4
        for ax, v in zip(a["axes"], scales):
            full[int(ax) % 4] = v
        scales = full
    if len(scales) != 4 or scales[:2] != [1.0, 1.0]:
        raise imp.fail(f"only scales of the form [1, 1, h, w] are supported, found {scales}")
    # ONNX holds float32 scales: 0.6 comes back as 0.6, not 0.6000000238418579 (the same float32 either way)
    return [imp.emit("upsample2d", [x], _resize_modes(imp, a, node, x, scales[2:])
                     | {"scale_factor": [float(str(np.float32(v))) for v in scales[2:]]})]


def _resize_to_sizes(imp, node, a, x):
    """Resize given output ``sizes`` (F.interpolate(x, size=...)): upsample2d with ``size``, whose coordinates use
    the exact ratio of the sizes (as a float32 scale they can land on the neighbouring pixel)."""
    sizes = [int(v) for v in imp.const(node.input[3], "sizes")]
    full = [1, *x.shape]
    axes = [int(ax) % 4 for ax in a.get("axes", range(4))]
    if len(sizes) != len(axes):
        raise imp.fail(f"sizes {sizes} need one entry per axis ({len(axes)})")
    out = dict(zip(axes, sizes))
    if out.get(1, full[1]) != full[1]:
        raise imp.fail(f"only sizes that keep the channels are supported, found {sizes}")
    # the batch entry (the exported batch size, or a shape computed from it) never resizes
    size = [out.get(ax, full[ax]) for ax in (2, 3)]
    return imp.emit("upsample2d", [x], _resize_modes(imp, a, node, x, [s / n for s, n in zip(size, x.shape[1:])])
                    | {"size": size})


def _resize_modes(imp, a, node, x, scales) -> dict:
    """upsample2d's mode parameters for the Resize/Upsample attributes (``scales``: the (h, w) factors)."""
    mode = a.get("mode", "nearest")
    transform = a.get("coordinate_transformation_mode", "half_pixel" if imp.opset >= 11 else "asymmetric")
    nearest = a.get("nearest_mode", "round_prefer_floor")
    if node.op_type == "Upsample" or imp.opset < 11:
        transform, nearest = "asymmetric", "floor"     # the old ops' only behaviour
    params = {}
    if mode == "nearest" and transform == "asymmetric" and nearest == "floor":
        pass
    elif mode in ("linear", "bilinear", "cubic") and transform in ("align_corners", "pytorch_half_pixel", "half_pixel"):
        if transform == "half_pixel" and any(round(n * s) == 1 for n, s in zip(x.shape[1:], scales)):
            raise imp.fail("half_pixel resizing to a size of 1 differs from PyTorch's; not supported")
        params.update(mode="bicubic" if mode == "cubic" else "bilinear", align_corners=transform == "align_corners")
        if mode == "cubic" and float(a.get("cubic_coeff_a", -0.75)) != -0.75:
            params["cubic_coeff_a"] = float(a["cubic_coeff_a"])
    else:
        raise imp.fail(f"resizing with mode {mode!r}, coordinate_transformation_mode {transform!r} and nearest_mode "
                       f"{nearest!r} is not supported (nearest asymmetric floor, and linear or cubic with "
                       f"align_corners, half_pixel or pytorch_half_pixel, are)")
    return params


def _refuse_resize_options(imp, a) -> None:
    """Resize options that change the result and that upsample2d lacks (extrapolation_value only matters for
    tf_crop_and_resize, which is refused anyway)."""
    if a.get("antialias", 0):
        raise imp.fail("antialias=1 (F.interpolate(..., antialias=True)) is not supported")
    policy = a.get("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        raise imp.fail(f"keep_aspect_ratio_policy {policy!r} is not supported (only 'stretch')")
    if a.get("exclude_outside", 0):
        raise imp.fail("exclude_outside=1 is not supported")


@handles("DepthToSpace")
def depth_to_space(imp, node, a):
    """pixel_shuffle: mode CRD is torch.nn.PixelShuffle's channel order, DCR (the default, and the only mode
    before opset 11) the other one."""
    x = imp.dyn_of(node.input[0])
    mode = str(a.get("mode", "DCR")).upper() if imp.opset >= 11 else "DCR"
    if mode not in ("CRD", "DCR"):
        raise imp.fail(f"unknown DepthToSpace mode {mode!r} (CRD and DCR are)")
    params = {"upscale_factor": int(a["blocksize"])} | ({"mode": "dcr"} if mode == "DCR" else {})
    return [imp.emit("pixel_shuffle", [x], params)]


@handles("Pad")
def pad(imp, node, a):
    x = imp.dyn_of(node.input[0])
    rank = len(x.shape) + 1
    mode = a.get("mode", "constant")
    if imp.opset < 11:
        pads = list(a.get("pads", a.get("paddings", [])))
        value = float(a.get("value", 0.0))
    else:
        pads = [int(p) for p in imp.const(node.input[1], "pads")]
        value = 0.0
        if len(node.input) > 2 and node.input[2]:
            value = f32(np.asarray(imp.const(node.input[2], "constant_value")).reshape(()))
        if len(node.input) > 3 and node.input[3]:
            axes = [int(v) % rank for v in imp.const(node.input[3], "axes")]
            full = [0] * (2 * rank)
            for i, ax in enumerate(axes):
                full[ax], full[rank + ax] = pads[i], pads[len(axes) + i]
            pads = full
    if len(pads) != 2 * rank:
        raise imp.fail(f"pads has {len(pads)} entries, expected {2 * rank}")
    if pads[0] or pads[rank]:
        raise imp.fail("padding the batch axis is not supported")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise imp.fail(f"pad mode {mode!r} is not supported (constant, reflect, edge, wrap are)")
    if not any(pads):
        return [x]
    params = {"pads": [[pads[i], pads[rank + i]] for i in range(1, rank)]}
    if mode != "constant":
        params["mode"] = mode
    if value:
        params["value"] = value
    return [imp.emit("pad", [x], params)]


@handles("Expand")
def expand(imp, node, a):
    """Broadcasting after the batch axis (ONNX's bidirectional rule: a 1 in the shape keeps the input's size)."""
    # (an Expand of constants is folded before this, or made a constant layer when its shape holds the batch size)
    x, target = imp.get(node.input[0]), [int(d) for d in imp.const(node.input[1], "shape")]
    full = [BATCH, *x.shape]
    if len(target) > len(full):
        raise imp.fail(f"expanding per-sample shape {x.shape} to the higher rank of {target} moves the batch axis; "
                       f"not supported")
    if len(target) == len(full) and target[0] not in (1, BATCH, imp.declared_batch):
        raise imp.fail(f"expanding the batch axis to {target[0]} is not supported")
    rest = target[1:] if len(target) == len(full) else target
    if any(d % BATCH == 0 for d in rest):
        raise imp.fail(f"shape {target} uses the batch size after the batch axis; not supported")
    out = [d if t == 1 else t for d, t in zip(x.shape[len(x.shape) - len(rest):], rest)]
    if tuple(x.shape[:len(x.shape) - len(rest)]) + tuple(out) == tuple(x.shape):
        return [x]
    src = _leading_units(imp, x)
    if src is not None and len(rest) >= len(x.shape):   # expand aligns to the right too (see _drop_alignment)
        x = src
    return [imp.emit("expand", [x], {"shape": rest})]


def expand_constant_to_batch(imp, node, x: np.ndarray, target: list[int]) -> Dyn:
    """A constant (a class token, CoordConv's coordinates) expanded to a shape whose leading entry is the batch
    size, Shape(t)[0]: a ``constant`` layer that t lends its batch size to, then ``expand`` for the per-sample
    dims of a parameter (a fixed constant is stored expanded)."""
    alt = [int(d) for d in imp.alt[node.input[1]]]
    try:
        full = np.broadcast_shapes(np.shape(x), tuple(target))
        full_alt = np.broadcast_shapes(np.shape(x), tuple(alt))
    except ValueError:
        raise imp.fail(f"cannot expand a constant of shape {np.shape(x)} to {target}") from None
    if (len(full) < 1 or full[0] != BATCH or full_alt[0] != BATCH_ALT or tuple(full[1:]) != tuple(full_alt[1:])
            or any(d % BATCH == 0 for d in full[1:])):
        raise imp.fail(f"expanding a constant to {target} uses the batch size other than as the leading "
                       f"dimension; only a constant expanded to Shape(x)[0] along the batch axis is supported")
    arr = np.asarray(x, dtype=np.float32).reshape((1,) * (len(full) - np.ndim(x)) + np.shape(x))[0]
    per = tuple(int(d) for d in full[1:])
    like = imp.batch_of.get(node.input[1]) or next(iter(imp.dyn.values()))
    if node.input[0] in imp.params:   # a parameter stays one tensor (trainable), expanded per sample after
        y = imp.const_layer(node.input[0], arr, like, True)
        return y if tuple(arr.shape) == per else imp.emit("expand", [y], {"shape": list(per)})
    return imp.const_layer(node.input[0], np.ascontiguousarray(np.broadcast_to(arr, per)), like, False)


@handles("Tile")
def tile(imp, node, a):
    x = imp.dyn_of(node.input[0])
    repeats = [int(r) for r in imp.const(node.input[1], "repeats")]
    if len(repeats) != len(x.shape) + 1:
        raise imp.fail(f"repeats {repeats} name {len(repeats)} axes, the input has {len(x.shape) + 1}")
    if repeats[0] != 1:
        raise imp.fail(f"tiling the batch axis ({repeats[0]} times) is not supported")
    if all(r == 1 for r in repeats):
        return [x]
    return [imp.emit("tile", [x], {"repeats": repeats[1:]})]


@handles("Gather")
def gather(imp, node, a):
    if not isinstance(imp.get(node.input[1]), np.ndarray):
        return [_embedding(imp, node, a)]
    x = imp.dyn_of(node.input[0])
    idx = imp.const(node.input[1], "indices")
    axis = int(a.get("axis", 0)) % (len(x.shape) + 1)
    if axis == 0:
        raise imp.fail("Gather along the batch axis (picking samples) is not supported")
    if idx.ndim > 1:
        raise imp.fail(f"indices of shape {idx.shape} are not supported (only a scalar or a 1-D list)")
    indices = int(idx) if idx.ndim == 0 else [int(i) for i in idx]
    return [imp.emit("take", [x], {"axis": axis, "indices": indices})]


def _embedding(imp, node, a) -> Dyn:
    """Gather of a constant 2-D table's rows by computed indices (nn.Embedding) as an ``embedding`` layer."""
    table, idx = imp.get(node.input[0]), imp.dyn_of(node.input[1])
    if not isinstance(table, np.ndarray) or np.ndim(table) != 2 or int(a.get("axis", 0)) % 2 != 0:
        raise imp.fail("Gather with computed indices is supported as an embedding lookup only: rows (axis 0) of a "
                       "constant 2-D table")
    rows, dim = np.shape(table)
    return imp.emit("embedding", [idx], {"num_embeddings": int(rows), "embedding_dim": int(dim)},
                    {"weight": np.asarray(table, np.float32)})


@handles("ConstantOfShape", "Constant")
def const_ops(imp, node, a):   # only reached with dynamic inputs
    raise imp.fail("the shape must be known at import time")


REDUCE = {"ReduceMean": "mean", "ReduceMax": "max", "ReduceSum": "sum", "ReduceMin": "min", "ReduceProd": "prod",
          "ReduceL1": "l1", "ReduceL2": "l2", "ReduceSumSquare": "sum_square", "ReduceLogSum": "log_sum",
          "ReduceLogSumExp": "log_sum_exp"}
REDUCE_NONE = {"l1": ("unary", {"fn": "abs"}), "l2": ("unary", {"fn": "abs"}), "log_sum": ("unary", {"fn": "log"}),
               "sum_square": ("pow", {"exponent": 2.0})}   # each value reduced alone


@handles(*REDUCE)
def reduce(imp, node, a):
    """Mean / max over H and W of an (N, C, H, W) tensor (``x.mean([2, 3])`` in ShuffleNet and MobileNetV2), or over
    D, H and W of an (N, C, D, H, W) one, as a global pooling; any other reduction that keeps the batch axis (CBAM's ``x.mean(1, keepdim=True)``, F.normalize's
    ReduceL2 over the channels) as ``reduce``. The axes are an attribute, or an input from opset 18 (ReduceSum: 13)."""
    x = imp.dyn_of(node.input[0])
    axes = a.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in imp.const(node.input[1], "axes")]
    kind = REDUCE[node.op_type]
    if not axes and a.get("noop_with_empty_axes", 0):
        if kind in REDUCE_NONE:   # no axes still applies the element-wise part, as ONNX Runtime and onnx.reference do
            type_, params = REDUCE_NONE[kind]
            return [imp.emit(type_, [x], params)]
        return [x]
    rank = len(x.shape) + 1
    axes = sorted({int(ax) % rank for ax in axes}) if axes else list(range(rank))
    if 0 in axes:
        raise imp.fail(f"reducing over the batch axis is not supported (axes {axes} of a rank-{rank} tensor)")
    keep = bool(a.get("keepdims", 1))
    if rank in (4, 5) and axes == list(range(2, rank)) and kind in ("mean", "max"):   # over (H, W) or (D, H, W)
        pool = "global_avg_pool2d" if kind == "mean" else "global_max_pool2d"
        if keep:
            return [imp.emit(pool, [x])]
        y = imp.emit(pool, [x], suffix=".pool")
        return [imp.emit("flatten", [y])]
    params = {"axes": axes} | ({"op": kind} if kind != "mean" else {}) | ({"keepdims": True} if keep else {})
    return [imp.emit("reduce", [x], params)]


# ---- element-wise math --------------------------------------------------------------------------
UNARY = {"Sqrt": "sqrt", "Exp": "exp", "Log": "log", "Abs": "abs", "Neg": "neg", "Reciprocal": "reciprocal",
         "Erf": "erf", "Floor": "floor", "Ceil": "ceil", "Round": "round", "Sign": "sign", "Sin": "sin", "Cos": "cos",
         "Tan": "tan", "Asin": "asin", "Acos": "acos", "Atan": "atan", "IsNaN": "isnan", "IsInf": "isinf"}


@handles(*UNARY)
def unary(imp, node, a):
    if node.op_type == "IsInf" and (a.get("detect_negative", 1), a.get("detect_positive", 1)) != (1, 1):
        raise imp.fail("IsInf detecting only one sign is not supported")
    return [imp.emit("unary", [imp.dyn_of(node.input[0])], {"fn": UNARY[node.op_type]})]


COMPARE = {"Greater": "greater", "Less": "less", "Equal": "equal", "GreaterOrEqual": "greater_or_equal",
           "LessOrEqual": "less_or_equal"}
LOGICAL = {"And": "and", "Or": "or", "Xor": "xor", "Not": "not"}


@handles(*COMPARE, *LOGICAL)
def compare(imp, node, a):
    """Comparisons and logic give 1.0 / 0.0 in the model's dtype (see plugins/logic.py); constants compared with
    (thresholds, masks) stay fixed."""
    rank = max(_rank(imp.get(n)) for n in node.input)
    ops = _operands(imp, node.input, rank, [False] * len(node.input))
    type_ = "compare" if node.op_type in COMPARE else "logical"
    return [imp.emit(type_, ops, {"op": (COMPARE | LOGICAL)[node.op_type]})]


@handles("Where")
def where(imp, node, a):
    rank = max(_rank(imp.get(n)) for n in node.input)
    return [imp.emit("where", _operands(imp, node.input, rank, [False, None, None]))]


@handles("ArgMax", "ArgMin")
def arg_extremum(imp, node, a):
    """The index as a float in the model's dtype (ONNX's is int64; equal values)."""
    x = imp.dyn_of(node.input[0])
    rank = len(x.shape) + 1
    axis = int(a.get("axis", 0))
    if axis % rank == 0:
        raise imp.fail(f"searching the batch axis (axis {axis}) is not supported")
    params = ({"axis": axis % rank} if axis % rank != 1 else {}) | ({"keepdims": True} if a.get("keepdims", 1) else {})
    if a.get("select_last_index", 0):
        params["select_last_index"] = True
    return [imp.emit(node.op_type.lower(), [x], params)]


@handles("Max", "Min")
def extremum(imp, node, a):
    """Element-wise max / min of one or more inputs, as a chain of two-input ``maximum`` / ``minimum`` layers."""
    vals = [imp.get(n) for n in node.input]
    if len(vals) == 1:
        return [vals[0]]
    rank = max(_rank(v) for v in vals)
    ops = _operands(imp, node.input, rank)
    kind = "maximum" if node.op_type == "Max" else "minimum"
    y = ops[0]
    for i, v in enumerate(ops[1:], 1):
        y = imp.emit(kind, [y, v], suffix=f".{i}" if i < len(vals) - 1 else "")
    return [y]


@handles("Pow")
def pow_(imp, node, a):
    e = imp.get(node.input[1])
    if not isinstance(e, np.ndarray):
        raise imp.fail("a computed exponent is not supported; only Pow with a constant scalar exponent is")
    if np.size(e) != 1:
        raise imp.fail(f"only a scalar exponent is supported, found one of shape {np.shape(e)}")
    return [imp.emit("pow", [imp.dyn_of(node.input[0])], {"exponent": f32(np.asarray(e, np.float64).reshape(()))})]


@handles("Softsign")
def softsign(imp, node, a):
    return [imp.emit("softsign", [imp.dyn_of(node.input[0])])]


SELU_ALPHA, SELU_GAMMA = 1.6732632423543772, 1.0507009873554805


@handles("Selu")
def selu(imp, node, a):
    params = {}
    alpha, gamma = float(a.get("alpha", SELU_ALPHA)), float(a.get("gamma", SELU_GAMMA))
    if abs(alpha - SELU_ALPHA) > 1e-6:   # ONNX's defaults are torch's constants rounded to float32
        params["alpha"] = alpha
    if abs(gamma - SELU_GAMMA) > 1e-6:
        params["scale"] = gamma
    return [imp.emit("selu", [imp.dyn_of(node.input[0])], params)]


@handles("Celu")
def celu(imp, node, a):
    alpha = float(a.get("alpha", 1.0))
    return [imp.emit("celu", [imp.dyn_of(node.input[0])], {"alpha": alpha} if alpha != 1.0 else {})]
