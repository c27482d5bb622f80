"""Learnable connections: conv2d, conv_transpose2d and dense (fully connected)."""
from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.init import InitScheme, init_bias, init_weight
from cnngraph.kernels.conv import FastConv, conv2d_backward, conv2d_forward
from cnngraph.op import Op, OpParams
from cnngraph.backend import xp_of
from cnngraph.paramtypes import CropPadding, IntPair, NonNegativePair, Padding

__all__ = ["Conv2d", "ConvTranspose2d", "Dense", "resolve_padding", "conv_out_size", "conv_out_sizes"]


def conv_out_size(size: int, k: int, s: int, pad: int, d: int) -> int:
    return (size + pad - d * (k - 1) - 1) // s + 1


def conv_out_sizes(spatial, kernel, stride, dilation, pads, axes: str) -> list[int]:
    """Output size per spatial axis (named by the letters of ``axes`` in messages); ``pads`` (begin, end) per axis.
    Raises ShapeError when a kernel does not fit its padded input."""
    out = []
    for size, k, s, d, axis, i in zip(spatial, kernel, stride, dilation, axes, range(0, len(pads), 2)):
        pad, span = pads[i] + pads[i + 1], d * (k - 1) + 1
        if span > size + pad:
            raise ShapeError(f"kernel extent {span} (kernel_size {k}, dilation {d}) is larger than the padded "
                             f"input {axis}={size + pad}")
        out.append(conv_out_size(size, k, s, pad, d))
    return out


