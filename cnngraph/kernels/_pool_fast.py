"""NumPy fast path of pooling when windows tile the input exactly (stride == kernel, no padding,
no dilation, sizes divisible): the input is viewed as (N, C, Ho, kh, Wo, kw), so every window
offset is a plain strided view and backward *assigns* each input position exactly once (no
scatter-add, no zero fill). Batch chunks run on the worker threads to stay cache-resident.
"""
from __future__ import annotations

import numpy as np

from ._parallel import as_channels_last, channels_last, empty_as, n_workers, run_parallel, scratch_as, split_chunks

__all__ = ["tiles_exactly", "max_forward", "max_backward", "avg_forward", "avg_backward", "max_and_index"]

_CHUNK_BYTES = 1 << 20
_PARALLEL_BYTES = 1 << 21   # smaller inputs are pooled on one thread


def tiles_exactly(shape, kernel, stride, padding, dilation):
    """True when the fast path applies: windows are disjoint and cover the input exactly."""
    _, _, H, W = shape
    kh, kw = kernel
    return (tuple(stride) == (kh, kw) and tuple(dilation) == (1, 1) and not any(padding)
            and H % kh == 0 and W % kw == 0)


def _chunks(x):
    per = max(1, _CHUNK_BYTES // max(1, x.size // max(1, x.shape[0]) * x.itemsize))
    workers = n_workers() if x.nbytes >= _PARALLEL_BYTES else 1
    return split_chunks(x.shape[0], per, workers)


def _views(a, kernel):
    """(N, C, Ho, kh, Wo, kw) view of an NCHW array and its kh*kw window-offset views."""
    N, C, H, W = a.shape
    kh, kw = kernel
    r = a.reshape(N, C, H // kh, kh, W // kw, kw)
    return [r[:, :, :, i, :, j] for i in range(kh) for j in range(kw)]


def max_forward(x, kernel, save):
    """(y, idx or None): idx (int8) is the window offset of the first maximum (PyTorch's rule)."""
    N, C, H, W = x.shape
    kh, kw = kernel
    y = empty_as(x, (N, C, H // kh, W // kw), x.dtype)   # (outputs in x's layout: see empty_as)
    idx = empty_as(x, y.shape, np.int8 if kh * kw <= 127 else np.int32) if save else None
    views = _views(x, kernel)

    def work(chunks):
        for s, e in chunks:
            max_and_index([v[s:e] for v in views], y[s:e], None if idx is None else idx[s:e])
            if save and np.isnan(y[s:e]).any():
                _nan_indices(x[s:e], kernel, idx[s:e])

    run_parallel(work, _chunks(x))
    return y, idx


def max_and_index(views, ys, ids=None):
    """ys = the maximum of the window-offset ``views`` (NaN propagates, like PyTorch); ids, where given, the
    offset of the first maximum (NaN aside: see _nan_indices)."""
    np.copyto(ys, views[0])
    if ids is not None:
        ids.fill(0)
        take = scratch_as("pool.take", ys, bool)
        tmp = scratch_as("pool.tmp", ys, ids.dtype)
    for k, v in enumerate(views[1:], 1):
        if ids is not None:
            # Strict '>' keeps the first max on ties. The last offset that raised the running
            # max is the largest k with take set, so max(ids, k*take) tracks it branch-free
            # (a masked copyto is ~20x slower on random masks).
            np.greater(v, ys, out=take)
            np.multiply(take, ids.dtype.type(k), out=tmp)
            np.maximum(ids, tmp, out=ids)
        np.maximum(ys, v, out=ys)


def _nan_indices(x, kernel, ids):
    """PyTorch's index rule with NaNs (a NaN always takes the index): slow, only when NaNs exist."""
    views = _views(x, kernel)
    m = views[0].copy()
    ids.fill(0)
    for k in range(1, len(views)):
        v = views[k]
        take = (v > m) | np.isnan(v)
        ids[take] = k
        m = np.where(take, v, m)


def max_backward(gy, idx, kernel):
    """dx: each window's gradient goes to its saved argmax offset, zeros elsewhere."""
    N, C, Ho, Wo = gy.shape
    kh, kw = kernel
    dx = empty_as(idx, (N, C, Ho * kh, Wo * kw), gy.dtype)
    views = _views(dx, kernel)
    if channels_last(idx) != channels_last(gy):   # one copy instead of kh*kw passes across layouts
        gy = as_channels_last(gy) if channels_last(idx) else np.ascontiguousarray(gy)

    def work(chunks):
        for s, e in chunks:
            g, ids = gy[s:e], idx[s:e]
            mask = scratch_as("pool.mask", ids, bool)
            for k, v in enumerate(views):
                np.equal(ids, k, out=mask)
                np.multiply(g, mask, out=v[s:e])

    run_parallel(work, _chunks(dx))
    return dx


def avg_forward(x, kernel):
    """Mean over each window (no padding, so count_include_pad is irrelevant)."""
    N, C, H, W = x.shape
    kh, kw = kernel
    y = empty_as(x, (N, C, H // kh, W // kw), x.dtype)
    views = _views(x, kernel)
    scale = x.dtype.type(1.0 / (kh * kw))

    def work(chunks):
        for s, e in chunks:
            ys = y[s:e]
            np.copyto(ys, views[0][s:e])
            for v in views[1:]:
                np.add(ys, v[s:e], out=ys)
            np.multiply(ys, scale, out=ys)

    run_parallel(work, _chunks(x))
    return y


def avg_backward(gy, kernel):
    """dx: every position of a window receives gy / (kh*kw)."""
    N, C, Ho, Wo = gy.shape
    kh, kw = kernel
    dx = empty_as(gy, (N, C, Ho * kh, Wo * kw), gy.dtype)
    views = _views(dx, kernel)
    scale = gy.dtype.type(1.0 / (kh * kw))

    def work(chunks):
        for s, e in chunks:
            np.multiply(gy[s:e], scale, out=views[0][s:e])
            for v in views[1:]:
                np.copyto(v[s:e], views[0][s:e])

    run_parallel(work, _chunks(dx))
    return dx
