"""Measure the convolution algorithms that cnngraph does *not* use against the one it does.

Run as:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/conv_algorithms.py [--rounds 5]

cnngraph's NumPy convolution is im2col + GEMM over cache-sized batch chunks on the kernel threads
(``cnngraph.kernels._conv_fast``). This script implements the two classic alternatives the same way
(batch chunks, both threads, single-threaded BLAS) and times all three forward passes, alternating,
on the layers of the bundled benchmark networks and ResNet-50:

- Winograd F(2x2, 3x3) (Lavin & Gray 2016): 3x3 stride-1 convolutions as 16 GEMMs over 4x4 input
  tiles, 2.25x fewer multiplications, paid for with input and output transforms;
- FFT convolution: per-frequency complex GEMMs between the transformed input and kernels; its cost
  does not grow with the kernel size, so it is the candidate for 5x5 and larger kernels.
- NHWC (channels-last) im2col: the same lowering on a channels-last input, whose windows are runs of
  kw*C contiguous values and whose GEMM writes the channels-last output in place (no transposing copies),
  forward and backward, timed against cnngraph's forward + backward (``--nhwc``). The input is taken
  as already channels-last: the layout a whole channels-last engine would keep between layers.

Each result is checked against cnngraph's kernel before it is timed. The table gives the median
forward time of each (ms) and the speed-up over im2col; docs/ENGINE.md records the outcome.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
from numpy.lib.stride_tricks import as_strided

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnngraph.kernels._parallel import blas_held_for, n_workers, run_parallel, split_chunks  # noqa: E402
from cnngraph.kernels.conv import conv2d_forward  # noqa: E402

# Winograd F(2x2, 3x3) matrices: Y = A^T [(G g G^T) * (B^T d B)] A
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
CHUNK_BYTES = 4 << 20      # transformed input per chunk, as the im2col path's column buffer


def winograd_weights(w):
    """U (16, O, C): the kernels in the Winograd domain (done once per weight update)."""
    u = np.matmul(np.matmul(G.astype(w.dtype), w), G.T.astype(w.dtype))     # (O, C, 4, 4)
    return np.ascontiguousarray(u.transpose(2, 3, 0, 1).reshape(16, *w.shape[:2]))


def _input_transform(d, out):
    """out[4i+j] = (B^T d B)[i, j] for tiles d (..., 4, 4), B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]."""
    r = (d[..., 0, :] - d[..., 2, :], d[..., 1, :] + d[..., 2, :],
         d[..., 2, :] - d[..., 1, :], d[..., 1, :] - d[..., 3, :])
    for i, ri in enumerate(r):
        np.subtract(ri[..., 0], ri[..., 2], out=out[4 * i])
        np.add(ri[..., 1], ri[..., 2], out=out[4 * i + 1])
        np.subtract(ri[..., 2], ri[..., 1], out=out[4 * i + 2])
        np.subtract(ri[..., 1], ri[..., 3], out=out[4 * i + 3])


def _output_transform(m, y):
    """y[a][b] = (A^T m A)[a, b] for m (16, ...), A^T = [[1,1,1,0],[0,1,-1,-1]]."""
    s0 = [m[j] + m[4 + j] + m[8 + j] for j in range(4)]
    s1 = [m[4 + j] - m[8 + j] - m[12 + j] for j in range(4)]
    for a, s in enumerate((s0, s1)):
        np.add(s[0] + s[1], s[2], out=y[a][0])
        np.subtract(s[1] - s[2], s[3], out=y[a][1])


def winograd_conv(x, u, b, padding):
    """3x3, stride 1 convolution of x (N, C, H, W) with Winograd kernels u (16, O, C)."""
    N, C, H, W = x.shape
    O = u.shape[1]
    top, bottom, left, right = padding
    Ho, Wo = H + top + bottom - 2, W + left + right - 2
    th, tw = -(-Ho // 2), -(-Wo // 2)
    y = np.empty((N, O, Ho, Wo), x.dtype)
    per_sample = 16 * C * th * tw * x.itemsize

    def work(chunks):
        for s, e in chunks:
            n = e - s
            xp = np.zeros((n, C, 2 * th + 2, 2 * tw + 2), x.dtype)
            xp[:, :, top:top + H, left:left + W] = x[s:e]
            sn, sc, sh, sw = xp.strides
            tiles = as_strided(xp, (C, n, th, tw, 4, 4), (sc, sn, 2 * sh, 2 * sw, sh, sw), writeable=False)
            v = np.empty((16, C, n, th, tw), x.dtype)
            _input_transform(tiles, v)
            m = np.matmul(u, v.reshape(16, C, n * th * tw)).reshape(16, O, n, th, tw)
            full = np.empty((n, O, 2 * th, 2 * tw), x.dtype)
            quads = full.reshape(n, O, th, 2, tw, 2).transpose(3, 5, 1, 0, 2, 4)   # [a][b] -> (O, n, th, tw)
            _output_transform(m, quads)
            np.copyto(y[s:e], full[:, :, :Ho, :Wo])
            if b is not None:
                y[s:e] += b.reshape(1, O, 1, 1)

    run_parallel(work, split_chunks(N, max(1, CHUNK_BYTES // per_sample), n_workers()))
    return y


def fft_weights(w, shape):
    """Kernels flipped (FFT computes convolution, layers compute correlation) and transformed to the
    padded input's size: (Fh, Fw//2+1, O, C) complex."""
    f = np.fft.rfft2(w[:, :, ::-1, ::-1], s=shape, axes=(2, 3))
    return np.ascontiguousarray(f.transpose(2, 3, 0, 1)).astype(np.complex64)


