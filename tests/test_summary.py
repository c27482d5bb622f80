"""Summary: measured training activation memory (tape + live tensors), its formatting and the CLI."""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

import cnngraph
from cnngraph.cli import main
from cnngraph.commands.summary_format import format_summary
from cnngraph.summary import (add_training_memory, inference_peak_bytes, measurement_cost, summarize,
                              training_memory, why_not_measure)


def test_training_memory_is_measured_and_linear():
    spec = cnngraph.load_spec("specs/resnet_small.yaml")
    tm = training_memory(spec, batch_size=8)
    m1, m2 = tm.measured[1], tm.measured[2]
    assert m2 > m1 > 0
    assert tm.peak_bytes == tm.fixed_bytes + 8 * tm.per_sample_bytes
    # training keeps much more than inference: every batch-norm and relu saves its tensors
    assert m1 > 2 * inference_peak_bytes(spec.graph, 1)
    assert tm.tape_bytes[1] <= m1 and tm.env_peak_bytes[1] <= m1
    # the extrapolation matches a direct measurement at batch 8 (linear in the batch)
    model = cnngraph.compile(spec)
    direct = training_memory(model, 1)        # measures batch 1 and 2 on the same model
    assert direct.measured == tm.measured
    from cnngraph.summary import _measure
    peak8 = _measure(model, 8)[0]
    assert abs(peak8 - tm.peak_bytes) <= 0.01 * peak8
    # and the arrays really exist: NumPy's allocations during a training forward reach at least that
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    tracemalloc.start()
    model.forward({"image": x}, training=True)
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    model._tape = None
    assert traced >= 0.9 * (tm.peak_bytes - x.nbytes)


