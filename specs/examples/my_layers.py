"""my_layers.py: a custom cnngraph layer, y = x * scale[c] (a learnable scale per channel)."""
import math

import numpy as np

import cnngraph
from cnngraph import Op, OpParams


class ChannelScaleParams(OpParams):
    init: float = 1.0                        # starting value of every scale


class ChannelScale(Op):
    """Multiplies each channel by its own learnable scale."""

    type = "channel_scale"                   # the name spec files use
    Params = ChannelScaleParams

    def infer_shape(self, in_shapes):        # per-sample shapes: no batch dimension
        return in_shapes[0]

    def init_params(self, in_shapes, rng):   # float32 NumPy arrays, keyed by local name
        return {"scale": np.full(in_shapes[0][0], self.p.init, np.float32)}

    def forward(self, ctx, inputs, params):  # batched: x is (N, C, ...)
        x = inputs[0]
        s = params["scale"].reshape((1, -1) + (1,) * (x.ndim - 2))
        ctx.save(x=x, s=s)                   # what backward needs
        return x * s

    def backward(self, ctx, gy):             # (gradient per input, gradient per parameter)
        x, s = ctx.saved["x"], ctx.saved["s"]
        axes = tuple(i for i in range(gy.ndim) if i != 1)
        return [gy * s], {"scale": (gy * x).sum(axis=axes)}

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape)

    @classmethod
    def examples(cls):                       # params and input shapes for `cnngraph check-op`
        return [({"init": 0.5}, [(3, 4, 4)]), ({}, [(5,)])]


@cnngraph.hookimpl
def cnngraph_register_ops(registry):
    registry.add(ChannelScale)
