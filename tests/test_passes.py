"""Graph passes: identical results (float32 tolerance) with passes on and off."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import cnngraph
from cnngraph.passes import optimize_for_inference, prune


def _trained_like(model, rng):
    # non-trivial batch-norm statistics, as after training
    for name in model.params:
        if name.endswith("running_mean"):
            model.params[name] = rng.standard_normal(model.params[name].shape)
        elif name.endswith("running_var"):
            model.params[name] = rng.uniform(0.5, 2.0, model.params[name].shape)
        elif name.endswith(".weight") and model.params[name].ndim == 1:
            model.params[name] = rng.uniform(0.5, 1.5, model.params[name].shape)


@pytest.mark.parametrize("path", ["specs/resnet_small.yaml", "specs/inception_small.yaml", "specs/lenet5.yaml"])
def test_optimized_inference_matches_plain(path):
    rng = np.random.default_rng(0)
    model = cnngraph.compile(path, seed=1)
    _trained_like(model, rng)
    x = rng.standard_normal((3, *model.spec.inputs["image"].shape)).astype(np.float32)
    fast = optimize_for_inference(model)
    ref = model.forward({"image": x})["logits"]
    out = fast.forward({"image": x})["logits"]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert fast.report["fused"], "expected at least one conv/dense+relu fusion"
    if "resnet" in path:
        assert len(fast.report["folded"]) == 6
        assert not any(fast.graph.nodes[n]["type"] == "batch_norm2d" for n in fast.graph)


def test_optimization_does_not_touch_the_model():
    model = cnngraph.compile("specs/resnet_small.yaml")
    before = model.params.numpy()
    optimize_for_inference(model)
    for k, v in model.params.numpy().items():
        np.testing.assert_array_equal(v, before[k])
    assert any(model.graph.nodes[n]["type"] == "batch_norm2d" for n in model.graph)


def test_prune_drops_layers_not_reaching_outputs():
    spec = {"inputs": {"x": {"shape": [4]}},
            "layers": [{"id": "a", "type": "dense", "out_features": 3},
                       {"id": "dead", "type": "dense", "out_features": 2, "inputs": "x"},
                       {"id": "b", "type": "relu", "inputs": "a"}],
            "outputs": ["b"]}
    model = cnngraph.compile(spec)
    assert "dead" not in prune(model.graph, ["b"])
    assert "dead" not in model.plan().order   # the scheduler never runs it either


def test_inplace_relu_never_touches_caller_arrays_or_outputs():
    spec = {"inputs": {"x": {"shape": [6]}},
            "layers": [{"id": "r0", "type": "relu"},
                       {"id": "fc", "type": "dense", "out_features": 6, "inputs": "x"},
                       {"id": "r1", "type": "relu"},
                       {"id": "fc_out", "type": "dense", "out_features": 6, "inputs": "fc"},
                       {"id": "r2", "type": "relu"}],
            "outputs": ["r0", "fc_out", "r2"]}
    model = cnngraph.compile(spec)
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    x_before = x.copy()
    seen = {}
    out = model.forward({"x": x}, on_output=lambda n, y: seen.__setitem__(n, y.copy()))
    np.testing.assert_array_equal(x, x_before)                 # a model input is never overwritten
    assert (out["fc_out"] < 0).any()                           # an output read by a relu is kept intact
    np.testing.assert_array_equal(out["r2"], np.maximum(seen["fc_out"], 0))


@pytest.mark.parametrize("path", ["specs/inception_small.yaml", "specs/resnet_small.yaml"])
def test_parallel_branches_give_the_same_outputs(path):
    model = cnngraph.compile(path, seed=2)
    x = np.random.default_rng(3).standard_normal((4, *model.spec.inputs["image"].shape)).astype(np.float32)
    x_before = x.copy()
    serial = model.forward({"image": x})["logits"]
    parallel = model.forward({"image": x}, parallel=2)["logits"]
    np.testing.assert_allclose(parallel, serial, rtol=1e-5, atol=1e-6)   # BLAS blocking may differ
    np.testing.assert_array_equal(x, x_before)


def test_inplace_activations_never_write_through_aliases():
    """dropout (inference) and flatten hand on their input array or a view of it: an in-place relu or
    add downstream must not change the tensor they alias, nor the caller's input."""
    spec = {"inputs": {"x": {"shape": [2, 3, 1]}},
            "layers": [{"id": "drop", "type": "dropout", "p": 0.5},           # returns x itself in inference
                       {"id": "r_in", "type": "relu"},
                       {"id": "fc", "type": "conv2d", "out_channels": 2, "kernel_size": 1, "inputs": "x"},
                       {"id": "flat", "type": "flatten"},                      # a view of fc
                       {"id": "r_flat", "type": "relu"},
                       {"id": "fc_flat", "type": "flatten", "inputs": "fc"},
                       {"id": "sum", "type": "add", "inputs": ["r_flat", "fc_flat"]}],
            "outputs": ["r_in", "sum"]}
    model = cnngraph.compile(spec, seed=0)
    x = np.random.default_rng(0).standard_normal((3, 2, 3, 1)).astype(np.float32)
    x_before = x.copy()
    out = model.forward({"x": x})
    np.testing.assert_array_equal(x, x_before)
    fc = model.forward({"x": x}, outputs=["fc"])["fc"].reshape(3, -1)
    np.testing.assert_allclose(out["sum"], np.maximum(fc, 0) + fc, rtol=1e-6)
    np.testing.assert_array_equal(out["r_in"], np.maximum(x_before, 0))


