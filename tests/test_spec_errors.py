"""Every class of spec error: located (file:line:column, spec path, layer id) with expected vs found."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import cnngraph
from cnngraph import SpecError


def load(tmp_path, text, name="net.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    with pytest.raises(SpecError) as info:
        cnngraph.load_spec(path)
    return info.value, str(path)


HEAD = """\
name: t
inputs:
  image: {shape: [1, 8, 8]}
layers:
"""


def test_unknown_key_with_suggestion(tmp_path):
    err, path = load(tmp_path, HEAD + """\
  - {id: c1, type: conv2d, out_channels: 4, kernal_size: 3}
outputs: [c1]
""")
    msgs = [p.format() for p in err.problems]
    unknown = [p for p in err.problems if "kernal_size" in p.message][0]
    assert unknown.line == 5 and unknown.column == 45
    assert "did you mean 'kernel_size'" in unknown.message
    assert unknown.path == "layers[0].kernal_size" and unknown.layer == "c1"
    assert any("missing required key 'kernel_size'" in m for m in msgs)
    assert f"{path}:5:" in str(err)


def test_unknown_op_type_with_suggestion(tmp_path):
    err, _ = load(tmp_path, HEAD + """\
  - {id: c1, type: conv2, out_channels: 4, kernel_size: 3}
outputs: [c1]
""")
    (p,) = err.problems
    assert "unknown op type 'conv2'" in p.message and "did you mean 'conv2d'" in p.message
    assert (p.line, p.path, p.layer) == (5, "layers[0].type", "c1")


def test_dangling_input_with_suggestion(tmp_path):
    err, _ = load(tmp_path, HEAD + """\
  - {id: conv1, type: conv2d, out_channels: 4, kernel_size: 3}
  - {id: act, type: relu, inputs: conv_1}
outputs: [act]
""")
    (p,) = err.problems
    assert "input 'conv_1' is neither a layer id nor a model input" in p.message
    assert "did you mean 'conv1'" in p.message and p.line == 6 and p.layer == "act"


def test_duplicate_ids(tmp_path):
    err, _ = load(tmp_path, HEAD + """\
  - {id: a, type: relu}
  - {id: a, type: tanh}
outputs: [a]
""")
    (p,) = err.problems
    assert "duplicate layer id 'a'" in p.message and "layers[0]" in p.message and p.line == 6


def test_cycle_is_named(tmp_path):
    err, _ = load(tmp_path, HEAD + """\
  - {id: a, type: add, inputs: [image, c]}
  - {id: b, type: relu, inputs: a}
  - {id: c, type: relu, inputs: b}
outputs: [c]
""")
    (p,) = err.problems
    assert "cycle" in p.message and "a -> b -> c -> a" in p.message


@pytest.mark.parametrize("field,value,expect", [
    ("out_channels", "four", "expected an integer (found 'four')"),
    ("out_channels", 0, "greater than or equal to 1"),
    ("kernel_size", [3, 3, 3], "expected an integer >= 1 or a list [h, w]"),
    ("padding", "full", "expected 'same', 'valid'"),
    ("bias", "maybe", "expected true or false"),
])
def test_wrong_types_and_ranges(tmp_path, field, value, expect):
    layer = {"id": "c1", "type": "conv2d", "out_channels": 4, "kernel_size": 3, field: value}
    spec = {"inputs": {"image": {"shape": [1, 8, 8]}}, "layers": [layer], "outputs": ["c1"]}
    with pytest.raises(SpecError) as info:
        cnngraph.load_spec(spec)
    (p,) = info.value.problems
    assert p.path == f"layers[0].{field}" and expect in p.message and p.layer == "c1"
    assert repr(value) in p.message or str(value) in p.message


def test_shape_mismatch_in_add(tmp_path):
    err, _ = load(tmp_path, """\
inputs:
  image: {shape: [3, 8, 8]}
layers:
  - {id: a, type: conv2d, out_channels: 16, kernel_size: 3, padding: 1}
  - {id: b, type: conv2d, out_channels: 32, kernel_size: 3, padding: 1, inputs: image}
  - {id: sum, type: add, inputs: [a, b]}
outputs: [sum]
""")
    (p,) = err.problems
    assert p.message == "add needs inputs of one shape: a gives (16, 8, 8), b gives (32, 8, 8)"
    assert p.layer == "sum" and p.line == 6


def test_merge_mismatches_name_the_layer_that_gives_each_shape(tmp_path):
    err, _ = load(tmp_path, """\
inputs:
  image: {shape: [3, 16, 16]}
layers:
  - {id: c2, type: conv2d, inputs: image, out_channels: 8, kernel_size: 3, padding: 1}
  - {id: p, type: max_pool2d, inputs: image, kernel_size: 2}
  - {id: cat, type: concat, inputs: [c2, p]}
  - {id: m, type: matmul, inputs: [c2, p]}
outputs: [cat, m]
""")
    found = {p.layer: p.message for p in err.problems}
    assert found["cat"] == "concat along axis 1 needs all other dimensions equal: c2 gives (8, 16, 16), p gives (3, 8, 8)"
    assert found["m"].endswith("(inputs: c2 gives (8, 16, 16), p gives (3, 8, 8))")   # any op with several inputs
    from cnngraph.plugins.merge import Add
    with pytest.raises(cnngraph.ShapeError, match=r"^add needs inputs of one shape, found \(2,\), \(3,\)$"):
        Add().infer_shape([(2,), (3,)])   # called directly (check-op, ONNX import): the shapes, unnamed


def test_kernel_larger_than_padded_input(tmp_path):
    err, _ = load(tmp_path, HEAD + """\
  - {id: big, type: conv2d, out_channels: 2, kernel_size: 11, padding: 1}
