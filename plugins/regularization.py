"""Regularisation layers."""
from __future__ import annotations

from pydantic import Field

from cnngraph.hookspecs import hookimpl
from cnngraph.op import Op, OpParams

__all__ = ["Dropout"]


class DropoutParams(OpParams):
    p: float = Field(0.5, ge=0, lt=1)


class Dropout(Op):
    """Zeroes each element with probability p in training and scales the rest by 1/(1-p)
    (inverted dropout); identity in inference."""

    type = "dropout"
    Params = DropoutParams

    @classmethod
    def examples(cls):
        return [({"p": 0.3}, [(3, 4, 4)]), ({"p": 0.0}, [(6,)])]

    def forward(self, ctx, inputs, params):
        x, = inputs
        if not ctx.training or self.p.p == 0:
            ctx.save(mask=None)
            return x
        from cnngraph.backend import to_device, xp_of
        keep = ctx.rng.random(x.shape, dtype="float32" if x.dtype.itemsize == 4 else "float64") >= self.p.p
        mask = to_device(keep, xp_of(x)).astype(x.dtype) * x.dtype.type(1 / (1 - self.p.p))
        ctx.save(mask=mask)
        return x * mask

    def backward(self, ctx, gy):
        mask = ctx.saved["mask"]
        return [gy if mask is None else gy * mask], {}


@hookimpl
def cnngraph_register_ops(registry):
    registry.add(Dropout)
