"""`cnngraph train / evaluate / predict` on real files."""
import json
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from cnngraph.cli import main
from cnngraph.train.checkpoint import load_checkpoint
from cnngraph.train.datasets.digits import DIGITS_PATH
from cnngraph.train.optim import SGD

SPEC = {
    "name": "cli_digits",
    "inputs": {"image": {"shape": [1, 8, 8]}},
    "layers": [{"id": "conv1", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
               {"id": "act1", "type": "relu"},
               {"id": "pool", "type": "max_pool2d", "kernel_size": 2},
               {"id": "flat", "type": "flatten"},
               {"id": "logits", "type": "dense", "out_features": 10}],
    "outputs": ["logits"],
    "train": {"data": {"dataset": "digits", "limit": 400}, "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.9},
              "batch_size": 32, "epochs": 20, "seed": 0},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real training run through the CLI, shared by the evaluate/predict tests."""
    d = tmp_path_factory.mktemp("cli")
    spec = d / "net.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    rc = main(["train", str(spec), "--epochs", "4", "--out", str(d / "run"), "--quiet"])
    assert rc == 0
    return spec, d / "run"


def test_train_writes_the_run_folder(trained, capsys):
    spec, run = trained
    for name in ("metrics.json", "history.csv", "curves.png", "checkpoint/best/meta.json", "checkpoint/last/meta.json"):
        assert (run / name).is_file(), name
    m = json.loads((run / "metrics.json").read_text())
    assert len(m["history"]) == 4 and m["test_accuracy"] > 0.6
    # --epochs overrode the spec's 20 and is remembered for resume
    assert load_checkpoint(run / "checkpoint" / "last").meta["settings"]["epochs"] == 4


def test_train_prints_one_line_per_epoch_and_summary(tmp_path, capsys):
    spec = tmp_path / "net.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    rc = main(["train", str(spec), "--epochs", "2", "--batch-size", "64", "--lr", "0.05", "--seed", "1",
               "--data", "digits", "--out", str(tmp_path / "r")])
    assert rc == 0
    cap = capsys.readouterr()
    assert len([l for l in cap.err.splitlines() if l.startswith("epoch ")]) == 2
    assert "test accuracy" in cap.out and str(tmp_path / "r") in cap.out
    meta = load_checkpoint(tmp_path / "r" / "checkpoint" / "last").meta
    assert meta["settings"]["batch_size"] == 64 and meta["settings"]["lr"] == 0.05 and meta["settings"]["seed"] == 1


def test_evaluate_prints_metrics_and_writes_confusion(trained, capsys, tmp_path):
    spec, run = trained
    rc = main(["evaluate", str(spec), "--checkpoint", str(run), "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "test_accuracy" in out and "precision" in out and "confusion matrix" in out
    rows = [l.split() for l in out.splitlines() if l[:1].isdigit() and len(l.split()) == 11]
    cm = np.array([[int(v) for v in r[1:]] for r in rows])
    assert cm.shape == (10, 10) and cm.sum() == 450
    acc = json.loads((run / "metrics.json").read_text())["test_accuracy"]
    assert np.trace(cm) / 450 == pytest.approx(acc)          # the best checkpoint, as training reported
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    # JSON output and every accepted --checkpoint form
    for form in (run / "checkpoint", run / "checkpoint" / "best"):
        assert main(["evaluate", str(spec), "--checkpoint", str(form), "--format", "json",
                     "--out", str(tmp_path)]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["test_accuracy"] == pytest.approx(acc) and len(res["per_class"]["precision"]) == 10


def _metrics_then_warning(capsys):
    out, err = capsys.readouterr()
    assert "test_accuracy" in out and "confusion matrix" in out and "wrote" not in out
    assert err.startswith("warning: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_evaluate_without_matplotlib_prints_the_metrics_and_skips_the_picture(trained, capsys, tmp_path,
                                                                              monkeypatch):
    spec, run = trained
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["evaluate", str(spec), "--checkpoint", str(run), "--out", str(tmp_path)]) == 0
    err = _metrics_then_warning(capsys)
    assert f"{tmp_path / 'confusion.png'} not written" in err and "pip install matplotlib" in err
    assert not (tmp_path / "confusion.png").exists()
    assert main(["evaluate", str(spec), "--checkpoint", str(run), "--out", str(tmp_path), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["confusion_png"] is None and "pip install matplotlib" in err


def test_evaluate_into_an_unwritable_folder_warns_after_the_metrics(trained, capsys, tmp_path, monkeypatch):
    """A read-only run folder (simulated: tests may run as root) must not hide the metrics."""
    from cnngraph.viz import curves
    spec, run = trained

    def read_only(cm, classes, path, title=None):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(curves, "plot_confusion", read_only)
    assert main(["evaluate", str(spec), "--checkpoint", str(run)]) == 0
    err = _metrics_then_warning(capsys)
    assert f"cannot write {run / 'confusion.png'} (Permission denied)" in err and "--out" in err
    monkeypatch.undo()
    (tmp_path / "file").write_text("x")
    assert main(["evaluate", str(spec), "--checkpoint", str(run), "--out", str(tmp_path / "file" / "sub")]) == 0
    assert "'file' is a file, not a folder" in _metrics_then_warning(capsys).replace(str(tmp_path) + "/", "")


def test_predict_png_and_npy(trained, capsys, tmp_path):
    spec, run = trained
    with np.load(DIGITS_PATH) as z:
        x, y, test_idx = z["x"], z["y"], z["test_idx"]
    png = tmp_path / "digit.png"
    Image.fromarray(np.round(x[test_idx[0]].astype(float) * 255 / 16).astype(np.uint8)).save(png)
    inv = tmp_path / "ink.png"      # dark ink on white, larger: needs --invert and resizing
    Image.fromarray(255 - np.round(x[test_idx[0]].astype(float) * 255 / 16).astype(np.uint8)).save(inv)
    npy = tmp_path / "batch.npy"
    np.save(npy, x[test_idx[:40]].astype(np.float32))       # raw grey levels 0..16, like the dataset
    assert main(["predict", str(spec), "--checkpoint", str(run), str(png), str(npy), "--format", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res) == 41 and res[0]["input"] == str(png) and res[1]["input"] == f"{npy}[0]"
    assert res[0]["class"] == res[1]["class"]                 # the same image read two ways
    assert sum(res[0]["probabilities"].values()) == pytest.approx(1.0)
    preds = np.array([int(r["class"]) for r in res[1:]])
    assert (preds == y[test_idx[:40]]).mean() > 0.6
    assert main(["predict", str(spec), "--checkpoint", str(run), str(inv), "--invert"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(inv)) and f"class {res[0]['class']} " in line


def test_predict_notes_a_light_background_and_a_squashed_image(trained, capsys, tmp_path):
    """A dark-on-white digit without --invert was predicted as some class with no hint; a wide image was
    squashed to the input's shape without a word."""
    spec, run = trained
    with np.load(DIGITS_PATH) as z:
        x = z["x"][z["test_idx"][:12]]
    ink = tmp_path / "ink.png"
    Image.fromarray(255 - np.round(x[0].astype(float) * 255 / 16).astype(np.uint8)).save(ink)
    assert main(["predict", str(spec), "--checkpoint", str(run), str(ink)]) == 0
    err = capsys.readouterr().err
    assert f"note: '{ink}' is mostly light" in err and "add --invert" in err and err.count("\n") == 1
    assert main(["predict", str(spec), "--checkpoint", str(run), str(ink), "--invert"]) == 0
    assert capsys.readouterr().err == ""
    for i, img in enumerate(x):      # light digits on dark, as trained: no note
        Image.fromarray(np.round(img.astype(float) * 255 / 16).astype(np.uint8)).save(tmp_path / f"d{i}.png")
    assert main(["predict", str(spec), "--checkpoint", str(run), *(str(tmp_path / f"d{i}.png") for i in range(12))]) == 0
    assert capsys.readouterr().err == ""
    Image.fromarray(np.round(x[0].astype(float) * 255 / 16).astype(np.uint8)).resize((24, 8)).save(tmp_path / "w.png")
    assert main(["predict", str(spec), "--checkpoint", str(run), str(tmp_path / "w.png")]) == 0
    assert capsys.readouterr().err == (f"note: '{tmp_path / 'w.png'}' (24x8, mode L) was stretched to 8x8 to fit the "
                                       f"model's input (1, 8, 8)\n")
    # a folder of such images: the first notes, then a count
    (tmp_path / "inks").mkdir()
    for i in range(5):
        Image.open(ink).save(tmp_path / "inks" / f"{i}.png")
    assert main(["predict", str(spec), "--checkpoint", str(run), str(tmp_path / "inks")]) == 0
    err = capsys.readouterr().err
    assert err.count("is mostly light") == 3 and err.endswith("note: and 2 more like these\n")


def test_predict_masks_out_refuses_to_replace_an_input(tmp_path):
    from cnngraph.commands.train import _check_masks_out
    from cnngraph.errors import CnnGraphError
    (tmp_path / "0000_a.mask.png").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    with pytest.raises(CnnGraphError, match="the input '.*0000_a.mask.png' is a file it writes or replaces there"):
        _check_masks_out(tmp_path, [str(tmp_path / "b.png"), str(tmp_path / "0000_a.mask.png")])
    _check_masks_out(tmp_path, [str(tmp_path / "b.png")])
    _check_masks_out(tmp_path / "other", [str(tmp_path / "0000_a.mask.png")])


def test_predict_reads_folders_names_broken_inputs_and_writes_csv(trained, capsys, tmp_path):
    spec, run = trained
    with np.load(DIGITS_PATH) as z:
        x = z["x"][z["test_idx"][:3]]
    folder = tmp_path / "in"
    folder.mkdir()
    for i, img in enumerate(x[:2]):
        Image.fromarray(np.round(img.astype(float) * 255 / 16).astype(np.uint8)).save(folder / f"{i}.png")
    (folder / "1b.png").write_bytes(b"broken")
    (folder / "notes.txt").write_text("left out")
    np.save(folder / "z.npy", x[2:3].astype(np.float32))
    rc = main(["predict", str(spec), "--checkpoint", str(run), str(folder), "--format", "csv"])
    out, err = capsys.readouterr()
    assert rc == 1 and "Traceback" not in err
    assert "1b.png'" in err and "1 input could not be read" in err and "left out 1 file(s)" in err
    rows = [line.split(",") for line in out.strip().splitlines()]
    assert rows[0][:3] == ["input", "class", "probability"] and rows[0][3:] == [str(d) for d in range(10)]
    assert [r[0] for r in rows[1:]] == [str(folder / "0.png"), str(folder / "1.png"), f"{folder / 'z.npy'}[0]"]
    assert all(sum(map(float, r[3:])) == pytest.approx(1.0) for r in rows[1:])
    np.save(tmp_path / "far.npy", x[:1].astype(np.float32) * 100)   # grey levels 0..1600, trained on 0..16
    assert main(["predict", str(spec), "--checkpoint", str(run), str(tmp_path / "far.npy")]) == 0
    assert "far.npy' holds values in [0, 1600] (as read), far outside the training data's [0, 16]" in \
        capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(spec), "--checkpoint", str(run), str(tmp_path / "empty")]) == 1
    assert "is a folder without image files" in capsys.readouterr().err


