"""Max and average 2-D pooling kernels, NCHW, forward and backward.

NumPy inputs whose windows tile the input exactly (the usual 2x2/2 pooling) take the
``_pool_fast`` path. Semantics follow PyTorch (``max_pool2d``/``avg_pool2d``) for symmetric padding, including
``ceil_mode`` and ``count_include_pad``; asymmetric padding follows ONNX. Every kernel loops only over
the kh*kw window offsets; each offset is one strided view of the padded input.
"""
from __future__ import annotations

import numpy as np

from ..backend import xp_of
from . import _onednn, _pool_fast
from ._parallel import n_workers, run_parallel, split_chunks

__all__ = [
    "pool_output_size",
    "max_pool2d_forward", "max_pool2d_backward",
    "avg_pool2d_forward", "avg_pool2d_backward",
]


_TILED = "tiled"   # marks a ``saved`` from the _pool_fast path
_ONEDNN = "onednn"  # ... from oneDNN's (channels-last float32 inputs: a oneDNN convolution's output)


def pool_output_size(size, k, s, pad_before, pad_after, dilation, ceil_mode):
    """Output length of a pooling/conv window sweep along one axis (PyTorch's rule).

    With ``ceil_mode`` a partial last window is kept only if it starts inside the input or the
    leading padding (never entirely in the trailing padding / overhang).
    """
    span = size + pad_before + pad_after - dilation * (k - 1) - 1
    if span < 0:
        raise ValueError(
            f"window (k={k}, dilation={dilation}) larger than padded input ({size}+{pad_before}+{pad_after})")
    if ceil_mode:
        out = -(-span // s) + 1
        if (out - 1) * s >= size + pad_before:
            out -= 1
    else:
        out = span // s + 1
    return out


class _Geom:
    """Window geometry of one pooling call (both axes), shared by forward and backward."""

    __slots__ = ("shape", "k", "s", "d", "pad", "out", "ext")

    def __init__(self, shape, kernel, stride, padding, dilation, ceil_mode):
        N, C, H, W = shape
        top, bottom, left, right = padding
        self.shape = tuple(shape)
        self.k, self.s, self.d, self.pad = tuple(kernel), tuple(stride), tuple(dilation), tuple(padding)
        Ho = pool_output_size(H, kernel[0], stride[0], top, bottom, dilation[0], ceil_mode)
        Wo = pool_output_size(W, kernel[1], stride[1], left, right, dilation[1], ceil_mode)
        self.out = (Ho, Wo)
        # Padded extent actually swept: may exceed the padding (ceil overhang) or fall short of it.
        self.ext = ((Ho - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1,
                    (Wo - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1)

    def offsets(self):
        """(index, row slice, col slice) of every window offset into the padded array."""
        (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = self.k, self.s, self.d, self.out
        for i in range(kh):
            for j in range(kw):
                yield (i * kw + j,
                       slice(i * dh, i * dh + (Ho - 1) * sh + 1, sh),
                       slice(j * dw, j * dw + (Wo - 1) * sw + 1, sw))

    def padded(self, x, value):
        """``x`` placed in a (N, C, ext_h, ext_w) array filled with ``value`` (leading pads + overhang)."""
        xp = xp_of(x)
        N, C, H, W = self.shape
        top, _, left, _ = self.pad
        Eh, Ew = max(self.ext[0], top + H), max(self.ext[1], left + W)
        if top == 0 and left == 0 and Eh == H and Ew == W:
            return x
        out = xp.full((N, C, Eh, Ew), value, dtype=x.dtype)
        out[:, :, top:top + H, left:left + W] = x
        return out

    def unpad(self, g):
        """Crop a gradient w.r.t. the padded array back to the input's extent."""
        N, C, H, W = self.shape
        top, _, left, _ = self.pad
        return g[:, :, top:top + H, left:left + W]

    def zeros_padded(self, like):
        xp = xp_of(like)
        N, C, H, W = self.shape
        top, _, left, _ = self.pad
        return xp.zeros((N, C, max(self.ext[0], top + H), max(self.ext[1], left + W)), dtype=like.dtype)


def max_pool2d_forward(x, kernel, stride, padding, dilation, ceil_mode, save):
    """Max pooling. Padding behaves as -inf. Returns ``(y, saved)``; ``saved`` is None unless ``save``."""
    xp = xp_of(x)
    if _onednn.pool_usable(x, dilation):
        g = _Geom(x.shape, kernel, stride, padding, dilation, ceil_mode)
        y, saved = _onednn.max_pool_forward(x, g.out, kernel, stride, padding, save)
        if y is not None:
            return y, ((_ONEDNN, saved) if save else None)
    if xp is np and _pool_fast.tiles_exactly(x.shape, kernel, stride, padding, dilation):
        y, idx = _pool_fast.max_forward(x, tuple(kernel), save)
        return y, ((_TILED, tuple(kernel), idx) if save else None)
    g = _Geom(x.shape, kernel, stride, padding, dilation, ceil_mode)
    if not save:
        return _max_separable(x, g), None
    xpad = g.padded(x, -np.inf)
    y = idx = None
    for k, rs, cs in g.offsets():
        v = xpad[:, :, rs, cs]
        if y is None:
            y = v.copy()
            idx = xp.zeros(y.shape, dtype=np.int16) if save else None
            continue
        if not save:   # values only: maximum propagates NaN, as PyTorch does, in one pass
            xp.maximum(y, v, out=y)
            continue
        # Strict '>' keeps the first max on ties; NaN wins like in PyTorch.
        take = (v > y) | xp.isnan(v)
        xp.copyto(y, v, where=take)
        if save:
            idx[take] = k
    return y, ((g, idx) if save else None)


def _max_separable(x, g):
    """Max pooling values without argmax: the max over the kh row offsets (whole padded rows, unit
    stride), then over the kw column offsets of that. kh + kw passes instead of kh * kw strided ones:
    ResNet's 3x3/2 stem pool on (16, 64, 112, 112) drops from ~210 ms to ~19 ms on 2 cores; at batch 1,
    channel blocks on both threads: 0.8-1.0 ms against 1.1-2.0 on one."""
    xp = xp_of(x)
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = g.k, g.s, g.d, g.out
    N, C, H, W = x.shape
    top, _, left, _ = g.pad
    Eh, Ew = max(g.ext[0], top + H), max(g.ext[1], left + W)
    y = xp.empty((N, C, Ho, Wo), dtype=x.dtype)

    def work(chunks):
        for samples, channels in chunks:
            xs = x[samples, channels]
            if (Eh, Ew) == (H, W):
                xpad = xs
            else:
                xpad = xp.full(xs.shape[:2] + (Eh, Ew), -np.inf, dtype=x.dtype)
                xpad[:, :, top:top + H, left:left + W] = xs
            rows = xp.array(xpad[:, :, 0:(Ho - 1) * sh + 1:sh])
            for i in range(1, kh):
                xp.maximum(rows, xpad[:, :, i * dh:i * dh + (Ho - 1) * sh + 1:sh], out=rows)   # NaN propagates
            ys = y[samples, channels]
            ys[...] = rows[..., 0:(Wo - 1) * sw + 1:sw]
            for j in range(1, kw):
                xp.maximum(ys, rows[..., j * dw:j * dw + (Wo - 1) * sw + 1:sw], out=ys)

    if xp is np:   # cache-sized batch chunks on the kernel threads; fewer samples than threads: channel blocks
        workers, per_channel = n_workers(), Eh * Ew * x.itemsize
        if N < workers:
            blocks = split_chunks(C, max(1, (2 << 20) // per_channel), workers)
            chunks = [(slice(n, n + 1), slice(s, e)) for n in range(N) for s, e in blocks]
        else:
            per_chunk = max(1, (2 << 20) // (C * per_channel))
            chunks = [(slice(s, e), slice(None)) for s, e in split_chunks(N, per_chunk, workers)]
        run_parallel(work, chunks)
    else:
        work([(slice(None), slice(None))])
    return y


def max_pool2d_backward(gy, saved):
    """Gradient of max pooling: each output gradient goes to its window's (first) argmax."""
    if saved[0] is _ONEDNN:
        return _onednn.max_pool_backward(gy, saved[1])
    if saved[0] is _TILED:
        return _pool_fast.max_backward(np.asarray(gy), saved[2], saved[1])
    g, idx = saved
    xp = xp_of(gy)
    dpad = g.zeros_padded(gy)
    for k, rs, cs in g.offsets():
        dpad[:, :, rs, cs] += xp.where(idx == k, gy, 0)
    return xp.ascontiguousarray(g.unpad(dpad))


def _avg_divisor(g, count_include_pad, xp, dtype):
    """Per-output divisor (Ho, Wo) of average pooling, PyTorch's rule, separable per axis."""
    N, C, H, W = g.shape
    top, bottom, left, right = g.pad

    def axis(n_out, k, s, size, pb, pa):
        start = np.arange(n_out) * s - pb
        end = np.minimum(start + k, size + pa)   # clipped to the padding, not the ceil overhang
        if count_include_pad:
            return end - start
        return np.minimum(end, size) - np.maximum(start, 0)

    dh = axis(g.out[0], g.k[0], g.s[0], H, top, bottom)
    dw = axis(g.out[1], g.k[1], g.s[1], W, left, right)
    return xp.asarray(np.outer(dh, dw).astype(dtype))


def avg_pool2d_forward(x, kernel, stride, padding, ceil_mode, count_include_pad, save):
    """Average pooling; zero padding, divisor per ``count_include_pad``. Returns ``(y, saved)``."""
    xp = xp_of(x)
    if xp is np and _pool_fast.tiles_exactly(x.shape, kernel, stride, padding, (1, 1)):
        y = _pool_fast.avg_forward(x, tuple(kernel))
        return y, ((_TILED, tuple(kernel)) if save else None)
    g = _Geom(x.shape, kernel, stride, padding, (1, 1), ceil_mode)
    xpad = g.padded(x, 0)
    y = None
    for _, rs, cs in g.offsets():
        v = xpad[:, :, rs, cs]
        if y is None:
            y = v.copy()
        else:
            y += v
    div = _avg_divisor(g, count_include_pad, xp, x.dtype)
    y /= div
    return y, ((g, div) if save else None)


def avg_pool2d_backward(gy, saved):
    """Gradient of average pooling: each output gradient spread evenly over its window."""
    if saved[0] is _TILED:
        return _pool_fast.avg_backward(np.asarray(gy), saved[1])
    g, div = saved
    gs = gy / div
    dpad = g.zeros_padded(gy)
    for _, rs, cs in g.offsets():
        dpad[:, :, rs, cs] += gs
    return xp_of(gy).ascontiguousarray(g.unpad(dpad))
