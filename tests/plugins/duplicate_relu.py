"""A plugin file that registers an op named 'relu', which the built-in activations already own."""
import cnngraph
from cnngraph import Op


class MyReLU(Op):
    type = "relu"

    def forward(self, ctx, inputs, params):
        return inputs[0]


class Extra(Op):
    """Registered before the duplicate: must be rolled back with it."""

    type = "dup_plugin_extra"

    def forward(self, ctx, inputs, params):
        return inputs[0]


@cnngraph.hookimpl
def cnngraph_register_ops(registry):
    registry.add(Extra)
    registry.add(MyReLU)
