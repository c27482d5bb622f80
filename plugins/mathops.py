"""Element-wise math (``unary``), element-wise ``maximum``/``minimum``, ``pow`` by a constant and
reductions over named axes (``reduce``): the ONNX Sqrt/Exp/Log/Abs/Neg/Reciprocal/Erf, Max/Min, Pow and
ReduceMean/ReduceSum/ReduceMax of real networks (CBAM's channel statistics, decomposed norms).

Axes count the batch as axis 0, as in ``softmax`` and ``transpose``; the batch itself is never reduced.
``maximum`` and ``minimum`` broadcast like ``broadcast_add`` (per-sample shapes aligned right).
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from cnngraph.backend import xp_of
from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.op import Op, OpParams
from cnngraph.plugins.activation import erf
from cnngraph.plugins.tensor import _Binary, unbroadcast

__all__ = ["Unary", "Maximum", "Minimum", "Pow", "Reduce", "UNARY_FUNCTIONS"]

def _zero(xp, v):
    return 0   # piecewise constant (floor, ceil, round, sign): zero gradient almost everywhere, as torch


# fn: (forward(xp, x), derivative dy/dx from the saved value, which value it needs: "x" or "y")
_UNARY = {
    "sqrt": (lambda xp, x: xp.sqrt(x), lambda xp, y: 0.5 / y, "y"),
    "exp": (lambda xp, x: xp.exp(x), lambda xp, y: y, "y"),
    "log": (lambda xp, x: xp.log(x), lambda xp, x: 1 / x, "x"),
    "abs": (lambda xp, x: xp.abs(x), lambda xp, x: xp.sign(x), "x"),
    "neg": (lambda xp, x: -x, lambda xp, x: -1, None),
    "reciprocal": (lambda xp, x: xp.reciprocal(x), lambda xp, y: -y * y, "y"),
    "erf": (lambda xp, x: erf(x), lambda xp, x: (2 / math.sqrt(math.pi)) * xp.exp(-x * x), "x"),
    "floor": (lambda xp, x: xp.floor(x), _zero, None),
    "ceil": (lambda xp, x: xp.ceil(x), _zero, None),
    "round": (lambda xp, x: xp.round(x), _zero, None),   # halves to even, as ONNX Round and torch.round
    "sign": (lambda xp, x: xp.sign(x), _zero, None),
    "sin": (lambda xp, x: xp.sin(x), lambda xp, x: xp.cos(x), "x"),
    "cos": (lambda xp, x: xp.cos(x), lambda xp, x: -xp.sin(x), "x"),
    "tan": (lambda xp, x: xp.tan(x), lambda xp, y: 1 + y * y, "y"),
    "asin": (lambda xp, x: xp.arcsin(x), lambda xp, x: 1 / xp.sqrt(1 - x * x), "x"),
    "acos": (lambda xp, x: xp.arccos(x), lambda xp, x: -1 / xp.sqrt(1 - x * x), "x"),
    "atan": (lambda xp, x: xp.arctan(x), lambda xp, x: 1 / (1 + x * x), "x"),
    # 1.0 where x is NaN (infinite), else 0.0, in x's dtype (cnngraph's booleans): torch's SDPA guards with them
    "isnan": (lambda xp, x: xp.isnan(x).astype(x.dtype), _zero, None),
    "isinf": (lambda xp, x: xp.isinf(x).astype(x.dtype), _zero, None),
}
UNARY_FUNCTIONS = tuple(_UNARY)
UnaryFn = Literal["sqrt", "exp", "log", "abs", "neg", "reciprocal", "erf", "floor", "ceil", "round", "sign",
                  "sin", "cos", "tan", "asin", "acos", "atan", "isnan", "isinf"]
assert set(UnaryFn.__args__) == set(_UNARY)


class UnaryParams(OpParams):
    fn: UnaryFn = Field(description="sqrt, exp, log, abs, neg (-x), reciprocal (1 / x), erf, floor, ceil, round "
                                    "(halves to even), sign, sin, cos, tan, asin, acos, atan, isnan or isinf (1.0 / "
                                    "0.0)")


class Unary(Op):
    """One element-wise function ``fn`` of the input, as torch.<fn> and ONNX's op of that name. sqrt, log,
    reciprocal, asin and acos follow IEEE arithmetic outside their domain (NaN, ±inf), as both do. floor, ceil,
    round and sign are piecewise constant: their gradient is zero (as torch's), so nothing learns through them;
    isnan and isinf give 1.0 or 0.0 (no gradient), as comparisons do."""

    type = "unary"
    Params = UnaryParams

    @classmethod
    def examples(cls):
        positive = {"shape": (3, 4, 4), "low": 0.5, "high": 2.0}
        inside = {"shape": (2, 5), "low": -0.9, "high": 0.9}   # asin / acos: |x| < 1
        return [({"fn": "sqrt"}, [positive]), ({"fn": "exp"}, [(3, 4, 4)]), ({"fn": "log"}, [positive]),
                ({"fn": "abs"}, [(7,)]), ({"fn": "neg"}, [(7,)]), ({"fn": "reciprocal"}, [positive]),
                ({"fn": "erf"}, [(2, 5)]), ({"fn": "floor"}, [(2, 5)]), ({"fn": "ceil"}, [(2, 5)]),
                ({"fn": "round"}, [(2, 5)]), ({"fn": "sign"}, [(2, 5)]), ({"fn": "sin"}, [(2, 5)]),
                ({"fn": "cos"}, [(2, 5)]), ({"fn": "tan"}, [inside]), ({"fn": "asin"}, [inside]),
                ({"fn": "acos"}, [inside]), ({"fn": "atan"}, [(2, 5)]), ({"fn": "isnan"}, [(2, 5)]),
                ({"fn": "isinf"}, [(2, 5)])]

    def forward(self, ctx, inputs, params):
        x, = inputs
        f, _, uses = _UNARY[self.p.fn]
        y = f(xp_of(x), x)
        if uses:
            ctx.save(v=x if uses == "x" else y)
        return y

    def backward(self, ctx, gy):
        _, d, uses = _UNARY[self.p.fn]
        xp = xp_of(gy)
        if d is _zero:
            return [xp.zeros_like(gy)], {}
        return [gy * d(xp, ctx.saved["v"] if uses else None)], {}

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape)


class _Extremum(_Binary):
    """Element-wise max or min with broadcasting; a tie sends half the gradient to each input (as PyTorch)."""

    pick = None   # xp.maximum or xp.minimum's name

    @classmethod
    def examples(cls):
        return [({}, [(2, 3, 4), (2, 1, 4)]), ({}, [(3, 4), (4,)])]

    def forward(self, ctx, inputs, params):
        a, b = self._prep(inputs)
        xp = xp_of(a, b)
        wins = (a > b) if self.pick == "maximum" else (a < b)
        ctx.save(wins=wins, tie=a == b, shapes=[x.shape for x in inputs])
        return getattr(xp, self.pick)(a, b)

    def backward(self, ctx, gy):
        s = ctx.saved
        sa, sb = s["shapes"]
        t = gy.dtype.type
        share = s["wins"] + s["tie"] * t(0.5)    # input 0's share of the gradient
        return [unbroadcast(gy * share, sa) if ctx.need_grad(0) else None,
                unbroadcast(gy * (1 - share), sb) if ctx.need_grad(1) else None], {}


class Maximum(_Extremum):
    """max(a, b) element-wise with NumPy broadcasting, as torch.maximum (ONNX Max)."""

    type = "maximum"
    pick = "maximum"


class Minimum(_Extremum):
    """min(a, b) element-wise with NumPy broadcasting, as torch.minimum (ONNX Min)."""

    type = "minimum"
    pick = "minimum"


class PowParams(OpParams):
    exponent: float = Field(description="the constant power every element is raised to")


class Pow(Op):
    """x ** exponent for a constant exponent, as torch.pow(x, exponent) (ONNX Pow with a constant
    exponent). A negative base with a non-integer exponent gives NaN, as in both."""

    type = "pow"
    Params = PowParams

    @classmethod
    def examples(cls):
        return [({"exponent": 2.0}, [(3, 4, 4)]), ({"exponent": 0.5}, [{"shape": (7,), "low": 0.5, "high": 2.0}]),
                ({"exponent": -1.5}, [{"shape": (2, 3), "low": 0.5, "high": 2.0}]), ({"exponent": 3.0}, [(5,)])]

    def _integer(self):
        e = self.p.exponent
        return e == int(e) and abs(e) < 2 ** 31

    def forward(self, ctx, inputs, params):
        x, = inputs
        e = self.p.exponent
        ctx.save(x=x)
        if self._integer():   # exact repeated products for whole powers (negative bases included)
            return x ** int(e) if e >= 0 else 1 / x ** int(-e)
        return x ** x.dtype.type(e)

    def backward(self, ctx, gy):
        x = ctx.saved["x"]
        e = self.p.exponent
        if e == 0:
            return [xp_of(gy).zeros_like(gy)], {}
        if e == 1:
            return [gy], {}
        if self._integer():
            d = x ** int(e - 1) if e >= 1 else 1 / x ** int(1 - e)
        else:
            d = x ** x.dtype.type(e - 1)
        return [gy * (d * gy.dtype.type(e))], {}

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape)


class ReduceParams(OpParams):
    op: Literal["mean", "sum", "max", "min", "prod", "l1", "l2", "sum_square", "log_sum", "log_sum_exp"] = Field(
        "mean", description="mean, sum, max, min, prod, l1 (sum of |x|), l2 (√(sum of x²)), sum_square, log_sum "
                            "(log of the sum) or log_sum_exp, as ONNX's Reduce<Op>")
    axes: list[int] = Field(description="axes to reduce, batch included as axis 0 (never reduced); negative "
                                        "counts from the end")
    keepdims: bool = Field(False, description="keep each reduced axis with size 1 (torch's keepdim)")

    @field_validator("axes")
    @classmethod
    def _some(cls, v):
        if not v:
            raise ValueError("name at least one axis to reduce")
        return v


def _exclusive_prod(x, axes):
    """For each element, the product of the others in its reduced group (prod's gradient, zeros included)."""
    xp = xp_of(x)
    kept = [i for i in range(x.ndim) if i not in axes]
    moved = xp.transpose(x, kept + list(axes))
    flat = moved.reshape(moved.shape[:len(kept)] + (-1,))
    ones = xp.ones(flat.shape[:-1] + (1,), dtype=x.dtype)
    before = xp.cumprod(xp.concatenate([ones, flat[..., :-1]], axis=-1), axis=-1)
    after = xp.cumprod(xp.concatenate([ones, flat[..., :0:-1]], axis=-1), axis=-1)[..., ::-1]
    out = (before * after).reshape(moved.shape)
    return xp.transpose(out, list(np.argsort(kept + list(axes))))


# op: (forward(xp, x, axes) with keepdims, dy/dx from (xp, x, y, axes)); None: mean and sum (no x needed)
_REDUCE = {
    "max": (lambda xp, x, a: x.max(axis=a, keepdims=True), None),
    "min": (lambda xp, x, a: x.min(axis=a, keepdims=True), None),
    "prod": (lambda xp, x, a: x.prod(axis=a, keepdims=True), lambda xp, x, y, a: _exclusive_prod(x, a)),
    "l1": (lambda xp, x, a: xp.abs(x).sum(axis=a, keepdims=True), lambda xp, x, y, a: xp.sign(x)),
    "l2": (lambda xp, x, a: xp.sqrt((x * x).sum(axis=a, keepdims=True)),
           lambda xp, x, y, a: x / xp.where(y == 0, 1, y)),   # 0 at a zero norm, as torch.linalg.norm
    "sum_square": (lambda xp, x, a: (x * x).sum(axis=a, keepdims=True), lambda xp, x, y, a: 2 * x),
    "log_sum": (lambda xp, x, a: xp.log(x.sum(axis=a, keepdims=True)), lambda xp, x, y, a: xp.broadcast_to(xp.exp(-y), x.shape)),
    "log_sum_exp": (lambda xp, x, a: _log_sum_exp(xp, x, a), lambda xp, x, y, a: xp.exp(x - y)),
}


def _log_sum_exp(xp, x, axes):
    m = x.max(axis=axes, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)   # all -inf (or an inf) in a group: no shift
    return m + xp.log(xp.exp(x - m).sum(axis=axes, keepdims=True))


class Reduce(Op):
    """Reduces ``axes`` of each sample by ``op``, as ONNX's Reduce<Op> and x.mean / x.sum / x.amax / x.amin / x.prod /
    torch.logsumexp(dim=axes, keepdim=keepdims); CBAM's channel statistics are ``{op: mean, axes: [1],
    keepdims: true}``, F.normalize's norm ``{op: l2, axes: [1], keepdims: true}``. max and min share the gradient
    evenly among tied extrema (as torch.amax); l2's gradient at a zero norm is 0."""

    type = "reduce"
    Params = ReduceParams

    @classmethod
    def examples(cls):
        positive = {"shape": (3, 4), "low": 0.5, "high": 2.0}
        return [({"axes": [1], "keepdims": True}, [(4, 3, 3)]), ({"op": "sum", "axes": [-1, 2]}, [(2, 3, 4)]),
                ({"op": "max", "axes": [1], "keepdims": True}, [(5, 2, 3)]), ({"op": "max", "axes": [1, 2]}, [(3, 4)]),
                ({"op": "min", "axes": [2]}, [(3, 4)]), ({"op": "prod", "axes": [1, 3]}, [(3, 2, 4)]),
                ({"op": "l1", "axes": [1]}, [(3, 4)]), ({"op": "l2", "axes": [1], "keepdims": True}, [(4, 3, 3)]),
                ({"op": "sum_square", "axes": [2]}, [(3, 4)]), ({"op": "log_sum", "axes": [1, 2]}, [positive]),
                ({"op": "log_sum_exp", "axes": [-1]}, [(2, 3, 4)])]

    def _axes(self, rank: int) -> tuple[int, ...]:
        """Reduced axes of a tensor of ``rank`` dimensions (batch included), sorted."""
        axes = set()
        for ax in self.p.axes:
            if not -rank <= ax < rank:
                raise ShapeError(f"reduce axis {ax} is out of range for a tensor of {rank} dimensions (batch "
                                 f"included; axis 0 is the batch)")
            if ax % rank == 0:
                raise ShapeError(f"reduce axis {ax} is the batch axis, which is never reduced")
            axes.add(ax % rank)
        return tuple(sorted(axes))

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        axes = self._axes(len(shape) + 1)
        if self.p.keepdims:
            return tuple(1 if i + 1 in axes else d for i, d in enumerate(shape))
        return tuple(d for i, d in enumerate(shape) if i + 1 not in axes)

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        axes = self._axes(x.ndim)
        if self.p.op in ("mean", "sum"):
            y = x.sum(axis=axes, keepdims=True) if self.p.op == "sum" else x.mean(axis=axes, keepdims=True)
            ctx.save(shape=x.shape)
        else:
            y = _REDUCE[self.p.op][0](xp, x, axes)
            ctx.save(x=x, y=y, shape=x.shape)
        return y if self.p.keepdims else y.reshape(tuple(d for i, d in enumerate(x.shape) if i not in axes))

    def backward(self, ctx, gy):
        s = ctx.saved
        xp = xp_of(gy)
        shape = s["shape"]
        axes = self._axes(len(shape))
        g = gy.reshape(tuple(1 if i in axes else d for i, d in enumerate(shape)))
        if self.p.op in ("max", "min"):
            hit = s["x"] == s["y"]
            return [hit * (g / hit.sum(axis=axes, keepdims=True).astype(gy.dtype))], {}
        if self.p.op in ("mean", "sum"):
            if self.p.op == "mean":
                g = g / gy.dtype.type(math.prod(shape[i] for i in axes))
            return [xp.broadcast_to(g, shape).copy()], {}
        return [g * _REDUCE[self.p.op][1](xp, s["x"], s["y"], axes)], {}

    def flops(self, in_shapes, out_shape):
        return math.prod(in_shapes[0])


@hookimpl
def cnngraph_register_ops(registry):
    for op in (Unary, Maximum, Minimum, Pow, Reduce):
        registry.add(op)
