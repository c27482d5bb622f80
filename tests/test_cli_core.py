"""CLI: run, summary, ops, plugins on real files."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import cnngraph


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cnngraph.cli", *map(str, args)], capture_output=True, text=True)


def test_run_with_random_and_given_weights(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = cli("run", "specs/lenet5.yaml", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    y = np.load(tmp_path / "y.npy")
    model = cnngraph.compile("specs/lenet5.yaml", seed=0)
    np.testing.assert_allclose(y, model.forward(x)["logits"], rtol=1e-5)
    assert "logits: shape (3, 10)" in r.stdout
    assert "warning: no weights given, so the layers have their random initial weights (seed 0)" in r.stderr

    model.params["logits.bias"] = np.arange(10, dtype=np.float32) * 100   # make argmax predictable
    np.savez(tmp_path / "w.npz", **model.params.numpy())
    r = cli("run", "specs/lenet5.yaml", "--input", tmp_path / "x.npy", "--params", tmp_path / "w.npz")
    assert r.returncode == 0 and "argmax per sample: [9, 9, 9]" in r.stdout

    model.save(tmp_path / "ckpt")
    r = cli("run", "specs/lenet5.yaml", "--input", tmp_path / "x.npy", "--params", tmp_path / "ckpt", "--profile")
    assert r.returncode == 0 and "argmax per sample: [9, 9, 9]" in r.stdout
    assert "conv1" in r.stderr and "total" in r.stderr      # per-layer profile
    assert "(a second pass; the first took" in r.stderr    # of a warm pass: not the one-time kernel set-up


def test_run_reads_a_single_array_npz(tmp_path):
    np.savez(tmp_path / "x.npz", image=np.zeros((3, 1, 28, 28), np.float32))
    r = cli("run", "specs/lenet5.yaml", "--input", tmp_path / "x.npz", "--output", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "y.npy").shape == (3, 10)


TWO_INPUTS = {"name": "two", "inputs": {"rgb": {"shape": [3, 8, 8]}, "depth": {"shape": [1, 8, 8]}},
              "layers": [{"id": "cat", "type": "concat", "inputs": ["rgb", "depth"]},
                         {"id": "c", "type": "conv2d", "out_channels": 2, "kernel_size": 1}],
              "outputs": ["c"]}


def test_run_feeds_a_model_with_several_inputs_from_an_npz_named_by_input(tmp_path, capsys):
    from cnngraph.cli import main
    spec = tmp_path / "two.json"
    spec.write_text(json.dumps(TWO_INPUTS))
    rng = np.random.default_rng(0)
    x = {"rgb": rng.random((2, 3, 8, 8), dtype=np.float32), "depth": rng.random((2, 1, 8, 8), dtype=np.float32)}
    np.savez(tmp_path / "x.npz", **x)
    assert main(["run", str(spec), "--input", str(tmp_path / "x.npz"), "--output", str(tmp_path / "y.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), cnngraph.compile(TWO_INPUTS).forward(x)["c"], rtol=1e-6)
    np.savez(tmp_path / "bad.npz", rgb=x["rgb"], dpth=x["depth"])
    np.save(tmp_path / "one.npy", x["rgb"])
    capsys.readouterr()
    assert main(["run", str(spec), "--input", str(tmp_path / "bad.npz")]) == 1
    assert "bad.npz: missing 'depth'; unknown 'dpth'; expected an .npz holding one array per model input, " \
           "named rgb, depth" in capsys.readouterr().err
    assert main(["run", str(spec), "--input", str(tmp_path / "one.npy")]) == 1
    assert "one.npy: this model takes 2 inputs; give an .npz" in capsys.readouterr().err


def test_run_errors_are_clean(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 28, 28), np.float32))
    r = cli("run", "specs/lenet5.yaml", "--input", tmp_path / "bad.npy")
    assert r.returncode == 1 and "input 'image' must have shape (batch, 1, 28, 28)" in r.stderr
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    r = cli("run", "specs/lenet5.yaml", "--input", tmp_path / "junk.npy")
    assert r.returncode == 1 and "junk.npy: not a .npy or .npz array file" in r.stderr
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04" + b"garbage" * 20)
    r = cli("run", "specs/lenet5.yaml", "--input", tmp_path / "corrupt.npz")
    assert r.returncode == 1 and "corrupt.npz: not a readable .npy/.npz array" in r.stderr
    np.savez(tmp_path / "two.npz", a=np.zeros(2), b=np.zeros(2))
    r = cli("run", "specs/lenet5.yaml", "--input", tmp_path / "two.npz")
    assert r.returncode == 1 and "two.npz: an .npz must hold exactly one array here, found 2 (a, b)" in r.stderr
    assert "Traceback" not in r.stderr
    np.savez(tmp_path / "w.npz", nope=np.zeros(3))
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    r = cli("run", "specs/lenet5.yaml", "--input", tmp_path / "x.npy", "--params", tmp_path / "w.npz")
    assert r.returncode == 1 and "parameters do not match the model" in r.stderr and "conv1.weight" in r.stderr
    assert "(trained from a different network?)" in r.stderr and "Traceback" not in r.stderr


def test_run_names_the_spec_a_checkpoint_of_another_network_came_from(tmp_path):
    import cnngraph
    cnngraph.compile("specs/digits_cnn.yaml").save(tmp_path / "ck")
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    r = cli("run", "specs/lenet5.yaml", "--input", tmp_path / "x.npy", "--params", tmp_path / "ck")
    assert r.returncode == 1 and "(trained from a different network?)" in r.stderr
    assert "the checkpoint was trained from spec 'digits_cnn'" in r.stderr and r.stderr.count("\n") == 1


def test_summary_formats():
    r = cli("summary", "specs/lenet5.yaml")
    assert r.returncode == 0
    assert "conv1" in r.stdout and "total params 61,706" in r.stdout
    data = json.loads(cli("summary", "specs/lenet5.yaml", "--format", "json").stdout)
    rows = {row["id"]: row for row in data["rows"]}
    assert rows["conv1"]["flops"] == 6 * 28 * 28 * 25 and rows["fc1"]["params"] == 400 * 120 + 120
    assert rows["conv2"]["receptive_field"] == [14, 14]   # 5 -> pool 6 (jump 2) -> 6 + 4*2
    md = cli("summary", "specs/lenet5.yaml", "--format", "markdown").stdout
    assert "| conv1 | conv2d | image | 6x28x28 |" in md and md.startswith("**lenet5**")


def test_ops_and_plugins_listing():
    r = cli("ops")
    assert r.returncode == 0
    assert "conv2d  [cnngraph.plugins.connection]" in r.stdout and "out_channels (int, >= 1): required" in r.stdout
    ops = json.loads(cli("ops", "--format", "json").stdout)
    conv = next(o for o in ops if o["type"] == "conv2d")
    assert {"name": "stride", "required": False, "default": [1, 1], "type": "int or [int, int]", "constraints": [],
            "description": None} in conv["params"]
    r = cli("ops", "upsample2d", "slice")   # named ones only, with readable types and choices
    assert r.stdout.count("  [cnngraph.plugins.") == 2 and "mode (nearest|bilinear|bicubic)" in r.stdout
    assert "start (int or null): default null" in r.stdout
    r = cli("ops", "max_pool2d", "conv_transpose2d", "conv2d", "conv1d", "clip")   # types as the spec writes them
    assert "stride (int or [int, int] or null): default null — null: the kernel size" in r.stdout
    assert "padding (int, [h, w], [top, bottom, left, right]): default [0, 0]" in r.stdout   # conv_transpose2d
    assert "padding (int, [h, w], [top, bottom, left, right], same or valid): default [0, 0]" in r.stdout
    assert "kernel_size (int or [int]): required" in r.stdout and "min (float (or -.inf, .inf) or null)" in r.stdout
    assert "[int, ...]" not in r.stdout and "str or" not in r.stdout
    r = cli("ops", "pad")   # a parameter's description says its form
    assert "pads ([[int, int], ...]): required — [before, after] for each per-sample dimension, channels " \
           "included" in r.stdout
    r = cli("ops", "conv2dd")
    assert r.returncode == 1 and "unknown op type 'conv2dd' (did you mean 'conv2d'?)" in r.stderr
    r = cli("plugins")
    assert "cnngraph.plugins.connection  (built-in): 4 ops" in r.stdout


def test_unwritable_or_foreign_paths_give_one_line_errors(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    (tmp_path / "text.npy").write_text("not an array")
    cases = [
        (["run", "specs/lenet5.yaml", "--input", tmp_path / "x.npy", "--output", tmp_path / "no" / "y.npy"],
         f"{tmp_path / 'no' / 'y.npy'}: No such file or directory"),
        (["run", "specs/lenet5.yaml", "--input", tmp_path / "x.npy", "--params", tmp_path / "text.npy"],
         "not an .npz archive: the file starts with b'not an'"),
        (["run", "specs/digits_cnn.yaml", "--input", tmp_path / "x.npy", "--params", "specs"],
         "specs"),
    ]
    for argv, text in cases:
        r = cli(*argv)
        assert r.returncode == 1 and text in r.stderr and "Traceback" not in r.stderr, (argv, r.stderr)


def test_weights_of_another_network_are_refused_before_any_is_loaded():
    a = cnngraph.compile("specs/digits_cnn.yaml", seed=0)
    b = cnngraph.compile("specs/digits_cnn.yaml", seed=1)
    before = {k: v.copy() for k, v in b.params.numpy().items()}
    arrays = a.params.numpy()
    arrays["fc1.weight"] = arrays["fc1.weight"][:, :-1]          # one layer of another shape
    with pytest.raises(cnngraph.errors.CnnGraphError, match=r"fc1.weight \(64, 511\) \(the model has \(64, 512\)\)"):
        b.load_params(arrays)
    for k, v in b.params.numpy().items():
        np.testing.assert_array_equal(v, before[k])                # nothing was half-loaded


def test_summary_of_a_network_too_big_to_measure_is_a_note(monkeypatch, capsys):
    """The training-memory measurement runs a real step; a MemoryError there is a note after the table,
    not an error: the static table is still worth having."""
    from cnngraph import summary
    from cnngraph.cli import main

    def too_big(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(summary, "training_memory", too_big)
    assert main(["summary", "specs/lenet5.yaml", "--batch-size", "8"]) == 0
    out, err = capsys.readouterr()
    assert "conv2 " in out and "peak activation memory (inference, batch 8)" in out
    assert "(training, batch 8): not measured: measuring ran out of memory" in out and "--no-training-memory" in out
    assert "Traceback" not in err


def test_parameter_constraints_include_patterns():
    from pydantic import BaseModel, Field
    from cnngraph.commands.core import _constraints

    class P(BaseModel):
        mode: str = Field("a", pattern="^(a|b)$")
        k: int = Field(1, ge=1, le=9)
    assert _constraints(P.model_fields["mode"].metadata) == ["matching ^(a|b)$"]
    assert _constraints(P.model_fields["k"].metadata) == [">= 1", "<= 9"]


def test_run_hints_channels_last_notes_uint8_and_argmaxes_only_class_scores(tmp_path, capsys):
    from cnngraph.cli import main
    rng = np.random.default_rng(0)
    np.save(tmp_path / "nhwc.npy", rng.random((2, 8, 8, 3), dtype=np.float32))
    spec = {"inputs": {"image": {"shape": [3, 8, 8]}},
            "layers": [{"id": "g", "type": "global_avg_pool2d"}, {"id": "f", "type": "flatten"},
                       {"id": "cls", "type": "dense", "out_features": 4},
                       {"id": "reg", "type": "dense", "out_features": 1, "inputs": "f"}],
            "outputs": ["cls", "reg"]}
    (tmp_path / "net.json").write_text(json.dumps(spec))
    net = str(tmp_path / "net.json")
    assert main(["run", net, "--input", str(tmp_path / "nhwc.npy")]) == 1
    assert "nhwc.npy: array of shape (2, 8, 8, 3) looks channels-last (N, H, W, C); the model takes (N, 3, 8, 8): " \
           "save np.moveaxis(x, -1, 1)" in capsys.readouterr().err
    np.save(tmp_path / "u8.npy", rng.integers(0, 256, (2, 3, 8, 8)).astype(np.uint8))
    assert main(["run", net, "--input", str(tmp_path / "u8.npy")]) == 0
    out, err = capsys.readouterr()
    assert "note: input is uint8 and is fed as its raw values 0..255 (not scaled to [0, 1])" in err
    assert "cls: shape (2, 4) float32; argmax per sample: [" in out
    assert "reg: shape (2, 1) float32\n" in out     # one value per sample: a regression, no argmax


@pytest.mark.parametrize("command,reads_spec", [("ops", False), ("plugins", False), ("check-op", False),
                                                ("validate", True)])
def test_plugin_option_help_mentions_a_spec_only_where_one_is_read(capsys, command, reads_spec):
    from cnngraph.cli import main
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("the spec" in text) == reads_spec, text
