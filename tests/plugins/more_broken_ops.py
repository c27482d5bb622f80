"""More ways an op can break the contract at run time; each error must name the plugin and the op."""
import cnngraph
from cnngraph import Op


class GradCount(Op):
    """backward returns two input gradients for one input."""

    type = "grad_count"

    def forward(self, ctx, inputs, params):
        return inputs[0] * 1

    def backward(self, ctx, gy):
        return [gy, gy], {}


class BackwardRaises(Op):
    type = "backward_raises"

    def forward(self, ctx, inputs, params):
        return inputs[0] * 1

    def backward(self, ctx, gy):
        raise ValueError("oops in backward")


class InferShapeCrashes(Op):
    """infer_shape indexes a second input that a one-input op never gets (not a ShapeError)."""

    type = "infer_shape_crashes"

    def infer_shape(self, in_shapes):
        return in_shapes[1]

    def forward(self, ctx, inputs, params):
        return inputs[0]


class FlopsCrashes(Op):
    type = "flops_crashes"

    def forward(self, ctx, inputs, params):
        return inputs[0] * 1

    def backward(self, ctx, gy):
        return [gy], {}

    def flops(self, in_shapes, out_shape):
        raise TypeError("bad flops")


@cnngraph.hookimpl
def cnngraph_register_ops(registry):
    for op in (GradCount, BackwardRaises, InferShapeCrashes, FlopsCrashes):
        registry.add(op)
