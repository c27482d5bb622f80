"""`cnngraph check-op`: the op conformance suite passes every built-in op and catches broken ones."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import cnngraph
from cnngraph.cli import main
from cnngraph.conformance import InputSample, check_op, examples_for

PLUGINS = Path(__file__).parent / "plugins"



def test_check_op_all_passes_every_registered_op(fresh, capsys):
    start = time.perf_counter()
    rc = main(["check-op", "--all"])
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert rc == 0, "\n".join(l for l in lines if l.startswith("FAIL"))
    assert all(l.startswith(("PASS", "SKIP")) for l in lines[:-1])
    assert lines[-1].endswith(f"({len(fresh.ops)} ops)") and " 0 failed" in lines[-1]
    for op in fresh.ops:                                    # every op checked, gradients included
        assert any(l.startswith(f"PASS  {op} ") and "gradient (float64, training)" in l for l in lines) or \
            any(l.startswith(f"SKIP  {op} ") and "nothing to differentiate" in l for l in lines), op
    assert elapsed < 30


def test_every_builtin_op_declares_examples(fresh):
    for name, op_cls in fresh.ops.items():
        if op_cls.plugin.startswith("cnngraph."):
            assert op_cls.examples(), f"built-in op {name} has no examples()"


def test_lines_carry_the_measured_error(fresh, capsys):
    assert main(["check-op", "conv2d"]) == 0
    out = capsys.readouterr().out
    grad = [l for l in out.splitlines() if "gradient (float64, training)" in l]
    assert len(grad) == len(fresh.op("conv2d").examples())
    for line in grad:
        err = float(line.split("max rel. error ")[1].split()[0])
        assert 0 <= err < 1e-5
    assert "dtype float32: forward and backward keep float32" in out


@pytest.mark.parametrize("op,check,needle", [
    ("wrong_gradient", "gradient (float64, training)", "input 0: analytic"),
    ("batch_leak", "batch independence (inference)", "max difference"),
    ("loses_dtype", "dtype float32", "forward returned float64 for float32 inputs"),
    ("bad_forward_shape", "shape (inference)", "forward returned shape (3, 1, 6, 6), infer_shape promised (3, 3, 6, 6)"),
    ("bad_backward_shape", "gradient (float64, training)", "gradient of input 0 has shape (3, 1, 6, 6), expected (3, 3, 6, 6)"),
])
def test_broken_ops_fail_the_right_check(fresh, capsys, op, check, needle):
    rc = main(["check-op", op, "--plugin", str(PLUGINS / "broken_ops.py")])
    out = capsys.readouterr().out
    assert rc == 1
    fails = [l for l in out.splitlines() if l.startswith(f"FAIL  {op} ") and f"  {check}: " in l]
    assert fails and needle in fails[0], out
    assert "generic guess" in fails[0]                      # these ops declare no examples


def test_param_shapes_that_disagree_with_init_params_fail_the_params_check():
    """summary counts from param_shapes: check-op makes sure they are the shapes init_params makes."""
    from cnngraph.plugins.connection import Dense

    class Miscounted(Dense):
        type = "miscounted"

        def param_shapes(self, in_shapes):
            return {"weight": (self.p.out_features, in_shapes[0][0] + 1)}

    results = check_op(Miscounted)
    fails = [r for r in results if r.check == "params" and r.ok is False]
    assert fails and "param_shapes returned {'weight': (" in fails[0].detail
    assert "but init_params made {'weight': (" in fails[0].detail


def test_wrong_gradient_reports_the_measured_relative_error(fresh):
    cnngraph.load_plugin_file(PLUGINS / "broken_ops.py")
    r = next(r for r in check_op("wrong_gradient") if r.check == "gradient (float64, training)")
    assert r.ok is False and r.plugin.endswith("broken_ops.py")
    err = float(r.detail.split("max rel. error ")[1].split()[0])
    assert 0.4 < err < 0.6                                  # d(x^2)/dx = 2x, backward gives x: half off


def _scaled_square(lam: float, factor: float) -> type:
    """y = lam * x^2 with backward lam * factor * x * gy: factor 2 is right."""
    class ScaledSquare(cnngraph.Op):
        type = "scaled_square"

        def forward(self, ctx, inputs, params):
            ctx.save(x=inputs[0])
            return inputs[0] * inputs[0] * lam

        def backward(self, ctx, gy):
            return [gy * ctx.saved["x"] * (lam * factor)], {}

    return ScaledSquare


@pytest.mark.parametrize("lam", [1e-7, 1e-12, 1e3])
def test_gradient_error_is_relative_to_the_gradients_own_scale(fresh, lam):
    """A 2x-wrong gradient fails however small the gradient is; a right one passes at every scale."""
    def grads(op):
        return [r for r in check_op(op) if r.check.startswith("gradient")]
    wrong = grads(_scaled_square(lam, 1.0))
    assert wrong and all(r.ok is False and "max rel. error 5.0e-01" in r.detail for r in wrong)
    assert all(r.ok for r in grads(_scaled_square(lam, 2.0)))


def test_non_finite_gradient_fails_the_gradient_check(fresh):
    class NanGrad(cnngraph.Op):
        type = "nan_grad"

        def forward(self, ctx, inputs, params):
            return inputs[0] * 2

        def backward(self, ctx, gy):
            return [gy * np.nan], {}

    grads = [r for r in check_op(NanGrad) if r.check.startswith("gradient")]
    assert grads and all(r.ok is False for r in grads)
    assert "input 0: the analytic gradient has non-finite values (NaN or inf)" in grads[0].detail
    assert "max rel. error" not in grads[0].detail      # no measured error to quote for NaN


def test_batch_dependent_ops_are_checked_in_inference_only(fresh):
    results = check_op("batch_norm2d")
    assert all(r.ok is not False for r in results)
    skipped = [r for r in results if r.check == "batch independence (training)"]
    assert skipped and all(r.ok is None and "batch_dependent" in r.detail for r in skipped)
    assert any(r.check == "batch independence (inference)" and r.ok for r in results)


def test_stochastic_ops_get_the_same_randomness_for_finite_differences(fresh):
    results = check_op("dropout")
    assert any(r.check == "gradient (float64, training)" and r.ok for r in results)
    assert any(r.check == "batch independence (training)" and r.ok is None and "stochastic" in r.detail
               for r in results)


def test_integer_targets_are_not_differentiated(fresh):
    results = check_op("cross_entropy")
    grads = [r for r in results if r.check.startswith("gradient")]
    probabilities = ("#3", "#5", "#7")   # examples 1, 2, 4 (per pixel) and 6: class indices; 3, 5, 7: probabilities
    index = [r for r in grads if not r.case.startswith(probabilities)]
    assert index and all(r.ok and "input 0" in r.detail and "input 1" not in r.detail for r in index)
    assert all(r.ok and "input 1" in r.detail for r in grads if r.case.startswith(probabilities))
    assert any(r.check == "batch independence" and r.ok is None for r in results)   # a loss


def test_op_with_required_params_and_no_examples_is_told_what_to_add(fresh, capsys):
    class NeedsWidth(cnngraph.Op):
        class Params(cnngraph.OpParams):
            width: int

        type = "needs_width"

        def forward(self, ctx, inputs, params):
            return inputs[0]

    cnngraph.register_op(NeedsWidth)
    assert main(["check-op", "needs_width"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  needs_width" in out and "required parameters (width) and no examples()" in out


def test_generic_guess_tries_several_shapes(fresh):
    class Vector(cnngraph.Op):
        type = "vector_only"

        def infer_shape(self, in_shapes):
            if len(in_shapes[0]) != 1:
                raise cnngraph.ShapeError("vectors only")
            return in_shapes[0]

        def forward(self, ctx, inputs, params):
            return inputs[0] * 3

        def backward(self, ctx, gy):
            return [gy * 3], {}

    examples, source = examples_for(Vector)
    assert source == "generic guess" and examples[0][1][0].shape == (6,)
    assert all(r.ok is not False for r in check_op(Vector))


def test_input_sample_forms():
    rng = np.random.default_rng(0)
    assert InputSample.parse((2, 3)).draw(rng, 4, np.float32).shape == (4, 2, 3)
    t = InputSample.parse({"shape": (), "dtype": "int64", "high": 5}).draw(rng, 50, np.float64)
    assert t.dtype == np.int64 and t.min() >= 0 and t.max() < 5
    u = InputSample.parse({"shape": (3,), "low": 0.5, "high": 2}).draw(rng, 20, np.float64)
    assert u.min() >= 0.5 and u.max() < 2
    with pytest.raises(ValueError, match="needs 'high'"):
        InputSample.parse({"shape": (), "dtype": "int64"})
    with pytest.raises(ValueError, match="a shape tuple or a dict"):
        InputSample.parse({"shap": (3,)})


def test_cli_usage_errors(fresh, capsys):
    assert main(["check-op"]) == 1
    assert "name one op" in capsys.readouterr().err
    assert main(["check-op", "relu", "--all"]) == 1
    assert main(["check-op", "rleu"]) == 1
    assert "did you mean 'relu'" in capsys.readouterr().err


def test_quiet_prints_failures_and_the_count(fresh, capsys):
    assert main(["check-op", "relu", "-q"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("23 passed, 0 failed")


# -- the documented walk-through (docs/plugins.md) ----------------------------------------------------
def test_documented_commands_work(fresh, capsys):
    assert main(["validate", "specs/examples/uses_my_layers.yaml", "--allow-plugins"]) == 0
    assert "OK   specs/examples/uses_my_layers.yaml" in capsys.readouterr().out
    assert main(["check-op", "channel_scale", "--plugin", "specs/examples/my_layers.py"]) == 0
    assert " 0 failed" in capsys.readouterr().out
    assert main(["summary", "specs/examples/uses_my_layers.yaml", "--allow-plugins"]) == 0
    assert "channel_scale" in capsys.readouterr().out
    model = cnngraph.compile(cnngraph.load_spec("specs/examples/uses_my_layers.yaml", allow_plugins=True))
    assert model.params["scale.scale"].tolist() == [0.5] * 8
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    y = model.forward({"image": x}, grad=True)["logits"]
    grads = model.backward({"logits": np.ones_like(y)})
    assert grads["scale.scale"].shape == (8,) and np.any(grads["scale.scale"] != 0)


def test_documented_example_file_is_short():
    lines = Path("specs/examples/my_layers.py").read_text().splitlines()
    assert len(lines) <= 50


def test_docs_show_the_real_example_files_and_working_commands(fresh, capsys):
    import re
    import shlex
    doc = Path("docs/plugins.md").read_text()
    section = doc.split("## Write your own layer")[1].split("\n## ")[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    python = [b for lang, b in blocks if lang == "python"]
    assert python and python[0] == Path("specs/examples/my_layers.py").read_text()
    yaml_text = [b for lang, b in blocks if lang == "yaml"][0]
    assert yaml_text in Path("specs/examples/uses_my_layers.yaml").read_text()
    commands = [line[2:] for lang, b in blocks if lang == "console" for line in b.splitlines()
                if line.startswith("$ cnngraph ")]
    assert len(commands) >= 3
    for cmd in commands:
        argv = shlex.split(cmd)[1:]
        assert main(argv) == 0, cmd
    capsys.readouterr()


def test_an_early_failure_lists_the_checks_it_did_not_run(fresh, capsys):
    rc = main(["check-op", "bad_forward_shape", "--plugin", str(PLUGINS / "broken_ops.py")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 1
    checks = [l.split("  ")[-1].split(":")[0] for l in lines[:-1]]
    assert checks == ["params", "shape (inference)", "shape (training)", "in-place writes", "determinism",
                      "dtype float32", "dtype float64", "gradient (float64, training)", "gradient (float64, inference)",
                      "batch independence (inference)", "batch independence (training)",
                      "receptive field"]   # one line per check
    assert all(l.startswith("SKIP") and "not run: the shape (inference) check failed" in l for l in lines[2:-1])
    assert lines[-1].startswith("1 passed, 1 failed, 10 skipped (1 op); failing: bad_forward_shape (plugin '")
    assert lines[-1].endswith("broken_ops.py')")


def test_crashing_infer_shape_and_flops_fail_check_op_by_name(fresh, capsys):
    rc = main(["check-op", "flops_crashes", "--plugin", str(PLUGINS / "more_broken_ops.py")])
    out = capsys.readouterr().out
    assert rc == 1 and "flops of op 'flops_crashes' (plugin '" in out and "raised TypeError: bad flops" in out
    rc = main(["check-op", "grad_count"])   # still loaded from --plugin above
    out = capsys.readouterr().out
    assert rc == 1 and "backward returned 2 input gradients, expected 1" in out
    cnngraph.load_plugin_file(PLUGINS / "more_broken_ops.py")
    fails = [r for r in check_op("backward_raises") if r.ok is False]
    assert fails and all("ValueError at more_broken_ops.py:25: oops in backward" in r.detail for r in fails)


def test_readme_walkthrough_matches_the_example_and_its_commands_work(fresh, capsys):
    import re
    import shlex
    readme = Path("README.md").read_text()
    section = readme.split("## Write your own layer")[1].split("\n## ")[0].split("\n### ")[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    python = [b for lang, b in blocks if lang == "python"]
    assert python and python[0].strip() in Path("specs/examples/my_layers.py").read_text()
    commands = [line[2:] for lang, b in blocks if lang == "console" for line in b.splitlines()
                if line.startswith("$ cnngraph ")]
    assert len(commands) >= 2
    for cmd in commands:
        assert main(shlex.split(cmd)[1:]) == 0, cmd
    capsys.readouterr()


def test_a_forward_that_writes_into_its_input_fails(fresh):
    from cnngraph.op import Op

    class InPlace(Op):
        type = "test_inplace_double"

        def forward(self, ctx, inputs, params):
            x = inputs[0]
            x *= 2                      # a sibling layer reading x would see this
            return x

        def backward(self, ctx, gy):
            return [2 * gy], {}

    failed = [r for r in check_op(InPlace) if r.ok is False]
    assert failed and "forward modified its input 0 in place" in failed[0].detail
