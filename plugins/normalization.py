"""Batch, group and layer normalisation."""
from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from cnngraph.backend import xp_of
from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.op import Op, OpParams

__all__ = ["BatchNorm2d", "GroupNorm", "LayerNorm"]


class BatchNormParams(OpParams):
    eps: float = Field(1e-5, gt=0)
    momentum: float = Field(0.1, ge=0, le=1)
    affine: bool = True


class BatchNorm2d(Op):
    """Per-channel normalisation over the batch and the positions: (N, H, W) of (C, H, W) samples, (N, L) of
    (C, L) ones, (N, D, H, W) of (C, D, H, W) volumes and N of (C,) ones, as torch.nn.BatchNorm2d, BatchNorm1d and
    BatchNorm3d. Batch statistics in training
    (updating running statistics with the unbiased variance, as PyTorch), running statistics in inference."""

    type = "batch_norm2d"
    Params = BatchNormParams
    batch_dependent = True
    buffers = ("running_mean", "running_var")

    @classmethod
    def examples(cls):
        return [({}, [(3, 4, 4)]), ({"affine": False, "eps": 0.001}, [(5,)]), ({"momentum": 0.3}, [(3, 6)]),
                ({}, [(2, 3, 2, 3)])]

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        if len(shape) not in (1, 2, 3, 4):
            raise ShapeError(f"batch_norm2d expects a (C, H, W), (C, L), (C, D, H, W) or (C,) input per sample, "
                             f"found {shape}")
        return shape

    def param_shapes(self, in_shapes):
        c = (in_shapes[0][0],)
        return {**({"weight": c, "bias": c} if self.p.affine else {}), "running_mean": c, "running_var": c}

    def init_params(self, in_shapes, rng):
        c = in_shapes[0][0]
        params = {"running_mean": np.zeros(c, np.float32), "running_var": np.ones(c, np.float32)}
        if self.p.affine:
            params = {"weight": np.ones(c, np.float32), "bias": np.zeros(c, np.float32), **params}
        return params

    @staticmethod
    def _axes(x):
        return (0, *range(2, x.ndim))

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


def _standardize(x, axes, eps):
    """(x - mean) / sqrt(var + eps) over ``axes`` (kept), and the 1 / std it used."""
    xc = x - x.mean(axis=axes, keepdims=True)
    inv_std = 1 / xp_of(x).sqrt((xc * xc).mean(axis=axes, keepdims=True) + x.dtype.type(eps))
    return xc * inv_std, inv_std


def _standardize_grad(g, xhat, inv_std, axes):
    """The gradient of :func:`_standardize` for the incoming gradient ``g`` of its output."""
    return (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True)) * inv_std


class GroupNormParams(OpParams):
    num_groups: int = Field(..., ge=1, description="channels are split into this many groups (C for instance norm)")
    eps: float = Field(1e-5, gt=0)
    affine: bool = True


class GroupNorm(Op):
    """Normalises each sample over groups of channels (and all positions), then scales and shifts per
    channel, as torch.nn.GroupNorm; num_groups = C is instance norm, 1 layer norm over (C, H, W). The
    same in training and inference, and independent of the batch."""

    type = "group_norm"
    Params = GroupNormParams
    mixes_space = True   # statistics over all positions of a group

    @classmethod
    def examples(cls):
        return [({"num_groups": 2}, [(4, 3, 3)]), ({"num_groups": 3, "affine": False, "eps": 1e-3}, [(3, 2, 5)]),
                ({"num_groups": 1}, [(6,)])]

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        if len(shape) < 1:
            raise ShapeError("group_norm needs a channel axis: found a scalar per sample")
        if shape[0] % self.p.num_groups:
            raise ShapeError(f"group_norm: {shape[0]} channels do not split into num_groups={self.p.num_groups} "
                             f"equal groups")
        return shape

    def init_params(self, in_shapes, rng):
        c = in_shapes[0][0]
        return {"weight": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)} if self.p.affine else {}

    def param_shapes(self, in_shapes):
        c = (in_shapes[0][0],)
        return {"weight": c, "bias": c} if self.p.affine else {}

    def forward(self, ctx, inputs, params):
        x, = inputs
        xhat, inv_std = _standardize(x.reshape(x.shape[0], self.p.num_groups, -1), 2, self.p.eps)
        xhat = xhat.reshape(x.shape)
        ctx.save(xhat=xhat, inv_std=inv_std, weight=params.get("weight"))
        if not self.p.affine:
            return xhat
        return xhat * BatchNorm2d._bc(params["weight"], x) + BatchNorm2d._bc(params["bias"], x)

    def backward(self, ctx, gy):
        s = ctx.saved
        xhat = s["xhat"]
        grads = {}
        g = gy
        if self.p.affine:
            axes = (0,) + tuple(range(2, gy.ndim))
            grads = {"weight": (gy * xhat).sum(axis=axes), "bias": gy.sum(axis=axes)}
            g = gy * BatchNorm2d._bc(s["weight"], gy)
        if not ctx.need_grad(0):
            return [None], grads
        grouped = (gy.shape[0], self.p.num_groups, -1)
        dx = _standardize_grad(g.reshape(grouped), xhat.reshape(grouped), s["inv_std"], 2)
        return [dx.reshape(gy.shape)], grads

    def flops(self, in_shapes, out_shape):
        return 4 * math.prod(out_shape)


