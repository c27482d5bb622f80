"""Reusable blocks in specs: expansion, naming, arguments, nesting, repeat, located errors, `expand`."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import yaml

import cnngraph
from cnngraph.cli import main
from cnngraph.errors import SpecError

CBR = """
blocks:
  conv_bn_relu:
    args: {channels: null, stride: 1}
    layers:
      - {id: conv, type: conv2d, out_channels: $channels, kernel_size: 3, stride: $stride, padding: 1, bias: false}
      - {id: bn, type: batch_norm2d}
      - {id: act, type: relu}
"""


def write(tmp_path, text: str, name: str = "net.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def problems_of(source) -> list:
    with pytest.raises(SpecError) as err:
        cnngraph.load_spec(source)
    return err.value.problems


def line_of(path, needle: str, nth: int = 0) -> int:
    lines = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if needle in line]
    return lines[nth]


def test_instances_are_namespaced_and_params_follow(tmp_path):
    path = write(tmp_path, "inputs:\n  image: {shape: [3, 8, 8]}\n" + CBR.lstrip() + textwrap.dedent("""
        layers:
          - {id: stem, block: conv_bn_relu, channels: 4}
          - {id: down, block: conv_bn_relu, channels: 6, stride: 2}
          - {id: gap, type: global_avg_pool2d}
        outputs: [gap]
        """))
    spec = cnngraph.load_spec(path)
    assert [l.id for l in spec.layers] == ["stem.conv", "stem.bn", "stem.act", "down.conv", "down.bn", "down.act",
                                           "gap"]
    g = spec.graph
    assert g.nodes["stem.conv"]["inputs"] == ["image"]
    assert g.nodes["down.conv"]["inputs"] == ["stem.act"]
    assert g.nodes["down.conv"]["out_shape"] == (6, 4, 4)          # stride 2 from the argument
    assert spec.layer("stem.conv").params.out_channels == 4 and spec.layer("stem.conv").params.stride == (1, 1)
    model = cnngraph.compile(spec)
    assert model.params["stem.conv.weight"].shape == (4, 3, 3, 3)
    assert "down.bn.running_mean" in model.params
    assert "blocks" not in spec.to_dict()


def test_repeat_chains_copies_and_the_instance_id_means_the_last_output(tmp_path):
    spec = cnngraph.load_spec(write(tmp_path, """
        inputs:
          x: {shape: [2, 6, 6]}
        blocks:
          res:
            args: {c: null}
            layers:
              - {id: conv, type: conv2d, out_channels: $c, kernel_size: 3, padding: 1}
              - {id: add, type: add, inputs: [conv, input]}
              - {id: out, type: relu}
        layers:
          - {id: stage, block: res, c: 2, repeat: 3}
          - {id: side, type: tanh, inputs: stage}
          - {id: first, type: sigmoid, inputs: stage.0}
          - {id: inner, type: sigmoid, inputs: stage.1.conv}
          - {id: after, type: relu, inputs: [stage]}
        outputs: [stage, side]
        """))
    g = spec.graph
    assert g.nodes["stage.0.conv"]["inputs"] == ["x"]
    assert g.nodes["stage.0.add"]["inputs"] == ["stage.0.conv", "x"]
    assert g.nodes["stage.1.conv"]["inputs"] == ["stage.0.out"]
    assert g.nodes["stage.2.add"]["inputs"] == ["stage.2.conv", "stage.1.out"]
    assert g.nodes["side"]["inputs"] == ["stage.2.out"]
    assert g.nodes["first"]["inputs"] == ["stage.0.out"]
    assert g.nodes["inner"]["inputs"] == ["stage.1.conv"]
    assert g.nodes["after"]["inputs"] == ["stage.2.out"]
    assert spec.outputs == ["stage.2.out", "side"]
    model = cnngraph.compile(spec)
    out = model.forward({"x": np.ones((1, 2, 6, 6), np.float32)})
    assert set(out) == {"stage.2.out", "side"}


def test_substitution_keeps_types_and_formats_strings(tmp_path):
    spec = cnngraph.load_spec(write(tmp_path, """
        inputs:
          x: {shape: [3, 8, 8]}
        blocks:
          b:
            args: {k: 3, pad: same, tag: t, slope: 0.25}
            layers:
              - {id: "conv_${tag}", type: conv2d, out_channels: 2, kernel_size: [$k, 1], padding: $pad}
              - {id: "act_$tag", type: leaky_relu, negative_slope: $slope}
        layers:
          - {id: one, block: b, k: 5, tag: x}
        outputs: [one]
        """))
    conv = spec.layer("one.conv_x")
    assert conv.params.kernel_size == (5, 1) and conv.params.padding == "same"
    assert spec.layer("one.act_x").params.negative_slope == 0.25
    assert spec.outputs == ["one.act_x"]


def test_dollar_dollar_is_a_literal_dollar():
    from cnngraph.blocks import expand_blocks
    data = {"inputs": {"x": {"shape": [3]}},
            "blocks": {"b": {"args": {"n": 1}, "layers": [{"id": "a", "type": "relu", "note": "$$n costs $n"}]}},
            "layers": [{"id": "i", "block": "b", "n": 7}], "outputs": ["i"]}
    out, _, _, problems = expand_blocks(data, {}, None)
    assert not problems
    assert out["layers"][0]["note"] == "$n costs 7"
    assert "blocks" not in out and "blocks" in data          # the input is not modified


def test_multi_input_block_output_and_scoping(tmp_path):
    spec = cnngraph.load_spec(write(tmp_path, """
        inputs:
          a: {shape: [4]}
          b: {shape: [4]}
        blocks:
          gate:
            inputs: [main, skip]
            output: mix
            layers:
              - {id: act, type: sigmoid, inputs: main}
              - {id: mix, type: mul, inputs: [act, skip]}
              - {id: extra, type: tanh, inputs: b}
              - {id: shadow, type: relu, inputs: act}
        layers:
          - {id: act, type: relu, inputs: a}
          - {id: g, block: gate, inputs: [act, b]}
          - {id: after, type: tanh}
          - {id: use_extra, type: relu, inputs: g.extra}
        outputs: [after, g, use_extra]
        """))
    g = spec.graph
    assert g.nodes["g.act"]["inputs"] == ["act"]                 # block input name → the instance's input
    assert g.nodes["g.mix"]["inputs"] == ["g.act", "b"]          # local id, then block input name
    assert g.nodes["g.extra"]["inputs"] == ["b"]                 # outer name, not shadowed
    assert g.nodes["g.shadow"]["inputs"] == ["g.act"]            # local shadows the outer 'act'
    assert g.nodes["after"]["inputs"] == ["g.mix"]               # the block's output, not its last layer
    assert spec.outputs == ["after", "g.mix", "use_extra"]


def test_nested_blocks(tmp_path):
    spec = cnngraph.load_spec(write(tmp_path, "inputs:\n  x: {shape: [3, 8, 8]}\n" + CBR.lstrip() + """\
  pair:
    args: {c: null}
    layers:
      - {id: one, block: conv_bn_relu, channels: $c}
      - {id: two, block: conv_bn_relu, channels: $c, inputs: input}
      - {id: sum, type: add, inputs: [one, two]}