outputs: [big]
""")
    (p,) = err.problems
    assert "kernel extent 11" in p.message and "padded input H=10" in p.message and p.layer == "big"


def test_pooling_window_of_only_padding_is_refused(tmp_path):
    """A window in a wide one-sided padding would give 0/0 (average without the padding) or -inf (max)."""
    err, _ = load(tmp_path, """\
name: t
inputs:
  image: {shape: [1, 2, 4]}
layers:
  - {id: p, type: avg_pool2d, kernel_size: [2, 1], padding: [3, 0, 0, 0], count_include_pad: false}
outputs: [p]
""")
    (p,) = err.problems
    assert "pooling window 0 along H covers only padding (input H=2" in p.message and p.layer == "p"


def test_dense_on_4d_needs_flatten(tmp_path):
    err, _ = load(tmp_path, HEAD + """\
  - {id: fc, type: dense, out_features: 10}
outputs: [fc]
""")
    (p,) = err.problems
    assert "add a flatten layer" in p.message and "(1, 8, 8)" in p.message


def test_every_problem_is_collected(tmp_path):
    err, _ = load(tmp_path, HEAD + """\
  - {id: c1, type: conv2d, out_channels: -1, kernel_size: 3}
  - {id: c2, type: pool, kernel_size: 2}
  - {id: c3, type: relu, colour: red}
outputs: [c3]
""")
    assert len(err.problems) == 3
    assert [p.layer for p in err.problems] == ["c1", "c2", "c3"]


def test_shape_error_does_not_cascade(tmp_path):
    err, _ = load(tmp_path, HEAD + """\
  - {id: fc, type: dense, out_features: 10}
  - {id: act, type: relu}
  - {id: out, type: dense, out_features: 2}
outputs: [out]
""")
    assert len(err.problems) == 1


def test_bad_yaml_syntax_is_located(tmp_path):
    err, path = load(tmp_path, "inputs: {image: {shape: [1, 8, 8]}\nlayers: [\n")
    (p,) = err.problems
    assert "not valid YAML" in p.message and p.line is not None and p.file == path


def test_unsafe_yaml_tags_are_refused(tmp_path):
    err, _ = load(tmp_path, "name: !!python/object/apply:os.system ['echo hi']\n" + HEAD[8:] +
                  "  - {id: a, type: relu}\noutputs: [a]\n")
    assert "python/object" in str(err)


def test_missing_file_and_wrong_top_level(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        cnngraph.load_spec(tmp_path / "nope.yaml")
    err, _ = load(tmp_path, "- just\n- a list\n")
    assert "expected a mapping" in err.problems[0].message


def test_unknown_top_level_key_and_missing_outputs(tmp_path):
    err, _ = load(tmp_path, HEAD + "  - {id: a, type: relu}\noutput: [a]\n")
    msgs = " | ".join(p.message for p in err.problems)
    assert "unknown key 'output' (did you mean 'outputs'?)" in msgs and "missing required key 'outputs'" in msgs


def test_dangling_output(tmp_path):
    err, _ = load(tmp_path, HEAD + "  - {id: a, type: relu}\noutputs: [b]\n")
    assert "output 'b' is not a layer id" in err.problems[0].message


def test_json_spec_is_accepted_and_located(tmp_path):
    path = tmp_path / "net.json"
    path.write_text('{"inputs": {"x": {"shape": [4]}},\n "layers": [{"id": "fc", "type": "dense", "out_features": 0}],\n'
                    ' "outputs": ["fc"]}\n')
    with pytest.raises(SpecError) as info:
        cnngraph.load_spec(path)
    (p,) = info.value.problems
    assert p.line == 2 and p.path == "layers[0].out_features"
    path.write_text('{"inputs": {"x": {"shape": [4]}}, "layers": [{"id": "fc", "type": "dense", "out_features": 3}],'
                    ' "outputs": ["fc"]}')
    assert cnngraph.load_spec(path).graph.nodes["fc"]["out_shape"] == (3,)


def test_cli_validate_exit_codes_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "  - {id: c1, type: conv2d, out_channels: 4, kernal_size: 3}\noutputs: [c1]\n")
    run = subprocess.run([sys.executable, "-m", "cnngraph.cli", "validate", "specs/lenet5.yaml", str(bad)],
                         capture_output=True, text=True)
    assert run.returncode == 1
    assert "OK   specs/lenet5.yaml" in run.stdout and f"FAIL {bad}" in run.stdout
    assert f"{bad}:5:45:" in run.stdout and "Traceback" not in run.stdout + run.stderr
    ok = subprocess.run([sys.executable, "-m", "cnngraph.cli", "validate", "specs/lenet5.yaml"],
                        capture_output=True, text=True)
    assert ok.returncode == 0


def test_valid_layers_are_still_checked_when_others_fail(tmp_path):
    err, _ = load(tmp_path, """\
inputs:
  image: {shape: [3, 8, 8]}
layers:
  - {id: c1, type: conv2d, out_channels: 16, kernal_size: 3}
  - {id: after_c1, type: relu}
  - {id: a, type: conv2d, out_channels: 16, kernel_size: 3, padding: 1, inputs: image}
  - {id: b, type: conv2d, out_channels: 32, kernel_size: 3, padding: 1, inputs: image}
  - {id: sum, type: add, inputs: [a, b]}
  - {id: act, type: relu, inputs: summ}
