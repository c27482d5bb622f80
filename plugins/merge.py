"""Merging branches: element-wise sum and concatenation."""
from __future__ import annotations

import math

import numpy as np

from cnngraph.backend import xp_of
from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.kernels._parallel import contiguous_alike, flat, run_blocks
from cnngraph.op import Op, OpParams

__all__ = ["Add", "Concat"]


class Add(Op):
    """Element-wise sum of two or more tensors of the same shape (residual connections)."""

    type = "add"
    arity = (2, None)

    @classmethod
    def examples(cls):
        return [({}, [(3, 4, 4), (3, 4, 4)]), ({}, [(5,), (5,), (5,)])]

    def infer_shape(self, in_shapes):
        first = in_shapes[0]
        if any(tuple(s) != tuple(first) for s in in_shapes[1:]):
            raise ShapeError("add needs inputs of one shape", shapes=in_shapes)
        return first

    def forward(self, ctx, inputs, params, relu=False):
        """``relu=True`` (inference fusion, see cnngraph.passes) returns max(sum, 0)."""
        # in inference, write into a first input that no one reads afterwards (saves an allocation)
        out = inputs[0] if ctx.can_overwrite(0) and inputs[0].dtype == inputs[1].dtype else None
        xp = xp_of(*inputs)
        if xp is np and len(inputs) == 2 and contiguous_alike(inputs[0], inputs[1]):
            y = _add_blocks(inputs[0], inputs[1], out, relu)
        else:
            y = xp.add(inputs[0], inputs[1], out=out)
            for x in inputs[2:]:
                y += x
            if relu:
                xp.maximum(y, 0, out=y)
        ctx.save(n=len(inputs))
        return y

    def backward(self, ctx, gy):
        return [gy] * ctx.saved["n"], {}

    def flops(self, in_shapes, out_shape):
        return (len(in_shapes) - 1) * math.prod(out_shape)


def _add_blocks(a, b, out, relu):
    """a + b (then max(., 0)) in L2-sized pieces on the kernel threads: one pass over memory for
    the fused add+relu instead of two, on both cores."""
    y = np.empty_like(a, dtype=np.result_type(a, b)) if out is None else out
    fa, fb, fy = flat(a), flat(b), flat(y)

    def piece(s, e):
        np.add(fa[s:e], fb[s:e], out=fy[s:e])
        if relu:
            np.maximum(fy[s:e], 0, out=fy[s:e])

    run_blocks(piece, fy.size)
    return y


class ConcatParams(OpParams):
    axis: int = 1


class Concat(Op):
    """Concatenation along ``axis`` (batch = 0, default 1 = channels), e.g. inception branches."""

    type = "concat"
    Params = ConcatParams
    arity = (1, None)

    @classmethod
    def examples(cls):
        return [({}, [(2, 4, 4), (3, 4, 4)]), ({"axis": -1}, [(2, 3), (2, 5), (2, 1)])]

    def _axis(self, ndim):
        return self.p.axis % ndim

    def infer_shape(self, in_shapes):
        nd = len(in_shapes[0]) + 1
        if not -nd <= self.p.axis < nd or self.p.axis % nd == 0:
            raise ShapeError(f"axis {self.p.axis} is out of range or the batch axis for {nd}-D tensors")
        a = self._axis(nd) - 1
        for s in in_shapes:
            if len(s) != len(in_shapes[0]) or any(x != y for i, (x, y) in enumerate(zip(s, in_shapes[0])) if i != a):
                raise ShapeError(f"concat along axis {self.p.axis} needs all other dimensions equal", shapes=in_shapes)
        out = list(in_shapes[0])
        out[a] = sum(s[a] for s in in_shapes)
        return tuple(out)

    def forward(self, ctx, inputs, params):
        a = self._axis(inputs[0].ndim)
        ctx.save(sizes=[x.shape[a] for x in inputs], axis=a)
        return xp_of(*inputs).concatenate(inputs, axis=a)

    def backward(self, ctx, gy):
        a, sizes = ctx.saved["axis"], ctx.saved["sizes"]
        out, start = [], 0
        for n in sizes:
            idx = [slice(None)] * gy.ndim
            idx[a] = slice(start, start + n)
            out.append(gy[tuple(idx)])
            start += n
        return out, {}


@hookimpl
def cnngraph_register_ops(registry):
    registry.add(Add)
    registry.add(Concat)
