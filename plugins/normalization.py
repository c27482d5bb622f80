"""Batch normalisation."""
from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from cnngraph.backend import xp_of
from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.op import Op, OpParams

__all__ = ["BatchNorm2d"]


class BatchNormParams(OpParams):
    eps: float = Field(1e-5, gt=0)
    momentum: float = Field(0.1, ge=0, le=1)
    affine: bool = True


class BatchNorm2d(Op):
    """Per-channel normalisation over (N, H, W): batch statistics in training (updating running
    statistics with the unbiased variance, as PyTorch), running statistics in inference."""

    type = "batch_norm2d"
    Params = BatchNormParams
    batch_dependent = True
    buffers = ("running_mean", "running_var")

    @classmethod
    def examples(cls):
        return [({}, [(3, 4, 4)]), ({"affine": False, "eps": 0.001}, [(5,)])]

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        if len(shape) not in (1, 3):
            raise ShapeError(f"batch_norm2d expects a (C, H, W) or (C,) input per sample, found {shape}")
        return shape

    def init_params(self, in_shapes, rng):
        c = in_shapes[0][0]
        params = {"running_mean": np.zeros(c, np.float32), "running_var": np.ones(c, np.float32)}
        if self.p.affine:
            params = {"weight": np.ones(c, np.float32), "bias": np.zeros(c, np.float32), **params}
        return params

    @staticmethod
    def _axes(x):
        return (0,) if x.ndim == 2 else (0, 2, 3)

    @staticmethod
    def _bc(v, x):
        return v.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        t = x.dtype.type
        axes = self._axes(x)
        if ctx.training and x.size == 0:   # an empty batch: nothing to learn, running stats untouched
            ctx.save(xhat=x, inv_std=None, weight=params.get("weight"), batch_stats=False)
            return x.copy()
        if ctx.training:
            if x.size == x.shape[1]:   # one value per channel: no variance to normalise by (as PyTorch)
                raise ValueError(f"batch statistics need more than one value per channel in training, found "
                                 f"input shape {tuple(x.shape)}; use a batch of at least 2")
            mean = x.mean(axis=axes)
            xc = x - self._bc(mean, x)
            var = (xc * xc).mean(axis=axes)
            count = x.size // x.shape[1]
            m = t(self.p.momentum)
            rm, rv = params["running_mean"], params["running_var"]
            rm *= 1 - m
            rm += m * mean.astype(rm.dtype)
            rv *= 1 - m
            rv += m * (var * t(count / max(count - 1, 1))).astype(rv.dtype)
        else:
            mean = params["running_mean"].astype(x.dtype, copy=False)
            var = params["running_var"].astype(x.dtype, copy=False)
            xc = x - self._bc(mean, x)
        inv_std = 1 / xp.sqrt(var + t(self.p.eps))
        xhat = xc * self._bc(inv_std, x)
        if self.p.affine:
            y = xhat * self._bc(params["weight"], x) + self._bc(params["bias"], x)
        else:
            y = xhat
        ctx.save(xhat=xhat, inv_std=inv_std, weight=params.get("weight"), batch_stats=ctx.training)
        return y

    def backward(self, ctx, gy):
        s = ctx.saved
        xhat, inv_std = s["xhat"], s["inv_std"]
        axes = self._axes(gy)
        grads = {}
        if self.p.affine:
            grads["weight"] = (gy * xhat).sum(axis=axes)
            grads["bias"] = gy.sum(axis=axes)
            g = gy * self._bc(s["weight"], gy)
        else:
            g = gy
        if inv_std is None:   # the empty batch
            return [g.copy()], grads
        if not s["batch_stats"]:
            return [g * self._bc(inv_std, gy)], grads
        n = gy.size // gy.shape[1]
        mean_g = g.sum(axis=axes) / n
        mean_gx = (g * xhat).sum(axis=axes) / n
        dx = (g - self._bc(mean_g, gy) - xhat * self._bc(mean_gx, gy)) * self._bc(inv_std, gy)
        return [dx], grads

    def flops(self, in_shapes, out_shape):
        return 2 * math.prod(out_shape)


@hookimpl
def cnngraph_register_ops(registry):
    registry.add(BatchNorm2d)
