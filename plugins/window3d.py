"""3-D convolution and pooling on (C, D, H, W) samples (volumes: CT/MRI scans, video clips; C3D/I3D-style nets,
3-D U-Nets): conv3d, conv_transpose3d, max_pool3d and avg_pool3d, with the parameters and weight layouts of
torch.nn.Conv3d, ConvTranspose3d, MaxPool3d and AvgPool3d. Batch norm and global pooling take (C, D, H, W) as they are (BatchNorm3d, AdaptiveAvgPool3d(1)).

All three run on the 2-D kernels (cnngraph/kernels), so they share their threading and fast paths:

- conv3d gathers the kd depth taps of every output depth into channels, a (N*Do, C*kd, H, W) "slab" (an im2col
  along depth only, kd times the input), and runs one conv2d on it with the weights (O, C/g, kd, kh, kw) viewed
  as (O, C/g*kd, kh, kw): slab channel c*kd + i holds input channel c at depth tap i, which is the weights' own
  order and keeps each group's channels contiguous. Its backward is conv2d's, then a scatter-add of the slab
  gradient back along depth. A depthwise conv3d (NumPy) instead sums kd depthwise conv2d's, one per depth tap,
  which run the depthwise 2-D kernel (the slab would make a grouped conv2d of kd channels per group).
- conv_transpose3d (strided, NumPy, no groups) is the input gradient of the conv3d it transposes: the slab conv2d's
  col2im, then the slab gradient scattered back along depth. Otherwise it is conv3d run as conv_transpose2d ran
  conv2d: a stride-1 conv3d of the zero-interleaved
  input (stride - 1 zeros between voxels), padded by dilation * (k - 1) (+ output_padding at the end), with the
  kernels flipped and in/out channels swapped within each group, cropped by the padding. Its backward is that
  conv3d's backward, the input gradient read back at the interleaved positions.
- the pools pool each depth plane in (H, W) (the (N, C*D, H, W) view of the input), then pool that along depth
  (a (kd, 1) window on the (N, C, D, Ho*Wo) view). Max is exact in this order: the (H, W) pass keeps each
  plane's first maximum, the depth pass the first plane's, which is the first in PyTorch's (d, h, w) scan
  order; NaN wins in both passes as in PyTorch. The average's divisor is a product of per-axis counts
  (PyTorch's, with and without count_include_pad), so two averages are the 3-D one.
"""
from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from cnngraph.backend import xp_of
from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.init import init_bias, init_weight
from cnngraph.kernels.conv import FastConv, conv2d_backward, conv2d_forward
from cnngraph.kernels.pool import (avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward,
                                   max_pool2d_forward)
from cnngraph.op import Op
from cnngraph.paramtypes import CropPadding3, IntTriple, NonNegativeTriple, Padding3

from cnngraph.plugins.connection import (Conv2dParams, ConvTranspose2dParams, conv_out_sizes, conv_param_shapes,
                                         resolve_padding)
from cnngraph.plugins.pooling import AvgPoolParams, MaxPoolParams, _Pool2d

__all__ = ["Conv3d", "ConvTranspose3d", "MaxPool3d", "AvgPool3d"]


class Conv3dParams(Conv2dParams):
    out_channels: int = Field(ge=1)
    kernel_size: IntTriple
    stride: IntTriple = (1, 1, 1)
    padding: Padding3 = (0, 0, 0)
    dilation: IntTriple = (1, 1, 1)


class ConvTranspose3dParams(ConvTranspose2dParams):
    kernel_size: IntTriple
    stride: IntTriple = (1, 1, 1)
    padding: CropPadding3 = (0, 0, 0)
    output_padding: NonNegativeTriple = (0, 0, 0)
    dilation: IntTriple = (1, 1, 1)


class MaxPool3dParams(MaxPoolParams):
    kernel_size: IntTriple
    stride: IntTriple | None = Field(None, description="null: the kernel size (windows side by side, as PyTorch)")
    padding: Padding3 = (0, 0, 0)
    dilation: IntTriple = (1, 1, 1)


class AvgPool3dParams(AvgPoolParams):
    kernel_size: IntTriple
    stride: IntTriple | None = Field(None, description="null: the kernel size (windows side by side, as PyTorch)")
    padding: Padding3 = (0, 0, 0)


def _depth_taps(n_out, k, s, d):
    """(tap, slice of the depth-padded input) for each depth tap of the kernel."""
    for i in range(k):
        yield i, slice(i * d, i * d + (n_out - 1) * s + 1, s)


