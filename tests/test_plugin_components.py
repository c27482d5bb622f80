"""Broken plugin components other than ops are named, never a traceback: optimizers, schedules, dataset
loaders and augmentations in training, ONNX exporters in export-onnx; and the op contract's quieter
failures (a replaced buffer, a parameter init_params did not return, an undeclared buffer, a default
its own constraints refuse)."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pydantic import Field

import cnngraph
from cnngraph.cli import main
from cnngraph.errors import PluginError

COMPONENTS = '''
import numpy as np
from pydantic import BaseModel, ConfigDict

import cnngraph
from cnngraph.train.augment import Augmentation
from cnngraph.train.optim import SGD
from cnngraph.train.schedules import Schedule


class RaisingOptimizer(SGD):
    type = "raising_opt"

    def _update(self, w, g, state, lr):
        raise ValueError("no update today")          # MARK raising_opt


class NegativeRate(Schedule):
    type = "negative_rate"

    def _lr(self, base_lr, pos):
        return -0.1 if pos.t >= 1 else base_lr


class _NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RaisingAug(Augmentation):
    type = "raising_aug"
    Params = _NoParams

    def __call__(self, x, rng):
        raise RuntimeError("cannot augment")          # MARK raising_aug


class ShrinkingAug(Augmentation):
    type = "shrinking_aug"
    Params = _NoParams

    def __call__(self, x, rng):
        return x[:, :, ::2, ::2]


def raising_loader(cfg, input_shape, seed, base_dir):
    raise OSError("the stripes server is down")       # MARK raising_data


def tuple_loader(cfg, input_shape, seed, base_dir):
    x = np.zeros((cfg.options.get("n", 8), *input_shape), np.float32)
    return x, np.zeros(len(x), np.int64)


@cnngraph.hookimpl
def cnngraph_register_optimizers(registry):
    registry.add_optimizer(RaisingOptimizer)


@cnngraph.hookimpl
def cnngraph_register_schedules(registry):
    registry.add_schedule(NegativeRate)


@cnngraph.hookimpl
def cnngraph_register_augmentations(registry):
    registry.add_augmentation(RaisingAug)
    registry.add_augmentation(ShrinkingAug)


@cnngraph.hookimpl
def cnngraph_register_datasets(registry):
    registry.add_dataset("raising_data", raising_loader)
    registry.add_dataset("tuple_data", tuple_loader)
'''


def _line(mark: str) -> int:
    return next(i for i, text in enumerate(COMPONENTS.splitlines(), 1) if f"MARK {mark}" in text)


def _cli(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out + err


def _train_spec(tmp_path, train: str) -> Path:
    (tmp_path / "comp.py").write_text(COMPONENTS)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((24, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 2, 24))
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""
        name: t
        plugins: [./comp.py]
        inputs: {image: {shape: [1, 8, 8]}}
        layers:
          - {id: flat, type: flatten}
          - {id: logits, type: dense, out_features: 2}
        outputs: [logits]
    """) + f"train: {{epochs: 1, batch_size: 8, {train}}}\n")
    return spec


P = r"\(plugin '[^']*comp\.py'\)"


