"""NumPy fast path of conv2d (groups == 1): chunked im2col + per-chunk GEMMs.

The batch is cut into chunks whose column buffer stays cache-resident; worker threads pull chunks,
pad each into a scratch buffer, build its columns with one strided-view copy, run single-threaded
BLAS and write their slice of the result. Nothing of size N*K*L is materialised; backward rebuilds
the columns instead of keeping them.

Column layouts, per chunk of n samples, as a (K, n*Ho*Wq) matrix (C, kh*kw, n, Ho, Wq):
  exact (Wq = Wo): column (ho, wo) holds the window at output pixel (ho, wo).
  flat (stride 1, Wq = Wp): columns are contiguous slices of the *flattened* padded image, so the
      copies run Ho*Wp elements instead of Wo; the Wp - Wo extra columns per output row are
      garbage in forward (cropped) and held at zero in gy (so they add nothing in backward).
Flat copies much faster on small maps/channel counts (LeNet) but its GEMMs are bigger and
measured slower on the wide cifarnet layers, so it is used only where the copies dominate.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._parallel import run_parallel, scratch, split_chunks, workers_for
from ._pool_fast import max_and_index

__all__ = ["FastConv"]

_CHUNK_BYTES = 4 << 20     # column buffer per chunk: stays in L2/L3 next to the GEMM's packing
_PARALLEL_FLOPS = 5e6      # below this a conv runs on one thread
_ROW_BLOCK_BYTES = 1 << 20  # column buffer per row block of a batch-1 forward (see _forward_split_samples)
TRANSPOSED_RATIO = 3       # see _transposed
TRANSPOSED_BWD = True      # stride-1 backward from gy's columns (else x's columns + col2im scatter-add)
FLAT_MAX_O = 16            # flat layout when stride 1 and O <= this (GEMM cheap next to the copies)
FLAT_MAX_O_INFERENCE = 64  # ... in a forward without backward: its output copy is the pooled or cropped write
                           # anyway (cifarnet inference at batch 64 1.04x faster; training measured 1.0-1.02x slower)
FLAT_MIN_K_PER_O = 2       # ... and only with K >= this * O: with few columns per output channel, exact writes
                           # the GEMM straight into y and saves flat's output copy (stem-like convs 1.1-1.3x)
FLAT_MAX_W = 8             # ... or O <= 2 * FLAT_MAX_O and the output at most this wide (short rows copy slowly)


class FastConv:
    """Geometry of one non-grouped convolution on NumPy arrays; forward/backward drivers."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, out, dtype, allow_flat=True, inference=False):
        self.N, self.C, self.H, self.W = x_shape
        self.O, _, self.kh, self.kw = w_shape
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.Ho, self.Wo = out
        self.dtype = np.dtype(dtype)
        (sh, sw), (dh, dw) = self.stride, self.dilation
        top, _, left, _ = self.padding
        self.Hp = max(top + self.H, (self.Ho - 1) * sh + dh * (self.kh - 1) + 1)
        self.Wp = max(left + self.W, (self.Wo - 1) * sw + dw * (self.kw - 1) + 1)
        self.L = self.Ho * self.Wo
        self.K = self.C * self.kh * self.kw
        # A thread hand-off costs ~40 us: only tiny convs run serially. Measured (benchmarks/kernels.py
        # layers, forward + backward, 2 cores): the digits/LeNet convs of 15-40 MFLOP run 1.3-1.6x
        # faster on two threads on a quiet machine, and 0.8x with one core busy elsewhere.
        flops = 2 * self.N * self.O * self.K * self.Ho * self.Wo
        self.workers = workers_for(flops, _PARALLEL_FLOPS)
        # (a batch smaller than the threads keeps the exact layout, which _forward_split_samples needs)
        wide = FLAT_MAX_O_INFERENCE if inference and self.N >= self.workers else FLAT_MAX_O
        self.flat = allow_flat and self.stride == (1, 1) and self.K >= FLAT_MIN_K_PER_O * self.O and (
            self.O <= wide or (self.Wo <= FLAT_MAX_W and self.O <= 2 * FLAT_MAX_O))
        self.Wq = self.Wp if self.flat else self.Wo
        self.Lq = self.Ho * self.Wq
        # Flat slices of the last kernel row overrun the image by (kw-1)*dw: one spare row.
        self.rows = self.Hp + 1 if self.flat else self.Hp
        per_sample = self.K * self.Lq * self.dtype.itemsize
        self.chunks = split_chunks(self.N, _CHUNK_BYTES // per_sample, self.workers)

    # ---- per-chunk building blocks -------------------------------------------------------------

    def _offsets(self):
        """(row slice, col slice) of every kernel offset into the padded input."""
        (sh, sw), (dh, dw) = self.stride, self.dilation
        for i in range(self.kh):
            for j in range(self.kw):
                yield (slice(i * dh, i * dh + (self.Ho - 1) * sh + 1, sh),
                       slice(j * dw, j * dw + (self.Wo - 1) * sw + 1, sw))

    def _padded(self, x, s, e, mask=None):
        """Chunk x[s:e] inside a zero-bordered scratch buffer (n, C, rows, Wp); where ``mask`` (x's shape) is
        given, x * (mask > 0) (a fused relu's gradient)."""
        top, _, left, _ = self.padding
        # Keyed by where the image sits too: the borders are zero only for that placement
        # (a transposed conv of the same buffer shape writes its interior elsewhere).
        buf = scratch(f"conv.xpad:{top}:{left}:{self.H}:{self.W}", (e - s, self.C, self.rows, self.Wp),
                      self.dtype, zero=True)
        interior = buf[:, :, top:top + self.H, left:left + self.W]
        if mask is None:
            interior[...] = x[s:e]
        else:
            np.multiply(x[s:e], mask[s:e] > 0, out=interior)
        return buf

    def _im2col(self, xb):
        """Columns (K, n*Lq) of a padded chunk, as a view of a scratch buffer.

        One copy from a strided view (C, kh, kw, n, Ho, Wq) of the padded chunk (flat: of its
        flattened rows): no Python loop over the kernel offsets.
        """
        n, C = xb.shape[0], self.C
        (sh, sw), (dh, dw) = self.stride, self.dilation
        bn, bc, bh, bw = xb.strides
        if self.flat:
            shape = (C, self.kh, self.kw, n, self.Lq)
            strides = (bc, bh * dh, bw * dw, bn, bw)
        else:
            shape = (C, self.kh, self.kw, n, self.Ho, self.Wo)
            strides = (bc, bh * dh, bw * dw, bn, bh * sh, bw * sw)
        windows = as_strided(xb, shape=shape, strides=strides, writeable=False)
        cols = scratch("conv.cols", shape, self.dtype)
        np.copyto(cols, windows)
        return cols.reshape(self.K, n * self.Lq)

    def _gy_chunk(self, gy, s, e, mask=None):
        """gy[s:e] (times mask[s:e] > 0 where given) as an (O, n*Lq) matrix; flat: zeros in the Wq - Wo extra
        columns."""
        # Keyed by Wo: the extra columns are zero only for that placement.
        buf = scratch(f"conv.gy:{self.Wo}", (self.O, e - s, self.Ho, self.Wq), self.dtype, zero=self.flat)
        if mask is None:
            np.copyto(buf[..., :self.Wo], gy[s:e].transpose(1, 0, 2, 3))
        else:
            np.multiply(gy[s:e].transpose(1, 0, 2, 3), mask[s:e].transpose(1, 0, 2, 3) > 0, out=buf[..., :self.Wo])
        return buf.reshape(self.O, -1)

    def _col2im(self, dcols, n):
        """Adjoint of _im2col: scatter-add (K, n*Lq) columns into a zeroed padded-dx chunk, one add per kernel
        offset. Flat: the rows of ``dcols`` are ordered (kh, kw, C) (see _dx_weights) and the chunk is laid out
        (C, n, rows, Wp), so each add is one 2-D pass of contiguous runs (the scatter 1.7x, LeNet's conv2
        backward at batch 256 1.07x faster than in (n, C) order); exact: rows (C, kh, kw), chunk (n, C, rows, Wp)."""
        C, khkw = self.C, self.kh * self.kw
        if self.flat:
            dpad = scratch("conv.dxpad", (C, n, self.rows, self.Wp), self.dtype)
            dpad.fill(0)
            dc = dcols.reshape(khkw, C * n, self.Lq)
            df = dpad.reshape(C * n, -1)
            (dh, dw), span = self.dilation, self.Lq
            for k in range(khkw):
                start = (k // self.kw) * dh * self.Wp + (k % self.kw) * dw
                dst = df[:, start:start + span]
                np.add(dst, dc[k], out=dst)
            return dpad
        dpad = scratch("conv.dxpad", (n, C, self.rows, self.Wp), self.dtype)
        dpad.fill(0)
        dc = dcols.reshape(C, khkw, n, self.Ho, self.Wo)
        for k, (rs, cs) in enumerate(self._offsets()):
            dst = dpad[:, :, rs, cs]
            np.add(dst, dc[:, k].transpose(1, 0, 2, 3), out=dst)
        return dpad

    def _dx_weights(self, w):
        """w as the (K, O) matrix that turns a chunk's gradient matrix into the columns _col2im scatters."""
        order = (2, 3, 1, 0) if self.flat else (1, 2, 3, 0)
        return np.ascontiguousarray(w.transpose(order).reshape(self.K, self.O))

    # ---- drivers ---------------------------------------------------------------------------------

    def forward(self, x, w, b, relu=False, residual=None, pool=None):
        """y (N, O, Ho, Wo) = conv(x, w) + b (+ ``residual``, of y's shape), then max(y, 0) if ``relu``, each
        applied to a chunk while it is in cache. ``pool`` (ph, pw), windows that tile the output exactly (no
        residual): y is then max-pooled per chunk in cache, (N, O, Ho/ph, Wo/pw), bias and relu applied after
        the pooling (both monotonic: the same values as pooling after them)."""
        ph, pw = pool or (1, 1)
        y = np.empty((self.N, self.O, self.Ho // ph, self.Wo // pw), dtype=self.dtype)
        wmat = np.ascontiguousarray(w.reshape(self.O, self.K))
        if self.N < self.workers and not self.flat and pool is None:
            self._forward_split_samples(x, wmat, b, relu, residual, y)
            return y
        bias = None if b is None else b.reshape(1, self.O, 1)

        def work(chunks):
            for s, e in chunks:
                n = e - s
                cols = self._im2col(self._padded(x, s, e))
                ys = y[s:e].reshape(n, self.O, -1)
                if self.flat and pool:   # (n*Lq, O) = cols^T @ w^T: 1.1x faster than w @ cols with few channels
                    yt = scratch("conv.y", (n * self.Lq, self.O), self.dtype)
                    np.matmul(cols.T, wmat.T, out=yt)
                    rows = yt.reshape(n, self.Ho // ph, ph, self.Wq, self.O)
                    pooled = scratch("conv.pooled", (n, self.Ho // ph, self.Wo // pw, self.O), self.dtype)
                    max_and_index([rows[:, :, i, j:self.Wo:pw] for i in range(ph) for j in range(pw)], pooled)
                    np.copyto(y[s:e], pooled.transpose(0, 3, 1, 2))
                elif self.flat:   # one GEMM, then crop + (O, n) -> (n, O) in the unavoidable copy
                    yb = scratch("conv.y", (self.O, n * self.Lq), self.dtype)
                    np.matmul(wmat, cols, out=yb)
                    np.copyto(y[s:e], yb.reshape(self.O, n, self.Ho, self.Wq)[..., :self.Wo].transpose(1, 0, 2, 3))
                elif pool:      # one GEMM per sample into a chunk buffer, pooled from there
                    tiles = scratch("conv.y", (n, self.O, self.Ho // ph, ph, self.Wo), self.dtype)
                    per_sample = cols.reshape(self.K, n, self.Lq).transpose(1, 0, 2)
                    np.matmul(wmat, per_sample, out=tiles.reshape(n, self.O, -1))
                    max_and_index([tiles[:, :, :, i, j::pw] for i in range(ph) for j in range(pw)], y[s:e])
                else:           # one GEMM per sample, written straight into y
                    np.matmul(wmat, cols.reshape(self.K, n, self.Lq).transpose(1, 0, 2), out=ys)
                _epilogue(ys, bias, None if residual is None else residual[s:e].reshape(ys.shape), relu)

        run_parallel(work, self.chunks, self.workers)
        return y

    def _forward_split_samples(self, x, wmat, b, relu, residual, y):
        """forward for a batch smaller than the threads (batch-1 inference): the work inside each sample is split
        over the threads, where one chunk per sample would leave the column copy on one core (ResNet-50's 7x7
        stem at batch 1: 2.2x faster). Each thread either builds and multiplies the columns of a block of output
        rows or, where a sample has more output channels than pixels, multiplies shared columns by its share of
        the channels: it then packs only that share of the weights (ResNet-50's 7x7-map layers 1.2-1.4x)."""
        xb = self._padded(x, 0, self.N)      # padded once, then only read by every thread
        bias = None if b is None else b.reshape(self.O, 1)
        ys = y.reshape(self.N, self.O, self.L)
        rs = None if residual is None else residual.reshape(ys.shape)

        def finish(n, out, rows, chans):
            _epilogue(out, None if bias is None else bias[chans],
                      None if rs is None else rs[n, chans, rows], relu)

        if self.O > self.L:
            cols = self._im2col(xb).reshape(self.K, self.N, self.L)

            def work(chunks):
                for n, (o0, o1) in chunks:
                    out = ys[n, o0:o1]
                    np.matmul(wmat[o0:o1], cols[:, n], out=out)
                    finish(n, out, slice(None), slice(o0, o1))

            parts = split_chunks(self.O, -(-self.O // self.workers), self.workers)
        else:
            (sh, sw), (dh, dw) = self.stride, self.dilation
            _, bc, bh, bw = xb.strides

            def work(chunks):
                for n, (r0, r1) in chunks:
                    windows = as_strided(xb[n, :, r0 * sh:], shape=(self.C, self.kh, self.kw, r1 - r0, self.Wo),
                                         strides=(bc, bh * dh, bw * dw, bh * sh, bw * sw), writeable=False)
                    block = scratch("conv.cols", windows.shape, self.dtype)
                    np.copyto(block, windows)
                    columns = slice(r0 * self.Wo, r1 * self.Wo)
                    out = ys[n, :, columns]
                    np.matmul(wmat, block.reshape(self.K, -1), out=out)
                    finish(n, out, columns, slice(None))

            parts = split_chunks(self.Ho, _ROW_BLOCK_BYTES // (self.K * self.Wo * self.dtype.itemsize), self.workers)
        run_parallel(work, [(n, part) for n in range(self.N) for part in parts], self.workers)

    def _transposed(self, need_dx):
        """For stride 1 with pads <= (k-1)*dilation: the convolution of gy (zero-padded by the
        complementary amounts) with the flipped, transposed kernel, whose output is dx; else None."""
        if self.stride != (1, 1) or not TRANSPOSED_BWD or self.Wo <= FLAT_MAX_W:
            return None
        (dh, dw), (top, bottom, left, right) = self.dilation, self.padding
        eh, ew = (self.kh - 1) * dh, (self.kw - 1) * dw
        pads = (eh - top, eh - bottom, ew - left, ew - right)
        # gy's columns (O*kh*kw x H*W) replace x's (C*kh*kw x Ho*Wo) and, with dx, the col2im
        # scatter-add, which costs about two more column passes: so allow 3x bigger columns then.
        # Rules out LeNet's valid 5x5 conv2 (gy needs 4 pixels of zero padding).
        if min(pads) < 0 or self.O * self.H * self.W > (TRANSPOSED_RATIO if need_dx else 1) * self.C * self.L:
            return None
        return FastConv((self.N, self.O, self.Ho, self.Wo), (self.C, self.O, self.kh, self.kw),
                        (1, 1), pads, self.dilation, (self.H, self.W), self.dtype, allow_flat=False)

    def backward(self, gy, x, w, need_dx, mask=None):
        """(dx or None, dw, db) given gy (N, O, Ho, Wo); x and w are the forward's inputs. With ``mask`` (the
        output of a forward with relu=True) the gradient is gy * (mask > 0), applied per chunk as it is copied."""
        tconv = self._transposed(need_dx)
        if tconv is not None:
            return self._backward_from_gy_cols(tconv, gy, x, w, need_dx, mask)
        return self._backward_from_x_cols(gy, x, w, need_dx, mask)

    def backward_data(self, gy, w):
        """dx = col2im(w^T @ gy) alone: this convolution's input gradient, which is also the forward of the
        transposed convolution with the same weights (see plugins/connection.py, ConvTranspose2d)."""
        wdx = self._dx_weights(w)
        dx = np.empty((self.N, self.C, self.H, self.W), dtype=self.dtype)

        def work(chunks):
            for s, e in chunks:
                self._dx_chunk(self._gy_chunk(gy, s, e), wdx, s, e, dx)

        run_parallel(work, self.chunks, self.workers)
        return dx

    def _dx_chunk(self, g2, wdx, s, e, dx):
        """dx[s:e] from the chunk's (O, n*Lq) gradient matrix ``g2``: col2im(wdx @ g2), cropped (wdx from
        _dx_weights)."""
        top, _, left, _ = self.padding
        dcols = scratch("conv.cols", (self.K, (e - s) * self.Lq), self.dtype)  # (the chunk's own cols consumed)
        np.matmul(wdx, g2, out=dcols)
        dpad = self._col2im(dcols, e - s)[..., top:top + self.H, left:left + self.W]
        dx[s:e] = dpad.transpose(1, 0, 2, 3) if self.flat else dpad

    def _backward_from_x_cols(self, gy, x, w, need_dx, mask=None):
        """dw = gy @ cols(x)^T; dx = col2im(w^T @ gy). General (any stride/padding)."""
        wdx = self._dx_weights(w) if need_dx else None
        dx = np.empty((self.N, self.C, self.H, self.W), dtype=self.dtype) if need_dx else None
        # dw^T = cols @ g2^T unless O is clearly the larger: OpenBLAS runs these long-and-thin products 1.3-1.8x
        # faster with the larger of the two row counts on the left (LeNet's and cifarnet's layers, one thread),
        # and cols on the left also for cifarnet's first layer (K 27, O 32: 1.2x)
        transposed = 4 * self.K >= 3 * self.O

        def work(chunks):
            sums = {}
            for s, e in chunks:
                g2 = self._gy_chunk(gy, s, e, mask)
                db = g2.sum(axis=1)
                cols = self._im2col(self._padded(x, s, e))
                sums[s] = (np.matmul(cols, g2.T) if transposed else np.matmul(g2, cols.T), db)
                if need_dx:
                    self._dx_chunk(g2, wdx, s, e, dx)
            return sums

        dw, db = _sum_in_chunk_order(run_parallel(work, self.chunks, self.workers),
                                     (self.K, self.O) if transposed else (self.O, self.K), self.O, self.dtype)
        return dx, (dw.T if transposed else dw).reshape(w.shape), db

    def _backward_from_gy_cols(self, t, gy, x, w, need_dx, mask=None):
        """Both gradients from one im2col of the padded gy (``t`` is the transposed conv):
        dx = w_t @ cols(gy) (a forward of ``t``), and, since the column of gy at
        (o, flipped offset) lines up with x, dw^T = cols(gy) @ x^T. Saves im2col'ing x."""
        wt = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(self.C, t.K))
        dx = np.empty((self.N, self.C, self.H, self.W), dtype=self.dtype) if need_dx else None
        HW = self.H * self.W

        def work(chunks):
            sums = {}
            for s, e in chunks:
                n = e - s
                gpad = t._padded(gy, s, e, mask)
                g = gy[s:e] if mask is None else gpad[:, :, t.padding[0]:t.padding[0] + self.Ho,
                                                      t.padding[2]:t.padding[2] + self.Wo]
                db = g.sum(axis=0).reshape(self.O, -1).sum(axis=1)
                gcols = t._im2col(gpad)      # (O*kh*kw, n*H*W)
                xt = scratch("conv.xt", (self.C, n, self.H, self.W), self.dtype)
                np.copyto(xt, x[s:e].transpose(1, 0, 2, 3))
                sums[s] = (np.matmul(gcols, xt.reshape(self.C, n * HW).T), db)   # rows: (o, kh-1-i, kw-1-j)
                if need_dx:
                    per_sample = gcols.reshape(t.K, n, HW).transpose(1, 0, 2)
                    np.matmul(wt, per_sample, out=dx[s:e].reshape(n, self.C, HW))
            return sums

        dwt, db = _sum_in_chunk_order(run_parallel(work, t.chunks, t.workers), (t.K, self.C), self.O, self.dtype)
        dw = dwt.reshape(self.O, self.kh, self.kw, self.C)[:, ::-1, ::-1, :].transpose(0, 3, 1, 2)
        return dx, np.ascontiguousarray(dw), db


def _epilogue(y, bias, residual, relu):
    """In place on a freshly multiplied block of output: + bias, + residual, then max(., 0)."""
    if bias is not None:
        y += bias
    if residual is not None:
        y += residual
    if relu:
        np.maximum(y, 0, out=y)


def _sum_in_chunk_order(parts, dw_shape, n_out, dtype):
    """Add per-chunk (dw, db) in batch order: the result must not depend on which worker thread took
    which chunk, or training would not repeat bit for bit."""
    merged = {}
    for part in parts:
        merged.update(part)
    dw, db = np.zeros(dw_shape, dtype=dtype), np.zeros(n_out, dtype=dtype)
    for start in sorted(merged):
        dw += merged[start][0]
        db += merged[start][1]
    return dw, db
