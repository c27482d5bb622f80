"""Pooling: max/average over windows, and global pooling."""
from __future__ import annotations

import math
from typing import Optional

from pydantic import Field

from cnngraph.backend import xp_of
from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.kernels.pool import (avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward,
                                   max_pool2d_forward, pool_output_size)
from cnngraph.op import Op, OpParams
from cnngraph.paramtypes import IntPair, Padding

__all__ = ["MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "GlobalMaxPool2d", "pool_out_sizes"]


class PoolParams(OpParams):
    kernel_size: IntPair
    stride: Optional[IntPair] = Field(None, description="null: the kernel size (windows side by side, as PyTorch)")
    padding: Padding = (0, 0)
    ceil_mode: bool = False


class MaxPoolParams(PoolParams):
    dilation: IntPair = (1, 1)


class AvgPoolParams(PoolParams):
    count_include_pad: bool = True


def pool_out_sizes(spatial, kernel, stride, pads, dilation, ceil_mode, axes: str) -> list[int]:
    """Output size per spatial axis (named by the letters of ``axes``); ``pads`` (begin, end) per axis. Raises
    ShapeError for a window larger than the padded input, padding over half the kernel (PyTorch's rule) or a
    window that covers only padding."""
    out = []
    for size, kk, ss, dd, axis, a in zip(spatial, kernel, stride, dilation, axes, range(0, len(pads), 2)):
        p0, p1 = pads[a], pads[a + 1]
        span = dd * (kk - 1) + 1
        if span > size + p0 + p1:
            raise ShapeError(f"pooling window {span} is larger than the padded input {axis}={size + p0 + p1}")
        if max(p0, p1) > kk // 2 and p0 == p1:
            raise ShapeError(f"padding {p0} must be at most half the kernel size {kk}")
        n = pool_output_size(size, kk, ss, p0, p1, dd, ceil_mode)
        empty = next((o for o in range(n) if not any(0 <= o * ss - p0 + dd * i < size for i in range(kk))), None)
        if empty is not None:   # max: -inf; average without the padding: 0 / 0
            raise ShapeError(f"pooling window {empty} along {axis} covers only padding (input {axis}={size}, "
                             f"kernel {kk}, stride {ss}, dilation {dd}, padding {p0}); reduce the padding or "
                             f"the dilation")
        out.append(n)
    return out


class _Pool2d(Op):
    """A pooling window over the spatial ``axes`` of (C, *axes) samples (2-D here; 3-D in plugins/window3d.py)."""

    axes = "HW"

    def window(self):
        """(kernel, stride, pads (begin, end) per axis, dilation)."""
        p = self.p
        n = len(self.axes)
        dilation = getattr(p, "dilation", (1,) * n)
        stride = p.stride or p.kernel_size
        if p.padding == "valid":
            pads = (0,) * (2 * n)
        elif p.padding == "same":
            raise ShapeError("padding 'same' is not supported for pooling; give explicit padding")
        elif len(p.padding) == n:
            pads = tuple(v for pad in p.padding for v in (pad, pad))
        else:
            pads = tuple(p.padding)
        return p.kernel_size, stride, pads, dilation

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        if len(shape) != 1 + len(self.axes):
            raise ShapeError(f"{self.type} expects a (C, {', '.join(self.axes)}) input per sample, found "
                             f"{len(shape)}-D {shape}")
        return (shape[0], *pool_out_sizes(shape[1:], *self.window(), self.p.ceil_mode, self.axes))

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape) * math.prod(self.p.kernel_size)


class MaxPool2d(_Pool2d):
    """Maximum over each window (padding counts as -inf)."""

    type = "max_pool2d"
    Params = MaxPoolParams

    @classmethod
    def examples(cls):
        return [
            ({"kernel_size": 2}, [(2, 6, 6)]),
            ({"kernel_size": 3, "stride": 2, "padding": 1}, [(2, 7, 7)]),
            ({"kernel_size": 2, "stride": 2, "ceil_mode": True, "dilation": [1, 2]}, [(1, 5, 7)]),
        ]

    def forward(self, ctx, inputs, params):
        k, s, pads, d = self.window()
        y, saved = max_pool2d_forward(inputs[0], k, s, pads, d, self.p.ceil_mode, save=ctx.grad)
        ctx.save(pool=saved)
        return y

    def backward(self, ctx, gy):
        return [max_pool2d_backward(gy, ctx.saved["pool"])], {}