@pytest.mark.parametrize("train,pattern", [
    ("data: {dataset: npz, path: d.npz}, optimizer: {type: raising_opt, lr: 0.1}",
     rf"error: optimizer 'raising_opt' {P} failed in step at comp\.py:{_line('raising_opt')}: ValueError: "
     r"no update today$"),
    ("data: {dataset: npz, path: d.npz}, schedule: {type: negative_rate}",
     rf"error: schedule 'negative_rate' {P} gave learning rate -0\.1 at epoch 1, step 2; expected a finite "
     r"value >= 0$"),
    ("data: {dataset: npz, path: d.npz}, augment: [{type: random_shift}, {type: raising_aug}]",
     rf"error: augmentation 'raising_aug' {P} \(train\.augment\[1\]\) failed in __call__ on a batch of shape "
     rf"\(8, 1, 8, 8\) at comp\.py:{_line('raising_aug')}: RuntimeError: cannot augment$"),
    ("data: {dataset: npz, path: d.npz}, augment: [shrinking_aug]",
     rf"error: augmentation 'shrinking_aug' {P} \(train\.augment\[0\]\) returned shape \(8, 1, 4, 4\) from a "
     r"batch of shape \(8, 1, 8, 8\); an augmentation must return an array of its input's shape"),
    ("data: {dataset: raising_data}",
     rf"error: dataset loader 'raising_data' {P} failed in loading at comp\.py:{_line('raising_data')}: "
     r"OSError: the stripes server is down$"),
    ("data: {dataset: tuple_data, options: {n: 4}}",
     rf"error: dataset loader 'tuple_data' {P} returned a tuple; expected a cnngraph\.train\.data\.Dataset "
     r"\(build it with cnngraph\.train\.data\.finish_dataset\(RawSplits\(\.\.\.\), cfg, seed\)\)$"),
])
def test_a_broken_training_component_is_named_in_one_line(fresh, capsys, tmp_path, train, pattern):
    spec = _train_spec(tmp_path, train)
    rc, text = _cli(capsys, ["train", str(spec), "--allow-plugins", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 1
    assert re.search(pattern, text.strip(), flags=re.M), text
    assert len(text.strip().splitlines()) == 1, text


def test_data_options_are_for_plugin_datasets(fresh, tmp_path, capsys):
    spec = _train_spec(tmp_path, "data: {dataset: digits, options: {n: 4}}")
    rc, text = _cli(capsys, ["validate", str(spec), "--allow-plugins"])
    assert rc == 1 and "dataset 'digits' takes no options (options: is for plugin datasets)" in text, text


def test_a_dataset_override_drops_the_other_datasets_options():
    from cnngraph.train.data import DataConfig
    from cnngraph.train.settings import parse_data_arg
    base = DataConfig(dataset="npz", path="d.npz")
    assert parse_data_arg("digits", base.model_copy(update={"options": {"n": 4}})).options == {}


# -- ONNX exporters ------------------------------------------------------------------------------------
EXPORTERS = '''
import numpy as np

import cnngraph
from cnngraph.onnx.exporter import exports


class Twice(cnngraph.Op):
    type = "ex_twice_{kind}"

    def forward(self, ctx, inputs, params):
        return inputs[0] * 2

    def backward(self, ctx, gy):
        return [gy * 2], {{}}


@cnngraph.hookimpl
def cnngraph_register_ops(registry):
    registry.add(Twice)


@exports("ex_twice_{kind}")
def export_twice(c, lid, op, ins, attrs):
    two = c.const(lid, "two", np.array(2, np.float32))
    if "{kind}" == "raises":
        raise KeyError("no such weight")
    if "{kind}" == "unknown":
        c.node("NotAnOnnxOp", [ins[0], two], [lid], lid)
    elif "{kind}" == "misnamed":
        c.node("Mul", [ins[0], two], ["zzz"], lid)
    else:   # one input too few: only the ONNX checker sees it
        c.node("Mul", [ins[0]], [lid], lid)
    return lid
'''


@pytest.fixture
def exporters():
    """The ONNX export table as it was: a plugin file loaded by a test registers into it for good."""
    from cnngraph.onnx import exporter
    saved = dict(exporter.EXPORTERS)
    yield
    exporter.EXPORTERS.clear()
    exporter.EXPORTERS.update(saved)


@pytest.mark.parametrize("kind,pattern", [
    ("unknown", r"the ONNX exporter of op 'ex_twice_unknown' \(plugin '[^']*exbad\.py'\) at layer 'a' added node "
                r"'a' of type 'NotAnOnnxOp', which ONNX opset \d+ does not have"),
    ("misnamed", r"the ONNX exporter of op 'ex_twice_misnamed' \(plugin '[^']*exbad\.py'\) at layer 'a': its last "
                 r"node's outputs are \['zzz'\]; the last node must output the layer id 'a'"),
    ("raises", r"the ONNX exporter of op 'ex_twice_raises' \(plugin '[^']*exbad\.py'\) at layer 'a' failed in "
               r"export_twice at exbad\.py:\d+: KeyError: 'no such weight'"),
    ("checker", r"the exported model fails the ONNX checker; plugin exporters were used for ex_twice_checker "
                r"\(plugin '[^']*exbad\.py'\): check them first: "),
])
def test_a_broken_plugin_exporter_is_named(fresh, exporters, capsys, tmp_path, kind, pattern):
    pytest.importorskip("onnx")
    (tmp_path / "exbad.py").write_text(EXPORTERS.format(kind=kind))
    spec = tmp_path / "e.yaml"
    spec.write_text(f"inputs: {{x: {{shape: [3, 4, 4]}}}}\nlayers: [{{id: a, type: ex_twice_{kind}}}]\n"
                    f"outputs: [a]\n")
    rc, text = _cli(capsys, ["export-onnx", str(spec), "--plugin", str(tmp_path / "exbad.py"),
                             "-o", str(tmp_path / "e.onnx")])
    assert rc == 1 and re.search(pattern, text), text
    assert "please report" not in text


# -- the op contract ------------------------------------------------------------------------------------
def _one_layer(op_type):
    return {"inputs": {"x": {"shape": [3, 4, 4]}}, "layers": [{"id": "a", "type": op_type}], "outputs": ["a"]}


class _Running(cnngraph.Op):
    """Keeps a running mean of its input in a buffer."""

    type = "test_running_replaced"
    buffers = ("running",)

    def init_params(self, in_shapes, rng):
        return {"running": np.zeros(in_shapes[0][0], np.float32)}

    def forward(self, ctx, inputs, params):
        x = inputs[0]
        if ctx.training:
            params["running"] = 0.9 * params["running"] + 0.1 * x.mean(axis=(0, 2, 3))   # lost: a new array
        return x + 0

    def backward(self, ctx, gy):
        return [gy], {}

    @classmethod
    def examples(cls):
        return [({}, [(3, 4, 4)])]


def test_a_replaced_buffer_is_an_error_in_training_and_in_check_op(fresh):
    cnngraph.register_op(_Running)
    model = cnngraph.compile(_one_layer("test_running_replaced"))
    model.forward({"x": np.ones((2, 3, 4, 4), np.float32)})           # inference leaves it alone: fine
    with pytest.raises(PluginError, match=r"op 'test_running_replaced' \(plugin '[^']*'\) at layer 'a': forward "
                                          r"replaced buffer 'running' .*update it in place: "
                                          r"params\['running'\]\[\.\.\.\] = value"):
        model.forward({"x": np.ones((2, 3, 4, 4), np.float32)}, training=True)
    from cnngraph.conformance import check_op
    failures = [r for r in check_op("test_running_replaced") if r.ok is False]
    assert failures and all("replaced buffer 'running'" in r.detail for r in failures), failures


def test_a_param_init_params_did_not_return_is_named(fresh):
    class ReadsW(cnngraph.Op):
        type = "test_reads_w"

        def forward(self, ctx, inputs, params):
            return inputs[0] * params["w"]

    cnngraph.register_op(ReadsW)
    model = cnngraph.compile(_one_layer("test_reads_w"))
    with pytest.raises(PluginError, match=r"op 'test_reads_w' \(plugin '[^']*'\) read parameter 'w' in forward at "
                                          r"layer 'a' at test_plugin_components\.py:\d+, but its init_params "
                                          r"returned no 'w' \(it returned: nothing\)"):
        model.forward({"x": np.ones((1, 3, 4, 4), np.float32)})


def test_an_undeclared_buffer_is_hinted_at(fresh):
    class Undeclared(_Running):
        type = "test_undeclared_buffer"
        buffers = ()

        def forward(self, ctx, inputs, params):
            return inputs[0] + 0

    cnngraph.register_op(Undeclared)
    model = cnngraph.compile(_one_layer("test_undeclared_buffer"))
    y = model.forward({"x": np.ones((1, 3, 4, 4), np.float32)}, grad=True)["a"]
    with pytest.raises(PluginError, match=r"expected exactly \['running'\] \(if 'running' is state, not trainable, "
                                          r"list it in the op's class attribute `buffers`\)"):
        model.backward({"a": np.ones_like(y)})


def test_a_default_that_breaks_its_own_constraint_is_refused(fresh):
    class KParams(cnngraph.OpParams):
        k: int = Field(0, gt=0)

    class NeedsK(cnngraph.Op):
        type = "test_needs_k"
        Params = KParams

    with pytest.raises(PluginError, match=r"op 'test_needs_k' \(plugin '[^']*'\): the default of parameter 'k' "
                                          r"\(0\) is invalid: Input should be greater than 0"):
        cnngraph.register_op(NeedsK)
    assert "test_needs_k" not in cnngraph.get_registry().ops


def test_expand_writes_plugin_paths_relative_to_the_output(fresh, tmp_path, capsys):
    root = Path(__file__).resolve().parent.parent / "specs" / "examples"
    for name in ("my_layers.py", "uses_my_layers.yaml"):
        (tmp_path / name).write_text((root / name).read_text())
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "expanded.yaml"
    assert main(["expand", str(tmp_path / "uses_my_layers.yaml"), "--allow-plugins", "-o", str(out)]) == 0
    assert "plugins: [../my_layers.py]" in out.read_text() or "- ../my_layers.py" in out.read_text(), out.read_text()
    capsys.readouterr()
    assert main(["validate", str(out), "--allow-plugins"]) == 0, capsys.readouterr().err
