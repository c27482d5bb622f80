"""Element-wise math (``unary``), element-wise ``maximum``/``minimum``, ``pow`` by a constant and
reductions over named axes (``reduce``): the ONNX Sqrt/Exp/Log/Abs/Neg/Reciprocal/Erf, Max/Min, Pow and
ReduceMean/ReduceSum/ReduceMax of real networks (CBAM's channel statistics, decomposed norms).

Axes count the batch as axis 0, as in ``softmax`` and ``transpose``; the batch itself is never reduced.
``maximum`` and ``minimum`` broadcast like ``broadcast_add`` (per-sample shapes aligned right).
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator

from cnngraph.backend import xp_of
from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.op import Op, OpParams
from cnngraph.plugins.activation import erf
from cnngraph.plugins.tensor import _Binary, unbroadcast

__all__ = ["Unary", "Maximum", "Minimum", "Pow", "Reduce", "UNARY_FUNCTIONS"]

UNARY_FUNCTIONS = ("sqrt", "exp", "log", "abs", "neg", "reciprocal", "erf")


class UnaryParams(OpParams):
    fn: Literal["sqrt", "exp", "log", "abs", "neg", "reciprocal", "erf"] = Field(
        description="sqrt, exp, log, abs, neg (-x), reciprocal (1 / x) or erf")


class Unary(Op):
    """One element-wise function ``fn`` of the input, as torch.<fn> and ONNX's op of that name. sqrt, log and
    reciprocal follow IEEE arithmetic outside their domain (NaN, ±inf), as both do."""

    type = "unary"
    Params = UnaryParams

    @classmethod
    def examples(cls):
        positive = {"shape": (3, 4, 4), "low": 0.5, "high": 2.0}
        return [({"fn": "sqrt"}, [positive]), ({"fn": "exp"}, [(3, 4, 4)]), ({"fn": "log"}, [positive]),
                ({"fn": "abs"}, [(7,)]), ({"fn": "neg"}, [(7,)]), ({"fn": "reciprocal"}, [positive]),
                ({"fn": "erf"}, [(2, 5)])]

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        fn = self.p.fn
        if fn == "neg":
            return -x
        if fn == "erf":
            ctx.save(x=x)
            return erf(x)
        if fn in ("log", "abs"):
            ctx.save(x=x)
            return xp.log(x) if fn == "log" else xp.abs(x)
        y = {"sqrt": xp.sqrt, "exp": xp.exp, "reciprocal": xp.reciprocal}[fn](x)
        ctx.save(y=y)
        return y

    def backward(self, ctx, gy):
        fn, s = self.p.fn, ctx.saved
        xp = xp_of(gy)
        t = gy.dtype.type
        if fn == "neg":
            return [-gy], {}
        if fn == "sqrt":
            return [gy * t(0.5) / s["y"]], {}
        if fn == "exp":
            return [gy * s["y"]], {}
        if fn == "reciprocal":
            return [-gy * s["y"] * s["y"]], {}
        if fn == "log":
            return [gy / s["x"]], {}
        if fn == "abs":
            return [gy * xp.sign(s["x"])], {}
        x = s["x"]   # erf: 2 / √π · exp(-x²)
        return [gy * (t(2 / math.sqrt(math.pi)) * xp.exp(-x * x))], {}

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
    op: Literal["mean", "sum", "max"] = "mean"
    axes: list[int] = Field(description="axes to reduce, batch included as axis 0 (never reduced); negative "
                                        "counts from the end")
    keepdims: bool = Field(False, description="keep each reduced axis with size 1 (torch's keepdim)")

    @field_validator("axes")
    @classmethod
    def _some(cls, v):
        if not v:
            raise ValueError("name at least one axis to reduce")
        return v


class Reduce(Op):
    """Mean, sum or max over ``axes`` of each sample, as x.mean / x.sum / x.amax(dim=axes, keepdim=keepdims);
    CBAM's channel statistics are ``{op: mean, axes: [1], keepdims: true}``. max shares the gradient evenly
    among tied maxima (as torch.amax)."""

    type = "reduce"
    Params = ReduceParams

    @classmethod
    def examples(cls):
        return [({"axes": [1], "keepdims": True}, [(4, 3, 3)]), ({"op": "sum", "axes": [-1, 2]}, [(2, 3, 4)]),
                ({"op": "max", "axes": [1], "keepdims": True}, [(5, 2, 3)]), ({"op": "max", "axes": [1, 2]}, [(3, 4)])]

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
        axes = self._axes(x.ndim)
        if self.p.op == "max":
            y = x.max(axis=axes, keepdims=True)
            ctx.save(x=x, y=y)
        else:
            y = x.sum(axis=axes, keepdims=True) if self.p.op == "sum" else x.mean(axis=axes, keepdims=True)
            ctx.save(shape=x.shape)
        return y if self.p.keepdims else y.reshape(tuple(d for i, d in enumerate(x.shape) if i not in axes))

    def backward(self, ctx, gy):
        s = ctx.saved
        xp = xp_of(gy)
        shape = s["x"].shape if self.p.op == "max" else s["shape"]
        axes = self._axes(len(shape))
        g = gy.reshape(tuple(1 if i in axes else d for i, d in enumerate(shape)))
        if self.p.op == "max":
            hit = s["x"] == s["y"]
            return [hit * (g / hit.sum(axis=axes, keepdims=True).astype(gy.dtype))], {}
        if self.p.op == "mean":
            g = g / gy.dtype.type(math.prod(shape[i] for i in axes))
        return [xp.broadcast_to(g, shape).copy()], {}

    def flops(self, in_shapes, out_shape):
        return math.prod(in_shapes[0])


@hookimpl
def cnngraph_register_ops(registry):
    for op in (Unary, Maximum, Minimum, Pow, Reduce):
        registry.add(op)