class AvgPool2d(_Pool2d):
    """Mean over each window; ``count_include_pad`` as torch.nn.AvgPool2d."""

    type = "avg_pool2d"
    Params = AvgPoolParams

    @classmethod
    def examples(cls):
        return [
            ({"kernel_size": 2}, [(2, 6, 6)]),
            ({"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False}, [(2, 7, 7)]),
            ({"kernel_size": 2, "ceil_mode": True}, [(1, 5, 5)]),
        ]

    def forward(self, ctx, inputs, params):
        k, s, pads, _ = self.window()
        y, saved = avg_pool2d_forward(inputs[0], k, s, pads, self.p.ceil_mode, self.p.count_include_pad,
                                      save=ctx.grad)
        ctx.save(pool=saved)
        return y

    def backward(self, ctx, gy):
        return [avg_pool2d_backward(gy, ctx.saved["pool"])], {}


class _GlobalPool(Op):
    """Over all positions of (C, H, W) samples, of (C, L) ones (ONNX's GlobalAveragePool on (N, C, L),
    torch.nn.AdaptiveAvgPool1d(1)) or of (C, D, H, W) volumes (AdaptiveAvgPool3d(1)): (C, 1, 1), (C, 1) or
    (C, 1, 1, 1)."""

    @classmethod
    def examples(cls):
        return [({}, [(3, 5, 5)]), ({}, [(2, 1, 3)]), ({}, [(3, 7)]), ({}, [(2, 3, 2, 4)])]

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        if len(shape) not in (2, 3, 4):
            raise ShapeError(f"{self.type} expects a (C, H, W), (C, L) or (C, D, H, W) input per sample, found "
                             f"{len(shape)}-D {shape}")
        return (shape[0],) + (1,) * (len(shape) - 1)

    def flops(self, in_shapes, out_shape):
        return math.prod(in_shapes[0])


class GlobalAvgPool2d(_GlobalPool):
    """Mean over H and W (or L, or D, H and W) → (C, 1, 1) (or (C, 1), or (C, 1, 1, 1))."""

    type = "global_avg_pool2d"

    def forward(self, ctx, inputs, params):
        x, = inputs
        ctx.save(positions=x.shape[2:])
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)

    def backward(self, ctx, gy):
        positions = ctx.saved["positions"]
        xp = xp_of(gy)
        return [xp.broadcast_to(gy / gy.dtype.type(math.prod(positions)), gy.shape[:2] + positions).copy()], {}


class GlobalMaxPool2d(_GlobalPool):
    """Maximum over H and W (or L, or D, H and W) → (C, 1, 1) (or (C, 1), or (C, 1, 1, 1)); the gradient goes to
    the first maximum."""

    type = "global_max_pool2d"

    def forward(self, ctx, inputs, params):
        x, = inputs
        n, c = x.shape[:2]
        flat = x.reshape(n, c, math.prod(x.shape[2:]))   # spelled out: -1 fails on an empty batch
        idx = flat.argmax(axis=2)
        ctx.save(idx=idx, shape=x.shape)
        return xp_of(x).take_along_axis(flat, idx[..., None], axis=2).reshape((n, c) + (1,) * (x.ndim - 2))

    def backward(self, ctx, gy):
        shape = ctx.saved["shape"]
        xp = xp_of(gy)
        dx = xp.zeros((shape[0], shape[1], math.prod(shape[2:])), dtype=gy.dtype)
        xp.put_along_axis(dx, ctx.saved["idx"][..., None], gy.reshape(shape[0], shape[1], 1), axis=2)
        return [dx.reshape(shape)], {}


@hookimpl
def cnngraph_register_ops(registry):
    for op in (MaxPool2d, AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d):
        registry.add(op)
