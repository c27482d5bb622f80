"""Regression training from the CLI: npz value targets, mse, mae/rmse metrics checked against NumPy,
evaluate and predict of a regression checkpoint, and the errors a wrong setup gets."""
import json

import numpy as np
import pytest

import cnngraph
from cnngraph.cli import main
from cnngraph.errors import DataError, SpecError
from cnngraph.train.data import DataConfig, load_dataset
from cnngraph.train.loop import TrainingError


def blobs(n=240, seed=0):
    """16x16 images of one bright blob; the target is its centre (row, column) scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16]
    c = rng.uniform(2, 13, (n, 2))
    x = np.exp(-((yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2) / 4.0)
    return x[:, None].astype(np.float32), (c / 15).astype(np.float32)


def spec(**train):
    t = {"data": {"dataset": "npz", "path": "blobs.npz", "test_fraction": 0.2},
         "loss": {"type": "mse", "output": "position"}, "optimizer": {"type": "adam", "lr": 0.005},
         "batch_size": 32, "epochs": 12, "seed": 0}
    t.update(train)
    return {"name": "blob", "inputs": {"image": {"shape": [1, 16, 16]}},
            "layers": [{"id": "conv", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
                       {"id": "act", "type": "relu"}, {"id": "pool", "type": "max_pool2d", "kernel_size": 2},
                       {"id": "flat", "type": "flatten"}, {"id": "fc", "type": "dense", "out_features": 32},
                       {"id": "act2", "type": "relu"}, {"id": "position", "type": "dense", "out_features": 2}],
            "outputs": ["position"], "train": t}


@pytest.fixture
def folder(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "blobs.npz", x=x, y=y)
    (tmp_path / "blob.json").write_text(json.dumps(spec()))
    return tmp_path


def test_value_targets_are_found_or_declared_and_split_without_classes(tmp_path):
    x, y = blobs(40)
    np.savez(tmp_path / "v.npz", x=x, y=y)
    ds = load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "v.npz")), (1, 16, 16))
    assert ds.values and not ds.dense and ds.classes == [] and ds.train[1].dtype == np.float32
    assert len(ds.train[1]) + len(ds.val[1]) == 40 and ds.val[1].shape[1:] == (2,)
    np.savez(tmp_path / "ints.npz", x=x, y=np.arange(40) % 7)       # whole numbers: classes unless declared
    assert not load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "ints.npz")), (1, 16, 16)).values
    ds = load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "ints.npz"), targets="values"), (1, 16, 16))
    assert ds.values and ds.train[1].dtype == np.float32
    np.savez(tmp_path / "v1.npz", x=x, y=y[:, 0])
    with pytest.raises(DataError, match="found non-integral float values \\(values to regress: set "
                                        "train.data.targets: values\\)"):
        load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "v1.npz"), targets="classes"), (1, 16, 16))
    with pytest.raises(ValueError, match="targets: values \\(regression\\) needs your own data"):
        DataConfig(dataset="digits", targets="values")


def test_train_evaluate_predict_a_regression(folder, capsys):
    run = folder / "run"
    assert main(["train", str(folder / "blob.json"), "--out", str(run), "--quiet"]) == 0
    assert "test loss" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_metric"] == "val_loss" and metrics["test_accuracy"] is None
    assert metrics["test_mae"] < 0.05 and {"train_mae", "val_mae", "val_rmse"} <= set(metrics["history"][-1])
    assert (run / "curves.png").is_file()

    # mae and rmse of a held-out file against NumPy on the model's own outputs
    x, y = blobs(50, seed=9)
    np.savez(folder / "held.npz", x=x, y=y)
    assert main(["evaluate", str(folder / "blob.json"), "--checkpoint", str(run), "--data",
                 f"npz:{folder / 'held.npz'}", "--format", "json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    model = cnngraph.load_model(run)
    stats = model.checkpoint_meta["dataset"]
    pred = np.asarray(model.forward({"image": (x - np.float32(stats["mean"][0])) / np.float32(stats["std"][0])})
                      ["position"], np.float64)
    err = pred - y
    assert ev["samples"] == 50
    assert ev["test_mae"] == pytest.approx(np.abs(err).mean(), rel=1e-4)
    assert ev["test_rmse"] == pytest.approx(np.sqrt((err ** 2).mean()), rel=1e-4)
    assert ev["test_loss"] == pytest.approx((err ** 2).mean(), rel=1e-3)

    np.save(folder / "few.npy", x[:3])
    assert main(["predict", str(folder / "blob.json"), "--checkpoint", str(run), str(folder / "few.npy"),
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose([r["values"] for r in out], pred[:3], rtol=1e-5, atol=1e-6)

    np.save(folder / "one.npy", x[:1])
    assert main(["explain", str(folder / "blob.json"), "--checkpoint", str(run), "--image", str(folder / "one.npy"),
                 "--gradcam", "--class", "1", "-o", str(folder / "cam.png")]) == 0
    assert f"for output value 1 (= {pred[0, 1]:.4g}" in capsys.readouterr().out


def test_a_regression_setup_that_cannot_work_is_named(folder):
    wrong = spec()
    wrong["layers"][-1]["out_features"] = 3
    with pytest.raises(TrainingError, match=r"targets are values of shape \(2,\) per sample, so loss output "
                                            r"'position' must give 2 value\(s\); it has per-sample shape \(3,\)"):
        cnngraph.train(cnngraph.load_spec(_write(folder, wrong)), out=folder / "r", quiet=True)
    stop = spec(early_stopping={"metric": "val_accuracy"})
    with pytest.raises(SpecError, match="unknown early-stopping metric 'val_accuracy' for values to regress; "
                                        "expected one of train_loss, train_mae, val_loss, val_mae, val_rmse"):
        cnngraph.train(cnngraph.load_spec(_write(folder, stop)), out=folder / "r", quiet=True)


def _write(folder, s):
    path = folder / "s.json"
    path.write_text(json.dumps(s))
    return path


def test_error_metrics_stop_early_downwards_and_bce_values_are_probabilities(folder, capsys):
    """val_mae is an error: lower is better. A binary_cross_entropy regression (multi-label 0/1) reports
    its metrics and predictions as probabilities, not logits."""
    from cnngraph.train.config import EarlyStopping
    assert not EarlyStopping(metric="val_mae").maximize and not EarlyStopping(metric="val_rmse").maximize
    assert EarlyStopping(metric="val_mean_iou").maximize
    x, _ = blobs(200)
    labels = (x.reshape(200, -1).max(axis=1, keepdims=True) > np.array([[0.5, 0.8, 0.95]])).astype(np.float32)
    np.savez(folder / "multi.npz", x=x, y=labels)
    s = spec(loss={"type": "binary_cross_entropy", "output": "position"}, epochs=6,
             data={"dataset": "npz", "path": "multi.npz", "targets": "values", "test_fraction": 0.2})
    s["layers"][-1]["out_features"] = 3
    run = folder / "multi"
    assert main(["train", str(_write(folder, s)), "--out", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test_mae"] <= 1                          # errors of probabilities, never of logits
    np.save(folder / "one.npy", x[:2])
    capsys.readouterr()
    assert main(["predict", str(folder / "s.json"), "--checkpoint", str(run), str(folder / "one.npy"),
                 "--format", "json"]) == 0
    values = np.array([r["values"] for r in json.loads(capsys.readouterr().out)])
    assert ((values >= 0) & (values <= 1)).all()


def test_regression_losses_that_do_not_fit_the_values_are_refused(folder):
    for loss, match in (("binary_cross_entropy", r"takes target values in \[0, 1\].*use mse"),
                        ("cross_entropy", r"targets are values to regress, but loss 'cross_entropy' takes class labels")):
        s = spec(loss={"type": loss, "output": "position"})
        with pytest.raises((DataError, TrainingError), match=match):
            x, y = blobs()
            np.savez(folder / "wide.npz", x=x, y=y * 15)          # positions in pixels, beyond [0, 1]
            s["train"]["data"]["path"] = "wide.npz"
            cnngraph.train(cnngraph.load_spec(_write(folder, s)), out=folder / "r", quiet=True)


def test_value_maps_move_with_geometric_augmentation():
    """A regression target that is an image-sized map (denoising, depth) moves with its image."""
    from cnngraph.train.augment import build_augmentations
    rng = np.random.default_rng(1)
    clean = rng.random((6, 1, 10, 10)).astype(np.float32)
    aug = build_augmentations([{"type": "random_shift", "pixels": 2}, {"type": "horizontal_flip"}])
    xa, ya = aug(clean.copy(), np.random.default_rng(4), maps=clean.copy())
    np.testing.assert_array_equal(xa, ya)


def test_one_hot_targets_with_class_weights_report_torchs_loss():
    torch = pytest.importorskip("torch")
    from cnngraph.train.evaluate import evaluate_arrays
    from cnngraph.train.settings import prepare_loss
    rng = np.random.default_rng(0)
    spec_ = {"name": "oh", "inputs": {"image": {"shape": [4]}}, "outputs": ["logits"],
             "layers": [{"id": "logits", "type": "dense", "out_features": 3}],
             "train": {"loss": {"type": "cross_entropy", "output": "logits", "weight": [0.5, 2.0, 1.0],
                                "target": "one_hot"}}}
    model = cnngraph.compile(spec_, dtype="float64")
    x, y = rng.standard_normal((50, 4)), rng.integers(0, 3, 50)
    acc = evaluate_arrays(model, "image", x, y, prepare_loss(model.spec, model.spec.train, 3), 7)
    s = torch.from_numpy(np.asarray(model.forward({"image": x})["logits"]))
    ref = torch.nn.functional.cross_entropy(s, torch.nn.functional.one_hot(torch.from_numpy(y), 3).double(),
                                            weight=torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64))
    assert acc.loss == pytest.approx(ref.item(), rel=1e-12)


def test_value_maps_without_a_channel_axis_move_with_their_images(tmp_path):
    """(N, H, W) targets of the image's size are maps too: a flip moves them with the image."""
    rng = np.random.default_rng(2)
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=x[:, 0] * np.float32(0.5) + np.float32(0.01))
    spec_ = {"name": "den", "inputs": {"image": {"shape": [1, 8, 8]}}, "outputs": ["out"],
             "layers": [{"id": "out", "type": "conv2d", "out_channels": 1, "kernel_size": 1}],
             "train": {"data": {"dataset": "npz", "path": str(tmp_path / "d.npz"), "normalize": "none"},
                       "loss": {"type": "mse", "output": "out"}, "optimizer": {"type": "adam", "lr": 0.05},
                       "augment": [{"type": "horizontal_flip"}, {"type": "random_shift", "pixels": 1}],
                       "batch_size": 8, "epochs": 30}}
    hist = cnngraph.train(spec_, out=tmp_path / "r", quiet=True)
    assert hist[-1]["val_mae"] < 0.01          # y = 0.5 x + 0.01 pixel by pixel is learnt only if y moves with x


def test_bundled_digit_rotations_are_fixed_and_learnable(tmp_path):
    """digits_rotation: digits turned by known angles; the angle / 45 is the target, in [-1, 1]."""
    ds = load_dataset(DataConfig(dataset="digits_rotation"), (1, 8, 8))
    assert ds.values and [len(s[1]) for s in (ds.train, ds.val, ds.test)] == [1077, 270, 450]
    assert ds.train[1].shape == (1077, 1) and -1 <= ds.train[1].min() < -0.9 and 0.9 < ds.train[1].max() <= 1
    again = load_dataset(DataConfig(dataset="digits_rotation"), (1, 8, 8))
    np.testing.assert_array_equal(again.test[1], ds.test[1])
    hist = cnngraph.train("specs/digits_rotation.yaml", epochs=6, out=tmp_path / "r", quiet=True)
    baseline = float(np.abs(ds.test[1] - ds.train[1].mean()).mean())       # always guessing the mean angle
    assert hist.test["test_mae"] < 0.5 * baseline, (hist.test, baseline)