layers:
  - {id: p, block: pair, c: 5}
outputs: [p]
"""))
    g = spec.graph
    assert g.nodes["p.one.conv"]["inputs"] == ["x"] and g.nodes["p.two.conv"]["inputs"] == ["x"]
    assert g.nodes["p.sum"]["inputs"] == ["p.one.act", "p.two.act"]
    assert g.nodes["p.sum"]["out_shape"] == (5, 8, 8)


# -- errors --------------------------------------------------------------------------------------------
def test_missing_and_unknown_arguments_are_located(tmp_path):
    path = write(tmp_path, "inputs:\n  x: {shape: [3, 8, 8]}\n" + CBR.lstrip() +
                 "layers:\n  - {id: stem, block: conv_bn_relu, chanels: 4}\noutputs: [stem]\n")
    probs = problems_of(path)
    msgs = {p.message: p for p in probs}
    unknown = next(p for p in probs if "unknown argument 'chanels'" in p.message)
    assert "did you mean 'channels'" in unknown.message
    assert unknown.line == line_of(path, "id: stem") and unknown.column == path.read_text().splitlines()[
        unknown.line - 1].index("chanels") + 1
    missing = next(p for p in probs if "needs argument 'channels'" in p.message)
    assert missing.line == line_of(path, "id: stem") and missing.layer == "stem"
    assert f"{path}:{line_of(path, 'args:')}" in missing.message            # where the argument is declared
    assert len(msgs) == 2


def test_unknown_block_and_unknown_substitution(tmp_path):
    path = write(tmp_path, """
        inputs:
          x: {shape: [3, 8, 8]}
        blocks:
          conv_block:
            args: {channels: 2}
            layers:
              - {id: conv, type: conv2d, out_channels: $channel, kernel_size: 3}
        layers:
          - {id: a, block: conv_blok}
          - {id: b, block: conv_block}
        outputs: [b]
        """)
    probs = problems_of(path)
    unknown = next(p for p in probs if "unknown block" in p.message)
    assert "did you mean 'conv_block'" in unknown.message and unknown.line == line_of(path, "id: a")
    subst = next(p for p in probs if "'$channel'" in p.message)
    assert "is not an argument of block 'conv_block' (did you mean 'channels'?)" in subst.message
    assert subst.line == line_of(path, "id: conv")
    assert "instantiated as 'b'" in subst.note


def test_a_mistyped_argument_is_reported_once(tmp_path):
    """'$strde' is named as no argument of the block, and the value left behind is not reported again
    as a wrong stride (nor told that $arguments work only inside blocks: it is inside one)."""
    path = write(tmp_path, """
        inputs:
          x: {shape: [3, 8, 8]}
        blocks:
          cbr:
            args: {stride: 1}
            layers:
              - {id: conv, type: conv2d, out_channels: 4, kernel_size: 3, stride: $strde}
              - {id: act, type: relu}
          plain:
            args: {stride: 1}
            layers:
              - {id: conv, type: conv2d, out_channels: 4, kernel_size: 3, stride: $stride}
        layers:
          - {id: b, block: cbr}
          - {id: c, block: plain, stride: "$stride"}
        outputs: [c]
        """)
    probs = problems_of(path)
    assert [p.message for p in probs if "strde" in p.message] == [
        "'$strde' is not an argument of block 'cbr' (did you mean 'stride'?); its arguments: stride"]
    (left,) = [p for p in probs if "strde" not in p.message]   # an instance's argument is not substituted
    assert left.message.endswith("found '$stride'; $arguments are not substituted in the arguments of a block "
                                 "instance")


def test_recursive_blocks_are_reported(tmp_path):
    path = write(tmp_path, """
        inputs:
          x: {shape: [4]}
        blocks:
          ping:
            layers:
              - {id: r, type: relu}
              - {id: p, block: pong}
          pong:
            layers:
              - {id: q, block: ping}
        layers:
          - {id: loop, block: ping}
        outputs: [loop]
        """)
    probs = problems_of(path)
    rec = [p for p in probs if "uses itself" in p.message]
    assert rec and "ping -> pong -> ping" in rec[0].message
    assert rec[0].line == line_of(path, "id: q, block: ping")
    assert "instantiated as 'loop'" in rec[0].note


def test_error_inside_an_instance_points_at_definition_and_instance(tmp_path):
    path = write(tmp_path, """
        inputs:
          x: {shape: [3, 8, 8]}
        blocks:
          stack:
            args: {c: null}
            layers:
              - {id: conv, type: conv2d, out_channels: $c, kernel_size: 3, dilation: -1}
              - {id: act, type: relu}
        layers:
          - {id: s1, block: stack, c: 4}
        outputs: [s1]
        """)
    probs = problems_of(path)
    p = next(p for p in probs if p.path.endswith("dilation"))
    assert p.line == line_of(path, "id: conv") and p.layer == "s1.conv"
    assert p.note == (f"in block 'stack' defined at {path}:{line_of(path, 'stack:')}:3, instantiated as 's1' at "
                      f"{path}:{line_of(path, 'id: s1')}:5")
    assert p.note in p.format()


def test_bad_argument_value_points_at_the_instance(tmp_path):
    path = write(tmp_path, """
        inputs:
          x: {shape: [3, 8, 8]}
        blocks:
          stack:
            args: {c: null}
            layers:
              - {id: conv, type: conv2d, out_channels: $c, kernel_size: 3}
        layers:
          - {id: s1, block: stack, c: -4}
        outputs: [s1]
        """)
    p = next(p for p in problems_of(path) if p.path.endswith("out_channels"))
    assert p.line == line_of(path, "id: s1")                        # where -4 was written
    assert "in block 'stack'" in p.note


def test_shape_error_inside_nested_instance_has_both_locations(tmp_path):
    path = write(tmp_path, """
        inputs:
          x: {shape: [3, 4, 4]}
        blocks:
          inner:
            layers:
              - {id: conv, type: conv2d, out_channels: 2, kernel_size: 9}
          outer:
            layers:
              - {id: i, block: inner}
        layers:
          - {id: o, block: outer}
        outputs: [o]
        """)
    p = next(p for p in problems_of(path) if "kernel" in p.message)
    assert p.layer == "o.i.conv" and p.line == line_of(path, "kernel_size: 9")
    assert "in block 'inner'" in p.note and "instantiated as 'o.i'" in p.note
    assert "in block 'outer'" in p.note and "instantiated as 'o' at" in p.note


@pytest.mark.parametrize("layer,needle", [
    ("{id: x1, block: one, repeat: 0}", "'repeat' must be an integer >= 1"),
    ("{id: x1, block: two, inputs: [x, x], repeat: 2}", "needs a one-input block"),
    ("{id: x1, block: two, inputs: x}", "takes 2 inputs (p, q), found 1"),
    ("{id: x1, block: one, type: relu}", "either 'type' (an op) or 'block'"),
    ("{block: one}", "needs an 'id'"),
])
def test_instance_errors(tmp_path, layer, needle):
    path = write(tmp_path, f"""
        inputs:
          x: {{shape: [4]}}
        blocks:
          one:
            layers:
              - {{id: r, type: relu}}
          two:
            inputs: [p, q]
            layers:
              - {{id: s, type: add, inputs: [p, q]}}
        layers:
          - {layer}
        outputs: [x]
        """)
    probs = problems_of(path)
    assert any(needle in p.message and p.line == line_of(path, layer[:12]) for p in probs), probs


@pytest.mark.parametrize("blocks,needle", [
    ("  b: {layers: []}", "needs a non-empty list 'layers'"),
    ("  b: {layers: [{id: r, type: relu}], outptu: r}", "unknown key 'outptu' in block 'b' (did you mean 'output'?)"),
    ("  b: {layers: [{id: r, type: relu}], output: z}", "'output' of block 'b' must name one of its layers"),
    ("  b: {layers: [{type: relu}]}", "needs an 'id'"),
    ("  b: {layers: [{id: r, type: relu}, {id: r, type: tanh}]}", "duplicate layer id 'r' in block 'b'"),
    ("  b: {args: {id: 1}, layers: [{id: r, type: relu}]}", "'id' cannot be a block argument"),
])
def test_block_definition_errors(tmp_path, blocks, needle):
    path = write(tmp_path, "inputs:\n  x: {shape: [4]}\nblocks:\n" + blocks +
                 "\nlayers:\n  - {id: i, block: b}\noutputs: [x]\n")
    probs = problems_of(path)
    assert any(needle in p.message and p.line == 4 for p in probs), probs


# -- expand --------------------------------------------------------------------------------------------
def graph_signature(spec):
    g = spec.graph
    return ({n: (a.get("type"), tuple(a.get("inputs", ())), a.get("out_shape"), repr(a.get("params")))
             for n, a in g.nodes(data=True)}, sorted(g.edges), list(spec.outputs))


@pytest.mark.parametrize("path", ["specs/resnet18_cifar.yaml", "specs/inception_blocks.yaml"])
def test_expand_output_validates_alone_to_the_same_graph(path, tmp_path, capsys):
    assert main(["expand", path]) == 0
    text = capsys.readouterr().out
    assert "blocks:" not in text and "block:" not in text
    out = tmp_path / "expanded.yaml"
    out.write_text(text)
    original = cnngraph.load_spec(path)
    again = cnngraph.load_spec(out)
    assert graph_signature(again) == graph_signature(original)
    assert again.sha256 == original.sha256                   # same canonical data: checkpoints carry over
    assert yaml.safe_load(text)["layers"][0]["id"] in ("stem.conv",)


def test_expand_reports_problems_like_validate(tmp_path, capsys):
    path = write(tmp_path, "inputs:\n  x: {shape: [4]}\nlayers:\n  - {id: a, block: nope}\noutputs: [a]\n")
    assert main(["expand", str(path)]) == 1
    assert f"{path}:4:" in capsys.readouterr().err


def test_resnet18_cifar():
    spec = cnngraph.load_spec("specs/resnet18_cifar.yaml")
    convs = [l for l in spec.layers if l.type == "conv2d"]
    assert len(convs) == 1 + 16 + 3                          # stem, 8 blocks x 2, 3 projections
    assert sum(l.type == "add" for l in spec.layers) == 8
    g = spec.graph
    assert g.nodes["layer1.0.add"]["inputs"] == ["layer1.0.c2.bn", "stem_act"]          # identity
    assert g.nodes["layer2.b0.add"]["inputs"] == ["layer2.b0.c2.bn", "layer2.b0.proj.bn"]   # projection
    assert g.nodes["layer2.b0.proj.conv"]["inputs"] == ["layer1.1.out"]
    for stage, (c, hw) in {"layer1.1": (64, 32), "layer2": (128, 16), "layer3": (256, 8),
                           "layer4": (512, 4)}.items():
        node = stage + (".out" if stage.startswith("layer1") else ".b1.out")
        assert g.nodes[node]["out_shape"] == (c, hw, hw)
    model = cnngraph.compile(spec)
    n_params = sum(int(np.prod(model.params[k].shape)) for k in model.trainable_names)
    assert n_params == 11_173_962                              # the CIFAR ResNet-18 count
    y = model.forward({"image": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)})
    assert y["logits"].shape == (2, 10) and np.all(np.isfinite(y["logits"]))
    assert len(open("specs/resnet18_cifar.yaml").read().splitlines()) < 60


def test_inception_blocks():
    spec = cnngraph.load_spec("specs/inception_blocks.yaml")
    g = spec.graph
    assert g.nodes["mixed3a.concat"]["inputs"] == ["mixed3a.b1.act", "mixed3a.b3.act", "mixed3a.b5.act",
                                                   "mixed3a.bp.act"]
    for branch in ("b1.conv", "b3_reduce.conv", "b5_reduce.conv", "pool"):
        assert g.nodes[f"mixed3b.{branch}"]["inputs"] == ["mixed3a.concat"]
    assert g.nodes["mixed3a.concat"]["out_shape"] == (16 + 32 + 8 + 8, 16, 16)
    y = cnngraph.compile(spec).forward({"image": np.zeros((2, 3, 32, 32), np.float32)})
    assert y["logits"].shape == (2, 10)
    assert len(open("specs/inception_blocks.yaml").read().splitlines()) < 60


def test_blocks_match_the_hand_written_network(tmp_path):
    """resnet_small.yaml written with a block computes the same function as the hand-written file."""
    path = write(tmp_path, """
        inputs:
          image: {shape: [3, 32, 32]}
        blocks:
          basic:
            args: {c: null, stride: 1}
            layers:
              - {id: conv1, type: conv2d, out_channels: $c, kernel_size: 3, stride: $stride, padding: 1, bias: false}
              - {id: bn1, type: batch_norm2d}
              - {id: act1, type: relu}
              - {id: conv2, type: conv2d, out_channels: $c, kernel_size: 3, padding: 1, bias: false}
              - {id: bn2, type: batch_norm2d}
        layers:
          - {id: stem, type: conv2d, out_channels: 16, kernel_size: 3, padding: 1, bias: false}
          - {id: stem_bn, type: batch_norm2d}
          - {id: stem_act, type: relu}
          - {id: b1, block: basic, c: 16}
          - {id: b1_add, type: add, inputs: [b1, stem_act]}
          - {id: b1_out, type: relu}
          - {id: b2, block: basic, c: 32, stride: 2}
          - {id: b2_proj, type: conv2d, out_channels: 32, kernel_size: 1, stride: 2, bias: false, inputs: b1_out}
          - {id: b2_proj_bn, type: batch_norm2d}
          - {id: b2_add, type: add, inputs: [b2, b2_proj_bn]}
          - {id: b2_out, type: relu}
          - {id: gap, type: global_avg_pool2d}
          - {id: flat, type: flatten}
          - {id: logits, type: dense, out_features: 10}
        outputs: [logits]
        """)
    hand = cnngraph.compile("specs/resnet_small.yaml", seed=1)
    blocks = cnngraph.compile(path, seed=2)
    rename = lambda k: k.replace("b1_", "b1.").replace("b2_", "b2.") if k.split(".")[0] in {
        "b1_conv1", "b1_bn1", "b1_conv2", "b1_bn2", "b2_conv1", "b2_bn1", "b2_conv2", "b2_bn2"} else k
    blocks.load_params({rename(k): v for k, v in hand.params.numpy().items()})
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(blocks.forward({"image": x})["logits"], hand.forward({"image": x})["logits"],
                               rtol=1e-5, atol=1e-6)


def test_instance_id_shared_with_a_layer_is_an_error():
    spec = {"inputs": {"x": {"shape": [3]}}, "blocks": {"b": {"layers": [{"id": "r", "type": "relu"}]}},
            "layers": [{"id": "a", "block": "b"}, {"id": "a", "type": "tanh"}], "outputs": ["a"]}
    probs = problems_of(spec)
    assert len(probs) == 1 and "duplicate id 'a' (first used by layers[0])" in probs[0].message
    assert probs[0].path == "layers[1].id"


def test_first_layer_of_a_multi_input_block_takes_all_inputs():
    spec = cnngraph.load_spec({
        "inputs": {"a": {"shape": [4]}, "b": {"shape": [4]}},
        "blocks": {"sum2": {"inputs": ["p", "q"], "layers": [{"id": "s", "type": "add"},
                                                           {"id": "t", "type": "tanh"}]}},
        "layers": [{"id": "m", "block": "sum2", "inputs": ["a", "b"]}], "outputs": ["m"]})
    assert spec.graph.nodes["m.s"]["inputs"] == ["a", "b"]
    assert spec.graph.nodes["m.t"]["inputs"] == ["m.s"] and spec.outputs == ["m.t"]


def test_multi_input_model_needs_named_input_for_first_instance():
    probs = problems_of({
        "inputs": {"a": {"shape": [4]}, "b": {"shape": [4]}},
        "blocks": {"one": {"layers": [{"id": "r", "type": "relu"}]}},
        "layers": [{"id": "m", "block": "one"}], "outputs": ["m"]})
    assert "block 'one' takes an input; name it with 'inputs'" in probs[0].message


def test_resnet18_cifar_equals_a_hand_written_torch_resnet18():
    """The block-written spec against an independent, hand-written torch ResNet-18 (CIFAR variant)."""
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.proj = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else None)

        def forward(self, x):
            y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
            return F.relu(y + (x if self.proj is None else self.proj(x)))

    cfg = [(64, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
           (256, 512, 2), (512, 512, 1)]
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64)
    blocks = nn.ModuleList(Basic(*c) for c in cfg)
    fc = nn.Linear(512, 10)
    net = nn.ModuleList([conv, bn, blocks, fc]).double().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-.1, .1), m.running_var.uniform_(.5, 1.5)
            m.weight.data.uniform_(.5, 1.5), m.bias.data.uniform_(-.1, .1)

    def run(x):
        x = F.relu(bn(conv(x)))
        for b in blocks:
            x = b(x)
        return fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    model = cnngraph.compile("specs/resnet18_cifar.yaml", dtype="float64")
    assert sum(model.params[n].size for n in model.trainable_names) == sum(p.numel() for p in net.parameters())
    weights = {}

    def conv_bn(prefix, c, b):
        weights[f"{prefix}.conv.weight"] = c.weight
        for a in ("weight", "bias", "running_mean", "running_var"):
            weights[f"{prefix}.bn.{a}"] = getattr(b, a)

    conv_bn("stem", conv, bn)
    for prefix, b in zip(["layer1.0", "layer1.1", "layer2.b0", "layer2.b1", "layer3.b0", "layer3.b1",
                          "layer4.b0", "layer4.b1"], blocks):
        conv_bn(prefix + ".c1", b.c1, b.b1)
        conv_bn(prefix + ".c2", b.c2, b.b2)
        if b.proj is not None:
            conv_bn(prefix + ".proj", b.proj[0], b.proj[1])
    weights["logits.weight"], weights["logits.bias"] = fc.weight, fc.bias
    assert set(weights) == set(model.params)
    model.load_params({k: v.detach().numpy() for k, v in weights.items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    y = model.forward({"image": x})["logits"]
    ref = run(torch.from_numpy(x)).detach().numpy()
    assert y.shape == ref.shape == (2, 10)
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-12)


def test_block_arguments_compute_and_defaults_use_other_arguments():
    """MobileNetV2's inverted residual: hidden = c * t, written once in the block."""
    spec = cnngraph.load_spec({
        "inputs": {"image": {"shape": [8, 4, 4]}},
        "blocks": {"ir": {"args": {"c": None, "t": 6, "hidden": "${c}*${t}", "same": "$c"},
                          "layers": [{"id": "expand", "type": "conv2d", "out_channels": "$hidden", "kernel_size": 1},
                                     {"id": "dw", "type": "conv2d", "out_channels": "$hidden", "kernel_size": 3,
                                      "padding": 1, "groups": "$hidden"},
                                     {"id": "project", "type": "conv2d", "out_channels": "$same",
                                      "kernel_size": 1},
                                     {"id": "half", "type": "conv2d", "out_channels": "${hidden} // 2 - 1",
                                      "kernel_size": 1}]}},
        "layers": [{"id": "a", "block": "ir", "c": 8}, {"id": "b", "block": "ir", "c": 4, "t": 2}],
        "outputs": ["b"]})
    shapes = {n: spec.graph.nodes[n]["out_shape"][0] for n in spec.graph if "." in n}
    assert shapes == {"a.expand": 48, "a.dw": 48, "a.project": 8, "a.half": 23,
                      "b.expand": 8, "b.dw": 8, "b.project": 4, "b.half": 3}


