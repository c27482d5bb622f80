"""2-D convolution kernels (cross-correlation, like PyTorch), NCHW at the boundary.

Both paths lower the convolution to GEMM over im2col columns built from kh*kw shifted strided
views of the padded input (one Python iteration per kernel offset, never per pixel/channel/sample).
NumPy with groups == 1 uses the chunked, threaded path of ``_conv_fast``, NumPy depthwise convs (one
input channel per group) the shifted multiply-adds of ``_depthwise``; everything else (CuPy, other
grouped convs) the generic path below, which keeps the whole column buffer for backward.
"""
from __future__ import annotations

import numpy as np

from ..backend import xp_of
from . import _onednn
from ._conv_fast import FastConv, _epilogue
from ._depthwise import DepthwiseConv
from ._parallel import run_parallel, split_chunks, workers_for
from .pool import pool_output_size

__all__ = ["conv2d_forward", "conv2d_backward", "conv_output_shape", "FastConv"]


def conv_output_shape(x_shape, w_shape, stride, padding, dilation):
    """(Ho, Wo) of a convolution; raises ValueError when the kernel does not fit."""
    _, _, H, W = x_shape
    _, _, kh, kw = w_shape
    top, bottom, left, right = padding
    return (pool_output_size(H, kh, stride[0], top, bottom, dilation[0], False),
            pool_output_size(W, kw, stride[1], left, right, dilation[1], False))


class _Saved:
    __slots__ = ()

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


class _ConvSaved(_Saved):
    """What the generic conv2d_backward needs: geometry, weights and the forward's column buffer."""

    __slots__ = ("x_shape", "padded_shape", "w", "has_bias", "stride", "padding", "dilation",
                 "groups", "out", "cols", "dtypes")


class _OneDNNSaved(_Saved):
    """What the oneDNN backward needs: the geometry plus x and w (references, not copies)."""

    __slots__ = ("x", "w", "has_bias", "stride", "padding", "dilation", "groups", "out", "dtypes")


class _DepthwiseSaved:
    """What the depthwise backward needs: its geometry, the padded input and w."""

    __slots__ = ("conv", "xpad", "w", "dtypes")

    def __init__(self, conv, xpad, w, dtypes):
        self.conv, self.xpad, self.w, self.dtypes = conv, xpad, w, dtypes


class _FastSaved:
    """What the fast-path backward needs: its geometry plus x and w (references, not copies)."""

    __slots__ = ("fast", "x", "w", "dtypes")

    def __init__(self, fast, x, w, dtypes):
        self.fast, self.x, self.w, self.dtypes = fast, x, w, dtypes


def _offsets(kh, kw, stride, dilation, out):
    """(i, j, row slice, col slice) of every kernel offset into the padded input."""
    (sh, sw), (dh, dw), (Ho, Wo) = stride, dilation, out
    for i in range(kh):
        for j in range(kw):
            yield (i, j,
                   slice(i * dh, i * dh + (Ho - 1) * sh + 1, sh),
                   slice(j * dw, j * dw + (Wo - 1) * sw + 1, sw))


def _pad(x, padding, out, kshape, stride, dilation):
    """Zero-pad ``x`` (N,C,H,W); the trailing pads are trimmed to what the windows reach."""
    xp = xp_of(x)
    N, C, H, W = x.shape
    top, _, left, _ = padding
    Eh = max(top + H, (out[0] - 1) * stride[0] + dilation[0] * (kshape[0] - 1) + 1)
    Ew = max(left + W, (out[1] - 1) * stride[1] + dilation[1] * (kshape[1] - 1) + 1)
    if (Eh, Ew) == (H, W) and top == 0 and left == 0:
        return x
    xpad = xp.zeros((N, C, Eh, Ew), dtype=x.dtype)
    xpad[:, :, top:top + H, left:left + W] = x
    return xpad


def _im2col(xpad, kh, kw, stride, dilation, out):
    """Column buffer (N, C, kh, kw, Ho, Wo) of the padded input."""
    xp = xp_of(xpad)
    N, C = xpad.shape[:2]
    cols = xp.empty((N, C, kh, kw) + tuple(out), dtype=xpad.dtype)
    for i, j, rs, cs in _offsets(kh, kw, stride, dilation, out):
        cols[:, :, i, j] = xpad[:, :, rs, cs]
    return cols


def _col2im(dcols, padded_shape, stride, dilation, out):
    """Adjoint of _im2col: scatter-add (N, C, kh, kw, Ho, Wo) back into a padded-input gradient."""
    xp = xp_of(dcols)
    kh, kw = dcols.shape[2:4]
    dpad = xp.zeros(padded_shape, dtype=dcols.dtype)
    for i, j, rs, cs in _offsets(kh, kw, stride, dilation, out):
        dpad[:, :, rs, cs] += dcols[:, :, i, j]
    return dpad


