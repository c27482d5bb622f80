"""Pooling kernels vs PyTorch, vs a direct loop reference (asymmetric pads) and finite differences."""
import numpy as np
import pytest

from cnngraph.kernels import (avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward,
                              max_pool2d_forward, pool_output_size)

from gradcheck import numeric_gradient

TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}

# (N, C, H, W, kernel, stride, symmetric padding (ph, pw), dilation, ceil_mode)
MAX_CONFIGS = [
    (2, 3, 8, 8, (2, 2), (2, 2), (0, 0), (1, 1), False),     # cifarnet pool
    (2, 3, 7, 7, (2, 2), (2, 2), (0, 0), (1, 1), True),      # ceil: partial last window
    (2, 2, 9, 8, (3, 3), (2, 2), (1, 1), (1, 1), False),     # overlapping windows + pad
    (2, 2, 9, 8, (3, 3), (2, 2), (1, 1), (1, 1), True),
    (1, 2, 10, 11, (3, 2), (2, 3), (1, 1), (2, 1), True),    # dilation + ceil
    (2, 2, 6, 6, (3, 3), (1, 1), (1, 1), (1, 1), False),     # stride 1
    (2, 2, 5, 5, (5, 5), (5, 5), (0, 0), (1, 1), False),     # kernel == input (global)
    (2, 2, 6, 5, (2, 2), (3, 3), (1, 0), (1, 1), True),      # ceil drop rule
    (1, 1, 28, 28, (2, 2), (2, 2), (0, 0), (1, 1), False),   # LeNet
    (2, 3, 6, 9, (3, 3), (3, 3), (0, 0), (1, 1), False),     # tiled, 3 rows x 3 columns per window
    (2, 2, 4, 6, (1, 2), (1, 2), (0, 0), (1, 1), False),     # tiled, one row per window
    (2, 2, 6, 4, (2, 1), (2, 1), (0, 0), (1, 1), False),     # tiled, one column per window
]
AVG_CONFIGS = [
    (2, 3, 8, 8, (2, 2), (2, 2), (0, 0), False, True),
    (2, 3, 7, 7, (2, 2), (2, 2), (0, 0), True, True),
    (2, 2, 9, 8, (3, 3), (2, 2), (1, 1), False, True),
    (2, 2, 9, 8, (3, 3), (2, 2), (1, 1), False, False),
    (2, 2, 9, 8, (3, 3), (2, 2), (1, 1), True, True),        # divisor counts pad, not overhang
    (2, 2, 9, 8, (3, 3), (2, 2), (1, 1), True, False),
    (2, 2, 10, 11, (4, 3), (3, 2), (2, 1), True, True),
    (2, 2, 6, 5, (2, 2), (3, 3), (1, 0), True, True),
    (2, 2, 5, 5, (5, 5), (5, 5), (0, 0), False, True),
]


