"""1-D models (input (C, L)): training, evaluate, predict and explain from the CLI, sequence data and augmentation,
and the refusals of image-only datasets and augmentations."""
import importlib.util
import json

import numpy as np
import pytest
import yaml

from cnngraph import SpecError, load_spec
from cnngraph.cli import main
from cnngraph.errors import DataError
from cnngraph.train.augment import build_augmentations
from cnngraph.train.data import load_dataset
from cnngraph.train.evaluate import load_model

SPEC = "specs/examples/waves1d.yaml"
_make = importlib.util.spec_from_file_location("make_waves", "specs/examples/make_waves.py")
make_waves = importlib.util.module_from_spec(_make)
_make.loader.exec_module(make_waves)


def _spec(tmp_path, shape=(1, 64), train=None, name="seq.yaml"):
    """The example's layers on an input of ``shape``, with ``train`` as its train: section."""
    raw = yaml.safe_load(open(SPEC))
    raw["inputs"]["signal"]["shape"] = list(shape)
    if train is None:
        raw.pop("train")
    else:
        raw["train"] = train
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The example spec trained through the CLI on freshly generated waves."""
    d = tmp_path_factory.mktemp("waves")
    x, y = make_waves.waves(600)
    np.savez(d / "waves.npz", x=x, y=y, classes=np.array(make_waves.CLASSES))
    assert main(["train", SPEC, "--data", f"npz:{d / 'waves.npz'}", "--out", str(d / "run"), "--quiet"]) == 0
    return d


def test_the_example_learns_the_waves_and_writes_a_run(run, capsys):
    m = json.loads((run / "run" / "metrics.json").read_text())
    assert m["test_accuracy"] >= 0.9 and m["classes"] == make_waves.CLASSES and len(m["history"]) == 8
    assert m["history"][-1]["val_accuracy"] >= 0.9
    assert (run / "run" / "curves.png").is_file()
    stats = load_model(run / "run").checkpoint_meta["dataset"]
    assert len(stats["mean"]) == len(stats["std"]) == 1


def test_evaluate_on_its_test_split_and_on_a_channels_last_file(run, capsys, tmp_path):
    assert main(["evaluate", SPEC, "--checkpoint", str(run / "run"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "120 sequences" in out and "confusion matrix of sequences" in out and "sawtooth" in out
    assert (tmp_path / "confusion.png").is_file()
    x, y = make_waves.waves(90, seed=5)
    np.savez(tmp_path / "held_out.npz", x=np.moveaxis(x, 1, 2), y=y, classes=np.array(make_waves.CLASSES))
    assert main(["evaluate", SPEC, "--checkpoint", str(run / "run"), "--data", f"npz:{tmp_path / 'held_out.npz'}",
                 "--format", "json", "--out", str(tmp_path)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["samples"] == 90 and res["test_accuracy"] >= 0.9


def test_predict_npy_sequences_in_every_layout(run, capsys, tmp_path):
    x, y = make_waves.waves(6, seed=7)
    np.save(tmp_path / "batch.npy", x)                    # (N, C, L)
    np.save(tmp_path / "one.npy", x[0])                   # (C, L)
    np.save(tmp_path / "flat.npy", x[:, 0])               # (N, L), C == 1
    np.save(tmp_path / "last.npy", np.moveaxis(x, 1, 2))  # (N, L, C)
    files = [str(tmp_path / f) for f in ("batch.npy", "one.npy", "flat.npy", "last.npy")]
    assert main(["predict", SPEC, "--checkpoint", str(run / "run"), *files, "--format", "json"]) == 0
    got = [r["index"] for r in json.loads(capsys.readouterr().out)]
    assert got == list(y) + [y[0]] + list(y) * 2
    assert main(["predict", SPEC, "--checkpoint", str(run / "run"), "docs/images/digit3.png"]) == 1
    err = capsys.readouterr().err
    assert "the model's input is a sequence (C, L) = (1, 64); expected an .npy file" in err
    assert "warning" not in err                           # no word about image pixel units
    np.save(tmp_path / "wrong.npy", x[:, :, :32])
    assert main(["predict", SPEC, "--checkpoint", str(run / "run"), str(tmp_path / "wrong.npy")]) == 1
    # every layout predict reads is named, channels last included
    assert ("expected an array of shape (N, 1, 64), (1, 64), (N, 64, 1), (64, 1), (64,) or (N, 64)"
            in capsys.readouterr().err)


def test_explain_draws_sequences_as_curves(run, capsys, tmp_path):
    x, y = make_waves.waves(3, seed=3)
    np.save(tmp_path / "x.npy", x)
    base = ["explain", SPEC, "--checkpoint", str(run / "run")]
    assert main(base + ["--image", str(tmp_path / "x.npy"), "--index", "1", "--gradcam", "-o", str(tmp_path / "g.png")]) == 0
    assert f"Grad-CAM at act2 for class {make_waves.CLASSES[y[1]]} (predicted)" in capsys.readouterr().out
    assert main(base + ["--image", str(tmp_path / "x.npy"), "-o", str(tmp_path / "m.png")]) == 0
    assert "8 maps of conv1" in capsys.readouterr().out
    assert main(base + ["--filters", "--layer", "conv2", "-o", str(tmp_path / "f.png")]) == 0
    for name in ("g.png", "m.png", "f.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_gradcam_of_a_sequence_is_a_curve_over_l(run, tmp_path):
    from cnngraph.viz import explain as ex
    model = load_model(run / "run")
    prep = ex.preprocessing(model.spec, model.checkpoint_meta)
    x, _ = make_waves.waves(1, seed=4)
    res = ex.gradcam(model, prep.apply(x))
    assert res["layer"] == "act2" and res["raw_cam"].shape == (32,)
    assert res["cam"].shape == res["saliency"].shape == (64,) and res["cam"].max() == pytest.approx(1.0)


def test_resume_of_a_sequence_run_is_bit_for_bit(tmp_path):
    x, y = make_waves.waves(200)
    np.savez(tmp_path / "w.npz", x=x, y=y)
    spec = _spec(tmp_path, train={"data": {"dataset": "npz", "path": "w.npz"}, "epochs": 4, "batch_size": 32,
                                  "optimizer": {"type": "adam", "lr": 0.01},
                                  "augment": [{"type": "random_crop", "padding": 3}, {"type": "random_noise"}]})
    assert main(["train", str(spec), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["train", str(spec), "--epochs", "2", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert main(["train", str(spec), "--resume", str(tmp_path / "b"), "--epochs", "4", "--quiet"]) == 0
    a, b = (load_model(tmp_path / r, which="last").params.numpy() for r in ("a", "b"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_sequence_regression_learns_its_values(tmp_path, capsys):
    x, _ = make_waves.waves(400)
    level = np.abs(x).mean(axis=(1, 2)).astype(np.float32)            # the mean level of each wave
    np.savez(tmp_path / "r.npz", x=x, y=level)
    raw = yaml.safe_load(open(SPEC))
    raw["layers"][-1]["out_features"] = 1
    raw["train"] = {"data": {"dataset": "npz", "path": "r.npz", "test_fraction": 0.2}, "loss": {"type": "mse"},
                    "optimizer": {"type": "adam", "lr": 0.01}, "epochs": 8, "batch_size": 32}
    spec = tmp_path / "r.yaml"
    spec.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["train", str(spec), "--out", str(tmp_path / "run")]) == 0
    log = capsys.readouterr().err
    assert " seq/s " in log and "img/s" not in log       # the epoch lines count sequences
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["test_mae"] < 0.3 * np.abs(level - level.mean()).mean()   # far better than guessing the mean
    np.save(tmp_path / "x.npy", x[:2])
    capsys.readouterr()
    assert main(["predict", str(spec), "--checkpoint", str(tmp_path / "run"), str(tmp_path / "x.npy"),
                 "--format", "json"]) == 0
    got = [r["values"][0] for r in json.loads(capsys.readouterr().out)]
    assert got == pytest.approx(level[:2], abs=0.15)


# ----------------------------------------------------------------------------------------- data

def test_channels_last_and_channel_free_files_read_as_ncl(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (40, 2, 16)).astype(np.float32) * np.array([1, 10], np.float32)[:, None]
    y = np.arange(40) % 2
    cfg = {"dataset": "npz", "path": str(tmp_path / "d.npz"), "val_fraction": 0.0}
    np.savez(tmp_path / "d.npz", x=x, y=y)
    first = load_dataset(cfg, (2, 16))
    np.savez(tmp_path / "d.npz", x=np.moveaxis(x, 1, 2), y=y)       # (N, L, C)
    last = load_dataset(cfg, (2, 16))
    assert np.array_equal(first.train[0], last.train[0]) and first.samples == "sequences"
    # per channel over N and L
    assert first.mean == pytest.approx(x.mean(axis=(0, 2)), rel=1e-5)
    assert first.std == pytest.approx(x.std(axis=(0, 2)), rel=1e-5)
    assert np.abs(first.train[0].mean(axis=(0, 2))).max() < 1e-5
    with pytest.raises(DataError, match=r"expected sequences of shape \(N, 2, 16\) \(NCL\) for the model's "
                                        r"input_shape \(2, 16\), found shape \(40, 16, 2\)"):
        load_dataset({**cfg, "layout": "ncl"}, (2, 16))   # channels first only
    assert np.array_equal(load_dataset({**cfg, "layout": "nlc"}, (2, 16)).train[0], first.train[0])
    with pytest.raises(DataError, match=r"layout nhwc is for images; the model's input_shape \(2, 16\) takes ncl or nlc"):
        load_dataset({**cfg, "layout": "nhwc"}, (2, 16))
    np.savez(tmp_path / "d.npz", x=x[:, :1], y=y)
    one = load_dataset(cfg, (1, 16)).train[0]
    np.savez(tmp_path / "d.npz", x=x[:, 0], y=y)                    # (N, L) for C == 1
    assert np.array_equal(load_dataset(cfg, (1, 16)).train[0], one) and one.shape == (40, 1, 16)
    with pytest.raises(DataError, match=r"expected sequences of shape \(N, 3, 16\) \(NCL\) or \(N, 16, 3\) \(NLC\) "
                                        r"for the model's input_shape \(3, 16\), found shape \(40, 16\)"):
        load_dataset(cfg, (3, 16))


def test_sequences_have_no_pixel_units(tmp_path):
    """Numbers in 0..255 are no 8-bit pixels in a sequence (only uint8 is scaled), and 8bit is refused."""
    x = np.linspace(0, 200, 30 * 8, dtype=np.float32).reshape(30, 1, 8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 2)
    cfg = {"dataset": "npz", "path": str(tmp_path / "d.npz"), "normalize": "none", "val_fraction": 0.0}
    ds = load_dataset(cfg, (1, 8))
    assert ds.pixel_range == (0.0, 200.0) and not ds.notes
    np.savez(tmp_path / "d.npz", x=x.astype(np.uint8), y=np.arange(30) % 2)
    assert load_dataset(cfg, (1, 8)).train[0].max() <= 1.0
    with pytest.raises(DataError, match="pixels: 8bit is for images; the model's input is a sequence"):
        load_dataset({**cfg, "pixels": "8bit"}, (1, 8))


def test_per_step_labels_load_as_masks_and_one_hot_labels_are_named(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 1, 8), np.float32), y=np.ones((10, 8), np.int64))
    ds = load_dataset({"dataset": "npz", "path": str(tmp_path / "d.npz"), "val_fraction": 0.0}, (1, 8))
    assert ds.dense and ds.train[1].shape == (10, 8)
    np.savez(tmp_path / "e.npz", x=np.zeros((10, 1, 8), np.float32), y=np.zeros((10, 3, 2), np.int64))
    with pytest.raises(DataError, match=r"expected a 1-D vector of integer class labels or masks of shape \(N, 8\) "
                                        r"\(one class per step\), found shape \(10, 3, 2\)"):
        load_dataset({"dataset": "npz", "path": str(tmp_path / "e.npz")}, (1, 8))


@pytest.mark.parametrize("dataset", ["digits", "mnist", "cifar10", "image_folder"])
def test_image_datasets_refuse_a_sequence_input(dataset, tmp_path):
    with pytest.raises(DataError, match=rf"dataset '{dataset}' holds images \(C, H, W\) but the model's input is a "
                                        r"sequence \(C, L\) = \(1, 64\); train sequences on your own data: "
                                        r"dataset: npz"):
        load_dataset({"dataset": dataset, "path": str(tmp_path)}, (1, 64))


def test_train_with_an_image_dataset_is_refused_at_validation_and_from_the_cli(tmp_path, capsys):
    spec = _spec(tmp_path, train={"epochs": 1, "data": {"dataset": "mnist", "path": "somewhere"}})
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    text = str(e.value)
    assert f"{spec}:" in text and "train.data.dataset: dataset 'mnist' holds images (C, H, W)" in text
    spec = _spec(tmp_path, train={"epochs": 1}, name="default.yaml")      # the digits by default
    assert main(["validate", str(spec)]) == 1
    assert "train.data.dataset: train.data defaults to the bundled digits: dataset 'digits' holds images" in \
        capsys.readouterr().out
    bare = _spec(tmp_path, name="bare.yaml")                               # no train: section at all
    assert main(["train", str(bare), "--data", "digits", "--quiet"]) == 1
    assert "error: dataset 'digits' holds images (C, H, W) but the model's input is a sequence" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- augmentation

@pytest.mark.parametrize("kind", ["random_rotation", "random_scale", "horizontal_flip"])
def test_image_augmentations_are_refused_for_sequences_with_their_place(kind, tmp_path):
    spec = _spec(tmp_path, train={"data": {"dataset": "npz", "path": "w.npz"},
                                  "augment": [{"type": "random_shift", "pixels": 2}, {"type": kind}]})
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    (problem,) = e.value.problems
    line = next(i for i, text in enumerate(spec.read_text().splitlines(), 1) if f"type: {kind}" in text)
    assert problem.path == "train.augment[1].type" and problem.line == line and problem.file == str(spec)
    assert (f"augmentation '{kind}' works on images, but the model's input is a sequence (C, L) = (1, 64)"
            in problem.message)
    assert problem.message.endswith("augmentations for sequences: random_crop, random_noise, random_shift, "
                                    "time_reversal")
    assert ("use time_reversal" in problem.message) == (kind == "horizontal_flip")


def test_a_shift_must_be_shorter_than_the_sequence(tmp_path):
    spec = _spec(tmp_path, train={"data": {"dataset": "npz", "path": "w.npz"},
                                  "augment": [{"type": "random_shift", "pixels": 63},
                                              {"type": "random_crop", "padding": 64}]})
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    (problem,) = e.value.problems
    assert problem.path == "train.augment[1].padding"
    assert "padding (64) must be less than the sequence's length (at most 63 for the input (1, 64))" in problem.message


def test_time_reversal_is_for_sequences_only(tmp_path):
    spec = _spec(tmp_path, shape=(1, 8, 8), train={"augment": ["time_reversal"]})
    with pytest.raises(SpecError, match=r"augmentation 'time_reversal' works on sequences, but the model's input is "
                                        r"an image \(C, H, W\) = \(1, 8, 8\)"):
        load_spec(spec)


def test_sequence_augmentations_move_along_l():
    x = np.arange(2 * 2 * 6, dtype=np.float32).reshape(2, 2, 6)
    out = build_augmentations([{"type": "random_shift", "pixels": 2}], background=[-1.0, -2.0])(
        x, np.random.default_rng(0))
    for n in range(2):   # each sample shifted by one whole offset along L, the per-channel background coming in
        d = next(d for d in range(-2, 3) if np.array_equal(out[n], _shifted(x[n], d, [-1.0, -2.0])))
        assert -2 <= d <= 2
    crop = build_augmentations([{"type": "random_crop", "padding": 1, "fill": "edge"}])(x, np.random.default_rng(1))
    assert crop.shape == x.shape and all(set(np.unique(crop[n])) <= set(np.unique(x[n])) for n in range(2))
    rev = build_augmentations([{"type": "time_reversal", "p": 1.0}])(x, np.random.default_rng(0))
    assert np.array_equal(rev, x[..., ::-1])
    noise = build_augmentations([{"type": "random_noise", "std": 0.5}])(
        np.zeros((64, 2, 100), np.float32), np.random.default_rng(0))
    assert noise.dtype == np.float32 and noise.std() == pytest.approx(0.5, rel=0.02)


def _shifted(s, d, bg):
    out = np.empty_like(s)
    for c in range(len(s)):
        out[c] = np.roll(s[c], d)
        if d > 0:
            out[c, :d] = bg[c]
        elif d < 0:
            out[c, d:] = bg[c]
    return out


def test_per_step_value_targets_move_with_their_sequences():
    x = np.arange(4 * 10, dtype=np.float32).reshape(4, 1, 10)
    moved, maps = build_augmentations([{"type": "random_shift", "pixels": 3}])(x, np.random.default_rng(2),
                                                                              maps=x[:, 0].copy())
    assert maps.shape == (4, 10) and np.array_equal(moved[:, 0], maps)


def test_explain_refuses_per_step_sequence_outputs_naming_them():
    """A sequence model whose output is one value per step (K, L) has no class scores to explain: the
    message says so and lists the outputs with their shapes."""
    import cnngraph
    from cnngraph.errors import CnnGraphError
    from cnngraph.viz.explain import class_output
    model = cnngraph.compile({"name": "step", "inputs": {"s": {"shape": [2, 16]}},
                              "layers": [{"id": "c", "type": "conv1d", "out_channels": 1, "kernel_size": 3,
                                          "padding": 1}], "outputs": ["c"]})
    with pytest.raises(CnnGraphError, match=r"per-step outputs of sequences \(K, L\).*outputs: c \(1, 16\)"):
        class_output(model)


def _segmented(tmp_path, n=240, length=48):
    """Sequences with a burst (class 1) and a step (class 2) somewhere, labelled per step."""
    rng = np.random.default_rng(0)
    x = 0.2 * rng.standard_normal((n, 1, length)).astype(np.float32)
    y = np.zeros((n, length), np.int64)
    for i in range(n):
        s = rng.integers(0, length - 24)
        x[i, 0, s:s + 10] += 1.5 * np.sin(np.arange(10) * 1.5)
        y[i, s:s + 10] = 1
        x[i, 0, s + 14:s + 20] += 1.0
        y[i, s + 14:s + 20] = 2
    np.savez(tmp_path / "seg.npz", x=x, y=y, classes=np.array(["background", "burst", "step"]))
    spec = {"name": "seg1d", "inputs": {"s": {"shape": [1, length]}},
            "layers": [{"id": "c1", "type": "conv1d", "out_channels": 12, "kernel_size": 5, "padding": 2},
                       {"id": "a1", "type": "relu"},
                       {"id": "c2", "type": "conv1d", "out_channels": 12, "kernel_size": 5, "padding": 2},
                       {"id": "a2", "type": "relu"},
                       {"id": "out", "type": "conv1d", "out_channels": 3, "kernel_size": 1}],
            "outputs": ["out"],
            "train": {"data": {"dataset": "npz", "path": str(tmp_path / "seg.npz"), "test_fraction": 0.2},
                      "optimizer": {"type": "adam", "lr": 0.01}, "augment": [{"type": "random_shift", "pixels": 3}],
                      "batch_size": 32, "epochs": 8}}
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "seg.yaml", x, y


def test_sequence_segmentation_trains_evaluates_and_predicts_per_step(tmp_path, capsys):
    """One class per step (N, L) labels: per-step cross_entropy, step accuracy and IoU, masks moved with shifts,
    predict --masks-out writes masks.npy."""
    path, x, y = _segmented(tmp_path)
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["test_mean_iou"] > 0.8 and summary["test_accuracy"] > 0.9
    assert "test step accuracy" in capsys.readouterr().out
    assert main(["evaluate", str(path), "--checkpoint", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "steps scored" in out and "confusion matrix of steps" in out
    np.save(tmp_path / "two.npy", x[:2])
    assert main(["predict", str(path), "--checkpoint", str(tmp_path / "run"), str(tmp_path / "two.npy"),
                 "--masks-out", str(tmp_path / "masks")]) == 0
    assert "two.npy[0]  steps: background" in capsys.readouterr().out
    masks = np.load(tmp_path / "masks" / "masks.npy")
    assert masks.shape == (2, 48) and (masks == y[:2]).mean() > 0.9


def test_shifts_move_per_step_masks_with_their_sequences():
    x = np.arange(2 * 10, dtype=np.float32).reshape(2, 1, 10)
    y = np.tile(np.arange(10) % 3, (2, 1))
    xs, ys = build_augmentations([{"type": "random_shift", "pixels": 2}])(x, np.random.default_rng(1), y)
    for i in range(2):
        kept = xs[i, 0] != 0
        assert np.array_equal(ys[i][kept], y[i][xs[i, 0][kept].astype(int) - 10 * i])


def test_per_step_labels_of_the_wrong_length_are_named(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((10, 1, 16), np.float32), y=np.zeros((10, 15), np.int64))
    with pytest.raises(DataError, match=r"expected masks of shape \(N, 16\) \(one class per step of the input\)"):
        load_dataset({"dataset": "npz", "path": str(tmp_path / "bad.npz")}, (1, 16))