def test_resume_via_cli_and_spec_mismatch(trained, tmp_path, capsys):
    spec, run = trained
    other = json.loads(json.dumps(SPEC))
    other["layers"][0]["out_channels"] = 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(other))
    assert main(["train", str(bad), "--resume", str(run), "--epochs", "5", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "different network" in err and "conv1" in err and "Traceback" not in err
    assert main(["train", str(spec), "--resume", str(run), "--epochs", "5", "--out", str(tmp_path / "y"),
                 "--quiet"]) == 0
    assert load_checkpoint(tmp_path / "y" / "checkpoint" / "last").meta["epoch"] == 5
    assert (tmp_path / "y" / "checkpoint" / "best" / "meta.json").is_file()    # previous best carried over


def test_ctrl_c_exits_130_keeping_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "net.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    real, calls = SGD.step, {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 16:           # epoch 2 of 13 steps each
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(SGD, "step", step)
    assert main(["train", str(spec), "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "epoch 1" in err and "--resume" in err
    assert load_checkpoint(tmp_path / "r" / "checkpoint" / "last").meta["epoch"] == 1


def test_errors_are_clean(tmp_path, capsys):
    spec = tmp_path / "net.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    cases = [
        (["train", str(spec), "--lr", "1e30", "--epochs", "2", "--out", str(tmp_path / "d")], "diverged"),
        (["train", str(spec), "--data", "nosuch", "--out", str(tmp_path / "e")], "unknown dataset 'nosuch'"),
        (["train", str(spec), "--data", "npz:" + str(tmp_path / "missing.npz"), "--out", str(tmp_path / "f")],
         "missing.npz"),
        (["evaluate", str(spec), "--checkpoint", str(tmp_path / "nothing")], "does not exist"),
        (["predict", str(spec), "--checkpoint", str(tmp_path / "nothing"), "x.png"], "does not exist"),
    ]
    for argv, text in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert text in err and "Traceback" not in err, (argv, err)


def test_train_on_an_npz_dataset(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (120, 1, 8, 8), dtype=np.uint8)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)   # top vs bottom brighter
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = json.loads(json.dumps(SPEC))
    spec["layers"][-1]["out_features"] = 2
    spec["train"]["data"] = {"dataset": "npz", "path": "unused.npz", "test_fraction": 0.2}
    path = tmp_path / "net.yaml"
    path.write_text(yaml.safe_dump(spec))
    rc = main(["train", str(path), "--data", f"npz:{tmp_path / 'd.npz'}", "--epochs", "2", "--out",
               str(tmp_path / "r"), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["classes"] == ["0", "1"] and sum(m["per_class"]["support"]) == 24
    del spec["train"]["data"]["test_fraction"]          # without one: validation only, and the user is told
    path.write_text(yaml.safe_dump(spec))
    rc = main(["train", str(path), "--data", f"npz:{tmp_path / 'd.npz'}", "--epochs", "1", "--out",
               str(tmp_path / "r2"), "--quiet"])
    assert rc == 0
    assert "no test split (set train.data.test_fraction" in capsys.readouterr().out
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["test_accuracy"] is None


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGINT") or __import__("os").name != "posix",
                    reason="needs POSIX signals")
def test_sigint_to_a_real_process_keeps_a_checkpoint_and_resume_is_bit_for_bit(tmp_path):
    """Ctrl-C (SIGINT) on a real `cnngraph train` of the bundled digits mid-run: exit 130, no traceback,
    checkpoint/last loads; --resume then ends bit-for-bit equal (float32) to a straight 6-epoch run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import cnngraph
    from pathlib import Path
    spec = str(Path(__file__).resolve().parents[1] / "specs" / "digits_cnn.yaml")
    straight = cnngraph.train(spec, epochs=6, out=tmp_path / "straight", quiet=True)
    cmd = [sys.executable, "-c", "import sys; from cnngraph.cli import main; sys.exit(main())",
           "train", spec, "--epochs", "6", "--out", str(tmp_path / "cut")]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    for line in iter(p.stderr.readline, ""):
        seen.append(line)
        if line.startswith("epoch 2/6"):
            time.sleep(0.05)              # into epoch 3
            p.send_signal(signal.SIGINT)
            break
    err = "".join(seen) + p.stderr.read()
    assert p.wait(timeout=60) == 130, err
    assert "interrupted: training stopped cleanly" in err and "Traceback" not in err
    last = load_checkpoint(tmp_path / "cut" / "checkpoint" / "last")
    assert 2 <= last.meta["epoch"] < 6
    assert cnngraph.load_model(tmp_path / "cut").param_count() > 0
    assert main(["train", spec, "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    a = load_checkpoint(tmp_path / "straight" / "checkpoint" / "last").arrays
    b = load_checkpoint(tmp_path / "cut" / "checkpoint" / "last").arrays
    assert a.keys() == b.keys() and all(a[k].dtype == np.float32 and np.array_equal(a[k], b[k]) for k in a)
    resumed = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in straight]


def _write_format(kind, root):
    """Real-format files of each loader with 3 classes; returns (--data value, input shape, the raw
    training pixels as uint8 N,C,H,W, classes)."""
    import gzip
    import pickle
    import struct
    rng = np.random.default_rng(7)
    y = np.arange(30) % 3
    if kind == "mnist":
        x = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
        root.mkdir()
        for name, arr in (("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y.astype(np.uint8)),
                          ("t10k-images-idx3-ubyte", x[:9]), ("t10k-labels-idx1-ubyte", y[:9].astype(np.uint8))):
            head = bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
            with gzip.open(root / (name + ".gz"), "wb") as f:
                f.write(head + arr.tobytes())
        return f"mnist:{root}", (1, 28, 28), x[:, None], [str(i) for i in range(10)]
    if kind == "cifar10":
        x = rng.integers(0, 256, (30, 3072), dtype=np.uint8)
        root.mkdir()
        for i in range(5):
            part = slice(6 * i, 6 * i + 6)
            (root / f"data_batch_{i + 1}").write_bytes(pickle.dumps(
                {b"batch_label": b"b", b"labels": [int(v) for v in y[part]], b"data": x[part]}, protocol=2))
        (root / "test_batch").write_bytes(pickle.dumps({b"labels": [0, 1, 2], b"data": x[:3]}, protocol=2))
        names = [f"c{i}".encode() for i in range(10)]
        (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
        return f"cifar10:{root}", (3, 32, 32), x.reshape(-1, 3, 32, 32), [n.decode() for n in names]
    if kind == "image_folder":     # flat colours: PNG exact, JPEG near-exact
        colours = {"blue": (10, 20, 200), "green": (20, 180, 30), "red": (220, 10, 10)}
        xs = []
        for c, colour in colours.items():
            (root / c).mkdir(parents=True)
            for i in range(10):
                Image.new("RGB", (8, 8), colour).save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")
                xs.append(np.broadcast_to(np.array(colour, np.uint8)[:, None, None], (3, 8, 8)))
        return f"image_folder:{root}", (3, 8, 8), np.stack(xs), sorted(colours)
    x = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)      # npz, NHWC uint8
    np.savez(root, x=x, y=y, x_val=x[:6], y_val=y[:6], x_test=x[:6], y_test=y[:6])
    return f"npz:{root}", (3, 8, 8), x.transpose(0, 3, 1, 2), ["0", "1", "2"]


@pytest.mark.parametrize("kind", ["mnist", "cifar10", "image_folder", "npz"])
def test_train_on_each_real_file_format_via_data_flag(kind, tmp_path, capsys):
    """`--data NAME:PATH` on files written in each format's real layout: the run trains, and the
    normalisation stored with the checkpoint is the per-channel mean/std of the raw training pixels / 255
    (no validation split is carved, so the training split is the whole training set)."""
    data, shape, raw, classes = _write_format(kind, tmp_path / ("d.npz" if kind == "npz" else "d"))
    spec = {"name": f"fmt_{kind}", "inputs": {"image": {"shape": list(shape)}},
            "layers": [{"id": "conv", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
                       {"id": "act", "type": "relu"}, {"id": "gap", "type": "global_avg_pool2d"},
                       {"id": "flat", "type": "flatten"},
                       {"id": "logits", "type": "dense", "out_features": len(classes)}],
            "outputs": ["logits"],
            "train": {"data": {"dataset": "digits", "val_fraction": 0.0}, "batch_size": 8, "epochs": 1}}
    path = tmp_path / "net.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["train", str(path), "--data", data, "--out", str(tmp_path / "r"), "--quiet"]) == 0, \
        capsys.readouterr().err
    meta = load_checkpoint(tmp_path / "r" / "checkpoint" / "last").meta["dataset"]
    px = raw.astype(np.float64) / 255
    assert meta["classes"] == classes
    atol = 0.01 if kind == "image_folder" else 1e-6          # JPEG shifts flat colours by a level or two
    np.testing.assert_allclose(meta["mean"], px.mean(axis=(0, 2, 3)), atol=atol)
    np.testing.assert_allclose(meta["std"], px.std(axis=(0, 2, 3)), atol=atol)
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert len(m["history"]) == 1 and np.isfinite(m["history"][0]["train_loss"])
    import csv
    with open(tmp_path / "r" / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [{k: float(v) for k, v in r.items() if v} for r in rows] == \
        [{k: float(v) for k, v in h.items() if v is not None} for h in m["history"]]


def _npz_run(tmp_path, capsys, x, y, name="d", epochs=1, **data):
    """A short CLI training run on an npz file (``data``: more train.data settings); returns (spec path, run folder)."""
    np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    spec = json.loads(json.dumps(SPEC))
    spec["layers"][-1]["out_features"] = int(y.max()) + 1
    spec["train"]["data"] = {"dataset": "npz", "path": f"{name}.npz", **data}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["train", str(path), "--epochs", str(epochs), "--out", str(tmp_path / name), "--quiet"]) == 0
    capsys.readouterr()
    return path, tmp_path / name


def test_float_0_255_training_data_matches_png_inputs(tmp_path, capsys):
    """Float pixels in 0..255 are trained in [0, 1] units, so a PNG of the same image predicts the same."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 1, 8, 8), dtype=np.uint8)
    spec, run = _npz_run(tmp_path, capsys, x.astype(np.float32), np.arange(60) % 3)
    png = tmp_path / "a.png"
    Image.fromarray(x[0, 0]).save(png)
    np.save(tmp_path / "a.npy", x[:1].astype(np.float64))
    assert main(["predict", str(spec), "--checkpoint", str(run), str(png), str(tmp_path / "a.npy"),
                 "--format", "json"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out)
    assert res[0]["probabilities"] == pytest.approx(res[1]["probabilities"], abs=1e-5)
    assert "warning" not in err and "scaled by 1/255" in err    # the .npy of 0..255 floats too


def test_pixels_as_is_model_reads_npy_inputs_as_they_are_uint8_too(tmp_path, capsys):
    """A model trained with train.data.pixels: as_is on uint8 data saw 0..255: predict and explain must feed
    a uint8 .npy the same numbers (not /255), as a float .npy of them."""
    x = np.random.default_rng(0).integers(0, 256, (60, 1, 8, 8), dtype=np.uint8)
    spec, run = _npz_run(tmp_path, capsys, x, np.arange(60) % 3, pixels="as_is")
    np.save(tmp_path / "u.npy", x[:2])
    np.save(tmp_path / "f.npy", x[:2].astype(np.float32))
    assert main(["predict", str(spec), "--checkpoint", str(run), str(tmp_path / "u.npy"), str(tmp_path / "f.npy"),
                 "--format", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["probabilities"] for r in res[:2]] == [r["probabilities"] for r in res[2:]]
    from cnngraph import load_spec
    from cnngraph.train.checkpoint import read_meta
    from cnngraph.viz.explain import load_input, preprocessing
    prep = preprocessing(load_spec(spec), read_meta(run / "checkpoint" / "best"))
    raw, _ = load_input(str(tmp_path / "u.npy"), load_spec(spec), prep)
    np.testing.assert_array_equal(raw, x[:1].astype(np.float32))


def test_a_checkpoint_without_pixel_range_gets_npy_inputs_as_they_are(tmp_path, capsys):
    """Checkpoints written before the 8-bit rule (no dataset.pixel_range) were trained on float data as it
    was: predict and explain must not rescale a .npy of such numbers now."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 200, (60, 1, 8, 8)).astype(np.float32)
    spec, run = _npz_run(tmp_path, capsys, x, np.arange(60) % 3)
    for which in ("best", "last"):
        path = run / "checkpoint" / which / "meta.json"
        record = json.loads(path.read_text())
        del record["meta"]["dataset"]["pixel_range"]
        path.write_text(json.dumps(record))
    np.save(tmp_path / "a.npy", x[:1])
    assert main(["predict", str(spec), "--checkpoint", str(run), str(tmp_path / "a.npy")]) == 0
    assert "1/255" not in capsys.readouterr().err
    assert main(["explain", str(spec), "--checkpoint", str(run), "--image", str(tmp_path / "a.npy"), "-o",
                 str(tmp_path / "e.png")]) == 0
    assert "1/255" not in capsys.readouterr().err


def test_predict_and_explain_warn_when_images_do_not_match_the_training_pixels(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 1, 8, 8)).astype(np.float32)      # already standardised: negatives
    spec, run = _npz_run(tmp_path, capsys, x, np.arange(60) % 3)
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    assert main(["predict", str(spec), "--checkpoint", str(run), str(png)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: the model was trained on pixel values in [") and "a.png" in err
    assert err.count("\n") == 1
    np.save(tmp_path / "a.npy", x[:1])    # in the training data's units: nothing to say
    assert main(["predict", str(spec), "--checkpoint", str(run), str(tmp_path / "a.npy")]) == 0
    assert capsys.readouterr().err == ""
    np.save(tmp_path / "b.npy", np.abs(x[:1]) * 50)    # kept as it is (no 8-bit reading for such a model), but far out
    assert main(["predict", str(spec), "--checkpoint", str(run), str(tmp_path / "b.npy")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: '") and "b.npy' holds values in [" in err and "far outside the training data's" in err
    assert "1/255" not in err and err.count("\n") == 1
    assert main(["explain", str(spec), "--checkpoint", str(run), "--image", str(png), "-o",
                 str(tmp_path / "e.png")]) == 0
    assert "warning: the model was trained on pixel values" in capsys.readouterr().err


def _trained_run(tmp_path, capsys, classes: int, data: dict):
    """SPEC with ``classes`` outputs trained 30 epochs on ``data`` into tmp_path/r; returns the spec's path."""
    spec = json.loads(json.dumps(SPEC))
    spec["layers"][-1]["out_features"] = classes
    spec["train"]["data"] = data
    path = tmp_path / "net.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["train", str(path), "--epochs", "30", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    capsys.readouterr()
    return path


def _colour_folders(root, colours: dict, n=6):
    for c, colour in colours.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (8, 8), colour).save(root / c / f"{i}.png")


def test_evaluate_image_folder_matches_class_folders_by_name(tmp_path, capsys):
    """Held-out class folders are matched to the checkpoint's class names, not to their sorted
    position: a folder with some of the classes works, an unknown name is refused naming the known ones."""
    _colour_folders(tmp_path / "train", {"a_dark": 20, "b_mid": 120, "c_bright": 240})
    path = _trained_run(tmp_path, capsys, 3, {"dataset": "image_folder", "path": "train", "val_fraction": 0})
    _colour_folders(tmp_path / "held", {"c_bright": 240})       # position 0 here, class 2 in the checkpoint
    assert main(["evaluate", str(path), "--checkpoint", str(tmp_path / "r"), "--data",
                 f"image_folder:{tmp_path / 'held'}", "--format", "json", "--out", str(tmp_path)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["classes"] == ["a_dark", "b_mid", "c_bright"] and res["per_class"]["support"] == [0, 0, 6]
    assert res["test_accuracy"] == 1.0
    _colour_folders(tmp_path / "other", {"b_mid": 120, "C_bright": 240})
    assert main(["evaluate", str(path), "--checkpoint", str(tmp_path / "r"), "--data",
                 f"image_folder:{tmp_path / 'other'}"]) == 1
    err = capsys.readouterr().err
    assert "class 'C_bright' is not among the checkpoint's classes" in err and "a_dark, b_mid, c_bright" in err
    assert "Traceback" not in err


def test_evaluate_named_folders_with_a_checkpoint_of_unnamed_classes_takes_positions(tmp_path, capsys):
    """A model trained on an npz without class names has classes '0', '1': held-out class folders have
    no names to match there, so they are taken in sorted order (as before name matching), with a note."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.full((12, 1, 8, 8), 0.1), np.full((12, 1, 8, 8), 0.9)]).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x + rng.normal(0, 0.01, x.shape).astype(np.float32), y=np.repeat([0, 1], 12))
    path = _trained_run(tmp_path, capsys, 2, {"dataset": "npz", "path": "d.npz", "val_fraction": 0})
    _colour_folders(tmp_path / "held", {"dark": 25, "light": 230})
    assert main(["evaluate", str(path), "--checkpoint", str(tmp_path / "r"), "--data",
                 f"image_folder:{tmp_path / 'held'}", "--format", "json", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "classes dark, light are taken in their sorted order, as classes 0 to 1" in err
    assert json.loads(out)["per_class"]["support"] == [6, 6]


@pytest.mark.parametrize("flag, written", [([], [1, 3]), (["--checkpoint-interval", "0"], [1, 2, 3])])
def test_checkpoint_interval_flag_overrides_the_spec(tmp_path, monkeypatch, flag, written):
    from cnngraph.train import checkpoint as ckpt_mod
    tags, real = [], ckpt_mod.CheckpointWriter.submit
    monkeypatch.setattr(ckpt_mod.CheckpointWriter, "submit", lambda self, saves, tag=None: tags.append(tag) or
                        real(self, saves, tag))
    spec = tmp_path / "net.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "train": {**SPEC.get("train", {}), "checkpoint_interval": 1e9}}))
    assert main(["train", str(spec), "--epochs", "3", "--out", str(tmp_path / "r"), "--quiet", *flag]) == 0
    assert tags == written


def test_a_bad_checkpoint_interval_is_refused(tmp_path, capsys):
    import cnngraph
    from cnngraph.train.settings import TrainingError
    with pytest.raises(SystemExit) as exc:
        main(["train", "specs/digits_cnn.yaml", "--checkpoint-interval", "-1"])
    assert exc.value.code == 2 and "expected a finite number >= 0, found -1" in capsys.readouterr().err
    with pytest.raises(TrainingError, match=r"checkpoint_interval must be a number of seconds >= 0 .*found 'often'"):
        cnngraph.train("specs/digits_cnn.yaml", out=tmp_path / "r", checkpoint_interval="often")