def _depth_padded(x, front, back):
    """x (N, C, D, H, W) with ``front`` and ``back`` zero planes along depth."""
    if not (front or back):
        return x
    xp = xp_of(x)
    N, C, D, H, W = x.shape
    xpad = xp.zeros((N, C, front + D + back, H, W), dtype=x.dtype)
    xpad[:, :, front:front + D] = x
    return xpad


def _depthwise(x, w, groups) -> bool:
    """Whether a conv3d is depthwise (one input channel per group) on NumPy, which has a fast depthwise 2-D kernel."""
    return xp_of(x) is np and groups > 1 and groups == x.shape[1] and w.shape[1] == 1


def depth_slab(x, k, s, d, front, back, n_out):
    """(N*Do, C*k, H, W): for output depth o, channel c*k + i is input channel c at padded depth o*s + i*d."""
    xp = xp_of(x)
    N, C, D, H, W = x.shape
    xpad = _depth_padded(x, front, back)
    slab = xp.empty((N, n_out, C, k, H, W), dtype=x.dtype)
    for i, taps in _depth_taps(n_out, k, s, d):
        slab[:, :, :, i] = xpad[:, :, taps].transpose(0, 2, 1, 3, 4)
    return slab.reshape(N * n_out, C * k, H, W)


def depth_slab_backward(dslab, x_shape, k, s, d, front, back, n_out):
    """The adjoint of :func:`depth_slab`: each tap's gradient added back to the depths it was read from."""
    xp = xp_of(dslab)
    N, C, D, H, W = x_shape
    g = dslab.reshape(N, n_out, C, k, H, W)
    dpad = xp.zeros((N, C, front + D + back, H, W), dtype=dslab.dtype)
    for i, taps in _depth_taps(n_out, k, s, d):
        dpad[:, :, taps] += g[:, :, :, i].transpose(0, 2, 1, 3, 4)
    return xp.ascontiguousarray(dpad[:, :, front:front + D])


def _to_planes(y, n, n_out):
    """(N*Do, O, Ho, Wo) → (N, O, Do, Ho, Wo)."""
    xp = xp_of(y)
    return xp.ascontiguousarray(y.reshape(n, n_out, *y.shape[1:]).transpose(0, 2, 1, 3, 4))


def _from_planes(g):
    """(N, O, Do, Ho, Wo) → (N*Do, O, Ho, Wo), the inverse of :func:`_to_planes`."""
    N, O, Do, Ho, Wo = g.shape
    return xp_of(g).ascontiguousarray(g.transpose(0, 2, 1, 3, 4)).reshape(N * Do, O, Ho, Wo)


