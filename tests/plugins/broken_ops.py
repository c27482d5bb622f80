"""Ops that load fine but break the op contract, one way each."""
import numpy as np

import cnngraph
from cnngraph import Op


class BadForwardShape(Op):
    """forward drops all channels but the first; infer_shape says the shape is kept."""

    type = "bad_forward_shape"

    def forward(self, ctx, inputs, params):
        return inputs[0][:, :1]

    def backward(self, ctx, gy):
        return [gy], {}


class BadBackwardShape(Op):
    """forward is the identity; backward returns a gradient with one channel only."""

    type = "bad_backward_shape"

    def forward(self, ctx, inputs, params):
        return inputs[0] * 1

    def backward(self, ctx, gy):
        return [gy[:, :1]], {}


class WrongGradient(Op):
    """x ** 2 whose backward forgets the factor 2."""

    type = "wrong_gradient"

    def forward(self, ctx, inputs, params):
        ctx.save(x=inputs[0])
        return inputs[0] ** 2

    def backward(self, ctx, gy):
        return [gy * ctx.saved["x"]], {}


class BatchLeak(Op):
    """Subtracts the batch mean without declaring batch_dependent."""

    type = "batch_leak"

    def forward(self, ctx, inputs, params):
        x = inputs[0]
        return x - x.mean(axis=0, keepdims=True)

    def backward(self, ctx, gy):
        return [gy - gy.mean(axis=0, keepdims=True)], {}


class LosesDtype(Op):
    """Always computes in float64."""

    type = "loses_dtype"

    def forward(self, ctx, inputs, params):
        return np.asarray(inputs[0], dtype=np.float64) * 2

    def backward(self, ctx, gy):
        return [np.asarray(gy, dtype=np.float64) * 2], {}


@cnngraph.hookimpl
def cnngraph_register_ops(registry):
    for op in (BadForwardShape, BadBackwardShape, WrongGradient, BatchLeak, LosesDtype):
        registry.add(op)