outputs: [act, after_c1]
""")
    layers = [p.layer for p in err.problems]
    assert layers.count("c1") == 2                    # missing kernel_size + unknown kernal_size
    assert "after_c1" not in layers                   # depends on the broken layer: no echo
    assert any("did you mean 'sum'" in p.message for p in err.problems)
    assert any(p.layer == "sum" and "a gives (16, 8, 8), b gives (32, 8, 8)" in p.message for p in err.problems)
    assert len(err.problems) == 4


def test_every_train_section_problem_shows_at_once_with_network_checks(tmp_path):
    """A bad top-level key in train: must not hide the problems inside its entries, and the checks that
    need the network (loss output, early-stopping metric, normalisation values) run at validation."""
    err, _ = load(tmp_path, """\
name: t
inputs:
  image: {shape: [3, 8, 8]}
layers:
  - {id: conv, type: conv2d, out_channels: 4, kernel_size: 3}
  - {id: flat, type: flatten}
  - {id: logits, type: dense, out_features: 10}
outputs: [logits]
train:
  data: {dataset: digits, normalize: {mean: [0.5, 0.5], std: [0.2, 0.2]}}
  optimizer: {type: adma, lr: 0.1}
  loss: {type: crossentropy, output: logitz}
  batchsize: 32
  early_stopping: {metric: val_lss}
""")
    messages = [(p.path, p.message) for p in err.problems]
    assert [m[0] for m in messages] == ["train.batchsize", "train.loss.type", "train.optimizer.type",
                                        "train.loss.output", "train.early_stopping.metric", "train.data.normalize"]
    text = "\n".join(m[1] for m in messages)
    for want in ("did you mean 'batch_size'", "did you mean 'cross_entropy'", "did you mean 'adam'",
                 "loss output 'logitz' is not a layer of the network (did you mean 'logits'?)",
                 "did you mean 'val_loss'", "expected 1 or 3 mean/std values"):
        assert want in text, want


def test_op_type_suggestions_ignore_case_and_separators(tmp_path):
    err, _ = load(tmp_path, HEAD + """\
  - {id: c, type: Conv2D, out_channels: 2, kernel_size: 3}
  - {id: a, type: Relu}
  - {id: p, type: MaxPool2D, kernel_size: 2}
outputs: [p]
""")
    import re
    assert [re.search(r"did you mean '(\w+)'", p.message).group(1) for p in err.problems] == [
        "conv2d", "relu", "max_pool2d"]


def test_scalars_of_the_wrong_type_are_refused_not_converted(tmp_path):
    """Lax conversion would build a 1-channel conv from `out_channels: true` and turn `affine: "off"` off."""
    err, _ = load(tmp_path, HEAD + """\
  - {id: c1, type: conv2d, out_channels: true, kernel_size: 3}
  - {id: c2, type: conv2d, out_channels: "8", kernel_size: 3, bias: "yes"}
  - {id: bn, type: batch_norm2d, affine: "off"}
  - {id: a, type: leaky_relu, negative_slope: true}
  - {id: c3, type: conv2d, out_channels: 4, kernel_size: 3, bias: 0}
outputs: [c3]
""")
    assert [(p.path, p.message) for p in err.problems] == [
        ("layers[0].out_channels", "expected an integer (found True)"),
        ("layers[1].out_channels", "expected an integer (found '8')"),
        ("layers[1].bias", "expected true or false (found 'yes')"),
        ("layers[2].affine", "expected true or false (found 'off')"),
        ("layers[3].negative_slope", "expected a number (found True)"),
        ("layers[4].bias", "expected true or false (found 0)")]


def test_train_section_numbers_are_strict_and_finite(tmp_path):
    """What `train` would refuse (or silently convert: `batch_size: true` as 1) is a located problem at
    validation, every one at once, with a layer's own mistakes too."""
    err, path = load(tmp_path, HEAD + """\
  - {id: c, type: conv2d, out_channels: true, kernel_size: "3"}
  - {id: f, type: flatten}
  - {id: logits, type: dense, out_features: 10}
outputs: [logits]
train:
  batch_size: true
  epochs: "2"
  seed: -5
  grad_clip: .nan
  optimizer: {type: sgd, lr: .inf, nesterov: "yes"}
  schedule: {type: step, step_size: 1, gamma: 1e999}
  early_stopping: {patience: "3"}
  augment: [{type: random_shift, pixels: true}]
  data: {dataset: digits, val_fraction: "0.1"}
  checkpoint_interval: -1
""")
    got = {p.path: (p.line, p.message) for p in err.problems}
    assert got == {
        "layers[0].out_channels": (5, "expected an integer (found True)"),
        "layers[0].kernel_size": (5, "expected an integer >= 1 or a list [h, w] of them, found '3'"),
        "train.batch_size": (10, "expected an integer (found True)"),
        "train.epochs": (11, "expected an integer (found '2')"),
        "train.seed": (12, "expected a value greater than or equal to 0 (found -5)"),
        "train.grad_clip": (13, "expected a finite number (found nan)"),
        "train.optimizer.lr": (14, "expected a finite number (found inf)"),
        "train.optimizer.nesterov": (14, "expected true or false (found 'yes')"),
        "train.schedule.gamma": (15, "expected a finite number (found inf)"),
        "train.early_stopping.patience": (16, "expected an integer (found '3')"),
        "train.augment[0].pixels": (17, "expected an integer (found True)"),
        "train.data.val_fraction": (18, "expected a number (found '0.1')"),
        "train.checkpoint_interval": (19, "expected a value greater than or equal to 0 (found -1)"),
    }, err


def test_numbers_with_an_exponent_but_no_dot_are_floats(tmp_path):
    """YAML 1.1 reads `1e-3` as a string (it wants `1.0e-3`); specs read it as YAML 1.2 and JSON do."""
    path = tmp_path / "net.yaml"
    path.write_text(HEAD + """\
  - {id: bn, type: batch_norm2d, eps: 1e-5}
outputs: [bn]
train: {optimizer: {type: adam, lr: 1e-3, weight_decay: 5E-4}, grad_clip: 2e0}
""")
    spec = cnngraph.load_spec(path)
    assert spec.layers[0].params.eps == 1e-5 and spec.train.optimizer.params.lr == 1e-3
    assert spec.train.optimizer.params.weight_decay == 5e-4 and spec.train.grad_clip == 2.0