class Conv3d(Op):
    """3-D convolution (cross-correlation), (C, D, H, W) samples, weights (C_out, C_in/groups, kD, kH, kW) as
    torch.nn.Conv3d; padding an int, [d, h, w], [front, back, top, bottom, left, right], 'same' or 'valid'."""

    type = "conv3d"
    Params = Conv3dParams

    @classmethod
    def examples(cls):
        return [({"out_channels": 3, "kernel_size": 3, "padding": 1}, [(2, 4, 4, 5)]),
                ({"out_channels": 4, "kernel_size": [2, 3, 2], "stride": [2, 1, 2], "dilation": [2, 1, 1],
                  "groups": 2, "padding": [1, 0, 1, 1, 0, 1], "bias": False}, [(4, 6, 4, 5)]),
                ({"out_channels": 3, "kernel_size": 3, "groups": 3, "padding": "same"}, [(3, 3, 4, 4)])]

    def pads(self, in_shape):
        """(front, back, top, bottom, left, right)."""
        p = self.p
        return resolve_padding(p.padding, in_shape[1:], p.kernel_size, p.stride, p.dilation)

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        p = self.p
        if len(shape) != 4:
            raise ShapeError(f"conv3d expects a (C, D, H, W) input per sample, found {len(shape)}-D {shape}")
        if shape[0] % p.groups or p.out_channels % p.groups:
            raise ShapeError(f"groups={p.groups} must divide both input channels ({shape[0]}) and out_channels "
                             f"({p.out_channels})")
        return (p.out_channels, *conv_out_sizes(shape[1:], p.kernel_size, p.stride, p.dilation, self.pads(shape),
                                                "DHW"))

    def param_shapes(self, in_shapes):
        return conv_param_shapes(self.p, in_shapes[0][0], transposed=False)

    def init_params(self, in_shapes, rng):
        p = self.p
        cin, taps = in_shapes[0][0] // p.groups, math.prod(p.kernel_size)
        fan_in, fan_out = cin * taps, p.out_channels // p.groups * taps
        params = {"weight": init_weight((p.out_channels, cin, *p.kernel_size), fan_in, fan_out, p.init, rng)}
        if p.bias:
            params["bias"] = init_bias(p.out_channels, fan_in, rng)
        return params

    def forward(self, ctx, inputs, params, relu=False):
        """``relu=True`` (inference fusion, see cnngraph.passes) returns max(conv, 0)."""
        x, = inputs
        p = self.p
        w = params["weight"]
        (kd, kh, kw), (sd, *s2), (dd, *d2) = p.kernel_size, p.stride, p.dilation
        front, back, *pads2 = self.pads(x.shape[1:])
        n_out = conv_out_sizes(x.shape[2:3], (kd,), (sd,), (dd,), (front, back), "D")[0]
        if _depthwise(x, w, p.groups):
            return self._depthwise_forward(ctx, x, w, params.get("bias"), n_out, front, back, pads2, relu)
        slab = depth_slab(x, kd, sd, dd, front, back, n_out)
        y, saved = conv2d_forward(slab, w.reshape(w.shape[0], -1, kh, kw), params.get("bias"), s2, pads2, d2,
                                  p.groups, save=ctx.grad, relu=relu)
        ctx.save(conv=saved, x_shape=x.shape, w_shape=w.shape, n_out=n_out, depth=(kd, sd, dd, front, back))
        return _to_planes(y, x.shape[0], n_out)

    def _depthwise_forward(self, ctx, x, w, b, n_out, front, back, pads2, relu):
        """A depthwise conv3d (one input channel per group) as kd depthwise conv2d's, one per depth tap, on that
        tap's (N*Do, C, H, W) planes, summed: each runs cnngraph's depthwise 2-D kernel, where gathering the taps
        into channels (the slab) would make a grouped conv2d of kd channels per group (the slow generic path)."""
        p = self.p
        kd, (sd, *s2), (dd, *d2) = p.kernel_size[0], p.stride, p.dilation
        xpad = _depth_padded(x, front, back)
        y, saved = None, []
        for i, taps in _depth_taps(n_out, kd, sd, dd):
            yi, si = conv2d_forward(_from_planes(xpad[:, :, taps]), w[:, :, i], None, s2, pads2, d2, p.groups,
                                    save=ctx.grad)
            if y is None:
                y = yi
            else:
                y += yi
            saved.append(si)
        if b is not None:
            y += b.reshape(1, -1, 1, 1).astype(y.dtype, copy=False)
        if relu:
            xp_of(y).maximum(y, 0, out=y)
        ctx.save(taps=saved, x_shape=x.shape, w_shape=w.shape, n_out=n_out, depth=(kd, sd, dd, front, back),
                 bias=b is not None)
        return _to_planes(y, x.shape[0], n_out)

    def _depthwise_backward(self, ctx, gy):
        s = ctx.saved
        kd, sd, dd, front, back = s["depth"]
        N, C, D, H, W = s["x_shape"]
        g = _from_planes(gy)
        xp = xp_of(g)
        dw = xp.empty(s["w_shape"], dtype=g.dtype)
        dpad = xp.zeros((N, C, front + D + back, H, W), dtype=g.dtype) if ctx.need_grad(0) else None
        for (i, taps), si in zip(_depth_taps(s["n_out"], kd, sd, dd), s["taps"]):
            dxi, dwi, _ = conv2d_backward(g, si, need_dx=dpad is not None)
            dw[:, :, i] = dwi
            if dpad is not None:
                dpad[:, :, taps] += dxi.reshape(N, s["n_out"], C, H, W).transpose(0, 2, 1, 3, 4)
        grads = {"weight": dw}
        if s["bias"]:
            grads["bias"] = gy.sum(axis=(0, 2, 3, 4))
        return [None if dpad is None else xp.ascontiguousarray(dpad[:, :, front:front + D])], grads

    def backward(self, ctx, gy):
        s = ctx.saved
        if "taps" in s:
            return self._depthwise_backward(ctx, gy)
        dslab, dw, db = conv2d_backward(_from_planes(gy), s["conv"], need_dx=ctx.need_grad(0))
        grads = {"weight": dw.reshape(s["w_shape"])}
        if db is not None:
            grads["bias"] = db
        dx = None if dslab is None else depth_slab_backward(dslab, s["x_shape"], *s["depth"], s["n_out"])
        return [dx], grads

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape) * (in_shapes[0][0] // self.p.groups) * math.prod(self.p.kernel_size)


class ConvTranspose3d(Op):
    """Transposed 3-D convolution (the gradient of conv3d with respect to its input), (C, D, H, W) samples, weights
    (C_in, C_out/groups, kD, kH, kW) as torch.nn.ConvTranspose3d: output per axis (size - 1) * stride - begin - end
    + dilation * (k - 1) + output_padding + 1; padding an int, [d, h, w] or [front, back, top, bottom, left, right]
    (cropped from the full output). The up-sampling path of 3-D U-Nets; ONNX ConvTranspose on 5-D tensors.
    Strided, on NumPy without groups, computed as the input gradient of the conv3d it transposes (the direct
    multiply-adds); otherwise as a stride-1 conv3d of the zero-interleaved input with the flipped kernels (module
    docstring), which costs stride_d * stride_h * stride_w times as many."""

    type = "conv_transpose3d"
    Params = ConvTranspose3dParams
    transposed = True

    def __init__(self, params=None, layer_id: str = ""):
        super().__init__(params, layer_id)
        p = self.p
        if not isinstance(p.padding, str):   # the stride-1 conv3d that computes the full (uncropped) output
            pads = []
            for k, d, op in zip(p.kernel_size, p.dilation, p.output_padding):
                pads += [d * (k - 1), d * (k - 1) + op]
            self.conv = Conv3d(Conv3dParams(out_channels=p.out_channels, kernel_size=p.kernel_size, padding=pads,
                                            dilation=p.dilation, groups=p.groups, bias=p.bias), layer_id)

    @classmethod
    def examples(cls):
        return [({"out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1},
                 [(4, 3, 4, 3)]),
                ({"out_channels": 2, "kernel_size": [2, 3, 2], "stride": [2, 1, 3], "padding": [0, 1, 1, 0, 1, 1],
                  "dilation": [1, 2, 1], "bias": False}, [(3, 3, 3, 4)]),
                ({"out_channels": 6, "kernel_size": 2, "stride": 2, "groups": 2}, [(4, 2, 3, 2)])]

    def pads(self, in_shape=None):
        """(front, back, top, bottom, left, right) cropped from the full transposed output."""
        p = self.p.padding   # numbers only (CropPadding3)
        return tuple(v for pad in p for v in (pad, pad)) if len(p) == 3 else tuple(p)

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        if len(shape) != 4:
            raise ShapeError(f"conv_transpose3d expects a (C, D, H, W) input per sample, found {len(shape)}-D "
                             f"{tuple(shape)}")
        p, pads = self.p, self.pads()
        if shape[0] % p.groups or p.out_channels % p.groups:
            raise ShapeError(f"groups={p.groups} must divide both input channels ({shape[0]}) and out_channels "
                             f"({p.out_channels})")
        out = []
        for i, (size, k, s, d, op) in enumerate(zip(shape[1:], p.kernel_size, p.stride, p.dilation,
                                                    p.output_padding)):
            if op >= max(s, d):
                raise ShapeError(f"output_padding {op} must be smaller than the stride or the dilation")
            before, after = pads[2 * i], pads[2 * i + 1]
            n = (size - 1) * s - before - after + d * (k - 1) + op + 1
            if n < 1:
                raise ShapeError(f"padding {before} + {after} ({'DHW'[i]}) leaves no output from an input of size "
                                 f"{size}")
            out.append(n)
        return (p.out_channels, *out)

    def param_shapes(self, in_shapes):
        return conv_param_shapes(self.p, in_shapes[0][0], transposed=True)

    def init_params(self, in_shapes, rng):
        p = self.p
        taps = math.prod(p.kernel_size)
        cin, cout = in_shapes[0][0], p.out_channels // p.groups
        # torch.nn.ConvTranspose3d computes its fan-in from weight dim 1 (out_channels / groups) x kernel
        fan_in, fan_out = cout * taps, cin * taps
        params = {"weight": init_weight((cin, cout, *p.kernel_size), fan_in, fan_out, p.init, rng)}
        if p.bias:
            params["bias"] = init_bias(p.out_channels, fan_in, rng)
        return params

    def _swap(self, w):
        """(C_a, C_b/groups, k...) → (C_b, C_a/groups, k...), flipped along every kernel axis: between this op's
        weights and the conv3d's that computes it (its own inverse)."""
        xp, g = xp_of(w), self.p.groups
        a, b, *k = w.shape
        w = w.reshape(g, a // g, b, *k).transpose(0, 2, 1, 3, 4, 5).reshape(b * g, a // g, *k)
        return xp.ascontiguousarray(w[:, :, ::-1, ::-1, ::-1])

    def _crop(self, full_shape):
        f, b, t, bo, l, r = self.pads()
        D, H, W = full_shape[2:]
        return (slice(None), slice(None), slice(f, D - b), slice(t, H - bo), slice(l, W - r))

    def _adjoint(self, x):
        """On NumPy, strided, without groups: the conv2d on the depth slab of the conv3d whose input gradient this op
        is (input: this op's output; the same weights, stride, dilation and padding), so that forward is that
        gradient (col2im, then the slab scattered back along depth: the direct multiply-adds) and backward that
        conv3d's forward and weight gradient; with (output depth, front, back). None where output_padding reaches
        a stride."""
        p = self.p
        if (xp_of(x) is not np or p.groups != 1 or p.stride == (1, 1, 1)
                or any(o >= s for o, s in zip(p.output_padding, p.stride))):
            return None
        N, C, D, H, W = x.shape
        _, do, ho, wo = self.infer_shape([x.shape[1:]])
        kd, kh, kw = p.kernel_size
        front, back, *pads2 = self.pads()
        conv = FastConv((N * D, p.out_channels * kd, ho, wo), (C, p.out_channels * kd, kh, kw), p.stride[1:],
                        pads2, p.dilation[1:], (H, W), x.dtype)
        return conv, (do, front, back)

    def forward(self, ctx, inputs, params):
        x, = inputs
        adjoint = self._adjoint(x)
        if adjoint is not None:
            return self._adjoint_forward(ctx, x, params, *adjoint)
        xp = xp_of(x)
        sd, sh, sw = self.p.stride
        N, C, D, H, W = x.shape
        if (sd, sh, sw) == (1, 1, 1):
            xd = x
        else:
            xd = xp.zeros((N, C, (D - 1) * sd + 1, (H - 1) * sh + 1, (W - 1) * sw + 1), dtype=x.dtype)
            xd[:, :, ::sd, ::sh, ::sw] = x
        conv_params = {"weight": self._swap(params["weight"])}
        if "bias" in params:
            conv_params["bias"] = params["bias"]
        y = self.conv.forward(ctx, [xd], conv_params)
        ctx.save(full=y.shape)
        return xp.ascontiguousarray(y[self._crop(y.shape)])

    def _adjoint_forward(self, ctx, x, params, conv, depth):
        p = self.p
        N, C, D, H, W = x.shape
        (kd, kh, kw), do = p.kernel_size, depth[0]
        w2 = params["weight"].astype(x.dtype, copy=False).reshape(C, p.out_channels * kd, kh, kw)
        dslab = conv.backward_data(_from_planes(x), w2)          # (N*D, C_out*kd, Ho, Wo)
        y = depth_slab_backward(dslab, (N, p.out_channels, do, *dslab.shape[2:]), kd, p.stride[0], p.dilation[0],
                                depth[1], depth[2], D)
        if "bias" in params:
            y += params["bias"].astype(x.dtype, copy=False).reshape(1, -1, 1, 1, 1)
        ctx.save(adjoint=(conv, depth), x=x, w2=w2)
        return y

    def _adjoint_backward(self, ctx, gy):
        """dx: the conv3d of gy (slab, then conv2d's forward); dw: that conv3d's weight gradient with x as its
        output gradient (<gy, A^T x> = <A gy, x>)."""
        p, s = self.p, ctx.saved
        (conv, (_, front, back)), x, w2 = s["adjoint"], s["x"], s["w2"]
        N, C, D, H, W = x.shape
        gy = np.asarray(gy, dtype=x.dtype)
        slab = depth_slab(gy, p.kernel_size[0], p.stride[0], p.dilation[0], front, back, D)
        dx = _to_planes(conv.forward(slab, w2, None), N, D) if ctx.need_grad(0) else None
        _, dw2, _ = conv.backward(_from_planes(x), slab, w2, need_dx=False)
        grads = {"weight": dw2.reshape(C, p.out_channels, *p.kernel_size)}
        if p.bias:
            grads["bias"] = gy.sum(axis=(0, 2, 3, 4))
        return [dx], grads

    def backward(self, ctx, gy):
        if "adjoint" in ctx.saved:
            return self._adjoint_backward(ctx, gy)
        xp = xp_of(gy)
        full = xp.zeros(ctx.saved["full"], dtype=gy.dtype)
        full[self._crop(full.shape)] = gy
        (dxd,), grads = self.conv.backward(ctx, full)
        grads["weight"] = self._swap(grads["weight"])
        sd, sh, sw = self.p.stride
        dx = None if dxd is None else xp.ascontiguousarray(dxd[:, :, ::sd, ::sh, ::sw])
        return [dx], grads

    def flops(self, in_shapes, out_shape):
        return math.prod(in_shapes[0]) * (self.p.out_channels // self.p.groups) * math.prod(self.p.kernel_size)


class _Pool3d(_Pool2d):
    """A 3-D pool as a 2-D pool of every depth plane, then a (kd, 1) pool of that along depth (module docstring)."""

    axes = "DHW"
    kernels = None   # (forward, backward) of the 2-D kernel

    def _pool2d(self, x, k, s, pads, d, save):
        forward = self.kernels[0]
        if forward is max_pool2d_forward:
            return forward(x, k, s, pads, d, self.p.ceil_mode, save=save)
        return forward(x, k, s, pads, self.p.ceil_mode, self.p.count_include_pad, save=save)

    def forward(self, ctx, inputs, params):
        x, = inputs
        N, C, D, H, W = x.shape
        (kd, *k2), (sd, *s2), (front, back, *pads2), (dd, *d2) = self.window()
        planes, saved_hw = self._pool2d(x.reshape(N, C * D, H, W), k2, s2, pads2, d2, ctx.grad)
        Ho, Wo = planes.shape[2:]
        y, saved_d = self._pool2d(planes.reshape(N, C, D, Ho * Wo), (kd, 1), (sd, 1), (front, back, 0, 0), (dd, 1),
                                  ctx.grad)
        ctx.save(hw=saved_hw, d=saved_d, x_shape=x.shape, planes_shape=planes.shape)
        return y.reshape(N, C, y.shape[2], Ho, Wo)

    def backward(self, ctx, gy):
        s = ctx.saved
        N, C, Do, Ho, Wo = gy.shape
        backward = self.kernels[1]
        g_planes = backward(gy.reshape(N, C, Do, Ho * Wo), s["d"]).reshape(s["planes_shape"])
        return [backward(g_planes, s["hw"]).reshape(s["x_shape"])], {}


class MaxPool3d(_Pool3d):
    """Maximum over each window of (C, D, H, W) samples (padding counts as -inf), as torch.nn.MaxPool3d: the
    gradient goes to the first maximum in (d, h, w) order, NaN propagates."""

    type = "max_pool3d"
    Params = MaxPool3dParams
    kernels = (max_pool2d_forward, max_pool2d_backward)

    @classmethod
    def examples(cls):
        return [({"kernel_size": 2}, [(2, 4, 4, 4)]),
                ({"kernel_size": [3, 2, 3], "stride": [2, 1, 2], "padding": [1, 0, 1], "dilation": [1, 2, 1],
                  "ceil_mode": True}, [(2, 5, 5, 6)]),
                ({"kernel_size": 2, "stride": 1, "padding": [1, 0, 0, 1, 1, 0]}, [(1, 3, 3, 4)])]


class AvgPool3d(_Pool3d):
    """Mean over each window of (C, D, H, W) samples; ``count_include_pad`` as torch.nn.AvgPool3d."""

    type = "avg_pool3d"
    Params = AvgPool3dParams
    kernels = (avg_pool2d_forward, avg_pool2d_backward)

    @classmethod
    def examples(cls):
        return [({"kernel_size": 2}, [(2, 4, 4, 4)]),
                ({"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False, "ceil_mode": True},
                 [(2, 5, 6, 6)]),
                ({"kernel_size": [2, 3, 2], "stride": 1, "padding": [1, 0, 1, 1, 0, 1]}, [(1, 3, 4, 3)])]


@hookimpl
def cnngraph_register_ops(registry):
    for op in (Conv3d, ConvTranspose3d, MaxPool3d, AvgPool3d):
        registry.add(op)
