"""conv2d kernels vs PyTorch (forward, autograd) and vs central finite differences."""
import numpy as np
import pytest

from cnngraph.kernels import conv2d_backward, conv2d_forward

from gradcheck import numeric_gradient

# (N, C, H, W, O, (kh, kw), stride, padding(t,b,l,r), dilation, groups, bias)
CONFIGS = [
    (2, 3, 8, 8, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True),        # cifar-style
    (2, 4, 7, 6, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True),        # C == O: backward via gy cols
    (2, 4, 9, 7, 6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, True),        # stride 2, odd sizes
    (1, 3, 8, 8, 5, (2, 2), (1, 1), (0, 1, 0, 1), (1, 1), 1, True),        # "same", even kernel
    (2, 3, 7, 9, 4, (3, 2), (2, 1), (1, 2, 0, 1), (1, 1), 1, False),       # asymmetric everything
    (2, 4, 11, 10, 4, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1, True),      # dilation
    (2, 3, 9, 9, 2, (3, 3), (3, 2), (0, 0, 1, 1), (2, 1), 1, True),        # dilation + stride
    (2, 4, 6, 6, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, True),        # groups
    (2, 4, 6, 6, 8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 4, True),        # depthwise x2
    (2, 5, 6, 6, 5, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 5, False),       # depthwise, big kernel
    (3, 6, 5, 5, 4, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),        # 1x1
    (2, 8, 4, 4, 4, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 2, True),        # 1x1 strided, grouped
    (2, 3, 5, 5, 7, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),        # kernel == input
    (2, 1, 28, 28, 6, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),      # LeNet conv1
    (2, 3, 6, 6, 4, (3, 3), (4, 4), (1, 1, 1, 1), (1, 1), 1, True),        # stride > kernel
]
IDS = [f"cfg{i}" for i in range(len(CONFIGS))]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}


def make(cfg, dtype, seed=0):
    N, C, H, W, O, (kh, kw), stride, padding, dilation, groups, bias = cfg
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype) if bias else None
    return x, w, b, stride, padding, dilation, groups


def torch_conv(torch, x, w, b, stride, padding, dilation, groups):
    F = torch.nn.functional
    t, bo, l, r = padding
    x = F.pad(x, (l, r, t, bo))   # torch pads (left, right, top, bottom)
    return F.conv2d(x, w, b, stride=stride, dilation=dilation, groups=groups)


def scale(a):
    return max(1.0, float(np.abs(a).max()))


@pytest.fixture(params=["flat", "exact", "onednn"])
def layout(request, monkeypatch):
    """Run a test on the NumPy kernels with the flat stride-1 column layout allowed for every O, or for none; or
    with oneDNN taking the float32 convolutions it can (skipped where it is not installed)."""
    from cnngraph.kernels import _conv_fast, _onednn
    if request.param == "onednn":
        if not _onednn.available():
            pytest.skip("oneDNN is not installed (pip install onednn-cpu-gomp)")
        return request.param
    monkeypatch.setattr(_onednn, "_api", lambda: None)   # (the fixture's monkeypatch undoes it)
    monkeypatch.setattr(_conv_fast, "FLAT_MAX_O", 1 << 30 if request.param == "flat" else 0)
    monkeypatch.setattr(_conv_fast, "FLAT_MAX_W", 1 << 30 if request.param == "flat" else 0)
    monkeypatch.setattr(_conv_fast, "FLAT_MIN_K_PER_O", 0)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_forward_backward_vs_torch(cfg, dtype, layout):
    torch = pytest.importorskip("torch")
    x, w, b, stride, padding, dilation, groups = make(cfg, dtype)
    y, saved = conv2d_forward(x, w, b, stride, padding, dilation, groups, save=True)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if b is not None else None
    ty = torch_conv(torch, tx, tw, tb, stride, padding, dilation, groups)
    assert y.dtype == dtype and y.shape == tuple(ty.shape)
    tol = TOL[dtype]
    np.testing.assert_allclose(y / scale(y), ty.detach().numpy() / scale(y), **tol)

    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(gy))
    dx, dw, db = conv2d_backward(gy, saved)
    for ours, ref in [(dx, tx.grad), (dw, tw.grad)] + ([(db, tb.grad)] if b is not None else []):
        ref = ref.numpy()
        assert ours.dtype == dtype and ours.shape == ref.shape
        np.testing.assert_allclose(ours / scale(ref), ref / scale(ref), **tol)
    if b is None:
        assert db is None


