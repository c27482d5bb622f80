"""Local response normalisation across channels (AlexNet / GoogLeNet), as PyTorch and ONNX LRN."""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from cnngraph.backend import xp_of
from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.op import Op, OpParams

__all__ = ["LocalResponseNorm"]


class LRNParams(OpParams):
    size: int = Field(ge=1, description="number of neighbouring channels summed over")
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0
    window: Literal["torch", "onnx"] = Field(
        "torch", description="where an even-sized window leans: torch sums channels c-size/2 … c+size/2-1, "
                             "ONNX c-size/2+1 … c+size/2 (identical for odd sizes)")


def _window_sum(v, before: int, after: int, xp):
    """s[c] = sum of v[c-before … c+after] along axis 1 (clipped to the valid channels)."""
    c = v.shape[1]
    cs = xp.cumsum(v, axis=1)
    zero = xp.zeros_like(v[:, :1])
    cs = xp.concatenate([zero, cs], axis=1)          # cs[i] = sum v[:i]
    hi = xp.minimum(xp.arange(c) + after + 1, c)
    lo = xp.maximum(xp.arange(c) - before, 0)
    return xp.take(cs, hi, axis=1) - xp.take(cs, lo, axis=1)


class LocalResponseNorm(Op):
    """y = x / (k + alpha/size · Σ x²)^beta, the sum over ``size`` neighbouring channels
    (torch.nn.LocalResponseNorm; ONNX LRN)."""

    type = "local_response_norm"
    Params = LRNParams

    def _span(self):
        n = self.p.size
        before = n // 2 if self.p.window == "torch" else (n - 1) // 2
        return before, n - 1 - before

    def infer_shape(self, in_shapes):
        if len(in_shapes[0]) < 1:
            raise ShapeError("local_response_norm needs a channel dimension")
        return in_shapes[0]

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        t = x.dtype.type
        before, after = self._span()
        s = _window_sum(x * x, before, after, xp)
        base = t(self.p.k) + t(self.p.alpha / self.p.size) * s
        div = base ** t(self.p.beta)
        y = x / div
        ctx.save(x=x, base=base, div=div)
        return y

    def backward(self, ctx, gy):
        x, base, div = ctx.saved["x"], ctx.saved["base"], ctx.saved["div"]
        xp = xp_of(x)
        t = x.dtype.type
        before, after = self._span()
        # d y_i / d x_j = δij / div_i - x_i · beta · base_i^(-beta-1) · (alpha/size) · 2 x_j   for j in window(i)
        inner = gy * x / (div * base)                 # gy_i x_i base_i^(-beta-1)
        back = _window_sum(inner, after, before, xp)   # Σ over the i whose window holds j
        dx = gy / div - t(2 * self.p.alpha / self.p.size * self.p.beta) * x * back
        return [dx], {}

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape) * (self.p.size + 3)

    @classmethod
    def examples(cls):
        return [({"size": 3}, [(5, 4, 4)]), ({"size": 4, "alpha": 0.01, "window": "onnx"}, [(6, 3, 3)])]


@hookimpl
def cnngraph_register_ops(registry):
    registry.add(LocalResponseNorm)