def conv2d_forward(x, w, b, stride, padding, dilation, groups, save, relu=False, residual=None, pool=None):
    """Grouped, strided, dilated 2-D convolution with (possibly asymmetric) zero padding.

    x (N, C, H, W), w (O, C//groups, kh, kw), b (O,) or None; stride/dilation (h, w); padding
    (top, bottom, left, right); ``residual`` (y's shape) is added and ``relu`` applies max(y, 0) to the
    result (inference fusions: the NumPy paths do both per chunk while the chunk is in cache); ``pool`` (ph, pw)
    max-pools the result in windows that tile it exactly (inference: the chunked NumPy path pools each chunk
    in cache, the others pool the whole output).
    Returns ``(y, saved)``, y (N, O, Ho, Wo) in x's dtype; ``saved`` is
    None unless ``save``. NumPy with groups == 1 takes the chunked fast path, whose ``saved`` keeps
    x and w *by reference* (do not modify them in place before backward); otherwise ``saved`` holds
    the im2col buffer (N*C*kh*kw*Ho*Wo elements).
    """
    C, (O, Cg) = x.shape[1], w.shape[:2]
    if C != Cg * groups or O % groups:
        raise ValueError(f"conv2d: x has {C} channels, w {tuple(w.shape)} with groups={groups}")
    out = conv_output_shape(x.shape, w.shape, stride, padding, dilation)
    dtypes = (w.dtype, None if b is None else b.dtype)   # gradients come back in these
    w = w.astype(x.dtype, copy=False)
    b = None if b is None else b.astype(x.dtype, copy=False)
    if pool is not None and (save or residual is not None or out[0] % pool[0] or out[1] % pool[1]):
        raise ValueError(f"conv2d: pool={pool} is an inference fusion for windows that tile the {out} output, "
                         f"without save or residual")
    y = _onednn.forward(x, w, b, stride, padding, dilation, groups, out, save, relu, residual) \
        if _onednn.usable(x) else None
    if y is not None:
        saved = None
        if save:
            saved = _OneDNNSaved(x=x, w=w, has_bias=b is not None, stride=tuple(stride), padding=tuple(padding),
                                 dilation=tuple(dilation), groups=groups, out=out, dtypes=dtypes)
        return _max_pooled(y, pool), saved
    return _numpy_forward(x, w, b, stride, padding, dilation, groups, save, relu, residual, pool, out, dtypes)


def _numpy_forward(x, w, b, stride, padding, dilation, groups, save, relu, residual, pool, out, dtypes):
    """conv2d_forward on cnngraph's own kernels (x and w checked, w and b in x's dtype)."""
    xp = xp_of(x, w)
    C = x.shape[1]
    _, Cg, kh, kw = w.shape
    if xp is np and groups == 1:
        fast = FastConv(x.shape, w.shape, stride, padding, dilation, out, x.dtype, inference=not save)
        if (kh, kw) == (1, 1) and tuple(stride) == (1, 1) and not any(padding):
            y = _pointwise(x, w, b, relu, residual)      # a 1x1 convolution is a plain matrix product per sample
        else:
            y, pool = fast.forward(x, w, b, relu, residual, pool), None
        return _max_pooled(y, pool), (_FastSaved(fast, x, w, dtypes) if save else None)
    if xp is np and groups == C and Cg == 1 and groups > 1 and residual is None:
        conv = DepthwiseConv(x.shape, w.shape, stride, padding, dilation, out)
        xpad = conv.pad(x)
        y = conv.forward(xpad, w, b, relu)
        return _max_pooled(y, pool), (_DepthwiseSaved(conv, xpad, w, dtypes) if save else None)
    y, saved = _generic_forward(x, w, b, stride, padding, dilation, groups, out, save)
    if residual is not None:
        y += residual
    if relu:
        xp.maximum(y, 0, out=y)
    if saved is not None:
        saved.dtypes = dtypes
    return _max_pooled(y, pool), saved


def _max_pooled(y, pool):
    """y max-pooled in (ph, pw) windows that tile it exactly (y itself when ``pool`` is None)."""
    if pool is None:
        return y
    from .pool import max_pool2d_forward
    return max_pool2d_forward(y, pool, pool, (0, 0, 0, 0), (1, 1), False, save=False)[0]


_POINTWISE_CHUNK_BYTES = 1 << 20