def test_running_stats_are_left_alone():
    model = cnngraph.compile("specs/resnet_small.yaml")
    before = model.params.numpy()
    training_memory(model, 4)
    after = model.params.numpy()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_summary_totals_and_json_show_both_peaks(capsys):
    spec = cnngraph.load_spec("specs/lenet5.yaml")
    s = summarize(spec.graph, spec.name, 16, training=training_memory(spec, 16))
    text = format_summary(s, "table")
    assert "peak activation memory (inference, batch 16)" in text
    assert "peak activation memory (training, batch 16)" in text and "measured" in text
    md = format_summary(s, "markdown")
    assert "- peak activation memory (training, batch 16)" in md
    assert main(["summary", "specs/lenet5.yaml", "--batch-size", "16", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["training_peak_bytes"] == s.training_peak_bytes
    assert d["training_memory"]["measured"]["1"] > 0 and d["inference_peak_bytes"] > 0
    assert main(["summary", "specs/lenet5.yaml", "--no-training-memory", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["training_peak_bytes"] is None
    assert main(["summary", "specs/lenet5.yaml", "--batch-size", "0"]) == 1
    assert "--batch-size must be >= 1" in capsys.readouterr().err


def test_lenet5_numbers_match_a_hand_computation(capsys):
    """LeNet-5 (28x28, conv5 pad 2 → pool2 → conv5 → pool2 → 120 → 84 → 10), worked out by hand."""
    spec = cnngraph.load_spec("specs/lenet5.yaml")
    s = summarize(spec.graph, spec.name, 1)
    rows = {r.id: r for r in s.rows}
    # parameters: weights + biases
    assert [rows[k].params for k in ("conv1", "conv2", "fc1", "fc2", "logits")] == \
        [6 * 25 + 6, 16 * 6 * 25 + 16, 400 * 120 + 120, 120 * 84 + 84, 84 * 10 + 10]
    assert s.total_params == 61_706 and s.param_bytes == 61_706 * 4
    # multiply-adds: out elements x kernel volume
    assert rows["conv1"].flops == 6 * 28 * 28 * 25 and rows["conv2"].flops == 16 * 10 * 10 * 6 * 25
    assert rows["fc1"].flops == 400 * 120
    # receptive field: r += (k - 1) * jump, jump *= stride
    assert rows["conv1"].receptive_field == (5, 5)
    assert rows["pool1"].receptive_field == (6, 6)       # 5 + 1*1, jump 2
    assert rows["conv2"].receptive_field == (14, 14)     # 6 + 4*2
    assert rows["pool2"].receptive_field == (16, 16)     # 14 + 1*2
    assert rows["fc1"].receptive_field == "global"
    # inference peak under liveness: conv1's output is still alive while act1 (not in place) is written
    assert s.inference_peak_bytes == 2 * 6 * 28 * 28 * 4
    assert inference_peak_bytes(spec.graph, 64) == 64 * s.inference_peak_bytes
    # the FLOPs share is drawn as a bar proportional to it: conv2 has 56% → 7 of 12 blocks
    table = format_summary(s, "table").splitlines()
    conv2 = next(l for l in table if l.startswith("conv2 "))
    assert "55.9% ███████ " in conv2 + " " and "14x14" in conv2
    logits = next(l for l in table if l.startswith("logits "))
    assert "0.2%" in logits and "█" not in logits
    assert main(["summary", "specs/lenet5.yaml", "--no-training-memory", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    conv2 = next(r for r in d["rows"] if r["id"] == "conv2")
    assert conv2["receptive_field"] == [14, 14] and abs(conv2["flops_share"] - 240_000 / d["total_flops"]) < 1e-12
    assert abs(sum(r["flops_share"] for r in d["rows"]) - 1.0) < 1e-9
    assert main(["summary", "specs/lenet5.yaml", "--no-training-memory", "--format", "markdown"]) == 0
    md = capsys.readouterr().out
    assert "| conv2 | conv2d | pool1 | 16x10x10 | 2,416 | 240.00k | 55.9% ███████ | 14x14 |" in md


def test_training_memory_counts_the_backward_pass():
    """cifarnet's training step (as cnngraph.train runs it, fused) holds most during backward, where the
    tape of the first layers and the gradients of the later ones are alive together: more than at the end of
    the forward; tracemalloc over a whole step agrees."""
    spec = cnngraph.load_spec("specs/cifarnet.yaml")
    tm = training_memory(spec, batch_size=16)
    model = cnngraph.compile(spec)
    from cnngraph.summary import _measure
    forward_only = max(_measure_forward_only(model, 16))
    assert tm.peak_bytes > 1.15 * forward_only
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    model.forward({"image": x}, training=True, fused=True)
    tracemalloc.start()
    model.backward({"logits": np.ones((16, 10), np.float32)}, input_grads=False)
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert traced >= 0.5 * tm.peak_bytes      # the tape itself was allocated before tracing began
    assert abs(_measure(model, 16)[0] - tm.peak_bytes) <= 0.01 * tm.peak_bytes


def _measure_forward_only(model, batch):
    from cnngraph import summary
    orig = summary._backward_peak
    summary._backward_peak = lambda *a: 0
    try:
        return summary._measure(model, batch)[:1]
    finally:
        summary._backward_peak = orig


def test_int64_inputs_and_losses_take_their_real_bytes():
    spec = cnngraph.load_spec({
        "name": "with_loss", "inputs": {"image": {"shape": [4]}, "label": {"shape": [], "dtype": "int64"}},
        "layers": [{"id": "fc", "type": "dense", "out_features": 3, "inputs": ["image"]},
                   {"id": "loss", "type": "cross_entropy", "inputs": ["fc", "label"]}],
        "outputs": ["loss"]})
    rows = {r.id: r for r in summarize(spec.graph, batch_size=64).rows}
    assert rows["label"].act_bytes == 64 * 8
    assert rows["loss"].act_bytes == 4
    assert rows["image"].act_bytes == 64 * 4 * 4


def test_receptive_field_through_a_plugin_op_that_shrinks_the_map():
    """A plugin op without kernel_size that halves the map (space_to_depth) counts as a 2x2 window with
    stride 2; one that shrinks it by another amount leaves the field unknown after it."""
    from cnngraph.op import Op, OpParams
    from cnngraph.summary import receptive_fields

    class SpaceToDepth(Op):
        type = "test_space_to_depth"
        Params = OpParams

        def infer_shape(self, in_shapes):
            c, h, w = in_shapes[0]
            return (4 * c, h // 2, w // 2)

    class Crop(Op):
        type = "test_crop_one"
        Params = OpParams

        def infer_shape(self, in_shapes):
            c, h, w = in_shapes[0]
            return (c, h - 1, w - 1)

    class Plugin:
        @cnngraph.hookimpl
        def cnngraph_register_ops(self, registry):
            registry.add(SpaceToDepth)
            registry.add(Crop)

    cnngraph.register_plugin(Plugin(), name="test-receptive-field-ops")
    spec = cnngraph.load_spec({
        "name": "rf", "inputs": {"x": {"shape": [1, 8, 8]}},
        "layers": [{"id": "s2d", "type": "test_space_to_depth"},
                   {"id": "conv", "type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
                   {"id": "crop", "type": "test_crop_one"},
                   {"id": "conv2", "type": "conv2d", "out_channels": 2, "kernel_size": 3}],
        "outputs": ["conv2"]})
    rf = receptive_fields(spec.graph)
    assert rf["s2d"] == (2, 2) and rf["conv"] == (6, 6)      # 2 + (3 - 1) * 2
    assert rf["crop"] is None and rf["conv2"] is None


def test_receptive_field_follows_channel_shuffles_and_stops_at_moved_pixels():
    """ShuffleNet's channel shuffle (reshape to (g, C/g, H, W), transpose the groups, flatten back) keeps H and W:
    the field goes on (3, 7, 15 through three shuffled strided convs) and the regrouped rows show (h, w), not a
    depth. Before, the regrouped channels were read as a depth that grew with every shuffle (4 TiB allocated).
    A transpose that moves H or W (channels last) leaves the field unknown after it."""
    from cnngraph.summary import receptive_fields
    layers = []
    for i in range(3):
        layers += [{"id": f"c{i}", "type": "conv2d", "out_channels": 48, "kernel_size": 3, "stride": 2, "padding": 1},
                   {"id": f"r{i}", "type": "reshape", "shape": [2, 24, 32 >> i, 32 >> i]},
                   {"id": f"t{i}", "type": "transpose", "perm": [0, 2, 1, 3, 4]},
                   {"id": f"f{i}", "type": "flatten", "end_dim": -3}]
    layers += [{"id": "last", "type": "transpose", "perm": [0, 2, 3, 1]}, {"id": "after", "type": "relu"}]
    spec = cnngraph.load_spec({"inputs": {"image": {"shape": [48, 64, 64]}}, "layers": layers,
                               "outputs": ["after"]})
    rf = receptive_fields(spec.graph)
    assert [rf[f"c{i}"] for i in range(3)] == [(3, 3), (7, 7), (15, 15)]
    assert rf["r0"] == rf["t0"] == rf["f0"] == (3, 3) and rf["t2"] == (15, 15)
    assert rf["last"] is None and rf["after"] is None


def _measured_field(spec, layer, positions):
    """Largest extent of input pixels with a non-zero gradient for single output pixels (positive weights)."""
    model = cnngraph.compile(spec, dtype="float64", seed=1)
    for name in model.params:
        model.params[name] = np.abs(np.asarray(model.params[name])) + 0.1
    x = np.ones((1, *spec.inputs["image"].shape))
    best = (0, 0)
    for i, j in positions:
        out = model.forward({"image": x}, grad=True, outputs=[layer])[layer]
        g = np.zeros_like(out)
        g[0, 0, i, j] = 1
        rows, cols = np.nonzero(model.backward({layer: g}, input_grads=True)["image"][0].sum(0))
        best = max(best, (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))
    return best


def test_receptive_field_through_transposed_convolutions_matches_the_gradients():
    """A transposed conv's stride spreads its input apart: the field grows by what one output pixel
    sees of it, and later layers' steps shrink (a U-Net decoder: 8, then 10, not 10 and 18)."""
    from cnngraph.summary import receptive_fields
    spec = cnngraph.load_spec({
        "inputs": {"image": {"shape": [1, 16, 16]}},
        "layers": [{"id": "e1", "type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
                   {"id": "d1", "type": "avg_pool2d", "kernel_size": 2},   # (max would route to one pixel)
                   {"id": "e2", "type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
                   {"id": "up", "type": "conv_transpose2d", "out_channels": 2, "kernel_size": 2, "stride": 2},
                   {"id": "cat", "type": "concat", "inputs": ["up", "e1"]},
                   {"id": "dec", "type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
                   {"id": "up3", "type": "conv_transpose2d", "out_channels": 2, "kernel_size": 3, "stride": 2,
                    "padding": 1},
                   {"id": "after", "type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1}],
        "outputs": ["after"]})
    rf = receptive_fields(spec.graph)
    assert (rf["up"], rf["dec"], rf["up3"], rf["after"]) == ((8, 8), (10, 10), (12, 12), (12, 12))
    for layer, size in (("up", 16), ("dec", 16), ("up3", 31), ("after", 31)):
        centre = [(size // 2 + a, size // 2 + a) for a in range(-2, 3)]
        assert _measured_field(spec, layer, centre) == rf[layer], layer


def test_receptive_field_of_1d_layers_matches_the_gradients():
    """(C, L) maps of 1-D layers get one-number fields (l,), as wide as the gradients reach."""
    from cnngraph.summary import receptive_fields
    spec = cnngraph.load_spec({
        "inputs": {"signal": {"shape": [2, 40]}},
        "layers": [{"id": "c1", "type": "conv1d", "out_channels": 2, "kernel_size": 5, "padding": 2},
                   {"id": "c2", "type": "conv1d", "out_channels": 2, "kernel_size": 3, "dilation": 2, "padding": 2},
                   {"id": "pool", "type": "avg_pool1d", "kernel_size": 2},
                   {"id": "c3", "type": "conv1d", "out_channels": 2, "kernel_size": 3, "stride": 2},
                   {"id": "up", "type": "conv_transpose1d", "out_channels": 2, "kernel_size": 2, "stride": 2},
                   {"id": "g", "type": "global_avg_pool2d"}],
        "outputs": ["g"]})
    rf = receptive_fields(spec.graph)
    assert (rf["c1"], rf["c2"], rf["pool"], rf["c3"], rf["g"]) == ((5,), (9,), (10,), (14,), "global")
    model = cnngraph.compile(spec, dtype="float64", seed=1)
    for name in model.params:
        model.params[name] = np.abs(np.asarray(model.params[name])) + 0.1
    for layer in ("c1", "c2", "pool", "c3", "up"):
        widest = 0
        for offset in range(-2, 3):
            out = model.forward({"signal": np.ones((1, 2, 40))}, grad=True, outputs=[layer])[layer]
            pos = out.shape[2] // 2 + offset
            g = np.zeros_like(out)
            g[0, 0, pos] = 1
            hit = np.nonzero(model.backward({layer: g}, input_grads=True)["signal"][0].sum(0))[0]
            widest = max(widest, hit.max() - hit.min() + 1)
        assert (widest,) == rf[layer], layer
    assert " 14 " in format_summary(summarize(spec.graph))


def test_receptive_field_through_upsampling_matches_the_gradients():
    from cnngraph.summary import receptive_fields
    spec = cnngraph.load_spec({
        "inputs": {"image": {"shape": [1, 12, 12]}},
        "layers": [{"id": "c0", "type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
                   {"id": "pool", "type": "avg_pool2d", "kernel_size": 2},
                   {"id": "up", "type": "upsample2d", "scale_factor": 2},
                   {"id": "c", "type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
                   {"id": "upb", "type": "upsample2d", "scale_factor": 2, "mode": "bilinear"},
                   {"id": "c2", "type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1}],
        "outputs": ["c2"]})
    rf = receptive_fields(spec.graph)
    assert [rf[n] for n in ("up", "c", "upb", "c2")] == [(4, 4), (6, 6), (8, 8), (8, 8)]
    for layer, size in (("c", 12), ("c2", 24)):
        centre = [(size // 2 + a, size // 2 + a) for a in range(-3, 3)]
        assert _measured_field(spec, layer, centre) == rf[layer], layer


def test_summary_prints_the_table_before_measuring(monkeypatch, capsys):
    """Measuring may be slow or get the process killed: the static table must already be out."""
    from cnngraph import summary
    seen = []

    def measure(*args, **kwargs):
        seen.append(capsys.readouterr().out)
        raise MemoryError

    monkeypatch.setattr(summary, "training_memory", measure)
    assert main(["summary", "specs/lenet5.yaml"]) == 0
    assert "conv2 " in seen[0] and "total FLOPs" in seen[0]


def test_summary_skips_a_measurement_that_would_not_fit(monkeypatch, capsys):
    from cnngraph import summary
    monkeypatch.setattr(summary, "available_memory_bytes", lambda: 100_000)     # lenet5 needs ~400 KiB
    monkeypatch.setattr(summary, "training_memory", lambda *a, **k: pytest.fail("measured anyway"))
    assert main(["summary", "specs/lenet5.yaml", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    line = out.splitlines()[-1]
    assert line.startswith("peak activation memory (training, batch 4): not measured: measuring needs about")
    assert "of the 97.7 KiB of memory available" in line and "--no-training-memory" in line
    spec = cnngraph.load_spec("specs/lenet5.yaml")
    estimate = sum(r.act_bytes for r in summarize(spec.graph, spec.name, 4).rows)
    assert f"static estimate {summary.human_bytes(estimate)}" in line
    for fmt in ("json", "markdown"):
        assert main(["summary", "specs/lenet5.yaml", "--batch-size", "4", "--format", fmt]) == 0
        out = capsys.readouterr().out
        if fmt == "json":
            d = json.loads(out)
            assert d["training_peak_bytes"] is None and d["training_estimate_bytes"] == estimate
            assert d["training_memory_skipped"].startswith("measuring needs about")
        else:
            assert out.splitlines()[-1].startswith("- peak activation memory (training, batch 4): not measured")
    assert main(["summary", "specs/lenet5.yaml", "--no-training-memory"]) == 0
    assert "training" not in capsys.readouterr().out


def test_summary_skips_a_measurement_that_would_take_long():
    spec = cnngraph.load_spec("specs/lenet5.yaml")
    s = summarize(spec.graph, spec.name)
    assert why_not_measure(s, None) is None and why_not_measure(s, 10 ** 12) is None
    s.total_flops = 10 ** 13        # about a 3x1024x1024 input through two 256-channel 3x3 convs, times 16
    assert why_not_measure(s, None).startswith("measuring would take about")
    add_training_memory(s, spec, available=10 ** 12)
    assert s.training_peak_bytes is None and s.training_memory_skipped.startswith("measuring would take")


def test_training_memory_reports_running_out_of_memory_as_memory_error(monkeypatch):
    """The runner wraps a kernel's MemoryError in a RunError naming the layer; measuring turns it back."""
    def oom(*args, **kwargs):
        raise MemoryError("Unable to allocate 64.0 GiB")

    spec = cnngraph.load_spec("specs/lenet5.yaml")
    model = cnngraph.compile(spec)
    monkeypatch.setattr(model.graph.nodes["conv1"]["op"], "forward", oom)
    with pytest.raises(MemoryError, match="while running conv1.*Unable to allocate 64.0 GiB"):
        training_memory(model)
    s = add_training_memory(summarize(spec.graph, spec.name), model, available=10 ** 12)
    assert s.training_memory_skipped == "measuring ran out of memory (a training step at batch 1 and 2)"


def test_receptive_field_is_global_where_a_layer_mixes_the_whole_map_and_kept_by_flatten():
    from cnngraph.summary import receptive_fields
    spec = cnngraph.load_spec({"inputs": {"x": {"shape": [4, 16, 12]}},
                               "layers": [{"id": "c", "type": "conv2d", "out_channels": 4, "kernel_size": 3},
                                          {"id": "gn", "type": "group_norm", "num_groups": 2},
                                          {"id": "after", "type": "conv2d", "out_channels": 4, "kernel_size": 3},
                                          {"id": "ln", "type": "layer_norm", "axes": 3, "inputs": "c"},
                                          {"id": "flat", "type": "flatten", "inputs": "c"},
                                          {"id": "fc", "type": "dense", "out_features": 2}],
                               "outputs": ["after", "ln", "fc"]})
    rf = receptive_fields(spec.graph)
    assert rf["c"] == (3, 3) and rf["gn"] == rf["after"] == rf["ln"] == "global"
    assert rf["flat"] == (3, 3) and rf["fc"] == "global"


def test_parameters_too_large_for_memory_are_counted_by_summary_and_one_line_in_compile(tmp_path, capsys):
    """summary counts parameters from their shapes, so weights that cannot be allocated are still counted
    (and the training measurement, which would build them, is skipped); compile names the layer in one line,
    and viz --params draws it."""
    path = tmp_path / "big.yaml"
    path.write_text("name: big\ninputs: {image: {shape: [1, 8, 8]}}\n"
                    "layers: [{id: c, type: conv2d, out_channels: 1000000000000000, kernel_size: 3}]\noutputs: [c]\n")
    assert main(["summary", str(path), "--no-training-memory"]) == 0
    out = capsys.readouterr().out
    assert "total params 10,000,000,000,000,000 " in out
    with pytest.raises(cnngraph.RunError, match="layer 'c' .* do not fit in memory"):
        cnngraph.compile(cnngraph.load_spec(path))
    assert main(["viz", str(path), "-o", str(tmp_path / "big.dot"), "--params"]) == 0


def test_huge_dense_is_counted_and_its_training_measurement_skipped(capsys):
    """143 TiB of float64 weights: the count needs none of them, and measuring (which would) is skipped."""
    spec = cnngraph.load_spec({"inputs": {"image": {"shape": [3, 16, 16]}},
                               "layers": [{"id": "c1", "type": "conv2d", "out_channels": 100000, "kernel_size": 3},
                                          {"id": "f", "type": "flatten"},
                                          {"id": "fc", "type": "dense", "out_features": 1000000}],
                               "outputs": ["fc"]})
    s = summarize(spec.graph, spec.name)
    assert s.total_params == 100000 * (27 + 1) + 1000000 * (100000 * 14 * 14 + 1)
    add_training_memory(s, spec, available=10 ** 12)
    assert s.training_peak_bytes is None and s.training_memory_skipped


def test_training_memory_of_parameters_too_large_is_a_memory_error(monkeypatch):
    """Building the model to measure runs out of memory: reported as MemoryError, so summary skips it."""
    from cnngraph import summary
    spec = cnngraph.load_spec("specs/lenet5.yaml")
    monkeypatch.setattr(summary, "why_not_measure", lambda *a: None)
    monkeypatch.setattr(spec.graph.nodes["conv1"]["op"], "init_params",
                        lambda *a: (_ for _ in ()).throw(MemoryError("Unable to allocate 9 TiB")))
    s = add_training_memory(summarize(spec.graph, spec.name), spec)
    assert s.training_memory_skipped == "measuring ran out of memory (a training step at batch 1 and 2)"


def test_parameter_memory_counts_in_the_measurement_cost():
    spec = cnngraph.load_spec("specs/lenet5.yaml")
    s = summarize(spec.graph, spec.name)
    need, _ = measurement_cost(s)
    s.param_bytes += 10 ** 9
    assert measurement_cost(s)[0] == need + 2 * 10 ** 9


def test_summary_counts_without_making_weights_where_ops_declare_shapes(monkeypatch):
    """Built-in ops with parameters declare param_shapes: summary never calls their init_params, and the
    counts equal those of the model's arrays."""
    from cnngraph.op import Op
    spec = cnngraph.load_spec("specs/resnet_small.yaml")
    model = cnngraph.compile(spec)
    for node in model.graph:
        op = model.graph.nodes[node].get("op")
        if op is not None and type(op).init_params is not Op.init_params:
            monkeypatch.setattr(op, "init_params", lambda *a: pytest.fail("init_params called"))
    s = summarize(spec.graph, spec.name)
    assert s.total_params == model.param_count()
    assert s.param_bytes == 4 * sum(a.size for a in model.params.values())


def test_summary_falls_back_to_init_params_and_distrusts_shapes_below_an_override():
    """An op without param_shapes is counted from init_params; so is a subclass that overrides init_params
    under a class that declares param_shapes (its own arrays may differ)."""
    import numpy as np
    from cnngraph.plugins.connection import Dense

    class WithExtra(Dense):
        type = "dense_with_extra"

        def init_params(self, in_shapes, rng):
            return {**super().init_params(in_shapes, rng), "extra": np.zeros(7, np.float32)}

    spec = cnngraph.load_spec("specs/lenet5.yaml")
    node = spec.graph.nodes["fc1"]
    node["op"] = WithExtra(node["op"].p, "fc1")
    from cnngraph.summary import declared_param_shapes, param_counts
    assert declared_param_shapes(spec.graph, "fc1") is None
    assert param_counts(spec.graph, "fc1", np.random.default_rng(0)) == (120 * 400 + 120 + 7,) * 2


@pytest.mark.parametrize("align_corners", [False, True])
def test_receptive_field_through_bicubic_upsampling_matches_the_gradients(align_corners):
    """Bicubic reads 4 pixels per axis (edges read the edge pixel): the field the summary states is the one
    the gradients show."""
    from cnngraph.summary import receptive_fields
    spec = cnngraph.load_spec({
        "inputs": {"image": {"shape": [1, 10, 10]}},
        "layers": [{"id": "c0", "type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
                   {"id": "up", "type": "upsample2d", "scale_factor": 2, "mode": "bicubic",
                    "align_corners": align_corners},
                   {"id": "c", "type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1}],
        "outputs": ["c"]})
    rf = receptive_fields(spec.graph)
    centre = [(10 + a, 10 + a) for a in range(-3, 3)]
    assert _measured_field(spec, "c", centre) == rf["c"]


def test_summary_says_what_train_freeze_keeps_fixed(tmp_path, capsys):
    import yaml
    spec = yaml.safe_load(open("specs/digits_cnn.yaml"))
    spec["train"]["freeze"] = ["conv*"]
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(spec))
    assert main(["summary", str(tmp_path / "f.yaml"), "--no-training-memory"]) == 0
    assert "frozen by train.freeze: conv1, conv2 (4,800 params; 33,482 trained)" in capsys.readouterr().out


def test_model_summary_prints_the_cli_table_and_can_return_it(capsys):
    """Keras users call model.summary(): it prints what `cnngraph summary --no-training-memory` prints."""
    assert main(["summary", "specs/lenet5.yaml", "--no-training-memory"]) == 0
    cli = capsys.readouterr().out
    model = cnngraph.compile("specs/lenet5.yaml")
    assert model.summary() is None
    assert capsys.readouterr().out == cli
    assert model.summary(print_fn=None) == cli.rstrip("\n")
    assert json.loads(model.summary(format="json", print_fn=None))["total_params"] == model.param_count() == 61706
    model.freeze(["conv1"])
    text = model.summary(batch_size=4, training_memory=True, print_fn=None)
    assert "frozen by model.freeze: conv1 (156 params; 61,550 trained)" in text
    assert "peak activation memory (training, batch 4): " in text and model.param_count() == 61550
    with pytest.raises(ValueError, match="format must be"):
        model.summary(format="html")
    assert cnngraph.Model.param_count.__doc__ and "trainable" in cnngraph.Model.param_count.__doc__


def _miscounted_op(fresh):
    """A plugin op whose param_shapes says (400,) where init_params makes (4,)."""
    class Miscounted(cnngraph.Op):
        type = "miscounted_scale"

        def param_shapes(self, in_shapes):
            return {"w": (in_shapes[0][0] * 100,)}

        def init_params(self, in_shapes, rng):
            return {"w": np.ones(in_shapes[0][0], np.float32)}

        def forward(self, ctx, inputs, params):
            return inputs[0] * params["w"][:, None, None]

    cnngraph.register_op(Miscounted)
    return cnngraph.load_spec({"inputs": {"x": {"shape": [4, 3, 3]}},
                               "layers": [{"id": "m", "type": "miscounted_scale"}], "outputs": ["m"]})


def test_summary_counts_a_plugin_ops_arrays_where_its_param_shapes_are_wrong(fresh):
    s = summarize(_miscounted_op(fresh).graph)
    assert s.total_params == 4 and s.param_bytes == 16
    assert "param_shapes returned {'w': (400,)} but init_params made {'w': (4,)}" in s.extra["warning"]
    assert "op 'miscounted_scale'" in s.extra["warning"] and "layer 'm'" in s.extra["warning"]


def test_compile_warns_once_where_param_shapes_disagree_with_init_params(fresh):
    spec = _miscounted_op(fresh)
    with pytest.warns(UserWarning, match=r"param_shapes returned \{'w': \(400,\)\} but init_params made") as caught:
        cnngraph.compile(spec)
    assert len([w for w in caught if "param_shapes" in str(w.message)]) == 1
