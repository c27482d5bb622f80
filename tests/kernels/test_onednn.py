"""oneDNN convolutions (cnngraph/kernels/_onednn.py) against the NumPy kernels in float64, and the channels-last
layout they hand to the element-wise and pooling kernels."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from cnngraph.kernels import _onednn, conv2d_backward, conv2d_forward
from cnngraph.kernels._parallel import channels_last
from cnngraph.kernels.pool import max_pool2d_backward, max_pool2d_forward

needs_onednn = pytest.mark.skipif(not _onednn.available(), reason="oneDNN is not installed (pip install onednn-cpu-gomp)")

# (N, C, H, W, O, (kh, kw), stride, padding (t, b, l, r), dilation, bias, groups)
GEOMETRIES = [
    (4, 3, 10, 9, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), True, 1),
    (1, 16, 8, 8, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), False, 1),
    (3, 5, 11, 7, 6, (3, 2), (2, 1), (1, 2, 0, 1), (1, 1), True, 1),
    (2, 4, 12, 12, 4, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), True, 1),
    (2, 8, 6, 6, 32, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), False, 1),
    (2, 1, 28, 28, 6, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), True, 1),
    (2, 8, 9, 9, 12, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True, 4),       # grouped
    (3, 16, 10, 10, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), True, 16),   # depthwise
    (2, 8, 12, 12, 16, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), False, 8),    # depthwise x2, 5x5, strided
]


def _case(geometry, seed=0):
    N, C, H, W, O, k, stride, padding, dilation, bias, groups = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C // groups) + k) / np.sqrt(C // groups * k[0] * k[1])
    b = rng.standard_normal(O) if bias else None
    return x, w, b, (stride, padding, dilation, groups)


def _f32(*arrays):
    return [None if a is None else a.astype(np.float32) for a in arrays]


@needs_onednn
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_training_forward_backward_match_float64_numpy(geometry, relu, numpy_reference):
    x, w, b, geom = _case(geometry)
    y, saved = conv2d_forward(*_f32(x, w, b), *geom, save=True, relu=relu)
    assert type(saved).__name__ == "_OneDNNSaved" and channels_last(y)
    gy = np.random.default_rng(1).standard_normal(y.shape)
    dx, dw, db = conv2d_backward(gy.astype(np.float32), saved, True, y if relu else None)
    ry, rdx, rdw, rdb = numpy_reference(x, w, b, geom, gy, relu)
    for ours, ref in ((y, ry), (dx, rdx), (dw, rdw), (db, rdb)):
        if ref is None:
            assert ours is None
            continue
        assert ours.dtype == np.float32 and ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))


@needs_onednn
def test_inference_residual_and_relu_post_ops():
    x, w, b, geom = _case(GEOMETRIES[0])
    residual = np.random.default_rng(2).standard_normal((4, 8, 10, 9))
    y, _ = conv2d_forward(*_f32(x, w, b), *geom, save=False, relu=True, residual=residual.astype(np.float32))
    with _onednn.disabled():
        ref, _ = conv2d_forward(x, w, b, *geom, save=False)
    np.testing.assert_allclose(y, np.maximum(ref + residual, 0), rtol=1e-4, atol=1e-4)


@needs_onednn
def test_inputs_in_any_layout_and_chained_channels_last():
    """NCHW, channels-last and strided inputs all give the same result; a conv output feeds the next conv as is."""
    x, w, b, geom = _case(GEOMETRIES[1])
    x32, w32, _ = _f32(x, w, b)
    y_nchw, _ = conv2d_forward(x32, w32, None, *geom, save=False)
    y_cl, _ = conv2d_forward(np.ascontiguousarray(x32.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2), w32, None,
                             *geom, save=False)
    wide = np.zeros((1, 16, 8, 16), np.float32)
    wide[..., ::2] = x32
    y_strided, _ = conv2d_forward(wide[..., ::2], w32, None, *geom, save=False)
    np.testing.assert_array_equal(y_nchw, y_cl)
    np.testing.assert_array_equal(y_nchw, y_strided)
    z, _ = conv2d_forward(y_cl, w32, None, *geom, save=False)
    with _onednn.disabled():
        ref, _ = conv2d_forward(np.asarray(y_cl, np.float64), w, None, *geom, save=False)
    np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-4)


@needs_onednn
def test_concurrent_calls_from_threads_are_correct():
    x, w, b, geom = _case(GEOMETRIES[0])
    x32, w32, b32 = _f32(x, w, b)
    want, _ = conv2d_forward(x32, w32, b32, *geom, save=False)
    results, errors = [], []

    def call():
        try:
            for _ in range(20):
                results.append(conv2d_forward(x32, w32, b32, *geom, save=False)[0])
        except Exception as e:      # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 60
    for r in results:
        np.testing.assert_array_equal(r, want)


@needs_onednn
def test_no_batch_shards_on_onednn(monkeypatch):
    import cnngraph
    from cnngraph.passes import optimize_for_inference
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", "2")
    fast = optimize_for_inference(cnngraph.compile("specs/resnet_small.yaml"))
    x = np.zeros((4, 3, 32, 32), np.float32)
    assert fast._shards({"image": x}, 4) == []
    fast.forward({"image": x[:1]})
    assert not fast._trials        # one sample: no timing of BLAS's threads against the kernels' splits either


@needs_onednn
def test_inference_snapshot_weights_are_reordered_once(monkeypatch):
    """An inference model's weights are read-only: oneDNN keeps their blocked copies; a training model's change
    in place every step and are reordered on every call."""
    import cnngraph
    from cnngraph.passes import optimize_for_inference
    model = cnngraph.compile("specs/resnet_small.yaml", seed=0)
    fast = optimize_for_inference(model)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    want = model.forward({"image": x})["logits"]
    reorders = []
    blocked = _onednn._Reorder.blocked
    monkeypatch.setattr(_onednn._Reorder, "blocked", lambda r, w: reorders.append(r) or blocked(r, w))
    for _ in range(3):
        np.testing.assert_allclose(fast.forward({"image": x})["logits"], want, rtol=1e-4, atol=1e-5)
    convs = sum(1 for n in fast.graph if "conv" in fast.graph.nodes[n]["type"])
    assert convs == 6 and len(reorders) == convs    # in the first pass only
    model.forward({"image": x}, training=True)
    model.forward({"image": x}, training=True)
    assert len(reorders) == 3 * convs              # and on every training call
    with pytest.raises(ValueError):
        next(iter(fast.params.values()))[...] = 0


@needs_onednn
def test_a_geometry_onednn_cannot_run_falls_back_to_numpy(monkeypatch, numpy_reference):
    """A convolution or pooling oneDNN has no primitive for (status unimplemented) runs on the NumPy kernels:
    forward, or only backward when just the backward primitives fail."""
    x, w, b, geom = _case(GEOMETRIES[2])
    gy = np.random.default_rng(1).standard_normal((3, 6, 6, 7))
    ry, rdx, rdw, rdb = numpy_reference(x, w, b, geom, gy, True)

    def unimplemented(*args, **kwargs):
        raise _onednn.OneDNNError("oneDNN failed creating a primitive (status 3)")

    for broken in ("_forward", "_backward"):
        with monkeypatch.context() as patch:
            patch.setattr(_onednn, broken, unimplemented)
            y, saved = conv2d_forward(*_f32(x, w, b), *geom, save=True, relu=True)
            assert type(saved).__name__ == ("_FastSaved" if broken == "_forward" else "_OneDNNSaved")
            dx, dw, db = conv2d_backward(gy.astype(np.float32), saved, True, y)
        for ours, ref in ((y, ry), (dx, rdx), (dw, rdw), (db, rdb)):
            np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))
    x_cl = np.ascontiguousarray(np.ones((1, 3, 4, 4), np.float32).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    monkeypatch.setattr(_onednn, "_max_pool", unimplemented)
    y, saved = max_pool2d_forward(x_cl, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False, save=True)
    assert saved[0] != "onednn" and y.shape == (1, 3, 2, 2)


def test_channels_last_pooling_matches_nchw():
    """Max pooling keeps a channels-last input's layout, with the values, indices and gradients of NCHW."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 8, 6)).astype(np.float32)
    x[0, 0, :2, :2] = 1.0        # ties: the first maximum takes the gradient
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    args = ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False)
    y, s = max_pool2d_forward(x, *args, save=True)
    y_cl, s_cl = max_pool2d_forward(x_cl, *args, save=True)
    assert channels_last(y_cl) and not channels_last(y)
    np.testing.assert_array_equal(y_cl, y)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    for g in (gy, np.ascontiguousarray(gy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
        dx_cl = max_pool2d_backward(g, s_cl)
        assert channels_last(dx_cl)
        np.testing.assert_array_equal(dx_cl, max_pool2d_backward(gy, s))


@needs_onednn
@pytest.mark.parametrize("save", [True, False])
def test_a_pooling_window_of_nan_only_gives_nan(save):
    """oneDNN's max skips NaN and would give -3.4e38 for a window of NaN only (a layer whose weights diverged),
    finite garbage the training loop's loss check cannot see; such windows give NaN, as in PyTorch."""
    x = np.random.default_rng(6).standard_normal((2, 16, 4, 4)).astype(np.float32)
    x[0, 3, :2, :2] = np.nan
    x[1] = np.nan
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    y, _ = max_pool2d_forward(x_cl, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False, save=save)
    assert channels_last(y)
    with _onednn.disabled():   # the NumPy kernel propagates NaN as torch.nn.functional.max_pool2d does
        want, _ = max_pool2d_forward(x, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False, save=save)
    np.testing.assert_array_equal(y, want)
    assert np.isnan(y[0, 3, 0, 0]) and np.isnan(y[1]).all() and np.isfinite(y[0]).sum() == 16 * 4 - 1


def test_relu_and_add_on_channels_last_arrays():
    from cnngraph.registry import get_registry
    from cnngraph.op import Context
    rng = np.random.default_rng(4)
    big = (2, 64, 96, 96)      # big enough for the blocked, threaded paths
    a = np.ascontiguousarray(rng.standard_normal(big, dtype=np.float32).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    b = np.ascontiguousarray(rng.standard_normal(big, dtype=np.float32).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    ops = get_registry().ops
    relu, add = ops["relu"](), ops["add"]()
    ctx = Context(training=True, grad=True)
    y = relu.forward(ctx, [a], {})
    assert channels_last(y)
    np.testing.assert_array_equal(y, np.maximum(np.asarray(a, order="C"), 0))
    (g,), _ = relu.backward(ctx, b)
    np.testing.assert_array_equal(g, b * (a > 0))
    s = add.forward(Context(training=False, grad=False), [a, b], {}, relu=True)
    np.testing.assert_array_equal(s, np.maximum(a + b, 0))


@needs_onednn
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=range(len(GEOMETRIES)))
def test_small_weight_reorders_in_numpy_write_what_onednn_writes(geometry, monkeypatch):
    """Small weights go between layouts as NumPy transposed copies (blocked, padded and grouped layouts
    included), byte for byte what oneDNN's reorder primitives do."""
    monkeypatch.setattr(_onednn._Reorder, "NUMPY_UP_TO", 1 << 20)   # the padded grouped layouts here are bigger
    N, C, H, W, O, k, stride, padding, dilation, bias, groups = geometry
    out = tuple((s + p0 + p1 - d * (kk - 1) - 1) // st + 1
                for s, p0, p1, d, kk, st in zip((H, W), padding[::2], padding[1::2], dilation, k, stride))
    g = _onednn._Geometry((N, C, H, W), (O, C // groups) + k, bias, stride, padding, dilation, out, groups)
    backward = _onednn._Backward(g)
    rng = np.random.default_rng(2)
    for reorder in (_onednn._Forward(g, True, False, False).w_reorder, backward.w_reorder):
        assert reorder.view is not None
        w = rng.standard_normal((O, C // groups) + k, dtype=np.float32)
        mine = reorder.blocked(w)
        reorder_view, reorder.view = reorder.view, None
        np.testing.assert_array_equal(mine, reorder.blocked(w))
        reorder.view = reorder_view
    dw = backward.dw_reorder
    blocked = _onednn._Reorder(g.api, g.w_plain, dw.md, to_blocked=True).blocked(w)
    mine, theirs = np.empty_like(w), np.empty_like(w)
    dw.plain(blocked, mine)
    view, dw.view = dw.view, None
    dw.plain(blocked, theirs)
    assert view is not None
    np.testing.assert_array_equal(mine, w)
    np.testing.assert_array_equal(theirs, w)


@needs_onednn
def test_a_layout_numpy_gets_wrong_stays_on_onednn(monkeypatch):
    g = _onednn._Geometry((2, 16, 8, 8), (32, 16, 3, 3), True, (1, 1), (1, 1, 1, 1), (1, 1), (8, 8), 1)
    real = _onednn._Reorder._numpy_to_blocked
    monkeypatch.setattr(_onednn._Reorder, "_numpy_to_blocked", staticmethod(
        lambda w, out, view: (real(w, out, view), out.__setitem__(0, out[0] + 1))))
    assert _onednn._Forward(g, True, False, False).w_reorder.view is None
    assert _onednn._Backward(g).dw_reorder.view is None


def test_flatten_hands_a_channels_last_input_its_gradient_channels_last():
    """So the relu or pool before it takes its gradient over memory in order (digits: relu backward 4x faster)."""
    from cnngraph.registry import get_registry
    from cnngraph.op import Context
    rng = np.random.default_rng(5)
    x = np.ascontiguousarray(rng.standard_normal((3, 4, 2, 5), dtype=np.float32).transpose(0, 2, 3, 1))
    x = x.transpose(0, 3, 1, 2)
    flatten = get_registry().ops["flatten"]()
    for given, kept in ((x, True), (np.ascontiguousarray(x), False)):
        ctx = Context(training=True, grad=True)
        y = flatten.forward(ctx, [given], {})
        np.testing.assert_array_equal(y, np.asarray(given, order="C").reshape(3, 40))
        gy = rng.standard_normal((3, 40), dtype=np.float32)
        (g,), _ = flatten.backward(ctx, gy)
        assert channels_last(g) is kept and g.flags.c_contiguous is not kept
        np.testing.assert_array_equal(g, gy.reshape(3, 4, 2, 5))


@pytest.mark.parametrize("env", [{"CNNGRAPH_ONEDNN": "0"}, {"CNNGRAPH_ONEDNN_LIB": "/nonexistent/libdnnl.so.3"},
                                 {"CNNGRAPH_ONEDNN_LIB": __file__}])
def test_switched_off_or_missing_library_falls_back_to_numpy(env):
    code = ("import numpy as np; from cnngraph.kernels import _onednn, conv2d_forward; "
            "y, s = conv2d_forward(np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32), None, "
            "(1, 1), (0, 0, 0, 0), (1, 1), 1, True); "
            "print(_onednn.available(), type(s).__name__, float(y.sum()))")
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True)
    assert run.stdout.split() == ["False", "_FastSaved", str(3 * 9 * 18 * 1.0)]
    if "CNNGRAPH_ONEDNN_LIB" in env:      # a library the user named and that cannot be used is reported
        assert "CNNGRAPH_ONEDNN_LIB" in run.stderr and "run on NumPy" in run.stderr


@pytest.fixture
def numpy_reference():
    def reference(x, w, b, geom, gy, relu):
        with _onednn.disabled():
            y, saved = conv2d_forward(x, w, b, *geom, save=True, relu=relu)
            dx, dw, db = conv2d_backward(gy, saved, True, y if relu else None)
        return y, dx, dw, db
    return reference
