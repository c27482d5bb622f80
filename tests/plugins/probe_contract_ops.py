"""Ops breaking the Op contract quietly (from a new-user probe): global random state, in-place writes into
gy or a parameter, an undeclared map-wide statistic."""
import numpy as np

import cnngraph
from cnngraph import Op, OpParams


class P(OpParams):
    pass


class Noisy(Op):
    """Adds np.random noise (not ctx.rng) in training and inference."""
    type = "probe_noisy"
    Params = P
    def forward(self, ctx, inputs, params):
        x = inputs[0]
        return x + np.random.standard_normal(x.shape).astype(x.dtype) * 0.1
    def backward(self, ctx, gy): return [gy], {}


class GlobalRngDropout(Op):
    """Dropout drawing from np.random in training only."""
    type = "probe_global_rng_dropout"
    Params = P
    def forward(self, ctx, inputs, params):
        x = inputs[0]
        if not ctx.training:
            return x.copy()
        m = (np.random.random(x.shape) > 0.5).astype(x.dtype) * 2
        ctx.save(m=m)
        return x * m
    def backward(self, ctx, gy):
        m = ctx.saved.get("m")
        return [gy * m if m is not None else gy], {}


class TinyNoise(Op):
    """Adds up to 1e-6 of np.random noise."""
    type = "probe_tiny_noise"
    Params = P
    def forward(self, ctx, inputs, params): return inputs[0] + np.random.random() * 1e-6
    def backward(self, ctx, gy): return [gy], {}


class GradInPlace(Op):
    """y = 2x; backward doubles gy in place (the gradient itself is right)."""
    type = "probe_grad_inplace"
    Params = P
    def forward(self, ctx, inputs, params): return inputs[0] * 2
    def backward(self, ctx, gy):
        gy *= 2
        return [gy], {}


class ParamInPlace(Op):
    """y = x * w[c]; forward scales the trainable w in place."""
    type = "probe_param_inplace"
    Params = P
    def init_params(self, s, rng): return {"w": np.ones(s[0][0], np.float32)}
    def forward(self, ctx, inputs, params):
        x, w = inputs[0], params["w"]
        w *= 1.01
        ctx.save(x=x, w=w.copy())
        return x * w.reshape((1, -1) + (1,) * (x.ndim - 2))
    def backward(self, ctx, gy):
        x, w = ctx.saved["x"], ctx.saved["w"]
        axes = tuple(i for i in range(gy.ndim) if i != 1)
        return [gy * w.reshape((1, -1) + (1,) * (gy.ndim - 2))], {"w": (gy * x).sum(axis=axes)}


class InPlaceRelu(Op):
    """relu writing into its input."""
    type = "probe_inplace_relu"
    Params = P
    def forward(self, ctx, inputs, params):
        x = inputs[0]
        np.maximum(x, 0, out=x)
        ctx.save(m=x > 0)
        return x
    def backward(self, ctx, gy): return [gy * ctx.saved["m"]], {}


class SpatialCenter(Op):
    """Subtracts the per-channel spatial mean without declaring mixes_space."""
    type = "probe_spatial_center"
    Params = P
    def forward(self, ctx, inputs, params):
        x = inputs[0]
        return x - x.mean(axis=(2, 3), keepdims=True)
    def backward(self, ctx, gy): return [gy - gy.mean(axis=(2, 3), keepdims=True)], {}
    @classmethod
    def examples(cls): return [({}, [(3, 5, 5)])]


class SpatialCenterDeclared(SpatialCenter):
    type = "probe_spatial_center_declared"
    mixes_space = True


@cnngraph.hookimpl
def cnngraph_register_ops(registry):
    for c in (Noisy, GlobalRngDropout, TinyNoise, GradInPlace, ParamInPlace, InPlaceRelu, SpatialCenter,
              SpatialCenterDeclared):
        registry.add(c)
