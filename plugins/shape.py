"""Shape manipulation."""
from __future__ import annotations

import math

from pydantic import Field

from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.kernels._parallel import as_channels_last, channels_last
from cnngraph.op import Op, OpParams

__all__ = ["Flatten"]


class FlattenParams(OpParams):
    start_dim: int = Field(1, description="first dimension to merge, the batch being dimension 0")
    end_dim: int = -1


class Flatten(Op):
    """Merges dimensions start_dim..end_dim (batch = 0) into one, as torch.nn.Flatten."""

    type = "flatten"
    Params = FlattenParams

    @classmethod
    def examples(cls):
        return [({}, [(2, 3, 4)]), ({"start_dim": 2}, [(2, 3, 4)]), ({"end_dim": -2}, [(2, 3, 4)])]

    def _dims(self, ndim):
        s, e = self.p.start_dim % ndim, self.p.end_dim % ndim
        return s, e

    def infer_shape(self, in_shapes):
        shape = (1,) + tuple(in_shapes[0])  # with a stand-in batch dimension
        nd = len(shape)
        if not (-nd <= self.p.start_dim < nd and -nd <= self.p.end_dim < nd):
            raise ShapeError(f"start_dim/end_dim out of range for a {nd}-D tensor (batch included)")
        s, e = self._dims(nd)
        if s == 0:
            raise ShapeError("flatten cannot merge the batch dimension (start_dim must be >= 1)")
        if s > e:
            raise ShapeError(f"start_dim {self.p.start_dim} comes after end_dim {self.p.end_dim}")
        return shape[1:s] + (math.prod(shape[s:e + 1]),) + shape[e + 1:]

    def forward(self, ctx, inputs, params):
        x, = inputs
        s, e = self._dims(x.ndim)
        ctx.save(shape=x.shape, channels_last=channels_last(x))
        # the merged size spelled out: with -1 an empty batch (size 0) has no inferable dimension
        return x.reshape(x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:])

    def backward(self, ctx, gy):
        gx = gy.reshape(ctx.saved["shape"])
        if ctx.saved["channels_last"]:   # hand the gradient back in its input's layout: the element-wise
            gx = as_channels_last(gx)    # backward passes upstream then run over memory in order
        return [gx], {}


@hookimpl
def cnngraph_register_ops(registry):
    registry.add(Flatten)