class LayerNormParams(OpParams):
    axes: int = Field(1, ge=1, description="how many trailing axes are normalised together (torch's "
                                           "normalized_shape is the input's last `axes` dimensions)")
    eps: float = Field(1e-5, gt=0)
    affine: bool = True


class LayerNorm(Op):
    """Normalises each sample over its last ``axes`` dimensions, then scales and shifts element-wise with
    weight and bias of those dimensions' shape, as torch.nn.LayerNorm(x.shape[-axes:]) and ONNX
    LayerNormalization. axes 1 on (H, W, C) is the channels-last layer norm of ConvNeXt-style blocks; axes 3
    on (C, H, W) normalises whole feature maps. The same in training and inference."""

    type = "layer_norm"
    Params = LayerNormParams

    @property
    def mixes_space(self) -> bool:
        return self.p.axes >= 2   # statistics over (H, W) of a (C, H, W) map

    @classmethod
    def examples(cls):
        return [({}, [(3, 4, 5)]), ({"axes": 3}, [(2, 3, 4)]), ({"axes": 2, "affine": False, "eps": 1e-3}, [(4, 3, 2)]),
                ({}, [(6,)])]

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        if self.p.axes > len(shape):
            raise ShapeError(f"layer_norm over the last {self.p.axes} axes needs at least {self.p.axes} dimensions per "
                             f"sample, found {tuple(shape)}")
        return shape

    def init_params(self, in_shapes, rng):
        normalized = tuple(in_shapes[0][len(in_shapes[0]) - self.p.axes:])
        if not self.p.affine:
            return {}
        return {"weight": np.ones(normalized, np.float32), "bias": np.zeros(normalized, np.float32)}

    def param_shapes(self, in_shapes):
        normalized = tuple(in_shapes[0][len(in_shapes[0]) - self.p.axes:])
        return {"weight": normalized, "bias": normalized} if self.p.affine else {}

    def _red(self, x):
        return tuple(range(x.ndim - self.p.axes, x.ndim))

    def forward(self, ctx, inputs, params):
        x, = inputs
        xhat, inv_std = _standardize(x, self._red(x), self.p.eps)
        ctx.save(xhat=xhat, inv_std=inv_std, weight=params.get("weight"))
        if not self.p.affine:
            return xhat
        return xhat * params["weight"].astype(x.dtype, copy=False) + params["bias"].astype(x.dtype, copy=False)

    def backward(self, ctx, gy):
        s = ctx.saved
        xhat = s["xhat"]
        red = self._red(gy)
        grads = {}
        g = gy
        if self.p.affine:
            lead = tuple(range(gy.ndim - self.p.axes))
            grads = {"weight": (gy * xhat).sum(axis=lead), "bias": gy.sum(axis=lead)}
            g = gy * s["weight"].astype(gy.dtype, copy=False)
        if not ctx.need_grad(0):
            return [None], grads
        return [_standardize_grad(g, xhat, s["inv_std"], red)], grads

    def flops(self, in_shapes, out_shape):
        return 4 * math.prod(out_shape)


@hookimpl
def cnngraph_register_ops(registry):
    registry.add(BatchNorm2d)
    registry.add(GroupNorm)
    registry.add(LayerNorm)