def _pointwise(x, w, b, relu=False, residual=None):
    """1x1, stride 1, unpadded convolution: (O, C) @ (C, H*W) per sample, on batch chunks spread over
    the kernel threads (single-threaded BLAS each), bias, residual and relu applied while a chunk is in
    cache. A batch smaller than the threads (batch 1) has its output channels split over the threads
    instead: of the splits measured on ResNet-50's 1x1 layers at batch 1 (columns, channels, both), that
    ran at 0.9-1.6x of BLAS's own threads; without it BLAS's threads keep spinning on our cores."""
    N, C, H, W = x.shape
    O, L = w.shape[0], H * W
    wm = w.reshape(O, C)
    xs = np.ascontiguousarray(x).reshape(N, C, L)
    y = np.empty((N, O, L), dtype=x.dtype)
    rs = None if residual is None else residual.reshape(y.shape)
    bias = None if b is None else b.reshape(O, 1)
    workers = workers_for(2 * N * O * C * L, 0)

    def work(chunks):
        for n, (s, e) in chunks:
            ys = y[n, s:e]
            np.matmul(wm[s:e], xs[n], out=ys)
            _epilogue(ys, None if bias is None else bias[s:e], None if rs is None else rs[n, s:e], relu)

    if N < workers:
        chunks = [(n, c) for n in range(N) for c in split_chunks(O, -(-O // workers), workers)]
    else:
        per_sample = O * L * x.itemsize
        chunks = [(slice(s, e), (0, O)) for s, e in split_chunks(N, max(1, _POINTWISE_CHUNK_BYTES // per_sample), workers)]
    run_parallel(work, chunks, workers)
    return y.reshape(N, O, H, W)


def conv2d_backward(gy, saved, need_dx=True, relu_output=None):
    """Gradients ``(dx or None, dw, db or None)`` of conv2d_forward given ``gy`` (N, O, Ho, Wo),
    in the dtypes of x, w and b. ``relu_output``: the y of a forward with relu=True, whose relu's gradient
    gy * (y > 0) is then taken here (the fast path applies it per chunk, without a pass of its own)."""
    if isinstance(saved, _FastSaved):
        gy = np.asarray(gy, dtype=saved.fast.dtype)
        dx, dw, db = saved.fast.backward(gy, saved.x, saved.w, need_dx, relu_output)
        return _in_dtypes(dx, dw, db, saved.dtypes)
    if isinstance(saved, _OneDNNSaved):
        s = saved
        gy = np.asarray(gy, dtype=np.float32)
        grads = _onednn.backward(gy, s.x, s.w, s.has_bias, s.stride, s.padding, s.dilation, s.groups, s.out,
                                 need_dx, relu_output)
        if grads is None:   # no backward primitive for this geometry: the NumPy kernels', from a forward of theirs
            bias = np.zeros(s.w.shape[0], np.float32) if s.has_bias else None
            _, numpy_saved = _numpy_forward(s.x, s.w, bias, s.stride, s.padding, s.dilation, s.groups, True, False,
                                            None, None, s.out, s.dtypes)
            grads = conv2d_backward(gy, numpy_saved, need_dx, relu_output)
        return _in_dtypes(*grads, s.dtypes)
    if relu_output is not None:
        gy = gy * (relu_output > 0)
    if isinstance(saved, _DepthwiseSaved):
        dx, dw, db = saved.conv.backward(np.asarray(gy, dtype=saved.xpad.dtype), saved.xpad, saved.w, need_dx)
    else:
        dx, dw, db = _generic_backward(gy, saved, need_dx)
    return _in_dtypes(dx, dw, db, saved.dtypes)


def _in_dtypes(dx, dw, db, dtypes):
    w_dtype, b_dtype = dtypes
    return dx, dw.astype(w_dtype, copy=False), (None if b_dtype is None else db.astype(b_dtype, copy=False))


def _generic_forward(x, w, b, stride, padding, dilation, groups, out, save):
    """Array-module agnostic path (CuPy, grouped convs): full im2col buffer + batched GEMM."""
    xp = xp_of(x, w)
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    G, L, K = groups, out[0] * out[1], Cg * kh * kw
    xpad = _pad(x, padding, out, (kh, kw), stride, dilation)
    cols = _im2col(xpad, kh, kw, stride, dilation, out)
    y = xp.matmul(w.reshape(G, O // G, K), cols.reshape(N, G, K, L))   # (N, G, O/G, L)
    y = y.reshape(N, O, out[0], out[1])
    if b is not None:
        y += b.reshape(1, O, 1, 1)
    saved = None
    if save:
        saved = _ConvSaved(x_shape=x.shape, padded_shape=xpad.shape, w=w, has_bias=b is not None,
                           stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                           groups=G, out=out, cols=cols)
    return y, saved


def _generic_backward(gy, s, need_dx):
    xp = xp_of(gy)
    N, C, H, W = s.x_shape
    O, Cg, kh, kw = s.w.shape
    G, K, L = s.groups, Cg * kh * kw, s.out[0] * s.out[1]
    gyg = gy.reshape(N, G, O // G, L)
    cols = s.cols.reshape(N, G, K, L)
    # dw[g] = sum_n gy[n,g] @ cols[n,g]^T, as one GEMM per group over the (N*L) contraction.
    gyt = gyg.transpose(1, 2, 0, 3).reshape(G, O // G, N * L)
    colt = cols.transpose(1, 0, 3, 2).reshape(G, N * L, K)
    dw = xp.matmul(gyt, colt).reshape(s.w.shape)
    db = gy.sum(axis=(0, 2, 3)) if s.has_bias else None
    dx = None
    if need_dx:
        dcols = xp.matmul(s.w.reshape(G, O // G, K).transpose(0, 2, 1), gyg)   # (N, G, K, L)
        dcols = dcols.reshape(N, C, kh, kw, s.out[0], s.out[1])
        dpad = _col2im(dcols, s.padded_shape, s.stride, s.dilation, s.out)
        top, _, left, _ = s.padding
        dx = xp.ascontiguousarray(dpad[:, :, top:top + H, left:left + W])
    return dx, dw, db