def rand(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def sym(p):
    return (p[0], p[0], p[1], p[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", MAX_CONFIGS)
def test_max_pool_vs_torch(cfg, dtype):
    torch = pytest.importorskip("torch")
    N, C, H, W, k, s, p, d, ceil = cfg
    x = rand((N, C, H, W), dtype)
    y, saved = max_pool2d_forward(x, k, s, sym(p), d, ceil, save=True)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, k, s, p, d, ceil_mode=ceil)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, ty.detach().numpy())
    gy = rand(y.shape, dtype, 1)
    ty.backward(torch.tensor(gy))
    dx = max_pool2d_backward(gy, saved)
    assert dx.dtype == dtype and dx.shape == x.shape
    np.testing.assert_allclose(dx, tx.grad.numpy(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", AVG_CONFIGS)
def test_avg_pool_vs_torch(cfg, dtype):
    torch = pytest.importorskip("torch")
    N, C, H, W, k, s, p, ceil, cip = cfg
    x = rand((N, C, H, W), dtype)
    y, saved = avg_pool2d_forward(x, k, s, sym(p), ceil, cip, save=True)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, k, s, p, ceil_mode=ceil, count_include_pad=cip)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ty.detach().numpy(), **TOL[dtype])
    gy = rand(y.shape, dtype, 1)
    ty.backward(torch.tensor(gy))
    dx = avg_pool2d_backward(gy, saved)
    assert dx.dtype == dtype and dx.shape == x.shape
    np.testing.assert_allclose(dx, tx.grad.numpy(), **TOL[dtype])


@pytest.mark.parametrize("k", [(2, 2), (3, 2), (2, 3), (1, 3), (3, 1)])
def test_tiled_max_pool_many_ties_like_torch(k):
    """Small integers tie in most windows: the gradient must go to the first maximum in raster order."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(5).integers(0, 3, (3, 4, 6, 6)).astype(np.float32)
    y, saved = max_pool2d_forward(x, k, k, (0,) * 4, (1, 1), False, save=True)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, k, k)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    gy = rand(y.shape, np.float32, 3)
    ty.backward(torch.tensor(gy))
    np.testing.assert_array_equal(max_pool2d_backward(gy, saved), tx.grad.numpy())


def test_max_pool_ties_first_max():
    torch = pytest.importorskip("torch")
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 2:, 2:] = [[1, 1], [1, 0]]
    for k, s in [((2, 2), (2, 2)), ((3, 3), (1, 1))]:
        y, saved = max_pool2d_forward(x, k, s, (0, 0, 0, 0), (1, 1), False, save=True)
        gy = rand(y.shape, np.float32, 2)
        tx = torch.tensor(x, requires_grad=True)
        torch.nn.functional.max_pool2d(tx, k, s).backward(torch.tensor(gy))
        np.testing.assert_allclose(max_pool2d_backward(gy, saved), tx.grad.numpy(), rtol=1e-6)


# ---- reference loops (ONNX semantics for asymmetric pads), no torch needed ----

def ref_pool(x, mode, k, s, pad, d, ceil, cip=True):
    N, C, H, W = x.shape
    t, b, l, r = pad
    Ho = pool_output_size(H, k[0], s[0], t, b, d[0], ceil)
    Wo = pool_output_size(W, k[1], s[1], l, r, d[1], ceil)
    y = np.zeros((N, C, Ho, Wo), x.dtype)
    for oh in range(Ho):
        for ow in range(Wo):
            h0, w0 = oh * s[0] - t, ow * s[1] - l
            rows = [h0 + i * d[0] for i in range(k[0]) if 0 <= h0 + i * d[0] < H]
            cols = [w0 + j * d[1] for j in range(k[1]) if 0 <= w0 + j * d[1] < W]
            win = x[:, :, rows][:, :, :, cols]
            if mode == "max":
                y[:, :, oh, ow] = win.max(axis=(2, 3))
            else:
                if cip:
                    nh = min(h0 + k[0], H + b) - h0
                    nw = min(w0 + k[1], W + r) - w0
                else:
                    nh, nw = len(rows), len(cols)
                y[:, :, oh, ow] = win.sum(axis=(2, 3)) / (nh * nw)
    return y


ASYM = [  # kernel, stride, pad (t,b,l,r), dilation, ceil
    ((2, 2), (1, 1), (0, 1, 0, 1), (1, 1), False),   # "same_upper" for even kernel
    ((3, 2), (2, 2), (1, 0, 0, 1), (1, 1), False),
    ((3, 3), (2, 2), (2, 1, 0, 2), (1, 1), True),
    ((2, 3), (2, 1), (1, 0, 1, 2), (2, 1), True),
]


@pytest.mark.parametrize("cfg", ASYM)
def test_asymmetric_vs_reference(cfg):
    k, s, pad, d, ceil = cfg
    x = rand((2, 3, 7, 8), np.float64)
    ym, _ = max_pool2d_forward(x, k, s, pad, d, ceil, save=False)
    np.testing.assert_array_equal(ym, ref_pool(x, "max", k, s, pad, d, ceil))
    if d == (1, 1):
        for cip in (True, False):
            ya, _ = avg_pool2d_forward(x, k, s, pad, ceil, cip, save=False)
            np.testing.assert_allclose(ya, ref_pool(x, "avg", k, s, pad, d, ceil, cip), rtol=1e-12)


@pytest.mark.parametrize("cfg", ASYM)
def test_backward_finite_differences(cfg):
    k, s, pad, d, ceil = cfg
    x = rand((1, 2, 5, 6), np.float64, 5)   # distinct values: max is differentiable
    ym, saved = max_pool2d_forward(x, k, s, pad, d, ceil, save=True)
    gy = rand(ym.shape, np.float64, 6)
    f = lambda: float((max_pool2d_forward(x, k, s, pad, d, ceil, False)[0] * gy).sum())  # noqa: E731
    np.testing.assert_allclose(max_pool2d_backward(gy, saved), numeric_gradient(f, x), rtol=1e-7, atol=1e-8)
    if d == (1, 1):
        ya, saved = avg_pool2d_forward(x, k, s, pad, ceil, False, save=True)
        gy = rand(ya.shape, np.float64, 7)
        f = lambda: float((avg_pool2d_forward(x, k, s, pad, ceil, False, False)[0] * gy).sum())  # noqa: E731
        np.testing.assert_allclose(avg_pool2d_backward(gy, saved), numeric_gradient(f, x), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("args,expected", [
    ((32, 2, 2, 0, 0, 1, False), 16),
    ((7, 2, 2, 0, 0, 1, True), 4),
    ((7, 2, 2, 0, 0, 1, False), 3),
    ((6, 2, 3, 1, 1, 1, True), 3),
    ((5, 2, 2, 1, 1, 1, True), 3),     # last window would start in the trailing pad: dropped
    ((5, 3, 2, 1, 1, 1, True), 3),
])
def test_pool_output_size(args, expected):
    assert pool_output_size(*args) == expected


@pytest.mark.parametrize("threads", ["1", "2"])
def test_tiled_fast_path_matches_generic(threads, monkeypatch):
    """The tiled fast path (tiny chunks, serial/threaded) agrees with the generic window loop."""
    from cnngraph.kernels import _pool_fast, pool
    monkeypatch.setattr(_pool_fast, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(_pool_fast, "_PARALLEL_BYTES", 0)
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", threads)
    x = rand((5, 3, 6, 9), np.float32, 9)
    x[0, 0, :2, :3] = 1.0   # ties
    k = (2, 3)
    monkeypatch.setattr(_pool_fast, "tiles_exactly", lambda *a: False)
    ym_ref, sm_ref = max_pool2d_forward(x, k, k, (0,) * 4, (1, 1), False, True)
    ya_ref, sa_ref = avg_pool2d_forward(x, k, k, (0,) * 4, False, True, True)
    monkeypatch.undo()
    monkeypatch.setattr(_pool_fast, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(_pool_fast, "_PARALLEL_BYTES", 0)
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", threads)
    ym, sm = max_pool2d_forward(x, k, k, (0,) * 4, (1, 1), False, True)
    ya, sa = avg_pool2d_forward(x, k, k, (0,) * 4, False, True, True)
    assert sm[0] is pool._TILED and sa[0] is pool._TILED
    np.testing.assert_array_equal(ym, ym_ref)
    np.testing.assert_allclose(ya, ya_ref, rtol=1e-6)
    gy = rand(ym.shape, np.float32, 10)
    np.testing.assert_array_equal(max_pool2d_backward(gy, sm), max_pool2d_backward(gy, sm_ref))
    np.testing.assert_allclose(avg_pool2d_backward(gy, sa), avg_pool2d_backward(gy, sa_ref), rtol=1e-6)


def test_max_pool_nan_like_torch():
    torch = pytest.importorskip("torch")
    x = rand((2, 2, 4, 6), np.float32, 11)
    x[0, 0, 0, 1] = np.nan
    x[1, 1, 2:, 4:] = np.nan
    for k, s in [((2, 2), (2, 2)), ((3, 3), (1, 1)), ((1, 2), (1, 2)), ((2, 3), (2, 3))]:
        y, saved = max_pool2d_forward(x, k, s, (0,) * 4, (1, 1), False, True)
        tx = torch.tensor(x, requires_grad=True)
        ty = torch.nn.functional.max_pool2d(tx, k, s)
        np.testing.assert_array_equal(y, ty.detach().numpy())
        gy = rand(y.shape, np.float32, 12)
        ty.backward(torch.tensor(gy))
        np.testing.assert_allclose(max_pool2d_backward(gy, saved), tx.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("threads", ["2", "3"])
@pytest.mark.parametrize("cfg", [MAX_CONFIGS[2], MAX_CONFIGS[3], MAX_CONFIGS[4], MAX_CONFIGS[5]],
                         ids=["pad", "ceil", "dilation", "stride1"])
def test_inference_max_pool_of_fewer_samples_than_threads_splits_channels_like_torch(cfg, threads, monkeypatch):
    """Values-only max pooling (inference) of a batch smaller than the threads runs channel blocks."""
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", threads)
    _, _, H, W, k, s, p, d, ceil = cfg
    x = rand((1, 7, H, W), np.float32, seed=5)
    y, _ = max_pool2d_forward(x, k, s, sym(p), d, ceil, save=False)
    ref = torch.nn.functional.max_pool2d(torch.tensor(x), k, s, p, d, ceil_mode=ceil).numpy()
    np.testing.assert_array_equal(y, ref)