def test_a_broken_block_instance_does_not_hide_the_other_problems(tmp_path):
    err, _ = load(tmp_path, """\
name: t
inputs:
  image: {shape: [3, 16, 16]}
blocks:
  cb:
    args: {c: null}
    layers:
      - {id: conv, type: conv2d, out_channels: $c, kernel_size: 3}
layers:
  - {id: a, block: cb, c: 4, bogus: 1}
  - {id: b, block: cb, c: "x"}
  - {id: d, type: conv2d, out_channels: -3, kernel_size: 3}
  - {id: e, type: relu, inputs: a}
outputs: [d, e]
""")
    assert [p.layer for p in err.problems] == ["a", "b.conv", "d"]   # nothing echoed for e, fed by the broken a
    assert "unknown argument 'bogus'" in err.problems[0].message


def test_deep_block_nesting_is_not_called_recursion(tmp_path):
    levels = "\n".join(f"  b{i}:\n    layers:\n      - {{id: x, block: b{i + 1}}}" for i in range(40))
    err, _ = load(tmp_path, f"""\
name: t
inputs:
  image: {{shape: [3, 8, 8]}}
blocks:
{levels}
  b40:
    layers:
      - {{id: r, type: relu}}
layers:
  - {{id: top, block: b0}}
outputs: [top]
""")
    (p,) = err.problems
    assert "nested more than 32 deep" in p.message and "uses itself" not in p.message


def test_outputs_must_name_something_once(tmp_path):
    for outputs, message in (("[]", "outputs is empty"), ("[r, r]", "output 'r' is listed twice")):
        err, _ = load(tmp_path, HEAD + f"  - {{id: r, type: relu}}\noutputs: {outputs}\n")
        assert [p.message for p in err.problems] == [message + ("; name the layer(s) the model returns"
                                                                 if outputs == "[]" else "")]


def test_blocks_no_layer_uses_are_still_checked(tmp_path):
    err, _ = load(tmp_path, """\
name: t
inputs:
  image: {shape: [3, 8, 8]}
blocks:
  ping:
    layers:
      - {id: p, block: pong}
  pong:
    layers:
      - {id: q, block: ping}
  unused_bad:
    args: {c: 1}
    layers:
      - {id: z, type: conv2dd, out_channels: $d}
layers:
  - {id: a, type: relu}
outputs: [a]
""")
    messages = [p.message for p in err.problems]
    assert any("unknown op type 'conv2dd' (did you mean 'conv2d'?) in block 'unused_bad'" in m for m in messages)
    assert any("'$d' is not an argument of block 'unused_bad'" in m for m in messages)
    assert any("blocks use each other in a circle (ping -> pong -> ping)" in m for m in messages)


def test_yaml_merge_keys_and_x_keys_for_anchors(tmp_path):
    """`<<: *anchor` fills in what a layer does not write itself; top-level `x-...` keys are free for anchors."""
    path = tmp_path / "vgg.yaml"
    path.write_text(textwrap.dedent("""\
        name: vgg
        x-conv: &conv3 {type: conv2d, kernel_size: 3, padding: 1, bias: false}
        inputs:
          image: {shape: [3, 8, 8]}
        layers:
          - {<<: *conv3, id: c1, out_channels: 4}
          - {<<: *conv3, id: c2, out_channels: 6, kernel_size: 1, kernal: 5}
        outputs: [c2]
        """))
    with pytest.raises(SpecError) as info:
        cnngraph.load_spec(path)
    (p,) = info.value.problems
    assert p.line == 7 and "unknown key 'kernal'" in p.message
    path.write_text(path.read_text().replace(", kernal: 5", ""))
    spec = cnngraph.load_spec(path)
    assert spec.graph.nodes["c1"]["out_shape"] == (4, 8, 8) and spec.graph.nodes["c2"]["out_shape"] == (6, 10, 10)
    assert not spec.layers[0].params.bias and spec.layers[1].params.kernel_size == (1, 1)


def _alias_bomb(levels: int) -> str:
    """A "billion laughs" spec: each x- key holds nine aliases of the one before (9**levels strings)."""
    lines = ["name: bomb", "x-l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"x-l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    lines += ["inputs: {image: {shape: [1, 8, 8]}}",
              "layers: [{id: f, type: flatten}, {id: logits, type: dense, out_features: 10}]", "outputs: [logits]"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [7, 9])
def test_nested_aliases_that_expand_too_far_are_refused_before_expanding(tmp_path, levels):
    import time
    start = time.perf_counter()
    err, path = load(tmp_path, _alias_bomb(levels))
    assert time.perf_counter() - start < 5   # sized without expanding: milliseconds, not minutes
    (p,) = err.problems
    assert (p.file, p.line) == (path, levels) and "alias expansion too large" in p.message, p.format()
    assert "repeated by 9 aliases" in p.message and "expected at most 100,000" in p.message


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    err, path = load(tmp_path, "name: t\nx-loop: &a [1, *a]\n")
    (p,) = err.problems
    assert (p.line, p.column) == (2, 9) and "alias is used inside its own anchored node" in p.message


def test_aliases_below_the_limit_still_load(tmp_path):
    """The limit is on what aliases add: 9**5 strings under an x- key are below it."""
    path = tmp_path / "net.yaml"
    path.write_text(_alias_bomb(5))
    assert cnngraph.load_spec(path).name == "bomb"


def test_expand_shows_a_spec_whose_shapes_do_not_fit(tmp_path, capsys):
    """The expansion is what a user needs to see to find a shape error inside a block."""
    from cnngraph.cli import main
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent("""\
        name: t
        inputs:
          image: {shape: [3, 8, 8]}
        blocks:
          res:
            layers:
              - {id: conv, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
              - {id: add, type: add, inputs: [conv, input]}
        layers:
          - {id: a, block: res}
        outputs: [a]
        """))
    assert main(["validate", str(path)]) == 1
    assert main(["expand", str(path)]) == 0
    assert "{id: a.add, type: add, inputs: [a.conv, image]}" in capsys.readouterr().out


