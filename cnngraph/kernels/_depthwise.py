"""Depthwise convolution (one input channel per group: MobileNet, EfficientNet, ConvNeXt) as kh*kw
shifted multiply-adds over whole (chunk, C, Ho, Wo) blocks, on NumPy.

The im2col path would copy the input kh*kw times and keep that copy for backward (49x the input for a
7x7 kernel) to feed GEMMs whose inner dimension is only kh*kw. Here backward keeps only the padded
input, and every pass is an element-wise sweep over one batch chunk while it is in cache.
"""
from __future__ import annotations

import numpy as np

from ._parallel import run_parallel, split_chunks, workers_for

__all__ = ["DepthwiseConv"]

_CHUNK_BYTES = 1 << 21   # output bytes per batch chunk: a chunk's sweeps stay in cache


class DepthwiseConv:
    """Geometry of one depthwise conv: x (N, C, H, W), w (C*m, 1, kh, kw), groups C."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, out):
        self.x_shape, self.w_shape = tuple(x_shape), tuple(w_shape)
        self.stride, self.padding, self.dilation, self.out = tuple(stride), tuple(padding), tuple(dilation), tuple(out)
        N, C, H, W = self.x_shape
        O, _, kh, kw = self.w_shape
        self.m = O // C                                   # outputs per input channel
        top, _, left, _ = self.padding
        (sh, sw), (dh, dw), (Ho, Wo) = self.stride, self.dilation, self.out
        self.padded = (max(top + H, (Ho - 1) * sh + dh * (kh - 1) + 1), max(left + W, (Wo - 1) * sw + dw * (kw - 1) + 1))
        self.offsets = [(i, j, slice(i * dh, i * dh + (Ho - 1) * sh + 1, sh),
                         slice(j * dw, j * dw + (Wo - 1) * sw + 1, sw)) for i in range(kh) for j in range(kw)]

    def _chunks(self, n_flops):
        """(batch start, stop, channel start, stop) blocks; a small batch is also split over channels, so
        batch 1 still uses both threads."""
        N, C = self.x_shape[:2]
        per_sample = C * self.m * self.out[0] * self.out[1] * 4
        workers = workers_for(n_flops, 5e6)
        batches = split_chunks(N, max(1, _CHUNK_BYTES // per_sample), workers)
        parts = 1 if len(batches) >= 2 * workers else min(C, -(-2 * workers // len(batches)))
        channels = split_chunks(C, -(-C // parts), 1)
        return [(s, e, c0, c1) for c0, c1 in channels for s, e in batches], workers

    def pad(self, x):
        N, C, H, W = x.shape
        top, _, left, _ = self.padding
        if self.padded == (H, W) and top == 0 and left == 0:
            return x
        xpad = np.zeros((N, C) + self.padded, dtype=x.dtype)
        xpad[:, :, top:top + H, left:left + W] = x
        return xpad

    def forward(self, xpad, w, b, relu=False):
        """y (N, C*m, Ho, Wo) from the padded input."""
        N, C = xpad.shape[:2]
        m, (Ho, Wo) = self.m, self.out
        wk = w.reshape(C, m, -1)                                      # (C, m, kh*kw)
        y = np.empty((N, C, m, Ho, Wo), dtype=xpad.dtype)
        bias = None if b is None else b.reshape(1, C, m, 1, 1)

        def work(chunks):
            tmp = None
            for s, e, c0, c1 in chunks:
                ys = y[s:e, c0:c1]
                if tmp is None or tmp.size < ys.size:
                    tmp = np.empty(ys.size, ys.dtype)
                t = tmp[:ys.size].reshape(ys.shape)
                for k, (_, _, rs, cs) in enumerate(self.offsets):
                    v = xpad[s:e, c0:c1, None, rs, cs]                # (n, c, 1, Ho, Wo)
                    wv = wk[None, c0:c1, :, k, None, None]            # (1, c, m, 1, 1)
                    if k == 0:
                        np.multiply(v, wv, out=ys)
                    else:
                        np.multiply(v, wv, out=t)
                        ys += t
                if bias is not None:
                    ys += bias[:, c0:c1]
                if relu:
                    np.maximum(ys, 0, out=ys)

        chunks, workers = self._chunks(2 * y.size * len(self.offsets))
        run_parallel(work, chunks, workers)
        return y.reshape(N, C * m, Ho, Wo)

    def backward(self, gy, xpad, w, need_dx=True):
        """(dx or None, dw, db) for gy (N, C*m, Ho, Wo); dw and db summed over the batch chunks in order."""
        N, C = xpad.shape[:2]
        m, (Ho, Wo) = self.m, self.out
        gy = np.ascontiguousarray(gy).reshape(N, C, m, Ho, Wo)
        wk = w.reshape(C, m, -1)
        dpad = np.zeros(xpad.shape, dtype=xpad.dtype) if need_dx else None

        def work(chunks):
            done = []
            for s, e, c0, c1 in chunks:
                g = gy[s:e, c0:c1]
                dw = np.empty((c1 - c0, m, len(self.offsets)), dtype=np.float64)
                for k, (_, _, rs, cs) in enumerate(self.offsets):
                    v = xpad[s:e, c0:c1, rs, cs]                      # (n, c, Ho, Wo)
                    dw[:, :, k] = np.einsum("ncmhw,nchw->cm", g, v)
                    if need_dx:   # the m outputs of a channel all read the same input pixels
                        dpad[s:e, c0:c1, rs, cs] += np.einsum("ncmhw,cm->nchw", g, wk[c0:c1, :, k])
                done.append(((c0, s), dw))
            return done

        chunks, workers = self._chunks(4 * gy.size * len(self.offsets))
        per_chunk = sorted((item for part in run_parallel(work, chunks, workers) for item in part), key=lambda t: t[0])
        # summed in batch order per channel block, whichever thread took which chunk: training repeats bit for bit
        dw = np.zeros((C, m, len(self.offsets)), dtype=np.float64)
        for (c0, _), part in per_chunk:
            dw[c0:c0 + len(part)] += part
        dw = dw.astype(w.dtype).reshape(self.w_shape)
        db = gy.sum(axis=(0, 3, 4)).reshape(C * m)
        dx = None
        if need_dx:
            top, _, left, _ = self.padding
            H, W = self.x_shape[2:]
            dx = np.ascontiguousarray(dpad[:, :, top:top + H, left:left + W])
        return dx, dw, db