RESIDUAL = {
    "name": "residual_relu",
    "inputs": {"image": {"shape": [32, 32, 32]}},
    "layers": [
        {"id": "c1", "type": "conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1},
        {"id": "r1", "type": "relu"},
        {"id": "p1", "type": "conv2d", "out_channels": 32, "kernel_size": 1},     # pointwise path
        {"id": "r2", "type": "relu"},
        {"id": "sum", "type": "add", "inputs": ["r2", "image"]},
        {"id": "r3", "type": "relu"},
        {"id": "pool", "type": "global_avg_pool2d"},
        {"id": "flat", "type": "flatten"},
        {"id": "logits", "type": "dense", "out_features": 4},
    ],
    "outputs": ["logits"],
}


def test_relu_fused_into_conv_and_add_kernels_matches_plain():
    """Big enough for the chunked paths: several pointwise chunks, the blocked threaded add."""
    model = cnngraph.compile(RESIDUAL, seed=2)
    x = np.random.default_rng(0).standard_normal((20, 32, 32, 32)).astype(np.float32)
    fast = optimize_for_inference(model)
    assert sorted(fast.report["fused"]) == [("c1", "r1"), ("p1", "r2"), ("sum", "r3")]
    assert all(fast.graph.nodes[n]["op"].native for n in ("c1", "p1", "sum"))
    ref = model.forward({"image": x}, outputs=["r3", "logits"])
    out = fast.forward({"image": x})["logits"]
    np.testing.assert_allclose(out, ref["logits"], rtol=1e-5, atol=1e-6)
    assert (ref["r3"] >= 0).all() and (ref["r3"] == 0).mean() > 0.05   # the relus do clip


def test_conv1d_folds_batch_norm_and_fuses_relu_like_conv2d():
    spec = {"name": "audio", "inputs": {"x": {"shape": [3, 40]}},
            "layers": [{"id": "c1", "type": "conv1d", "out_channels": 8, "kernel_size": 5, "padding": 2, "bias": False},
                       {"id": "bn", "type": "batch_norm2d"}, {"id": "r1", "type": "relu"},
                       {"id": "c2", "type": "conv1d", "out_channels": 8, "kernel_size": 3, "groups": 8, "stride": 2},
                       {"id": "r2", "type": "relu"}, {"id": "pool", "type": "global_avg_pool2d"},
                       {"id": "flat", "type": "flatten"}, {"id": "logits", "type": "dense", "out_features": 4}],
            "outputs": ["logits"]}
    rng = np.random.default_rng(0)
    model = cnngraph.compile(spec, seed=1)
    _trained_like(model, rng)
    x = rng.standard_normal((5, 3, 40)).astype(np.float32)
    fast = optimize_for_inference(model)
    assert fast.report["folded"] == [("c1", "bn")] and sorted(fast.report["fused"]) == [("c1", "r1"), ("c2", "r2")]
    assert all(fast.graph.nodes[n]["op"].native for n in ("c1", "c2"))
    np.testing.assert_allclose(fast.forward({"x": x})["logits"], model.forward({"x": x})["logits"], rtol=1e-4,
                               atol=1e-5)


def test_conv3d_folds_batch_norm_and_fuses_relu_like_conv2d():
    spec = {"name": "volume", "inputs": {"x": {"shape": [2, 6, 8, 8]}},
            "layers": [{"id": "c1", "type": "conv3d", "out_channels": 4, "kernel_size": 3, "padding": 1, "bias": False},
                       {"id": "bn", "type": "batch_norm2d"}, {"id": "r1", "type": "relu"},
                       {"id": "c2", "type": "conv3d", "out_channels": 4, "kernel_size": 3, "groups": 4, "stride": 2},
                       {"id": "r2", "type": "relu"}, {"id": "pool", "type": "global_avg_pool2d"},
                       {"id": "flat", "type": "flatten"}, {"id": "logits", "type": "dense", "out_features": 3}],
            "outputs": ["logits"]}
    rng = np.random.default_rng(0)
    model = cnngraph.compile(spec, seed=1)
    _trained_like(model, rng)
    x = rng.standard_normal((3, 2, 6, 8, 8)).astype(np.float32)
    fast = optimize_for_inference(model)
    assert fast.report["folded"] == [("c1", "bn")] and sorted(fast.report["fused"]) == [("c1", "r1"), ("c2", "r2")]
    assert all(fast.graph.nodes[n]["op"].native for n in ("c1", "c2"))
    np.testing.assert_allclose(fast.forward({"x": x})["logits"], model.forward({"x": x})["logits"], rtol=1e-4,
                               atol=1e-5)


@pytest.mark.usefixtures("numpy_kernels")   # shards are for the NumPy kernels (oneDNN splits each conv)
@pytest.mark.parametrize("path", ["specs/resnet_small.yaml", "specs/inception_small.yaml"])
def test_batch_shards_on_threads_give_the_same_outputs(path, monkeypatch):
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", "2")
    rng = np.random.default_rng(4)
    model = cnngraph.compile(path, seed=3)
    _trained_like(model, rng)
    x = rng.standard_normal((5, *model.spec.inputs["image"].shape)).astype(np.float32)
    fast = optimize_for_inference(model)
    assert fast._shards({"image": x}, 5) == [(0, 3), (3, 5)]
    sharded = fast.forward({"image": x})["logits"]
    monkeypatch.setattr("cnngraph.passes.SHARD_MAX_MACS", 0)      # the same snapshot, one pass
    assert fast._shards({"image": x}, 5) == []
    whole = fast.forward({"image": x})["logits"]
    np.testing.assert_allclose(sharded, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sharded, model.forward({"image": x})["logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.usefixtures("numpy_kernels")   # shards are for the NumPy kernels (oneDNN splits each conv)
def test_no_batch_shards_where_samples_interact_or_nothing_to_split(monkeypatch):
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", "2")
    x = np.zeros((4, 3, 8, 8), np.float32)
    small = optimize_for_inference(cnngraph.compile(
        {"inputs": {"image": {"shape": [3, 8, 8]}},
         "layers": [{"id": "c", "type": "conv2d", "out_channels": 4, "kernel_size": 3}], "outputs": ["c"]}))
    assert small._shards({"image": x}, 4) == [(0, 2), (2, 4)]
    assert small._shards({"image": x[:1]}, 1) == []                              # one sample
    for threads in ("1", "4"):                                                   # measured: no gain there
        monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", threads)
        assert small._shards({"image": x}, 4) == []
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", "2")
    # a batch norm with no conv before it to fold into stays in the graph: it is batch-dependent
    bn_first = optimize_for_inference(cnngraph.compile(
        {"inputs": {"image": {"shape": [3, 8, 8]}},
         "layers": [{"id": "bn", "type": "batch_norm2d"}], "outputs": ["bn"]}))
    assert any(bn_first.graph.nodes[n]["type"] == "batch_norm2d" for n in bn_first.graph)
    assert bn_first._shards({"image": x}, 4) == []


@pytest.mark.usefixtures("numpy_kernels")   # shards are for the NumPy kernels (oneDNN splits each conv)
def test_batch_shards_run_on_two_threads(monkeypatch):
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", "2")
    from cnngraph.kernels import _parallel
    if not _parallel._blas_controllers():
        pytest.skip("threadpoolctl is not installed: no shards")
    fast = optimize_for_inference(cnngraph.compile("specs/resnet_small.yaml"))
    seen = []
    run = fast._run

    def spy(env):
        seen.append((threading.get_ident(), len(env["image"])))
        return run(env)

    monkeypatch.setattr(fast, "_run", spy)
    fast.forward({"image": np.zeros((5, 3, 32, 32), np.float32)})
    assert sorted(n for _, n in seen) == [2, 3] and len({t for t, _ in seen}) == 2


def test_outputs_that_need_no_input_keep_their_batch_of_one(monkeypatch):
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", "2")
    spec = {"inputs": {"image": {"shape": [4]}},
            "layers": [{"id": "d", "type": "dense", "out_features": 3},
                       {"id": "c", "type": "constant", "shape": [3], "fill": 1.5, "inputs": []},
                       {"id": "s", "type": "broadcast_add", "inputs": ["d", "c"]}],
            "outputs": ["s", "c"]}
    model = cnngraph.compile(spec, seed=0)
    fast = optimize_for_inference(model)
    x = np.ones((4, 4), np.float32)
    assert fast._shards({"image": x}, 4) == []
    out, ref = fast.forward({"image": x}), model.forward({"image": x})
    assert out["c"].shape == ref["c"].shape == (1, 3)
    np.testing.assert_allclose(out["s"], ref["s"], rtol=1e-6)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_an_identity_never_lets_a_later_layer_write_into_the_callers_array(threads, monkeypatch):
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", threads)
    spec = {"inputs": {"x": {"shape": [6]}},
            "layers": [{"id": "same", "type": "identity"}, {"id": "r", "type": "relu"}],
            "outputs": ["r"]}
    model = cnngraph.compile(spec)
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    before = x.copy()
    for run in (model.forward, optimize_for_inference(model).forward):
        np.testing.assert_array_equal(run({"x": x})["r"], np.maximum(before, 0))
        np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("batch", [1, 4])
def test_residual_adds_fused_into_the_conv_before_them_match_plain(batch):
    """The add (and its relu) of each residual block runs inside the conv that alone feeds it; with a
    projection shortcut (two convs feed the add) the later one takes the other as its residual."""
    rng = np.random.default_rng(0)
    model = cnngraph.compile("specs/resnet_small.yaml", seed=1)
    _trained_like(model, rng)
    fast = optimize_for_inference(model)
    assert fast.report["residual"] == [("b1_conv2", "b1_add"), ("b2_proj", "b2_add")]
    assert fast.graph.nodes["b1_conv2"]["inputs"] == ["b1_conv1", "stem"]
    assert fast.graph.nodes["b2_proj"]["type"] == "conv2d+add+relu" and "b2_add" not in fast.graph
    x = rng.standard_normal((batch, *model.spec.inputs["image"].shape)).astype(np.float32)
    ref = model.forward({"image": x})["logits"]
    np.testing.assert_allclose(fast.forward({"image": x})["logits"], ref, rtol=1e-4, atol=1e-5)
    assert not optimize_for_inference(model, fuse=False).report["residual"]


def _optimized_matches_plain(spec, batch):
    """The optimised model of ``spec``, after checking its output against the unoptimised model's."""
    model = cnngraph.compile(spec, seed=0)
    fast = optimize_for_inference(model)
    out = spec["outputs"][0]
    x = np.random.default_rng(1).standard_normal((batch, *spec["inputs"]["image"]["shape"])).astype(np.float32)
    np.testing.assert_allclose(fast.forward({"image": x})[out], model.forward({"image": x})[out], rtol=1e-5, atol=1e-6)
    return fast


def test_a_conv_read_by_more_than_the_add_is_not_fused():
    spec = {"inputs": {"image": {"shape": [4, 6, 6]}},
            "layers": [{"id": "c", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
                       {"id": "sum", "type": "add", "inputs": ["c", "image"]},
                       {"id": "also", "type": "relu", "inputs": "c"},
                       {"id": "both", "type": "add", "inputs": ["sum", "also"]}],
            "outputs": ["both"]}
    assert _optimized_matches_plain(spec, 2).report["residual"] == []


def test_a_conv_added_to_its_own_input_reads_it_twice():
    spec = {"inputs": {"image": {"shape": [4, 6, 6]}},
            "layers": [{"id": "c", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
                       {"id": "sum", "type": "add", "inputs": ["c", "image"]}],
            "outputs": ["sum"]}
    fast = _optimized_matches_plain(spec, 1)
    assert fast.report["residual"] == [("c", "sum")] and fast.graph.nodes["c"]["inputs"] == ["image", "image"]


def test_no_residual_fusion_with_a_constant_or_into_a_depthwise_conv():
    """A constant's batch of 1 is broadcast by the add (the conv's blocks cannot); a depthwise conv keeps its own
    kernel. Both stay plain adds and match the unoptimised model at batch 4."""
    spec = {"inputs": {"image": {"shape": [8, 10, 10]}},
            "layers": [{"id": "c", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
                       {"id": "k", "type": "constant", "shape": [8, 10, 10], "fill": 0.5, "inputs": []},
                       {"id": "s", "type": "add", "inputs": ["c", "k"]},
                       {"id": "d", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1, "groups": 8},
                       {"id": "t", "type": "add", "inputs": ["d", "s"]}],
            "outputs": ["t"]}
    assert _optimized_matches_plain(spec, 4).report["residual"] == []


def _resnet_small_snapshot(batch: int):
    """(x, the plain model's logits for x, an optimize_for_inference snapshot) of resnet_small, as if trained."""
    rng = np.random.default_rng(batch)
    model = cnngraph.compile("specs/resnet_small.yaml", seed=2)
    _trained_like(model, rng)
    x = rng.standard_normal((batch, *model.spec.inputs["image"].shape)).astype(np.float32)
    return x, model.forward({"image": x})["logits"], optimize_for_inference(model)


def _recorded(ran: list, label: str, slower: str, real):
    """``real`` that first appends ``label`` to ``ran`` and, where ``label`` is the ``slower`` way, sleeps 50 ms."""
    import time

    def wrapper(*args, **kwargs):
        ran.append(label)
        if label == slower:
            time.sleep(0.05)
        return real(*args, **kwargs)
    return wrapper


@pytest.mark.usefixtures("numpy_kernels")   # (on oneDNN a batch of one always runs whole, BLAS held)
@pytest.mark.parametrize("slower", ["blas", "splits"])
def test_a_batch_of_one_keeps_the_faster_way_to_use_the_cores(slower, monkeypatch):
    """Batch-1 inference times its convolutions split by the kernels and by BLAS's threads over the first
    passes, then keeps the faster; both give the plain model's outputs."""
    import cnngraph.passes as passes
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", "2")
    x, want, fast = _resnet_small_snapshot(batch=1)
    assert fast._splits_one
    ran = []
    monkeypatch.setattr(passes, "with_blas_threads", _recorded(ran, "blas", slower, passes.with_blas_threads))
    monkeypatch.setattr(passes, "blas_held_for", _recorded(ran, "splits", slower, passes.blas_held_for))
    for _ in range(2 * passes.CALIBRATION_TRIALS):
        np.testing.assert_allclose(fast.forward({"image": x})["logits"], want, rtol=1e-4, atol=1e-5)
    assert ran == ["splits", "blas"] * passes.CALIBRATION_TRIALS     # alternating while measuring
    assert fast._chosen[("one",)] == (1 if slower == "splits" else 0)
    ran.clear()
    for _ in range(3):
        np.testing.assert_allclose(fast.forward({"image": x})["logits"], want, rtol=1e-4, atol=1e-5)
    assert ran == ["blas" if slower == "splits" else "splits"] * 3


@pytest.mark.usefixtures("numpy_kernels")   # shards are for the NumPy kernels (oneDNN splits each conv)
@pytest.mark.parametrize("slower", ["shards", "whole"])
def test_batch_shards_stay_only_where_they_measured_faster(slower, monkeypatch):
    import cnngraph.passes as passes
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", "2")
    from cnngraph.kernels import _parallel
    if not _parallel._blas_controllers():
        pytest.skip("threadpoolctl is not installed: no shards")
    x, want, fast = _resnet_small_snapshot(batch=4)
    ran = []
    monkeypatch.setattr(passes, "run_shards", _recorded(ran, "shards", slower, passes.run_shards))
    monkeypatch.setattr(passes, "blas_held_for", _recorded(ran, "whole", slower, passes.blas_held_for))
    for _ in range(2 * passes.CALIBRATION_TRIALS + 2):
        np.testing.assert_allclose(fast.forward({"image": x})["logits"], want, rtol=1e-4, atol=1e-5)
    assert ran[:2 * passes.CALIBRATION_TRIALS] == ["shards", "whole"] * passes.CALIBRATION_TRIALS
    assert ran[-2:] == ["whole" if slower == "shards" else "shards"] * 2
    assert fast._chosen[("shards", 4)] == (1 if slower == "shards" else 0)


@pytest.mark.parametrize("batch", [1, 5])
def test_max_pools_fused_into_the_conv_before_them_match_plain(batch):
    expected = {"specs/lenet5.yaml": [("conv1", "pool1"), ("conv2", "pool2")],
                "specs/cifarnet.yaml": [("conv2", "pool1"), ("conv4", "pool2")],
                "specs/digits_cnn.yaml": [("conv2", "pool")]}
    rng = np.random.default_rng(7)
    for path, pairs in expected.items():
        model = cnngraph.compile(path, seed=3)
        x = rng.standard_normal((batch, *model.spec.inputs["image"].shape)).astype(np.float32)
        fast = optimize_for_inference(model)
        assert fast.report["pooled"] == pairs
        assert all(fast.graph.nodes[c]["type"] == "conv2d+relu+max_pool2d" for c, _ in pairs)
        np.testing.assert_allclose(fast.forward({"image": x})["logits"], model.forward({"image": x})["logits"],
                                   rtol=1e-4, atol=1e-5)


def test_max_pools_that_do_not_tile_or_share_their_conv_stay_apart():
    spec = {"inputs": {"image": {"shape": [3, 9, 9]}},
            "layers": [{"id": "c1", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
                       {"id": "p1", "type": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1},
                       {"id": "c2", "type": "conv2d", "out_channels": 4, "kernel_size": 2},
                       {"id": "p2", "type": "max_pool2d", "kernel_size": 2},
                       {"id": "c3", "type": "conv2d", "out_channels": 4, "kernel_size": 1, "inputs": ["p2"]},
                       {"id": "p3", "type": "max_pool2d", "kernel_size": 2},
                       {"id": "s", "type": "add", "inputs": ["c2", "c2"]}],
            "outputs": ["p1", "p3", "s"]}
    model = cnngraph.compile(spec, seed=0)
    fast = optimize_for_inference(model)
    assert fast.report["pooled"] == []    # p1 does not tile; c2 is read twice; c3 is 1x1
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    got, want = fast.forward({"image": x}), model.forward({"image": x})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