def test_errors_after_blocks_name_the_path_written_in_the_file(tmp_path):
    """Blocks expand into more layers; an error must not say layers[6] for the file's layers[2]."""
    err, _ = load(tmp_path, """\
name: t
inputs:
  image: {shape: [3, 8, 8]}
blocks:
  cbr:
    args: {c: null}
    layers:
      - {id: conv, type: conv2d, out_channels: $c, kernel_size: 3, padding: 1}
      - {id: act, type: relu}
layers:
  - {id: s, block: cbr, c: 4}
  - {id: t, block: cbr, c: "x"}
  - {id: d, type: conv2d, out_channels: -3, kernel_size: 3}
outputs: [d]
""")
    assert [p.path for p in err.problems] == ["blocks.cbr.layers[0].out_channels", "layers[2].out_channels"]
    assert "instantiated as 't'" in err.problems[0].note


def test_a_loss_after_its_own_activation_is_a_warning(tmp_path, capsys):
    from cnngraph.cli import main
    path = tmp_path / "dbl.yaml"
    path.write_text(textwrap.dedent("""\
        name: dbl
        inputs:
          x: {shape: [4]}
          y: {shape: [], dtype: int64}
        layers:
          - {id: fc, type: dense, out_features: 3, inputs: x}
          - {id: p, type: softmax}
          - {id: loss, type: cross_entropy, inputs: [p, y]}
        outputs: [loss]
        """))
    assert main(["validate", str(path)]) == 0
    assert "warning: " in capsys.readouterr().out
    with pytest.warns(UserWarning, match="the activation is applied twice; feed it the layer before 'p'"):
        cnngraph.compile(path)
    path.write_text(path.read_text().replace("inputs: [p, y]", "inputs: [fc, y]"))
    assert [w.message for w in cnngraph.load_spec(path).warnings] == [   # only that 'p' is now unused
        "layer 'p' reaches no output (loss), so the model never computes it: add it to outputs, or remove it"]


def test_input_names_follow_the_layer_id_rule(tmp_path):
    err, _ = load(tmp_path, """\
name: t
inputs:
  my image: {shape: [1, 4, 4]}
layers:
  - {id: r, type: relu}
outputs: [r]
""")
    assert any("input names follow the layer-id rule" in p.message and "'my image'" in p.message
               for p in err.problems)


COMBO_LAYERS = """\
layers:
  - {id: a, type: conv2d, out_channels: 4, kernel_size: 3, stirde: 1}
  - {id: b, type: relu, inputs: aa}
"""


@pytest.mark.parametrize("head,tail,first", [
    ("inputs:\n  image: {shape: [3, 8, 8]}\n", "outputs: [b]\ntrian:\n  epochs: 0\n",
     "unknown key 'trian' (did you mean 'train'?)"),
    ("inputs:\n  image: {shape: [3, 8, 8]}\n", "output: [b]\ntrain:\n  epochs: 0\n",
     "unknown key 'output' (did you mean 'outputs'?)"),
    ("version: 2\ninputs:\n  image: {shape: [3, 8, 8]}\n", "outputs: [b]\ntrain:\n  epochs: 0\n",
     "unknown key 'version'"),
    ("inputs:\n  image: {shape: [3, 8, 8], dtype: flaot32}\n", "outputs: [b]\ntrain:\n  epochs: 0\n",
     "(found 'flaot32') (did you mean 'float32'?)"),
])
def test_a_top_level_problem_hides_no_other_problem(tmp_path, head, tail, first):
    """A mistyped top-level key or input dtype is reported, and the layers and the train section (under
    the key the typo stands for) are still checked."""
    err, _ = load(tmp_path, head + COMBO_LAYERS + tail)
    text = str(err)
    assert first in text
    assert "unknown key 'stirde' (did you mean 'stride'?)" in text
    assert "input 'aa' is neither a layer id nor a model input" in text
    assert "train.epochs: expected a value greater than or equal to 1" in text
    trained = [p for p in err.problems if p.path == "train.epochs"]
    assert trained[0].line == len((head + COMBO_LAYERS + tail).splitlines())   # located in the file as written


def test_a_near_miss_among_choices_is_suggested_and_a_far_one_is_not(tmp_path):
    err, _ = load(tmp_path, HEAD + """\
  - {id: u, type: upsample2d, mode: bilnear}
  - {id: c, type: conv2d, out_channels: 2, kernel_size: 1, init: kaiming_normal}
outputs: [c]
""")
    mode, init = err.problems
    assert mode.message.endswith("(did you mean 'bilinear'?)")
    assert "did you mean" not in init.message