def test_no_save_and_no_dx():
    x, w, b, *geom = make(CONFIGS[0], np.float32)
    y, saved = conv2d_forward(x, w, b, *geom, save=False)
    assert saved is None
    y2, saved = conv2d_forward(x, w, b, *geom, save=True)
    np.testing.assert_array_equal(y, y2)
    dx, dw, db = conv2d_backward(np.ones_like(y), saved, need_dx=False)
    assert dx is None and dw.shape == w.shape and db.shape == b.shape


def test_bad_shapes():
    x = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(ValueError):
        conv2d_forward(x, np.zeros((2, 2, 3, 3), np.float32), None, (1, 1), (0, 0, 0, 0), (1, 1), 1, False)
    with pytest.raises(ValueError):
        conv2d_forward(x, np.zeros((2, 3, 5, 5), np.float32), None, (1, 1), (0, 0, 0, 0), (1, 1), 1, False)


@pytest.mark.parametrize("cfg", [
    (1, 2, 4, 5, 3, (3, 2), (2, 1), (1, 0, 2, 1), (1, 2), 1, True),
    (2, 4, 4, 4, 2, (2, 2), (1, 2), (1, 1, 0, 1), (2, 1), 2, True),
], ids=["asym", "grouped"])
def test_backward_finite_differences(cfg, layout):
    x, w, b, *geom = make(cfg, np.float64, seed=3)
    y, saved = conv2d_forward(x, w, b, *geom, save=True)
    gy = np.random.default_rng(4).standard_normal(y.shape)

    def loss():
        return float((conv2d_forward(x, w, b, *geom, save=False)[0] * gy).sum())

    dx, dw, db = conv2d_backward(gy, saved)
    np.testing.assert_allclose(dx, numeric_gradient(loss, x), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(dw, numeric_gradient(loss, w), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(db, numeric_gradient(loss, b), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[1], CONFIGS[2], CONFIGS[5]], ids=["s1", "gycols", "s2", "dil"])
def test_fast_path_chunking_matches_generic(cfg, threads, layout, monkeypatch):
    """Tiny chunks (uneven last chunk) and serial/threaded runs agree with the generic path."""
    from cnngraph.kernels import _conv_fast, conv
    monkeypatch.setattr(_conv_fast, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(_conv_fast, "_PARALLEL_FLOPS", 0)
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", threads)
    cfg = (5,) + cfg[1:]
    x, w, b, stride, padding, dilation, groups = make(cfg, np.float64, seed=7)
    y, saved = conv2d_forward(x, w, b, stride, padding, dilation, groups, save=True)
    assert isinstance(saved, conv._FastSaved)   # took the fast path
    out = conv.conv_output_shape(x.shape, w.shape, stride, padding, dilation)
    y_ref, s_ref = conv._generic_forward(x, w, b, stride, padding, dilation, groups, out, True)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    gy = np.random.default_rng(8).standard_normal(y.shape)
    for ours, ref in zip(conv2d_backward(gy, saved), conv._generic_backward(gy, s_ref, True)):
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)
    dx, dw, _ = conv2d_backward(gy, saved, need_dx=False)
    assert dx is None
    np.testing.assert_allclose(dw, conv._generic_backward(gy, s_ref, False)[1], rtol=1e-12, atol=1e-12)


def test_scratch_reuse_across_geometries(layout):
    """Layers whose zero-bordered scratch buffers share a shape but not a placement stay correct.

    Forward pads x at (2, 2) into (n, C, H+2, W+2); the transposed conv computing dx pads gy at
    (0, 0) into a buffer of the same shape.
    """
    from cnngraph.kernels import conv
    cases = [(3, 4, 7, 7, 4, (3, 3), (1, 1), (2, 0, 2, 0), (1, 1), 1, True),
             (3, 4, 7, 8, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
             (3, 4, 7, 8, 4, (3, 4), (1, 1), (1, 1, 1, 2), (1, 1), 1, True)]
    for _ in range(2):   # the second round reuses buffers dirtied by the first
        for cfg in cases:
            x, w, b, *geom = make(cfg, np.float64, seed=11)
            y, saved = conv2d_forward(x, w, b, *geom, save=True)
            out = conv.conv_output_shape(x.shape, w.shape, geom[0], geom[1], geom[2])
            y_ref, s_ref = conv._generic_forward(x, w, b, *geom, out, True)
            np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
            gy = np.random.default_rng(12).standard_normal(y.shape)
            for ours, ref in zip(conv2d_backward(gy, saved), conv._generic_backward(gy, s_ref, True)):
                np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2])
