"""cnngraph-contrib: extra layer ops (swish, mish, hard_swish, squeeze_excitation).

Installed, it registers through the ``cnngraph`` entry-point group, so specs can use these types
right away::

    layers:
      - {id: act, type: swish, beta: 1.5}
      - {id: se, type: squeeze_excitation, reduction: 4}
"""
from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from cnngraph import Op, OpParams, hookimpl
from cnngraph.backend import xp_of
from cnngraph.errors import ShapeError

__all__ = ["Swish", "Mish", "HardSwish", "SqueezeExcitation", "cnngraph_register_ops"]
__version__ = "0.1.0"


def _sigmoid(x):
    xp = xp_of(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


class _Elementwise(Op):
    def flops(self, in_shapes, out_shape):
        return 4 * math.prod(out_shape)

    @classmethod
    def examples(cls):
        return [({}, [(3, 5, 5)]), ({}, [(9,)])]


class SwishParams(OpParams):
    beta: float = Field(1.0, description="slope of the gate; 1.0 gives SiLU")


class Swish(_Elementwise):
    """x · sigmoid(βx) (SiLU for β = 1), as torch.nn.functional.silu for β = 1."""

    type = "swish"
    Params = SwishParams

    @classmethod
    def examples(cls):
        return [({}, [(3, 5, 5)]), ({"beta": 1.7}, [(9,)]), ({"beta": 0.0}, [(4,)])]

    def forward(self, ctx, inputs, params):
        x, = inputs
        s = _sigmoid(x * x.dtype.type(self.p.beta))
        ctx.save(x=x, s=s)
        return x * s

    def backward(self, ctx, gy):
        x, s = ctx.saved["x"], ctx.saved["s"]
        b = x.dtype.type(self.p.beta)
        return [gy * (s + b * x * s * (1 - s))], {}


class Mish(_Elementwise):
    """x · tanh(softplus(x)), as torch.nn.functional.mish."""

    type = "mish"

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        t = xp.tanh(xp.logaddexp(x.dtype.type(0), x))
        ctx.save(x=x, t=t)
        return x * t

    def backward(self, ctx, gy):
        x, t = ctx.saved["x"], ctx.saved["t"]
        # d/dx softplus(x) = sigmoid(x); d/du tanh(u) = 1 - tanh(u)^2
        return [gy * (t + x * (1 - t * t) * _sigmoid(x))], {}


class HardSwish(_Elementwise):
    """x · relu6(x + 3) / 6, as torch.nn.functional.hardswish (MobileNetV3)."""

    type = "hard_swish"

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        t = x.dtype.type
        ctx.save(x=x)
        return x * xp.clip(x + t(3), t(0), t(6)) / t(6)

    def backward(self, ctx, gy):
        x = ctx.saved["x"]
        xp = xp_of(x)
        t = x.dtype.type
        # torch's convention at the kinks: 0 for x <= -3, 1 for x >= 3
        d = xp.where(x <= t(-3), t(0), xp.where(x >= t(3), t(1), (2 * x + t(3)) / t(6)))
        return [gy * d], {}


class SEParams(OpParams):
    reduction: int = Field(4, ge=1, description="hidden width is max(1, channels // reduction)")


class SqueezeExcitation(Op):
    """Squeeze-and-excitation: global average pool → dense(C/r) → relu → dense(C) → sigmoid, then
    each channel of the input is scaled by its gate. Weights ``w1`` (C/r, C), ``b1``, ``w2`` (C, C/r), ``b2``."""

    type = "squeeze_excitation"
    Params = SEParams
    mixes_space = True   # every output pixel depends on the whole map through the pooled gate

    @classmethod
    def examples(cls):
        return [({}, [(8, 4, 4)]), ({"reduction": 2}, [(6, 3, 5)]), ({"reduction": 16}, [(3, 2, 2)])]

    def hidden(self, channels: int) -> int:
        return max(1, channels // self.p.reduction)

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        if len(shape) != 3:
            raise ShapeError(f"squeeze_excitation expects a (C, H, W) input per sample, found {tuple(shape)}")
        return tuple(shape)

    def param_shapes(self, in_shapes):
        c = in_shapes[0][0]
        h = self.hidden(c)
        return {"w1": (h, c), "b1": (h,), "w2": (c, h), "b2": (c,)}

    def init_params(self, in_shapes, rng):
        c = in_shapes[0][0]
        h = self.hidden(c)
        b1, b2 = 1 / math.sqrt(c), 1 / math.sqrt(h)   # torch.nn.Linear's default bounds
        return {"w1": rng.uniform(-b1, b1, (h, c)).astype(np.float32),
                "b1": rng.uniform(-b1, b1, h).astype(np.float32),
                "w2": rng.uniform(-b2, b2, (c, h)).astype(np.float32),
                "b2": rng.uniform(-b2, b2, c).astype(np.float32)}

    def forward(self, ctx, inputs, params):
        x, = inputs
        dt = x.dtype
        w1, b1 = params["w1"].astype(dt, copy=False), params["b1"].astype(dt, copy=False)
        w2, b2 = params["w2"].astype(dt, copy=False), params["b2"].astype(dt, copy=False)
        s = x.mean(axis=(2, 3))                    # (N, C)
        h = s @ w1.T + b1                          # (N, C/r)
        a = xp_of(x).maximum(h, 0)
        g = _sigmoid(a @ w2.T + b2)                # (N, C)
        ctx.save(x=x, s=s, h=h, a=a, g=g, w1=w1, w2=w2)
        return x * g[:, :, None, None]

    def backward(self, ctx, gy):
        v = ctx.saved
        x, s, h, a, g = v["x"], v["s"], v["h"], v["a"], v["g"]
        dg = (gy * x).sum(axis=(2, 3))             # (N, C)
        dz = dg * g * (1 - g)
        dw2 = dz.T @ a
        db2 = dz.sum(axis=0)
        dh = (dz @ v["w2"]) * (h > 0)
        dw1 = dh.T @ s
        db1 = dh.sum(axis=0)
        grads = {"w1": dw1, "b1": db1, "w2": dw2, "b2": db2}
        if not ctx.need_grad(0):
            return [None], grads
        ds = dh @ v["w1"]                          # (N, C)
        hw = x.shape[2] * x.shape[3]
        dx = gy * g[:, :, None, None] + (ds / x.dtype.type(hw))[:, :, None, None]
        return [dx], grads

    def flops(self, in_shapes, out_shape):
        c, hgt, wid = in_shapes[0]
        return 2 * c * hgt * wid + 2 * c * self.hidden(c)


@hookimpl
def cnngraph_register_ops(registry):
    for op in (Swish, Mish, HardSwish, SqueezeExcitation):
        registry.add(op)
    try:   # their ONNX forms, for `cnngraph export-onnx`, when the onnx extra is installed
        from . import onnx_export  # noqa: F401
    except ImportError:
        pass