def test_unused_layers_and_inputs_are_warnings(tmp_path, capsys):
    from cnngraph.cli import main
    path = tmp_path / "unused.yaml"
    path.write_text(textwrap.dedent("""\
        name: t
        inputs:
          image: {shape: [3, 8, 8]}
          extra: {shape: [3, 8, 8]}
        layers:
          - {id: a, type: conv2d, out_channels: 3, kernel_size: 1, inputs: image}
          - {id: dead, type: conv2d, out_channels: 3, kernel_size: 1, inputs: image}
          - {id: dead2, type: relu}
          - {id: b, type: relu, inputs: a}
        outputs: [b]
        """))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"warning: {path}:7:5: layers[1]: (layer 'dead') layers 'dead', 'dead2' reach no output (b)" in out
    assert f"warning: {path}:4:10: inputs.extra: input 'extra' feeds no layer that reaches an output" in out
    with pytest.warns(UserWarning, match="reach no output"):
        cnngraph.compile(path)
    # a layer that only the train section's loss reads is used
    spec = cnngraph.load_spec({"inputs": {"x": {"shape": [4]}},
                               "layers": [{"id": "fc", "type": "dense", "out_features": 2},
                                          {"id": "head", "type": "dense", "inputs": "x", "out_features": 3}],
                               "outputs": ["fc"], "train": {"loss": {"type": "cross_entropy", "output": "head"}}})
    assert spec.warnings == []


def test_keras_and_pytorch_keys_get_a_hint_instead_of_a_misleading_did_you_mean(tmp_path):
    err, _ = load(tmp_path, HEAD + """\
  - {id: c, type: conv2d, in_channels: 1, out_channels: 8, kernel_size: 3, activation: relu}
  - {id: p, type: max_pool2d, kernel_size: 2, strides: 2}
  - {id: f, type: flatten}
  - {id: fc, type: dense, units: 10}
outputs: [fc]
""")
    msgs = {p.path: p.message for p in err.problems}
    assert msgs["layers[0].in_channels"] == ("unknown key 'in_channels': input channels are inferred from the "
                                             "previous layer; remove in_channels")
    assert msgs["layers[0].activation"] == ("unknown key 'activation': add a separate activation layer after it "
                                            "(e.g. {type: relu})")
    assert msgs["layers[1].strides"] == "unknown key 'strides': write stride (Keras' strides)"
    assert msgs["layers[3].units"] == "unknown key 'units': write out_features (Keras' units)"


def test_pads_as_a_flat_list_is_one_error_that_shows_the_form(tmp_path):
    err, _ = load(tmp_path, HEAD.replace("[1, 8, 8]", "[3, 8, 8]") + """\
  - {id: p, type: pad, pads: [1, 1, 1, 1]}
outputs: [p]
""")
    (p,) = err.problems
    assert p.path == "layers[0].pads" and p.message.startswith(
        "pads takes one [before, after] pair for each per-sample dimension, channels included: "
        "[[0, 0], [1, 1], [1, 1]] pads H and W of a (C, H, W) input by 1; found [1, 1, 1, 1]")


def test_out_of_range_sizes_show_the_value_as_written(tmp_path):
    err, _ = load(tmp_path, HEAD + """\
  - {id: a, type: conv2d, out_channels: 3, kernel_size: 0, stride: [1, 0], padding: -1}
outputs: [a]
""")
    msgs = {p.path: p.message for p in err.problems}
    assert msgs == {"layers[0].kernel_size": "expected an integer >= 1, found 0",
                    "layers[0].stride": "expected integers >= 1, found [1, 0]",
                    "layers[0].padding": "padding must be >= 0, found -1"}


def test_yaml_syntax_errors_say_where_the_open_mapping_began_and_about_tabs(tmp_path):
    err, _ = load(tmp_path, """\
name: t
inputs:
  image: {shape: [3, 8, 8]
layers:
  - {id: a, type: relu}
outputs: [a]
""")
    (p,) = err.problems
    assert (p.line, p.column) == (4, 1)
    assert p.message.endswith("(while parsing a flow mapping, opened at 3:10)")
    err, _ = load(tmp_path, HEAD + "\t- {id: a, type: relu}\noutputs: [a]\n")
    (p,) = err.problems
    assert p.line == 5 and p.message.endswith("; indent with spaces, not tabs")


def test_a_json_file_is_strict_json_and_still_located(tmp_path):
    """.json goes through the json module: a trailing comma is an error (YAML would take it), 1e-2 is a
    number (YAML 1.1 reads a string), and problems keep their line and column."""
    err, path = load(tmp_path, """\
{"name": "j", "inputs": {"image": {"shape": [3, 8, 8]}},
 "layers": [ {"id": "a", "type": "relu"}, ],
 "outputs": ["a"]}
""", name="net.json")
    (p,) = err.problems
    assert (p.line, p.column) == (2, 43)
    assert p.message == "not valid JSON: Expecting value (JSON allows no comma before a closing ] or })"
    err, _ = load(tmp_path, """\
{"name": "j", "inputs": {"image": {"shape": [3, 8, 8]}},
 "layers": [{"id": "a", "type": "leaky_relu", "negative_slope": 1e-2, "kernal": 3}],
 "outputs": ["a"]}
""", name="net.json")
    (p,) = err.problems
    assert "unknown key 'kernal'" in p.message and (p.line, p.column) == (2, 71)


@pytest.mark.parametrize("settings,expected", [
    ("mode: nearest, align_corners: true", "align_corners applies to bilinear and bicubic modes, not nearest"),
    ("mode: bilinear, cubic_coeff_a: -0.5", "cubic_coeff_a applies to mode bicubic only, not bilinear"),
])
def test_upsample_setting_the_mode_ignores_is_refused(tmp_path, settings, expected):
    err, path = load(tmp_path, HEAD + f"""\
  - {{id: up, type: upsample2d, {settings}}}
outputs: [up]
""")
    (p,) = err.problems
    assert expected in p.message and p.line == 5 and p.layer == "up"