def test_mixed_dtypes_and_noncontiguous(groups):
    """Gradients come back in each input's dtype; strided inputs work."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 4, 9, 6)).astype(np.float32).transpose(0, 1, 3, 2)   # (3, 4, 6, 9) view
    w = rng.standard_normal((4, 4 // groups, 3, 3))                                  # float64
    b = rng.standard_normal(4).astype(np.float16)
    geom = ((1, 2), (1, 0, 1, 1), (1, 1), groups)
    y, saved = conv2d_forward(x, w, b, *geom, save=True)
    y_ref, s_ref = conv2d_forward(np.ascontiguousarray(x), w.astype(np.float32), b.astype(np.float32),
                                  *geom, save=True)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)
    gy = rng.standard_normal(y.shape).astype(np.float32)[..., ::-1]   # negative strides
    dx, dw, db = conv2d_backward(gy, saved)
    assert (dx.dtype, dw.dtype, db.dtype) == (np.float32, np.float64, np.float16)
    for ours, ref in zip((dx, dw, db), conv2d_backward(np.ascontiguousarray(gy), s_ref)):
        np.testing.assert_allclose(ours.astype(np.float32), ref, rtol=1e-3, atol=1e-3)


def test_empty_batch():
    x = np.zeros((0, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    y, saved = conv2d_forward(x, w, np.ones(4, np.float32), (1, 1), (1, 1, 1, 1), (1, 1), 1, save=True)
    assert y.shape == (0, 4, 8, 8)
    dx, dw, db = conv2d_backward(y, saved)
    assert dx.shape == x.shape and not dw.any() and not db.any()


def test_threaded_backward_is_bit_for_bit_repeatable():
    """Gradients are summed in chunk order, whichever thread computed which chunk."""
    from cnngraph.kernels.conv import conv2d_backward, conv2d_forward
    rng = np.random.default_rng(7)
    x = rng.standard_normal((96, 16, 16, 16)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    gy = rng.standard_normal((96, 32, 16, 16)).astype(np.float32)
    results = []
    for _ in range(4):
        _, saved = conv2d_forward(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1, True)
        results.append(conv2d_backward(gy, saved))
        _, saved = conv2d_forward(x, w, b, (2, 2), (1, 1, 1, 1), (1, 1), 1, True)
        results.append(conv2d_backward(gy[:, :, :8, :8], saved))
    for a, b_ in zip(results[0::2], results[2::2]):
        for u, v in zip(a, b_):
            np.testing.assert_array_equal(u, v)
    for a, b_ in zip(results[1::2], results[3::2]):
        for u, v in zip(a, b_):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("cfg", [(5, 4, 9, 7, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4, True),
                                 (5, 3, 11, 10, 6, (3, 3), (2, 1), (2, 1, 0, 2), (2, 1), 3, True),
                                 (5, 4, 9, 9, 4, (7, 7), (1, 1), (3, 3, 3, 3), (1, 1), 4, False)],
                         ids=["3x3", "x2-stride-dilation", "7x7"])
def test_depthwise_path_matches_the_generic_path_in_any_chunking(cfg, threads, monkeypatch):
    """Depthwise convs take the shifted multiply-add path, which keeps no column buffer; tiny chunks on one
    or two threads give the generic path's numbers, and the weight gradient is the same bit for bit."""
    from cnngraph.kernels import _depthwise, conv
    monkeypatch.setattr(_depthwise, "_CHUNK_BYTES", 1)
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", threads)
    monkeypatch.setattr(_depthwise, "workers_for", lambda flops, serial: int(threads))
    x, w, b, stride, padding, dilation, groups = make(cfg, np.float64, seed=5)
    y, saved = conv2d_forward(x, w, b, stride, padding, dilation, groups, save=True)
    assert isinstance(saved, conv._DepthwiseSaved) and not hasattr(saved, "cols")
    out = conv.conv_output_shape(x.shape, w.shape, stride, padding, dilation)
    y_ref, s_ref = conv._generic_forward(x, w, b, stride, padding, dilation, groups, out, True)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    gy = np.random.default_rng(6).standard_normal(y.shape)
    ours = conv2d_backward(gy, saved)
    for a, ref in zip(ours, conv._generic_backward(gy, s_ref, True)):
        if ref is not None:
            np.testing.assert_allclose(a, ref, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(_depthwise, "workers_for", lambda flops, serial: 1)
    y1, s1 = conv2d_forward(x, w, b, stride, padding, dilation, groups, save=True)
    np.testing.assert_array_equal(conv2d_backward(gy, s1)[1], ours[1])     # same sum order on any threads


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("params", [
    {"kernel_size": 2, "stride": 2},
    {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1},
    {"kernel_size": [4, 3], "stride": [2, 3], "padding": [1, 0, 2, 1], "output_padding": [1, 2], "dilation": [1, 2]},
], ids=["k2s2", "k3s2_outpad", "asymmetric"])
def test_strided_transposed_conv_as_the_conv_adjoint_matches_torch(params, threads, monkeypatch):
    """conv_transpose2d on NumPy (strided, no groups) is the col2im of the conv2d it transposes; in tiny batch
    chunks on one and two threads its output and all gradients equal torch's in float64."""
    torch = pytest.importorskip("torch")
    import cnngraph
    from cnngraph.kernels import _conv_fast
    monkeypatch.setattr(_conv_fast, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(_conv_fast, "_PARALLEL_FLOPS", 0)
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", threads)
    spec = {"name": "t", "inputs": {"x": {"shape": [4, 5, 6]}},
            "layers": [{"id": "up", "type": "conv_transpose2d", "out_channels": 3, **params}], "outputs": ["up"]}
    m = cnngraph.compile(spec, dtype="float64", seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 4, 5, 6))
    calls = []
    data = _conv_fast.FastConv.backward_data
    monkeypatch.setattr(_conv_fast.FastConv, "backward_data", lambda *a: calls.append(1) or data(*a))
    y = m.forward({"x": x}, grad=True)["up"]
    assert calls   # the adjoint path
    gy = rng.standard_normal(y.shape)
    grads = m.backward({"up": gy})
    p = m.graph.nodes["up"]["op"].p
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(m.params["up.weight"], requires_grad=True)
    tb = torch.tensor(m.params["up.bias"], requires_grad=True)
    t, b_, l, r = m.graph.nodes["up"]["op"].pads()
    full = torch.nn.functional.conv_transpose2d(tx, tw, tb, p.stride, 0, p.output_padding, 1, p.dilation)
    ty = full[:, :, t:full.shape[2] - b_, l:full.shape[3] - r]
    ty.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    for ours, theirs in ((grads["x"], tx), (grads["up.weight"], tw), (grads["up.bias"], tb)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-11, atol=1e-11)


SMALL_BATCH_CONFIGS = [CONFIGS[0], CONFIGS[2], CONFIGS[4], CONFIGS[5], CONFIGS[6], CONFIGS[10], CONFIGS[13],
                       (1, 3, 4, 5, 16, (3, 2), (2, 1), (1, 0, 1, 1), (1, 1), 1, True)]   # more channels than pixels


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("cfg", SMALL_BATCH_CONFIGS, ids=["s1", "s2", "asym", "dil", "dil-s", "1x1", "lenet", "O>L"])
def test_a_batch_smaller_than_the_threads_splits_each_sample_and_fuses_residual_and_relu(cfg, batch, monkeypatch):
    """Fewer samples than threads: output rows (or output channels, for 1x1 or more channels than pixels) are
    split over the threads instead of samples; + residual and relu (the inference fusions) applied per block match PyTorch."""
    torch = pytest.importorskip("torch")
    from cnngraph.kernels import _conv_fast, _parallel
    monkeypatch.setattr(_conv_fast, "_PARALLEL_FLOPS", 0)
    monkeypatch.setattr(_parallel, "FLOPS_PER_EXTRA_THREAD", 1)   # every thread, so batch 2 < 3 threads
    monkeypatch.setattr(_conv_fast, "_ROW_BLOCK_BYTES", 1)     # one row per block: uneven counts per thread
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", "3")
    x, w, b, stride, padding, dilation, groups = make((batch,) + cfg[1:], np.float64, seed=3)
    ref = torch_conv(torch, torch.tensor(x), torch.tensor(w), None if b is None else torch.tensor(b),
                     stride, padding, dilation, groups).numpy()
    residual = np.random.default_rng(4).standard_normal(ref.shape)
    y, _ = conv2d_forward(x, w, b, stride, padding, dilation, groups, False, relu=True, residual=residual)
    np.testing.assert_allclose(y, np.maximum(ref + residual, 0), rtol=1e-12, atol=1e-12)
    y, _ = conv2d_forward(x, w, b, stride, padding, dilation, groups, False)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups,relu", [(1, True), (1, False), (2, True), (4, False)])
def test_conv_with_a_fused_max_pool_equals_the_pool_of_the_conv(groups, relu):
    from cnngraph.kernels.pool import max_pool2d_forward
    rng = np.random.default_rng(groups)
    x = rng.standard_normal((5, 4, 10, 10)).astype(np.float32)
    w = rng.standard_normal((8, 4 // groups, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    y, _ = conv2d_forward(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), groups, False, relu=relu)
    want = max_pool2d_forward(y, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False, save=False)[0]
    got, _ = conv2d_forward(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), groups, False, relu=relu, pool=(2, 2))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)   # the fused product may sum in another order
    with pytest.raises(ValueError, match="tile"):
        conv2d_forward(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), groups, False, pool=(3, 3))