def resolve_padding(padding, in_hw, kernel, stride, dilation) -> tuple[int, int, int, int]:
    """Padding as (top, bottom, left, right) (in 3-D (front, back, top, bottom, left, right)). 'same' keeps ceil(size/stride) outputs, the odd pixel
    going bottom/right (as PyTorch for stride 1 and ONNX SAME_UPPER)."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        pads = []
        for size, k, s, d in zip(in_hw, kernel, stride, dilation):
            total = max((math.ceil(size / s) - 1) * s + d * (k - 1) + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    if len(padding) == len(in_hw):   # one number per axis: the same at both ends
        return tuple(v for pad in padding for v in (pad, pad))
    return tuple(padding)


class Conv2dParams(OpParams):
    out_channels: int = Field(ge=1)
    kernel_size: IntPair
    stride: IntPair = (1, 1)
    padding: Padding = (0, 0)
    dilation: IntPair = (1, 1)
    groups: int = Field(1, ge=1)
    bias: bool = True
    init: InitScheme = "pytorch"


def conv_param_shapes(p, in_channels: int, transposed: bool) -> dict[str, tuple]:
    """Weight (and bias) shapes of a convolution of any rank: (C_out, C_in/groups, *k), transposed
    (C_in, C_out/groups, *k), as PyTorch lays them out."""
    lead = (in_channels, p.out_channels // p.groups) if transposed else (p.out_channels, in_channels // p.groups)
    return {"weight": (*lead, *p.kernel_size), **({"bias": (p.out_channels,)} if p.bias else {})}


class Conv2d(Op):
    """2-D convolution (cross-correlation), NCHW, weights (C_out, C_in/groups, kH, kW)."""

    type = "conv2d"
    Params = Conv2dParams

    @classmethod
    def examples(cls):
        return [
            ({"out_channels": 4, "kernel_size": 3, "padding": 1}, [(3, 6, 6)]),
            ({"out_channels": 4, "kernel_size": [3, 2], "stride": 2, "dilation": [1, 2], "groups": 2,
              "bias": False}, [(4, 7, 8)]),
            ({"out_channels": 2, "kernel_size": 4, "padding": "same"}, [(2, 5, 5)]),
        ]

    def pads(self, in_shape):
        p = self.p
        return resolve_padding(p.padding, in_shape[1:], p.kernel_size, p.stride, p.dilation)

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        p = self.p
        if len(shape) != 3:
            raise ShapeError(f"conv2d expects a (C, H, W) input per sample, found {len(shape)}-D {shape}")
        c = shape[0]
        if c % p.groups or p.out_channels % p.groups:
            raise ShapeError(f"groups={p.groups} must divide both input channels ({c}) and out_channels "
                             f"({p.out_channels})")
        return (p.out_channels, *conv_out_sizes(shape[1:], p.kernel_size, p.stride, p.dilation, self.pads(shape), "HW"))

    def param_shapes(self, in_shapes):
        return conv_param_shapes(self.p, in_shapes[0][0], transposed=False)

    def init_params(self, in_shapes, rng):
        p = self.p
        cin = in_shapes[0][0] // p.groups
        kh, kw = p.kernel_size
        fan_in, fan_out = cin * kh * kw, p.out_channels // p.groups * kh * kw
        params = {"weight": init_weight((p.out_channels, cin, kh, kw), fan_in, fan_out, p.init, rng)}
        if p.bias:
            params["bias"] = init_bias(p.out_channels, fan_in, rng)
        return params

    def forward(self, ctx, inputs, params, relu=False, residual=None, pool=None):
        """Inference fusions (see cnngraph.passes): ``residual`` is added to the convolution's output,
        ``relu=True`` returns max(., 0) of that, and ``pool`` (ph, pw) max-pools it in windows that tile it."""
        x, = inputs
        p = self.p
        y, saved = conv2d_forward(x, params["weight"], params.get("bias"), p.stride, self.pads(x.shape[1:]),
                                  p.dilation, p.groups, save=ctx.grad, relu=relu, residual=residual, pool=pool)
        ctx.save(conv=saved, relu_output=y if relu else None)
        return y

    def backward(self, ctx, gy):
        """With relu=True in forward (a training fusion, cnngraph.passes.fuse_conv_relu), gy is the gradient of the
        relu's output: the relu's own gradient is taken inside the convolution's backward."""
        dx, dw, db = conv2d_backward(gy, ctx.saved["conv"], need_dx=ctx.need_grad(0),
                                     relu_output=ctx.saved["relu_output"])
        grads = {"weight": dw}
        if db is not None:
            grads["bias"] = db
        return [dx], grads

    def flops(self, in_shapes, out_shape):
        kh, kw = self.p.kernel_size
        return math.prod(out_shape) * (in_shapes[0][0] // self.p.groups) * kh * kw


class ConvTranspose2dParams(OpParams):
    out_channels: int = Field(ge=1)
    kernel_size: IntPair
    stride: IntPair = (1, 1)
    padding: CropPadding = (0, 0)
    output_padding: NonNegativePair = (0, 0)
    dilation: IntPair = (1, 1)
    groups: int = Field(1, ge=1)
    bias: bool = True
    init: InitScheme = "pytorch"


class ConvTranspose2d(Op):
    """Transposed 2-D convolution (the gradient of conv2d with respect to its input), NCHW, weights
    (C_in, C_out/groups, kH, kW) as torch.nn.ConvTranspose2d: output (H - 1) * stride - pad_top -
    pad_bottom + dilation * (kH - 1) + output_padding + 1. Decoders and upsampling; ONNX ConvTranspose.
    Strided, on NumPy without groups, computed as the input gradient of the conv2d it transposes (col2im of W^T x:
    the direct multiply-adds); otherwise as a stride-1 conv2d of the zero-interleaved input with the flipped kernels
    (stride² times the multiply-adds), cropped by the padding."""

    type = "conv_transpose2d"
    Params = ConvTranspose2dParams
    transposed = True

    @classmethod
    def examples(cls):
        return [({"out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}, [(4, 4, 4)]),
                ({"out_channels": 2, "kernel_size": [2, 3], "stride": [2, 1], "padding": [0, 1, 1, 0],
                  "dilation": [1, 2], "bias": False}, [(3, 3, 4)]),
                ({"out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1, "groups": 2}, [(4, 3, 3)])]

    def pads(self, in_shape=None):
        """(top, bottom, left, right) cropped from the full transposed output."""
        return self._pads()

    def _pads(self):
        p = self.p.padding   # numbers only (CropPadding)
        return (p[0], p[0], p[1], p[1]) if len(p) == 2 else tuple(p)

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        if len(shape) != 3:
            raise ShapeError(f"conv_transpose2d expects a (C, H, W) input per sample, found {len(shape)}-D {shape}")
        p, (t, b, l, r) = self.p, self._pads()
        if shape[0] % p.groups or p.out_channels % p.groups:
            raise ShapeError(f"groups={p.groups} must divide both input channels ({shape[0]}) and out_channels "
                             f"({p.out_channels})")
        out = []
        for size, k, s, d, op, (before, after), axis in zip(shape[1:], p.kernel_size, p.stride, p.dilation,
                                                            p.output_padding, ((t, b), (l, r)), "HW"):
            if op >= max(s, d):
                raise ShapeError(f"output_padding {op} must be smaller than the stride or the dilation")
            n = (size - 1) * s - before - after + d * (k - 1) + op + 1
            if n < 1:
                raise ShapeError(f"padding {before} + {after} ({axis}) leaves no output from an input of size {size}")
            out.append(n)
        return (p.out_channels, *out)

    def param_shapes(self, in_shapes):
        return conv_param_shapes(self.p, in_shapes[0][0], transposed=True)

    def init_params(self, in_shapes, rng):
        p = self.p
        kh, kw = p.kernel_size
        cin, cout = in_shapes[0][0], p.out_channels // p.groups
        # torch.nn.ConvTranspose2d computes its fan-in from weight dim 1 (out_channels / groups) x kernel
        fan_in, fan_out = cout * kh * kw, cin * kh * kw
        params = {"weight": init_weight((cin, cout, kh, kw), fan_in, fan_out, p.init, rng)}
        if p.bias:
            params["bias"] = init_bias(p.out_channels, fan_in, rng)
        return params

    def _geometry(self, x_shape):
        """(dilated input shape, conv pads of the full output, crop (top, bottom, left, right))."""
        p, (t, b, l, r) = self.p, self._pads()
        (sh, sw), (dh, dw), (oh, ow) = p.stride, p.dilation, p.output_padding
        kh, kw = p.kernel_size
        N, C, H, W = x_shape
        eh, ew = dh * (kh - 1), dw * (kw - 1)
        return (N, C, (H - 1) * sh + 1, (W - 1) * sw + 1), (eh, eh + oh, ew, ew + ow), (t, b, l, r)

    def _swap(self, w):
        """(C_a, C_b/groups, kH, kW) → (C_b, C_a/groups, kH, kW): in and out channels swapped within each
        group, between this op's weight layout and the grouped conv2d that computes it (its own inverse)."""
        g = self.p.groups
        a, b, kh, kw = w.shape
        return w.reshape(g, a // g, b, kh, kw).transpose(0, 2, 1, 3, 4).reshape(b * g, a // g, kh, kw)

    def _adjoint(self, x) -> FastConv | None:
        """On NumPy, strided, without groups: the convolution whose input gradient this op is (input this op's output,
        output this op's input, the same weights, stride, dilation and padding), so that forward is its col2im
        (the direct multiply-adds, not stride² times them) and backward its forward and weight gradient. None where
        output_padding reaches a stride (that convolution's output would be longer)."""
        p = self.p
        if (xp_of(x) is not np or p.groups != 1 or p.stride == (1, 1)   # stride 1: no zeros to skip, and conv2d's
                or any(o >= s for o, s in zip(p.output_padding, p.stride))):   # flat layout is faster (1.4x measured)
            return None
        N, C, H, W = x.shape
        _, ho, wo = self.infer_shape([x.shape[1:]])
        return FastConv((N, p.out_channels, ho, wo), (C, p.out_channels, *p.kernel_size), p.stride, self._pads(),
                        p.dilation, (H, W), x.dtype)

    def forward(self, ctx, inputs, params):
        x, = inputs
        adjoint = self._adjoint(x)
        if adjoint is not None:
            w = params["weight"].astype(x.dtype, copy=False)
            y = adjoint.backward_data(x, w)
            if "bias" in params:
                y += params["bias"].astype(x.dtype, copy=False).reshape(1, -1, 1, 1)
            ctx.save(adjoint=adjoint, x=x, w=w)
            return y
        xp = xp_of(x)
        p = self.p
        shape, pads, (t, b, l, r) = self._geometry(x.shape)
        xd = xp.zeros(shape, dtype=x.dtype)
        xd[:, :, ::p.stride[0], ::p.stride[1]] = x
        wc = self._swap(params["weight"])[:, :, ::-1, ::-1]
        y, saved = conv2d_forward(xd, xp.ascontiguousarray(wc), params.get("bias"), (1, 1), pads, p.dilation,
                                  p.groups, save=ctx.grad)
        ctx.save(conv=saved, full=y.shape, dilated=shape)
        H, W = y.shape[2:]
        return xp.ascontiguousarray(y[:, :, t:H - b, l:W - r])

    def backward(self, ctx, gy):
        if "adjoint" in ctx.saved:
            adjoint, x, w = ctx.saved["adjoint"], ctx.saved["x"], ctx.saved["w"]
            gy = np.asarray(gy, dtype=x.dtype)
            dx = adjoint.forward(gy, w, None) if ctx.need_grad(0) else None
            _, dw, _ = adjoint.backward(x, gy, w, need_dx=False)   # <gy, A^T x> = <A gy, x>: A's dw, roles swapped
            grads = {"weight": dw}
            if self.p.bias:
                grads["bias"] = gy.sum(axis=(0, 2, 3))
            return [dx], grads
        xp = xp_of(gy)
        p, (t, b, l, r) = self.p, self._pads()
        full = xp.zeros(ctx.saved["full"], dtype=gy.dtype)
        H, W = full.shape[2:]
        full[:, :, t:H - b, l:W - r] = gy
        dxd, dwc, db = conv2d_backward(full, ctx.saved["conv"], need_dx=ctx.need_grad(0))
        grads = {"weight": xp.ascontiguousarray(self._swap(dwc[:, :, ::-1, ::-1]))}
        if db is not None:
            grads["bias"] = db
        dx = None if dxd is None else xp.ascontiguousarray(dxd[:, :, ::p.stride[0], ::p.stride[1]])
        return [dx], grads

    def flops(self, in_shapes, out_shape):
        kh, kw = self.p.kernel_size
        return math.prod(in_shapes[0]) * (self.p.out_channels // self.p.groups) * kh * kw


class DenseParams(OpParams):
    out_features: int = Field(ge=1)
    bias: bool = True
    init: InitScheme = "pytorch"


class Dense(Op):
    """Fully connected layer y = x Wᵀ + b, weights (out_features, in_features) as torch.nn.Linear."""

    type = "dense"
    Params = DenseParams

    @classmethod
    def examples(cls):
        return [({"out_features": 5}, [(7,)]), ({"out_features": 3, "bias": False}, [(4,)])]

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        if len(shape) != 1:
            raise ShapeError(f"dense expects a flat (features,) input per sample, found {len(shape)}-D {shape}; "
                             f"add a flatten layer before it")
        return (self.p.out_features,)

    def param_shapes(self, in_shapes):
        n = self.p.out_features
        return {"weight": (n, in_shapes[0][0]), **({"bias": (n,)} if self.p.bias else {})}

    def init_params(self, in_shapes, rng):
        fan_in = in_shapes[0][0]
        params = {"weight": init_weight((self.p.out_features, fan_in), fan_in, self.p.out_features, self.p.init, rng)}
        if self.p.bias:
            params["bias"] = init_bias(self.p.out_features, fan_in, rng)
        return params

    def forward(self, ctx, inputs, params, relu=False):
        """``relu=True`` (a fusion, cnngraph.passes) returns max(x @ w.T + b, 0), its gradient taken in backward."""
        x, = inputs
        w = params["weight"]
        y = x @ w.T
        if "bias" in params:
            y += params["bias"]
        if relu:
            xp_of(y).maximum(y, 0, out=y)
        ctx.save(x=x, w=w, relu_output=y if relu else None)
        return y

    def backward(self, ctx, gy):
        x, w, relu_output = ctx.saved["x"], ctx.saved["w"], ctx.saved["relu_output"]
        if relu_output is not None:
            gy = gy * (relu_output > 0)
        grads = {"weight": gy.T @ x}
        if self.p.bias:
            grads["bias"] = gy.sum(axis=0)
        return [gy @ w if ctx.need_grad(0) else None], grads

    def flops(self, in_shapes, out_shape):
        return in_shapes[0][0] * self.p.out_features


class EmbeddingParams(OpParams):
    num_embeddings: int = Field(ge=1, description="rows of the table: indices run 0 .. num_embeddings - 1")
    embedding_dim: int = Field(ge=1)


class Embedding(Op):
    """Looks up rows of a (num_embeddings, embedding_dim) table for whole-number indices of any per-sample shape,
    as torch.nn.Embedding (weights N(0, 1) as its default): output (*indices, embedding_dim). The indices come
    from an int64 input (class labels for a conditional network, token ids) or a layer of whole numbers
    (argmax); they take no gradient, the table's rows add up the gradients of every lookup. ONNX Gather of a
    constant table by computed indices."""

    type = "embedding"
    Params = EmbeddingParams
    grad_inputs = ()
    int_inputs = (0,)

    @classmethod
    def examples(cls):
        return [({"num_embeddings": 5, "embedding_dim": 3}, [{"shape": (4,), "dtype": "int64", "high": 5}]),
                ({"num_embeddings": 4, "embedding_dim": 2}, [{"shape": (), "dtype": "int64", "high": 4}]),
                ({"num_embeddings": 3, "embedding_dim": 4}, [{"shape": (2, 3), "dtype": "int64", "high": 3}])]

    def infer_shape(self, in_shapes):
        return (*in_shapes[0], self.p.embedding_dim)

    def param_shapes(self, in_shapes):
        return {"weight": (self.p.num_embeddings, self.p.embedding_dim)}

    def init_params(self, in_shapes, rng):
        return {"weight": rng.standard_normal((self.p.num_embeddings, self.p.embedding_dim)).astype(np.float32)}

    def _indices(self, x):
        xp = xp_of(x)
        idx = x.astype(np.int64) if x.dtype.kind == "f" else x
        if x.dtype.kind == "f" and bool((idx != x).any()):
            raise ValueError("embedding indices must be whole numbers, found values with a fraction")
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.p.num_embeddings):
            raise ValueError(f"embedding indices must lie in 0 .. {self.p.num_embeddings - 1}, found "
                             f"{int(idx.min())} .. {int(idx.max())}")
        return xp.asarray(idx)

    def forward(self, ctx, inputs, params):
        idx = self._indices(inputs[0])
        ctx.save(idx=idx, rows=params["weight"].shape[0])
        return params["weight"][idx]

    def backward(self, ctx, gy):
        xp = xp_of(gy)
        grad = xp.zeros((ctx.saved["rows"], gy.shape[-1]), dtype=gy.dtype)
        xp.add.at(grad, ctx.saved["idx"].reshape(-1), gy.reshape(-1, gy.shape[-1]))   # repeated rows add up
        return [None], {"weight": grad}

    def flops(self, in_shapes, out_shape):
        return 0


@hookimpl
def cnngraph_register_ops(registry):
    registry.add(Conv2d)
    registry.add(ConvTranspose2d)
    registry.add(Dense)
    registry.add(Embedding)