def fft_conv(x, wf, b, padding, stride, kernel):
    """Stride-s convolution through per-frequency complex GEMMs; wf from fft_weights for the padded size."""
    N, C, H, W = x.shape
    O = wf.shape[2]
    top, bottom, left, right = padding
    kh, kw = kernel
    Hp, Wp = H + top + bottom, W + left + right
    Ho, Wo = (Hp - kh) // stride + 1, (Wp - kw) // stride + 1
    y = np.empty((N, O, Ho, Wo), x.dtype)
    per_sample = C * Hp * (Wp // 2 + 1) * 8 * 2

    def work(chunks):
        for s, e in chunks:
            n = e - s
            xp = np.zeros((n, C, Hp, Wp), x.dtype)
            xp[:, :, top:top + H, left:left + W] = x[s:e]
            xf = np.fft.rfft2(xp, axes=(2, 3)).astype(np.complex64)         # (n, C, Hp, Wp//2+1)
            yf = np.matmul(wf, xf.transpose(2, 3, 1, 0))                     # (Hp, Wq, O, n)
            full = np.fft.irfft2(yf.transpose(3, 2, 0, 1), s=(Hp, Wp), axes=(2, 3))
            # circular convolution: the valid outputs start at the kernel's far corner
            np.copyto(y[s:e], full[:, :, kh - 1::stride, kw - 1::stride][:, :, :Ho, :Wo])
            if b is not None:
                y[s:e] += b.reshape(1, O, 1, 1)

    run_parallel(work, split_chunks(N, max(1, (8 << 20) // per_sample), n_workers()))
    return y


def _nhwc_geometry(x_shape, w_shape, stride, padding):
    N, H, W, C = x_shape
    O, _, kh, kw = w_shape
    top, bottom, left, right = padding
    Ho, Wo = (H + top + bottom - kh) // stride + 1, (W + left + right - kw) // stride + 1
    return N, H, W, C, O, kh, kw, Ho, Wo, H + top + bottom, W + left + right


def _nhwc_cols(x, s, e, geo, stride, padding):
    """Columns (n*Ho*Wo, kh*kw*C) of chunk x[s:e] (channels-last), rows ordered (n, ho, wo)."""
    N, H, W, C, O, kh, kw, Ho, Wo, Hp, Wp = geo
    top, _, left, _ = padding
    n = e - s
    xp = np.zeros((n, Hp, Wp, C), x.dtype)
    xp[:, top:top + H, left:left + W] = x[s:e]
    sn, sh, sw, sc = xp.strides
    windows = as_strided(xp, (n, Ho, Wo, kh, kw, C), (sn, stride * sh, stride * sw, sh, sw, sc), writeable=False)
    return np.ascontiguousarray(windows).reshape(n * Ho * Wo, kh * kw * C)


def nhwc_weights(w):
    """(kh*kw*C, O): the kernels in the columns' (i, j, c) order."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))


def nhwc_conv(x, wk, w_shape, b, stride, padding):
    """y (N, Ho, Wo, O) of a channels-last x (N, H, W, C); wk from nhwc_weights."""
    geo = _nhwc_geometry(x.shape, w_shape, stride, padding)
    N, H, W, C, O, kh, kw, Ho, Wo, Hp, Wp = geo
    y = np.empty((N, Ho, Wo, O), x.dtype)
    per_sample = Ho * Wo * kh * kw * C * x.itemsize

    def work(chunks):
        for s, e in chunks:
            ys = y[s:e].reshape(-1, O)
            np.matmul(_nhwc_cols(x, s, e, geo, stride, padding), wk, out=ys)   # written in place
            if b is not None:
                ys += b

    run_parallel(work, split_chunks(N, max(1, CHUNK_BYTES // per_sample), n_workers()))
    return y


def nhwc_conv_backward(gy, x, wk, w_shape, stride, padding):
    """(dx, dw (O, C, kh, kw), db) for nhwc_conv; per-chunk dw and db summed in chunk order."""
    geo = _nhwc_geometry(x.shape, w_shape, stride, padding)
    N, H, W, C, O, kh, kw, Ho, Wo, Hp, Wp = geo
    top, _, left, _ = padding
    dx = np.empty(x.shape, x.dtype)
    per_sample = Ho * Wo * kh * kw * C * x.itemsize

    def work(chunks):
        sums = {}
        for s, e in chunks:
            n = e - s
            g = gy[s:e].reshape(-1, O)
            cols = _nhwc_cols(x, s, e, geo, stride, padding)
            sums[s] = (cols.T @ g, g.sum(axis=0))
            dcols = np.matmul(g, wk.T, out=cols).reshape(n, Ho, Wo, kh, kw, C)     # cols consumed
            dpad = np.zeros((n, Hp, Wp, C), x.dtype)
            for i in range(kh):
                for j in range(kw):
                    dst = dpad[:, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride]
                    np.add(dst, dcols[:, :, :, i, j], out=dst)
            dx[s:e] = dpad[:, top:top + H, left:left + W]
        return sums

    parts = {}
    for part in run_parallel(work, split_chunks(N, max(1, CHUNK_BYTES // per_sample), n_workers())):
        parts.update(part)
    dwk, db = sum(parts[k][0] for k in sorted(parts)), sum(parts[k][1] for k in sorted(parts))
    dw = dwk.reshape(kh, kw, C, O).transpose(3, 2, 0, 1)
    return dx, np.ascontiguousarray(dw), db


# (name, batch, C, H, O, kernel, stride, padding)
CASES = [
    ("cifarnet conv2", 64, 32, 32, 32, 3, 1, 1),
    ("cifarnet conv4", 64, 64, 16, 64, 3, 1, 1),
    ("cifarnet conv2", 256, 32, 32, 32, 3, 1, 1),
    ("resnet_small b1_conv1", 32, 16, 32, 16, 3, 1, 1),
    ("resnet_small b2_conv2", 32, 32, 16, 32, 3, 1, 1),
    ("ResNet-50 layer1 3x3", 1, 64, 56, 64, 3, 1, 1),
    ("ResNet-50 layer2 3x3", 1, 128, 28, 128, 3, 1, 1),
    ("ResNet-50 layer3 3x3", 1, 256, 14, 256, 3, 1, 1),
    ("ResNet-50 layer4 3x3", 1, 512, 7, 512, 3, 1, 1),
    ("ResNet-50 layer1 3x3", 16, 64, 56, 64, 3, 1, 1),
    ("ResNet-50 layer3 3x3", 16, 256, 14, 256, 3, 1, 1),
    ("LeNet-5 conv1 5x5", 256, 1, 28, 6, 5, 1, 2),
    ("LeNet-5 conv2 5x5", 256, 6, 14, 16, 5, 1, 0),
    ("5x5 64->64 on 32x32", 32, 64, 32, 64, 5, 1, 2),
    ("7x7 64->64 on 28x28", 16, 64, 28, 64, 7, 1, 3),
    ("ResNet-50 stem 7x7/2", 1, 3, 224, 64, 7, 2, 3),
]


def _median_ms(fn, rounds, repeat):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        times.append((time.perf_counter() - start) / repeat * 1e3)
    return times


def run_case(case, rounds, rng):
    name, N, C, H, O, k, s, p = case
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w = (rng.standard_normal((O, C, k, k)) / np.sqrt(C * k * k)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    pad = (p, p, p, p)
    ref = conv2d_forward(x, w, b, (s, s), pad, (1, 1), 1, False)[0]
    algos = {"im2col": lambda: conv2d_forward(x, w, b, (s, s), pad, (1, 1), 1, False)[0]}
    # The weights are transformed once, as for inference; "transforms" below is that cost per call,
    # which training pays at every step.
    transforms = {}
    if k == 3 and s == 1:
        u = winograd_weights(w)
        algos["winograd"] = lambda: winograd_conv(x, u, b, pad)
        transforms["winograd"] = lambda: winograd_weights(w)
    wf_shape = (H + 2 * p, H + 2 * p)
    wf = fft_weights(w, wf_shape)
    algos["fft"] = lambda: fft_conv(x, wf, b, pad, s, (k, k))
    transforms["fft"] = lambda: fft_weights(w, wf_shape)
    errors = {}
    for key, fn in algos.items():
        out = fn()
        errors[key] = float(np.abs(out - ref).max() / np.abs(ref).max())
        if errors[key] > 1e-3:
            raise SystemExit(f"{name}: {key} disagrees with cnngraph's kernel (max rel. error {errors[key]:.2e})")
    flops = 2 * N * O * C * k * k * ref.shape[2] * ref.shape[3]
    repeat = max(1, int(2e8 // flops))
    samples = {key: [] for key in algos}
    for fn in algos.values():   # warm-up
        fn()
    for _ in range(rounds):     # alternate so every algorithm sees the same machine state
        for key, fn in algos.items():
            samples[key] += _median_ms(fn, 1, repeat)
    weights_ms = {key: statistics.median(_median_ms(fn, 3, 1)) for key, fn in transforms.items()}
    return {key: statistics.median(v) for key, v in samples.items()}, errors, weights_ms


def run_nhwc_case(case, rounds, rng):
    """Median forward + backward ms of cnngraph's kernel (NCHW) and of NHWC im2col, alternating."""
    from cnngraph.kernels.conv import conv2d_backward
    name, N, C, H, O, k, s, p = case
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w = (rng.standard_normal((O, C, k, k)) / np.sqrt(C * k * k)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    pad, first = (p, p, p, p), C <= 3       # a first layer needs no dx, in both
    y, saved = conv2d_forward(x, w, b, (s, s), pad, (1, 1), 1, True)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    ref = conv2d_backward(gy, saved, need_dx=not first)
    xh, gyh, wk = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.ascontiguousarray(gy.transpose(0, 2, 3, 1)), nhwc_weights(w)
    yh = nhwc_conv(xh, wk, w.shape, b, s, pad)
    dxh, dw, db = nhwc_conv_backward(gyh, xh, wk, w.shape, s, pad)
    got = (yh.transpose(0, 3, 1, 2), dw, db) + (() if first else (dxh.transpose(0, 3, 1, 2),))
    want = (y, ref[1], ref[2]) + (() if first else (ref[0],))
    err = max(float(np.abs(a - r).max() / np.abs(r).max()) for a, r in zip(got, want))
    if err > 1e-3:
        raise SystemExit(f"{name}: NHWC disagrees with cnngraph's kernel (max rel. error {err:.2e})")

    def ours():
        yy, sv = conv2d_forward(x, w, b, (s, s), pad, (1, 1), 1, True)
        conv2d_backward(gy, sv, need_dx=not first)

    def nhwc():
        nhwc_conv(xh, wk, w.shape, b, s, pad)
        nhwc_conv_backward(gyh, xh, wk, w.shape, s, pad)

    repeat = max(1, int(6e8 // (6 * N * O * C * k * k * y.shape[2] * y.shape[3])))
    samples = {"nchw": [], "nhwc": []}
    ours(), nhwc()
    for _ in range(rounds):
        samples["nchw"] += _median_ms(ours, 1, repeat)
        samples["nhwc"] += _median_ms(nhwc, 1, repeat)
    return {key: statistics.median(v) for key, v in samples.items()}, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nhwc", action="store_true", help="time NHWC im2col forward + backward instead")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    if args.nhwc:
        print("forward + backward ms (median); cnngraph's NCHW kernel against NHWC im2col on channels-last data")
        print(f"{'layer':24s} {'batch':>5s} {'NCHW':>8s} {'NHWC':>8s} {'speed-up':>9s}  {'max rel. err':>12s}")
        for case in CASES:
            with blas_held_for(case[1]):
                ms, err = run_nhwc_case(case, args.rounds, rng)
            print(f"{case[0]:24s} {case[1]:5d} {ms['nchw']:8.2f} {ms['nhwc']:8.2f} {ms['nchw'] / ms['nhwc']:8.2f}x"
                  f"  {err:12.1e}")
        return
    print("forward ms (median); weights pre-transformed; in brackets the weight transform per call")
    print(f"{'layer':24s} {'batch':>5s} {'im2col':>8s} {'winograd':>18s} {'fft':>18s}  {'max rel. err':>12s}")
    for case in CASES:
        with blas_held_for(case[1]):
            ms, err, wms = run_case(case, args.rounds, rng)

        def cell(key):
            if key not in ms:
                return f"{'-':>18s}"
            return f"{ms[key]:7.2f} {ms['im2col'] / ms[key]:4.2f}x [{wms[key]:5.2f}]"

        print(f"{case[0]:24s} {case[1]:5d} {ms['im2col']:8.2f} {cell('winograd')} {cell('fft')}  {max(err.values()):12.1e}")


if __name__ == "__main__":
    main()
