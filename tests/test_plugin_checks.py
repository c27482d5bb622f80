"""A plugin breaking the contract in a quiet way is named where it breaks it, never a traceback or a silent
wrong result: infer_shape's return value, init_params' arrays, backward's dtype, an optimizer that updates
nothing, and what check-op says about them."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import cnngraph
from cnngraph.cli import main
from cnngraph.errors import PluginError, SpecError

BASE = '''
import math
import numpy as np
import cnngraph
from cnngraph import Op, OpParams


class P(OpParams):
    init: float = 1.0


class Scale(Op):
    type = "pc_scale"
    Params = P

    def infer_shape(self, in_shapes):
        return in_shapes[0]                                               # MARK infer

    def init_params(self, in_shapes, rng):
        return {"scale": np.full(in_shapes[0][0], self.p.init, np.float32)}   # MARK init

    def forward(self, ctx, inputs, params):
        x = inputs[0]
        s = params["scale"].reshape((1, -1) + (1,) * (x.ndim - 2))
        ctx.save(x=x, s=s)
        return x * s                                                      # MARK forward

    def backward(self, ctx, gy):
        x, s = ctx.saved["x"], ctx.saved["s"]
        axes = tuple(i for i in range(gy.ndim) if i != 1)
        return [gy * s], {"scale": (gy * x).sum(axis=axes)}               # MARK backward

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape)


@cnngraph.hookimpl
def cnngraph_register_ops(registry):
    registry.add(Scale)
'''

SPEC = """
name: t
inputs: {image: {shape: [3, 6, 6]}}
layers:
  - {id: conv, type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
  - {id: sc, type: pc_scale, init: 0.5}
  - {id: flat, type: flatten}
  - {id: logits, type: dense, out_features: 3}
outputs: [logits]
train: {data: {dataset: npz, path: d.npz}, epochs: 1, batch_size: 8}
"""


def _line(text: str, mark: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if f"MARK {mark}" in line)


def _def_line(text: str, name: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.strip().startswith(f"def {name}("))


def _plugin(tmp_path, mark: str = "", new: str = "", name: str = "bad.py") -> tuple:
    """The BASE plugin with the statement on the MARK line replaced by ``new``: (path, source)."""
    lines = BASE.splitlines()
    if mark:
        i = _line(BASE, mark) - 1
        indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
        lines[i] = indent + new + f"   # MARK {mark}"
    text = "\n".join(lines) + "\n"
    path = tmp_path / name
    path.write_text(text)
    return path, text


def _spec(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((16, 3, 6, 6)).astype(np.float32), y=rng.integers(0, 3, 16))
    (tmp_path / "spec.yaml").write_text(SPEC)
    return tmp_path / "spec.yaml"


def _spec_dict() -> dict:
    data = yaml.safe_load(SPEC)
    del data["train"]
    return data


def _one_layer() -> dict:
    return {"inputs": {"x": {"shape": [3, 4, 4]}}, "layers": [{"id": "sc", "type": "pc_scale"}], "outputs": ["sc"]}


def _cli(capsys, argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out + err


# -- 1. infer_shape's return value ------------------------------------------------------------------------
@pytest.mark.parametrize("returned,shown", [("5", "5"), ("None", "None"),
                                            ("(in_shapes[0][0], 1.5, 6)", r"\(4, 1\.5, 6\)"),
                                            ("(4, True, 6)", r"\(4, True, 6\)")])
@pytest.mark.parametrize("command", ["validate", "summary", "train"])
def test_infer_shape_returning_no_shape_is_a_located_problem(fresh, capsys, tmp_path, returned, shown, command):
    path, text = _plugin(tmp_path, "infer", f"return {returned}")
    spec = _spec(tmp_path)
    extra = ["--out", tmp_path / "run", "--quiet"] if command == "train" else []
    rc, out = _cli(capsys, [command, spec, "--plugin", path, *extra])
    assert rc == 1
    assert re.search(rf"spec\.yaml:6:\d+: layers\[1\]: \(layer 'sc'\) infer_shape of op 'pc_scale' \(plugin "
                     rf"'[^']*bad\.py', bad\.py:{_def_line(text, 'infer_shape')}\) returned {shown}; expected a tuple "
                     rf"of whole numbers", out), out


def test_infer_shape_may_return_a_list_or_integral_floats(fresh, tmp_path):
    path, _ = _plugin(tmp_path, "infer", "return [in_shapes[0][0], in_shapes[0][1] / 1, np.int64(6)]")
    cnngraph.load_plugin_file(path)
    spec = cnngraph.load_spec(_spec_dict())
    assert spec.graph.nodes["sc"]["out_shape"] == (4, 6, 6)
    assert all(type(d) is int for d in spec.graph.nodes["sc"]["out_shape"])


def test_an_exception_in_infer_shape_names_the_plugin_line(fresh, tmp_path):
    path, text = _plugin(tmp_path, "infer", "return in_shapes[1]")
    cnngraph.load_plugin_file(path)
    with pytest.raises(SpecError, match=rf"\(plugin '[^']*bad\.py', bad\.py:{_line(text, 'infer')}\) raised "
                                        rf"IndexError"):
        cnngraph.load_spec(_spec_dict())


# -- 2. an optimizer that updates nothing -----------------------------------------------------------------
SIGN_SGD = '''
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import cnngraph
from cnngraph.train.optim import Optimizer


class SignSGD(Optimizer):
    type = "pc_sign_sgd"
    SLOTS = ()

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        lr: float = Field(0.01, ge=0)

    def _update(self, w, g, state, lr):
        state["step"] += 1
        w -= lr * np.sign(g)


@cnngraph.hookimpl
def cnngraph_register_optimizers(registry):
    registry.add_optimizer(SignSGD)
'''


def _train_optimizer(capsys, tmp_path, source, optimizer):
    (tmp_path / "opt.py").write_text(source)
    spec = _spec(tmp_path)
    spec.write_text(SPEC.replace("pc_scale, init: 0.5", "relu").replace("epochs: 1,", f"optimizer: {optimizer},"
                                                                         + ("" if "epochs" in optimizer else " epochs: 1,")))
    return _cli(capsys, ["train", spec, "--plugin", tmp_path / "opt.py", "--out", tmp_path / "run", "--quiet"])


def test_an_optimizer_that_rebinds_its_weight_is_an_error(fresh, capsys, tmp_path):
    source = SIGN_SGD.replace("w -= lr * np.sign(g)", "w = w - lr * np.sign(g)")
    rc, out = _train_optimizer(capsys, tmp_path, source, "{type: pc_sign_sgd, lr: 0.01}")
    line = _def_line(source, "_update")
    assert rc == 1 and re.search(rf"^error: optimizer 'pc_sign_sgd' \(plugin '[^']*opt\.py'\) changed no weight in its "
                                 rf"first 2 steps \(learning rate 0\.01, non-zero gradients\) \(_update at opt\.py:{line}\); "
                                 rf"update the weight in place", out, flags=re.M), out


@pytest.mark.parametrize("optimizer", ["{type: pc_sign_sgd, lr: 0.01}", "{type: pc_sign_sgd, lr: 0}",
                                       "{type: sgd, lr: 0}", "{type: sgd, lr: 1.0e-30}"])
def test_an_optimizer_that_updates_in_place_or_has_nothing_to_do_trains(fresh, capsys, tmp_path, optimizer):
    rc, out = _train_optimizer(capsys, tmp_path, SIGN_SGD, optimizer)
    assert rc == 0, out


ACCUMULATING = SIGN_SGD.replace("""        state["step"] += 1
        w -= lr * np.sign(g)""", """        state["step"] += 1
        state.setdefault("sum", np.zeros_like(g))[...] += g
        if state["step"] % 4 == 0:   # one update per 4 steps' gradients
            w -= lr * np.sign(state.pop("sum"))""")


@pytest.mark.parametrize("epochs,ok", [(3, True), (1, False)])
def test_an_optimizer_may_accumulate_steps_but_a_run_that_changes_nothing_is_an_error(fresh, capsys, tmp_path,
                                                                                       epochs, ok):
    # 2 steps per epoch: the first update comes at step 4, which a 1-epoch run never reaches
    rc, out = _train_optimizer(capsys, tmp_path, ACCUMULATING, f"{{type: pc_sign_sgd, lr: 0.01}}, epochs: {epochs}")
    assert (rc == 0) == ok, out
    if not ok:
        assert "changed no weight in its first 2 steps" in out


def test_zero_gradients_are_not_an_unchanged_update():
    from cnngraph.train.guards import optimizer_step
    from cnngraph.train.optim import SGD
    w = {"a": np.ones(3, np.float32)}
    assert optimizer_step(SGD(lr=0.1), w, {"a": np.zeros(3, np.float32)}, 0.1, check_update=True) is None
    assert optimizer_step(SGD(lr=0.1), w, {"a": np.ones(3, np.float32)}, 0.1, check_update=True) is True
    assert np.allclose(w["a"], 0.9)


# -- 3. backward in another dtype -------------------------------------------------------------------------
@pytest.mark.parametrize("returned,pattern", [
    ('return [(gy * s).astype(np.float64)], {"scale": (gy * x).sum(axis=axes)}',
     r"returned a float64 gradient for input 0 \('x'\) from backward at layer 'sc' on float32 inputs"),
    ('return [gy * s], {"scale": (gy * x).sum(axis=axes).astype(np.float64)}',
     r"returned a float64 gradient for parameter 'sc.scale' from backward in a float32 model"),
])
def test_a_gradient_in_another_dtype_is_refused_as_in_forward(fresh, tmp_path, returned, pattern):
    path, _ = _plugin(tmp_path, "backward", returned)
    cnngraph.load_plugin_file(path)
    model = cnngraph.compile(_one_layer())
    y = model.forward({"x": np.ones((2, 3, 4, 4), np.float32)}, training=True)["sc"]
    with pytest.raises(PluginError, match=r"op 'pc_scale' \(plugin '[^']*bad\.py'\) " + pattern):
        model.backward({"sc": np.ones_like(y)})


# -- 4. init_params' arrays --------------------------------------------------------------------------------
@pytest.mark.parametrize("returned,what", [('return {"scale": 1.0}', "a float for 'scale'"),
                                           ('return {"scale": [self.p.init] * in_shapes[0][0]}', "a list for 'scale'"),
                                           ("return None", "NoneType")])
def test_init_params_must_return_arrays_in_compile_and_check_op(fresh, tmp_path, returned, what):
    from cnngraph.conformance import check_op
    path, text = _plugin(tmp_path, "init", returned)
    cnngraph.load_plugin_file(path)
    with pytest.raises(PluginError, match=rf"op 'pc_scale' \(plugin '[^']*bad\.py'\) at layer 'sc' \(bad\.py:"
                                          rf"{_def_line(text, 'init_params')}\): init_params returned {what}"):
        cnngraph.compile(_one_layer())
    failed = [r for r in check_op("pc_scale") if r.ok is False]
    assert [r.check for r in failed] == ["params"] and f"init_params returned {what}" in failed[0].detail, failed


# -- 5. the same class twice ----------------------------------------------------------------------------------
def test_registering_the_same_op_class_again_is_a_no_op(fresh):
    class Idn(cnngraph.Op):
        type = "pc_identity"

        def forward(self, ctx, inputs, params):
            return inputs[0] + 0

    cnngraph.register_op(Idn)
    plugin = Idn.plugin
    assert cnngraph.register_op(Idn) is Idn
    fresh.add(Idn)
    assert fresh.ops["pc_identity"] is Idn and Idn.plugin == plugin == fresh.owner[("ops", "pc_identity")]

    class Other(Idn):
        pass

    with pytest.raises(PluginError, match="'pc_identity' is registered twice"):   # another class still clashes
        cnngraph.register_op(Other)


# -- 6. check-op names the line that raised ------------------------------------------------------------------
def test_check_op_names_the_plugin_line_that_raised(fresh, capsys, tmp_path):
    path, text = _plugin(tmp_path, "forward", 'raise ValueError("boom")')
    rc, out = _cli(capsys, ["check-op", "pc_scale", "--plugin", path, "-q"])
    assert rc == 1 and f"forward raised ValueError at bad.py:{_line(text, 'forward')}: boom" in out, out


def test_check_op_names_where_init_params_is(fresh, capsys, tmp_path):
    path, text = _plugin(tmp_path, "init", 'return {"scale": 1.0}')
    rc, out = _cli(capsys, ["check-op", "pc_scale", "--plugin", path, "-q"])
    assert rc == 1 and "init_params returned a float for 'scale'" in out, out
    assert f"(bad.py:{_def_line(text, 'init_params')})" in out, out


# -- 7. an infer_shape crash behind the generic guess --------------------------------------------------------
def test_check_op_shows_why_no_generic_shape_was_accepted(fresh, capsys, tmp_path):
    path, text = _plugin(tmp_path, "infer", "return in_shapes[1]")
    rc, out = _cli(capsys, ["check-op", "pc_scale", "--plugin", path, "-q"])
    assert rc == 1 and "accepts none of the generic input shapes" in out, out
    assert re.search(rf"the first refusal, on \(3, 6, 6\): infer_shape of op 'pc_scale' \(plugin '[^']*bad\.py', "
                     rf"bad\.py:{_line(text, 'infer')}\) raised IndexError: list index out of range\)", out), out


# -- 8. a method the op class does not implement ------------------------------------------------------------
def test_a_missing_forward_or_backward_is_named(fresh):
    class NoForward(cnngraph.Op):
        type = "pc_no_forward"

    class NoBackward(cnngraph.Op):
        type = "pc_no_backward"

        def forward(self, ctx, inputs, params):
            return inputs[0] * 2

    cnngraph.register_op(NoForward)   # validate and summary need no forward: registering is fine
    cnngraph.register_op(NoBackward)
    x = {"x": np.ones((1, 3, 4, 4), np.float32)}
    model = cnngraph.compile({**_one_layer(), "layers": [{"id": "sc", "type": "pc_no_forward"}]})
    with pytest.raises(cnngraph.RunError, match=r"while running sc \(pc_no_forward, plugin '[^']*'\) on \(1, 3, 4, 4\): "
                                                r"NotImplementedError: op class .*NoForward does not implement forward$"):
        model.forward(x)
    model = cnngraph.compile({**_one_layer(), "layers": [{"id": "sc", "type": "pc_no_backward"}]})
    y = model.forward(x, training=True)["sc"]
    with pytest.raises(cnngraph.RunError, match=r"NotImplementedError: op class .*NoBackward does not implement "
                                                r"backward \(needed to train or differentiate through it\)"):
        model.backward({"sc": np.ones_like(y)})


# -- 9. a Params class named as the user wrote it --------------------------------------------------------------
def test_a_params_class_that_is_no_op_params_is_named_by_its_file(fresh, capsys, tmp_path):
    source = BASE.replace("class P(OpParams):", "from pydantic import BaseModel\nclass P(BaseModel):")
    (tmp_path / "bad.py").write_text(source)
    rc, out = _cli(capsys, ["check-op", "pc_scale", "--plugin", tmp_path / "bad.py"])
    line = _def_line(source.replace("class P(", "def P("), "P")
    assert rc == 1 and out.strip().endswith(f"Params must be a subclass of cnngraph.OpParams (a pydantic model that "
                                            f"refuses unknown keys), found 'P' (bad.py:{line})"), out
    assert "cnngraph_userplugin" not in out


def test_two_classes_of_one_plugin_under_one_name_are_named_by_file_and_line(fresh, capsys, tmp_path):
    source = BASE.replace("@cnngraph.hookimpl", "class Scale2(Scale):\n    pass\n\n\n@cnngraph.hookimpl")
    source = source.replace("registry.add(Scale)", "registry.add(Scale)\n    registry.add(Scale2)")
    (tmp_path / "bad.py").write_text(source)
    rc, out = _cli(capsys, ["ops", "--plugin", tmp_path / "bad.py"])
    assert rc == 1 and re.search(r"'pc_scale' is registered twice: by plugin '[^']*' as 'Scale' \(bad\.py:\d+\) and by "
                                 r"plugin '[^']*' as 'Scale2' \(bad\.py:\d+\)", out), out


# -- 10. a schedule's Params -------------------------------------------------------------------------------------
def test_a_schedule_whose_params_do_not_extend_schedule_params_is_refused(fresh):
    from pydantic import BaseModel

    from cnngraph.train.schedules import Schedule

    class Halving(Schedule):
        type = "pc_halving"

        class Params(BaseModel):
            every: int = 1

        def _lr(self, base_lr, pos):
            return base_lr * 0.5 ** (pos.epoch // self.params.every)

    with pytest.raises(PluginError, match=r"schedule 'pc_halving' \(plugin '[^']*'\): Params must extend "
                                          r"Schedule\.Params .*found '.*Halving\.Params' \(test_plugin_checks\.py:\d+\); "
                                          r"write `class Params\(Schedule\.Params\):`"):
        fresh.add_schedule(Halving)
    assert "pc_halving" not in fresh.schedules

    class Good(Halving):
        class Params(Schedule.Params):
            every: int = 1

    fresh.add_schedule(Good)
    assert fresh.schedules["pc_halving"] is Good


# -- 11. a dataset of the wrong image size -------------------------------------------------------------------------
DATASET = '''
import numpy as np

import cnngraph
from cnngraph.train.data import RawSplits, finish_dataset


def load_tall(cfg, input_shape, seed, base_dir):
    c, h, w = input_shape
    x = np.random.default_rng(seed).random((20, c, h + 1, w)).astype(np.float32)
    return finish_dataset(RawSplits(train=(x, np.arange(20) % 3), classes=["a", "b", "c"], source="tall"), cfg, seed)


@cnngraph.hookimpl
def cnngraph_register_datasets(registry):
    registry.add_dataset("pc_tall", load_tall)
'''


def test_a_dataset_of_another_image_size_is_named(fresh, capsys, tmp_path):
    (tmp_path / "data.py").write_text(DATASET)
    spec = _spec(tmp_path)
    spec.write_text(SPEC.replace("pc_scale, init: 0.5", "relu").replace("{dataset: npz, path: d.npz}", "{dataset: pc_tall}"))
    rc, out = _cli(capsys, ["train", spec, "--plugin", tmp_path / "data.py", "--out", tmp_path / "run", "--quiet"])
    assert rc == 1 and re.search(r"^error: dataset loader 'pc_tall' \(plugin '[^']*data\.py'\) returned train images of "
                                 r"shape \(\d+, 3, 7, 6\); the model's input takes \(N, 3, 6, 6\)$", out, flags=re.M), out


# -- 12. check-op's batch independence hints at batch_dependent -----------------------------------------------------
def test_a_batch_dependence_failure_hints_at_batch_dependent(fresh, capsys, tmp_path):
    path, _ = _plugin(tmp_path, "forward", "return x * s - (x.mean(axis=0, keepdims=True) if ctx.training else 0)")
    rc, out = _cli(capsys, ["check-op", "pc_scale", "--plugin", path, "-q"])
    line = next(line for line in out.splitlines() if "batch independence (training)" in line)
    assert rc == 1 and line.startswith("FAIL") and line.endswith(
        "; if the op uses the rest of the batch in training by design (as batch norm does), declare the class "
        "attribute batch_dependent = True"), out
    assert "batch independence (inference)" not in out   # passed: -q shows failures only


# -- 13. compile's dtype as NumPy spells it ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,name", [(np.float64, "float64"), (np.dtype("float32"), "float32"),
                                        (np.dtype(np.float64), "float64"), ("float32", "float32")])
def test_compile_takes_numpy_dtypes(dtype, name):
    spec = {"inputs": {"x": {"shape": [3]}}, "layers": [{"id": "fc", "type": "dense", "out_features": 2}],
            "outputs": ["fc"]}
    model = cnngraph.compile(spec, dtype=dtype)
    assert model.dtype == np.dtype(name) and model.params["fc.weight"].dtype == np.dtype(name)
    with pytest.raises(ValueError, match="dtype must be one of float32, float64, found 'float16'"):
        cnngraph.compile(spec, dtype=np.float16)


# -- check-op on quiet contract breaches: global randomness, in-place writes, undeclared map-wide ops -----------
PROBE = Path(__file__).parent / "plugins" / "probe_contract_ops.py"


def _check(capsys, op):
    rc, out = _cli(capsys, ["check-op", op, "--plugin", PROBE])
    return rc, out, [l for l in out.splitlines() if l.startswith("FAIL")]


@pytest.mark.parametrize("op,mode", [("probe_noisy", "inference"), ("probe_global_rng_dropout", "training"),
                                     ("probe_tiny_noise", "inference")])
def test_a_forward_using_global_random_state_fails_determinism_alone(fresh, capsys, op, mode):
    rc, out, fails = _check(capsys, op)
    assert rc == 1 and len(fails) == 1, out
    assert "  determinism: forward is not deterministic for a fixed ctx.rng (global random state?); draw random " \
           f"numbers from ctx.rng (two {mode}-mode calls" in fails[0]
    assert "stochastic in training (uses ctx.rng)" not in out and "gradient (float64, training): not run" in out


def test_an_op_drawing_from_ctx_rng_passes_determinism(fresh, capsys):
    rc, out = _cli(capsys, ["check-op", "dropout"])
    assert rc == 0 and "determinism: the same output twice" in out
    assert "stochastic in training (uses ctx.rng)" in out


@pytest.mark.parametrize("op,needle", [
    ("probe_grad_inplace", "  in-place writes: backward modified its incoming gradient gy in place"),
    ("probe_param_inplace", "  in-place writes: forward modified parameter 'w' in place"),
    ("probe_inplace_relu", "  in-place writes: forward modified its input 0 in place (inference mode)"),
])
def test_in_place_writes_are_named_not_reported_as_a_gradient_mismatch(fresh, capsys, op, needle):
    rc, out, fails = _check(capsys, op)
    assert rc == 1 and len(fails) == 1 and needle in fails[0], out
    assert "analytic" not in out and "shape (inference): forward (" in out   # the shape check passes on its own


def test_buffers_may_be_updated_in_place(fresh, capsys):
    rc, out = _cli(capsys, ["check-op", "batch_norm2d"])
    assert rc == 0 and "in-place writes: forward leaves its inputs and trainable parameters unchanged" in out


def test_an_undeclared_map_wide_op_fails_the_receptive_field_check(fresh, capsys):
    rc, out, fails = _check(capsys, "probe_spatial_center")
    assert rc == 1 and len(fails) == 1 and "  receptive field: an output pixel reads 5x5 input pixels, but" in fails[0]
    assert "set the class attribute mixes_space = True" in fails[0]
    rc, out, fails = _check(capsys, "probe_spatial_center_declared")
    assert rc == 0 and "receptive field: the op mixes the whole map (mixes_space)" in out
    rc, out = _cli(capsys, ["check-op", "conv2d"])
    assert rc == 0 and "receptive field: an output pixel reads at most 3x3 input pixels, within the declared" in out


NOHOOK = "import cnngraph\nfrom cnngraph import Op\nclass X(Op):\n    type = 'nh_op'\n"


@pytest.mark.parametrize("extra,why", [("", "it has no @cnngraph.hookimpl functions (e.g. cnngraph_register_ops)"),
                                       ("def cnngraph_register_op(registry):\n    registry.add(X)\n",
                                        "it defines 'cnngraph_register_op' (did you mean 'cnngraph_register_ops'?)")])
def test_a_plugin_file_that_registers_nothing_says_so(fresh, capsys, tmp_path, monkeypatch, extra, why):
    (tmp_path / "errs").mkdir()
    (tmp_path / "errs" / "nohook.py").write_text(NOHOOK + extra)
    monkeypatch.chdir(tmp_path)
    note = "plugin 'errs/nohook.py' registered nothing: "
    rc, out = _cli(capsys, ["check-op", "nh_op", "--plugin", "errs/nohook.py"])
    assert rc == 1 and f"error: unknown op type 'nh_op'; {note}" in out and why in out
    assert "needs --plugin FILE" not in out
    assert main(["ops", "--plugin", "errs/nohook.py"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {note}" in err and why in err
    rc, out = _cli(capsys, ["ops", "nh_op", "--plugin", "errs/nohook.py"])
    assert rc == 1 and note in out


def test_ops_lists_parameter_constraints(fresh, capsys, tmp_path):
    (tmp_path / "c.py").write_text(
        "from typing import Literal\nimport cnngraph\nfrom cnngraph import Op, OpParams\nfrom pydantic import Field\n"
        "class P(OpParams):\n    gain: float = Field(1.0, gt=0)\n    p: float = Field(0.5, ge=0, lt=1)\n"
        "    mode: Literal['a', 'b'] = 'a'\n"
        "class G(Op):\n    type = 'cons_op'\n    Params = P\n"
        "@cnngraph.hookimpl\ndef cnngraph_register_ops(registry):\n    registry.add(G)\n")
    rc, out = _cli(capsys, ["ops", "cons_op", "--plugin", tmp_path / "c.py"])
    assert rc == 0
    assert "    gain (float, > 0): default 1.0" in out and "    p (float, >= 0, < 1): default 0.5" in out
    assert '    mode (a|b): default "a"' in out
    assert main(["ops", "cons_op", "--format", "json"]) == 0
    import json
    params = json.loads(capsys.readouterr().out)[0]["params"]
    assert params[0]["constraints"] == ["> 0"] and params[2]["constraints"] == []
