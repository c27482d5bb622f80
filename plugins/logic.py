"""Comparisons, logic, selection and arg-extrema: ``compare``, ``logical``, ``where``, ``argmax``/``argmin`` (the ONNX
Greater/Less/Equal/GreaterOrEqual/LessOrEqual, And/Or/Xor/Not, Where and ArgMax/ArgMin of masks, torch.where and
segmentation heads).

Booleans and indices are held in the model's float dtype, so every layer output stays one dtype: a comparison gives
1.0 for true and 0.0 for false, a logical op reads any nonzero value as true, and ``argmax`` gives the index as a
float (exact below 2**24). These outputs are piecewise constant, so the ops pass no gradient to their inputs
(``grad_inputs = ()``, as torch's bool and int64 results have none); ``where`` passes its gradient to the value it
picked. Inputs broadcast like ``broadcast_add`` (per-sample shapes aligned right).
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from cnngraph.backend import xp_of
from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.op import Op, OpParams
from cnngraph.plugins.tensor import _Binary, _expand, broadcast_shapes, unbroadcast

__all__ = ["Compare", "Logical", "Where", "ArgMax", "ArgMin", "COMPARISONS", "LOGICAL"]

COMPARISONS = {"greater": "greater", "less": "less", "equal": "equal", "greater_or_equal": "greater_equal",
               "less_or_equal": "less_equal"}   # op → the xp function
LOGICAL = {"and": "logical_and", "or": "logical_or", "xor": "logical_xor", "not": "logical_not"}


class CompareParams(OpParams):
    op: Literal["greater", "less", "equal", "greater_or_equal", "less_or_equal"] = Field(
        description="a > b, a < b, a == b, a >= b or a <= b")


class Compare(_Binary):
    """1.0 where ``a <op> b`` holds, else 0.0, with broadcasting (ONNX Greater, Less, Equal, GreaterOrEqual,
    LessOrEqual). No gradient flows through a comparison."""

    type = "compare"
    Params = CompareParams
    grad_inputs = ()

    @classmethod
    def examples(cls):
        return [({"op": op}, [(2, 3, 4), (2, 1, 4)]) for op in COMPARISONS] + [({"op": "equal"}, [(3, 4), (4,)])]

    def forward(self, ctx, inputs, params):
        a, b = self._prep(inputs)
        xp = xp_of(a, b)
        return getattr(xp, COMPARISONS[self.p.op])(a, b).astype(a.dtype)

    def backward(self, ctx, gy):
        return [None, None], {}


class LogicalParams(OpParams):
    op: Literal["and", "or", "xor", "not"] = Field(description="and, or, xor (two inputs) or not (one input)")


class Logical(Op):
    """Logical and / or / xor of two inputs, or not of one; nonzero is true, the result is 1.0 or 0.0 (ONNX And,
    Or, Xor, Not). Two inputs broadcast. No gradient flows through it."""

    type = "logical"
    Params = LogicalParams
    arity = (1, 2)
    grad_inputs = ()

    @classmethod
    def examples(cls):
        return [({"op": "and"}, [(3, 4), (3, 4)]), ({"op": "or"}, [(3, 4), (4,)]), ({"op": "xor"}, [(3, 4), (3, 4)]),
                ({"op": "not"}, [(3, 4)])]

    def infer_shape(self, in_shapes):
        want = 1 if self.p.op == "not" else 2
        if len(in_shapes) != want:
            raise ShapeError(f"logical {self.p.op} takes {want} input{'s' * (want > 1)}, found {len(in_shapes)}")
        return broadcast_shapes(in_shapes, f"logical {self.p.op} inputs")

    def forward(self, ctx, inputs, params):
        xp = xp_of(*inputs)
        rank = max(x.ndim for x in inputs) - 1
        bools = [_expand(x, rank) != 0 for x in inputs]
        return getattr(xp, LOGICAL[self.p.op])(*bools).astype(inputs[0].dtype)

    def backward(self, ctx, gy):
        return [None] * (1 if self.p.op == "not" else 2), {}

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape)


class Where(Op):
    """``a`` where ``cond`` is nonzero, else ``b``, with broadcasting (torch.where, ONNX Where). The gradient goes
    to the value picked at each position (summed over broadcast axes); ``cond`` gets none."""

    type = "where"
    arity = (3, 3)
    grad_inputs = (1, 2)

    @classmethod
    def examples(cls):
        mask = {"shape": (2, 3, 4), "low": -1, "high": 1}
        return [({}, [mask, (2, 3, 4), (2, 1, 4)]), ({}, [(4,), (3, 4), (1,)])]

    def infer_shape(self, in_shapes):
        return broadcast_shapes(in_shapes, "where inputs")

    def forward(self, ctx, inputs, params):
        rank = max(x.ndim for x in inputs) - 1
        cond, a, b = (_expand(x, rank) for x in inputs)
        xp = xp_of(cond, a, b)
        pick = cond != 0
        ctx.save(pick=pick, shapes=[x.shape for x in inputs])
        return xp.where(pick, a, b)

    def backward(self, ctx, gy):
        pick, (_, sa, sb) = ctx.saved["pick"], ctx.saved["shapes"]
        return [None, unbroadcast(gy * pick, sa) if ctx.need_grad(1) else None,
                unbroadcast(gy * ~pick, sb) if ctx.need_grad(2) else None], {}

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape)


class ArgParams(OpParams):
    axis: int = Field(1, description="the axis searched, batch included as axis 0 (never searched); negative "
                                     "counts from the end")
    keepdims: bool = Field(False, description="keep the searched axis with size 1 (ONNX's default keepdims=1)")
    select_last_index: bool = Field(False, description="on ties, the last index rather than the first")


class _ArgExtremum(Op):
    Params = ArgParams
    grad_inputs = ()
    pick = ""   # "max" or "min"

    @classmethod
    def examples(cls):
        return [({}, [(4, 3, 3)]), ({"axis": -1, "keepdims": True}, [(2, 5)]),
                ({"axis": 2, "select_last_index": True}, [(3, 4, 2)])]

    def _axis(self, rank: int) -> int:
        ax = self.p.axis
        if not -rank <= ax < rank or ax % rank == 0:
            raise ShapeError(f"{self.type} axis {ax} is out of range or the batch axis for a tensor of {rank} "
                             f"dimensions (batch included as axis 0)")
        return ax % rank

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        ax = self._axis(len(shape) + 1) - 1
        return tuple(1 if i == ax else d for i, d in enumerate(shape) if self.p.keepdims or i != ax)

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        ax = self._axis(x.ndim)
        find = xp.argmax if self.pick == "max" else xp.argmin
        if self.p.select_last_index:   # search the reversed axis: its first hit is the last one
            idx = x.shape[ax] - 1 - find(xp.flip(x, axis=ax), axis=ax)
        else:
            idx = find(x, axis=ax)
        idx = idx.astype(x.dtype)
        return xp.expand_dims(idx, ax) if self.p.keepdims else idx

    def backward(self, ctx, gy):
        return [None], {}

    def flops(self, in_shapes, out_shape):
        return math.prod(in_shapes[0])


class ArgMax(_ArgExtremum):
    """The index of the largest value along ``axis`` (the first one on ties unless ``select_last_index``), as a
    float (x.argmax(dim=axis, keepdim=keepdims); ONNX ArgMax). A segmentation net's label map. No gradient."""

    type = "argmax"
    pick = "max"


class ArgMin(_ArgExtremum):
    """The index of the smallest value along ``axis``, as ``argmax`` (ONNX ArgMin). No gradient."""

    type = "argmin"
    pick = "min"


@hookimpl
def cnngraph_register_ops(registry):
    for op in (Compare, Logical, Where, ArgMax, ArgMin):
        registry.add(op)