@pytest.mark.parametrize("old, new, line, name, hint, users", [
    # a typo inside a block definition: once, at the line written, for every instance
    ("{id: b3, block: conv_relu, channels: $c3, kernel_size: 3, padding: 1}",
     "{id: b3, block: conv_relu, channels: $c3, kernel_size: 3, padding: 1, inputs: b3_reduse}",
     18, "b3_reduse", "b3_reduce", 4),
    ("{id: b3_reduce, block: conv_relu, channels: $c3_reduce, inputs: input}",
     "{id: b3_reduce, block: conv_relu, channels: $c3_reduce, inputs: inptu}", 17, "inptu", "input", 4),
    # a typo in an instance's inputs: at the instance, not in the block its layers come from
    ("{id: mixed3a, block: inception, c1: 16", "{id: mixed3a, block: inception, inputs: pol1, c1: 16", 27, "pol1",
     "pool1", 4),
])
def test_unknown_input_in_blocks_is_reported_once_where_written(tmp_path, old, new, line, name, hint, users):
    text = open("specs/inception_blocks.yaml").read()
    assert old in text
    path = tmp_path / "typo.yaml"
    path.write_text(text.replace(old, new))
    with pytest.raises(SpecError) as err:
        cnngraph.load_spec(path)
    probs = err.value.problems
    assert len(probs) == 1, probs
    p = probs[0]
    assert p.line == line and f"input '{name}' is neither a layer id nor a model input (did you mean '{hint}'?)" in p.message
    assert f"used by {users} expanded layers" in p.note