@pytest.mark.parametrize("name,text,where", [
    ("net.yaml", HEAD + "  - {id: a, type: relu, inputs: " + "[" * 500 + "image" + "]" * 500 + "}\noutputs: [a]\n",
     (5, 132)),   # the 100th '[' of inputs is the 101st level, after the layer's '{'

    ("net.json", '{"inputs": {"image": {"shape": [1, 8, 8]}}, "layers": [{"id": "a", "type": "relu", "inputs": '
     + "[" * 2000 + '"image"' + "]" * 2000 + '}], "outputs": ["a"]}', (1, 93 + 98)),   # after the 3 levels of {, [ and {
], ids=["yaml", "json"])
def test_deeply_nested_brackets_are_a_located_error_not_a_recursion_error(tmp_path, name, text, where):
    err, path = load(tmp_path, text, name=name)
    (p,) = err.problems
    assert p.message.startswith("brackets nested more than 100 levels deep")
    assert (p.file, p.line, p.column) == (path, *where)
    run = subprocess.run([sys.executable, "-m", "cnngraph.cli", "validate", path], capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" not in run.stdout + run.stderr and "RecursionError" not in run.stderr


def test_brackets_in_strings_and_comments_do_not_count_as_nesting(tmp_path):
    deep = "[" * 300
    path = tmp_path / "net.yaml"
    path.write_text(f"name: t  # {deep}\ndescription: '{deep}'\nx-note: \"{deep}\"\ninputs:\n  image: {{shape: [1, 8, 8]}}\n"
                    "layers:\n  - {id: a, type: relu}\noutputs: [a]\n")
    assert cnngraph.load_spec(path).name == "t"


@pytest.mark.parametrize("levels,message", [(150, "lists and mappings nested more than 100 levels deep"),
                                             (1500, "the spec nests too deeply to read")])
def test_deep_indentation_nesting_is_a_located_error(tmp_path, levels, message):
    rows = ["name: t", "inputs:"] + ["  " * (i + 1) + f"k{i}:" for i in range(levels)] + ["  " * (levels + 1) + "v"]
    err, _ = load(tmp_path, "\n".join(rows) + "\n")
    (p,) = err.problems
    assert p.message.startswith(message) and p.line is not None and p.line > 100


@pytest.mark.parametrize("codec,mark", [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"),
                                        ("utf-32-le", b"\xff\xfe\x00\x00"), ("utf-32-be", b"\x00\x00\xfe\xff")])
@pytest.mark.parametrize("name", ["net.yaml", "net.json"])
def test_specs_with_a_byte_order_mark_load_and_stay_located(tmp_path, codec, mark, name):
    text = ('{"name": "b", "inputs": {"image": {"shape": [1, 8, 8]}},\n "layers": [{"id": "a", "type": "relu"}],\n'
            ' "outputs": ["a"]}\n')
    path = tmp_path / name
    path.write_bytes(mark + text.encode(codec))
    assert cnngraph.load_spec(path).name == "b"
    path.write_bytes(mark + text.replace('"relu"}', '"relu", "kernal": 3}').encode(codec))
    with pytest.raises(SpecError) as info:
        cnngraph.load_spec(path)
    (p,) = info.value.problems
    assert "unknown key 'kernal'" in p.message and (p.line, p.column) == (2, 41)


@pytest.mark.parametrize("data,message", [
    (b"name: t\ninputs:\n  image: {shape: [1, 8, 8]}\n# caf\xe9\n",
     "not a UTF-8 text file (byte 0xe9 at line 4, column 6); save it as UTF-8 (it may be Latin-1 or Windows-1252 text)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a UTF-8 text file (byte 0x89 at line 1, column 1); it looks like a PNG image"),
    (bytes([0xa9, 0x2d, 0x1c, 0xa3, 0x7d, 0xe9, 0x0b, 0x9a]), "not a UTF-8 text file (byte 0xa9 at line 1, column 1); "
                                                              "a spec is YAML or JSON text"),
    ("name: t\n".encode("utf-16-le"), "not a text file: a NUL byte at line 1, column 2"),
    (b"\xff\xfe" + b"n\x00\x00\xd8", "not a UTF-16-LE text file, as its byte-order mark says (byte 0x00 at line 1, column 2)"),
], ids=["latin-1", "png", "binary", "utf-16 without mark", "broken utf-16"])
def test_files_that_are_not_text_say_which_byte_and_where(tmp_path, data, message):
    path = tmp_path / "net.yaml"
    path.write_bytes(data)
    with pytest.raises(SpecError) as info:
        cnngraph.load_spec(path)
    (p,) = info.value.problems
    assert p.message.startswith(message) and p.file == str(path)
    assert "codec" not in p.message


def test_a_json_file_holding_yaml_is_told_to_be_renamed(tmp_path):
    err, path = load(tmp_path, HEAD + "  - {id: a, type: relu}\noutputs: [a]\n", name="net.json")
    (p,) = err.problems
    assert p.message == f"not valid JSON: Expecting value; it looks like YAML, not JSON: rename it to {path[:-5]}.yaml"
    err, _ = load(tmp_path, '{"name": "t", "layers": [1, 2,]}', name="net.json")   # JSON with a mistake: no hint
    assert "YAML" not in err.problems[0].message


@pytest.mark.parametrize("layer_id,expected", [
    ("faltung_ä", "'ä' (U+00E4) at character 9 is not allowed; ids use ASCII letters, digits"),
    ("激活", "starts with '激' (U+6FC0); ids use ASCII letters"),
    ('"a b"', "a space at character 2 is not allowed"),
    ('"1conv"', "starts with '1'; ids use ASCII letters, digits, '_', '.' and '-', starting with a letter or '_'"),
    ('""', "an id may not be empty"),
])
def test_an_id_that_breaks_the_rule_names_the_character_and_where(tmp_path, layer_id, expected):
    err, _ = load(tmp_path, HEAD + f"  - {{id: {layer_id}, type: relu}}\noutputs: [image]\n")
    (p,) = [p for p in err.problems if p.path == "layers[0].id"]
    assert p.message.startswith(expected) and (p.line, p.column) == (5, 10)
    err, _ = load(tmp_path, f"inputs:\n  {layer_id}: {{shape: [1, 4, 4]}}\nlayers:\n  - {{id: r, type: relu}}\noutputs: [r]\n")
    assert any("input names follow the layer-id rule" in p.message and expected in p.message for p in err.problems)


@pytest.mark.parametrize("text,path,message", [
    ("inputs:\n  image: [3, 16, 16]\nlayers:\n  - {id: a, type: relu}\noutputs: [a]\n", "inputs.image",
     "expected a mapping with the input's shape; write image: {shape: [3, 16, 16]}"),
    ("inputs:\n  - {id: image, shape: [3, 16, 16]}\nlayers:\n  - {id: a, type: relu}\noutputs: [a]\n", "inputs",
     "expected a mapping from input names to their shapes; write inputs: {image: {shape: [3, 16, 16]}}"),
    ("inputs:\n  image: {shape: [3, 16, 16]}\nlayers:\n  []\noutputs: [image]\n", "layers",
     "the list is empty; a spec needs at least one layer"),
    ("inputs: {}\nlayers:\n  - {id: a, type: relu}\noutputs: [a]\n", "inputs",
     "the mapping is empty; a spec needs at least one input, e.g. image: {shape: [3, 32, 32]}"),
    ("inputs:\n  image: {shape: [3, 16, 16]}\nlayers:\n  - {id: c1, type: relu, inputs: 3}\noutputs: [c1]\n",
     "layers[0].inputs", "expected a layer id or input name, or a list of them (found 3)"),
    ("inputs:\n  image: {shape: [3, 16, 16]}\nlayers:\n  - relu\noutputs: [image]\n", "layers[0]",
     "expected a mapping (found 'relu')"),
    ("inputs:\n  image: {shape: [3, 16, 16]}\nlayers:\n  - {id: a, type: relu}\noutputs: 3\n", "outputs",
     "expected a layer id, or a list of them (found 3)"),
], ids=["input as a list", "inputs as a list", "no layers", "no inputs", "inputs an int", "layer a string", "outputs an int"])
def test_structure_mistakes_are_said_in_the_spec_words_not_pydantic_words(tmp_path, text, path, message):
    err, _ = load(tmp_path, text)
    p = next(p for p in err.problems if p.path == path)
    assert p.message == message
    assert not any("Input should" in q.message or "should have at least" in q.message for q in err.problems)


def test_op_parameters_must_be_finite_except_where_an_infinity_means_something(tmp_path):
    err, _ = load(tmp_path, HEAD + """\
  - {id: d, type: dropout, p: .nan}
  - {id: l, type: leaky_relu, negative_slope: .inf}
  - {id: e, type: elu, alpha: -.inf}
  - {id: c, type: clip, min: .nan}
outputs: [c]
""")
    found = {p.path: p.message for p in err.problems}
    assert found["layers[0].p"] == "expected a finite number (found nan)"
    assert found["layers[1].negative_slope"] == "expected a finite number (found inf)"
    assert found["layers[2].alpha"] == "expected a finite number (found -inf)"
    assert found["layers[3].min"].startswith("expected a number or -.inf/.inf, found nan")
    # clip bounds and a pad value may be infinite: no bound, and -inf padding before a max (ONNX models)
    import numpy as np
    spec = cnngraph.load_spec({"inputs": {"x": {"shape": [1, 2, 2]}},
                               "layers": [{"id": "c", "type": "clip", "min": float("-inf"), "max": 6.0},
                                          {"id": "p", "type": "pad", "pads": [[0, 0], [1, 1], [1, 1]],
                                           "value": float("-inf")},
                                          {"id": "m", "type": "max_pool2d", "kernel_size": 2, "stride": 1}],
                               "outputs": ["m"]})
    x = np.array([[[[9.0, -3.0], [1.0, 2.0]]]], np.float32)
    y = cnngraph.compile(spec).forward({"x": x})["m"]
    np.testing.assert_array_equal(y[0, 0], [[6.0, 6.0, -3.0], [6.0, 6.0, 2.0], [1.0, 2.0, 2.0]])   # -inf never wins


def test_a_channels_last_image_shape_is_a_warning_with_the_fix(tmp_path, capsys):
    from cnngraph.cli import main
    path = tmp_path / "hwc.yaml"
    path.write_text("inputs:\n  image: {shape: [32, 32, 3]}\nlayers:\n  - {id: c, type: conv2d, out_channels: 4, "
                    "kernel_size: 3}\noutputs: [c]\n")
    spec = cnngraph.load_spec(path)   # valid: a warning, not an error
    (w,) = spec.warnings
    assert w.path == "inputs.image.shape" and (w.line, w.column) == (2, 18)
    assert w.message.startswith("shape [32, 32, 3] looks channels-last (H, W, C); cnngraph takes (C, H, W): write "
                                "shape: [3, 32, 32]")
    assert main(["validate", str(path)]) == 0
    assert "warning: " in capsys.readouterr().out
    for shape in ([3, 32, 32], [1, 28, 28], [16, 8, 3], [64, 4]):   # channels first, or too small to tell
        assert not cnngraph.load_spec({"inputs": {"x": {"shape": shape}}, "layers": [{"id": "r", "type": "relu"}],
                                       "outputs": ["r"]}).warnings
