"""A well-behaved plugin file: one op, scaled_tanh (a * tanh(x))."""
import numpy as np

import cnngraph
from cnngraph import Op, OpParams


class ScaledTanhParams(OpParams):
    a: float = 2.0


class ScaledTanh(Op):
    """a * tanh(x)."""

    type = "scaled_tanh"
    Params = ScaledTanhParams

    @classmethod
    def examples(cls):
        return [({"a": 0.5}, [(2, 3, 3)])]

    def forward(self, ctx, inputs, params):
        t = np.tanh(inputs[0])
        ctx.save(t=t)
        return inputs[0].dtype.type(self.p.a) * t

    def backward(self, ctx, gy):
        t = ctx.saved["t"]
        return [gy * t.dtype.type(self.p.a) * (1 - t * t)], {}


@cnngraph.hookimpl
def cnngraph_register_ops(registry):
    registry.add(ScaledTanh)
