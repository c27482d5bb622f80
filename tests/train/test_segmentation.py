"""Segmentation training: per-pixel masks from npz and the bundled digit pairs, masks that move with
their images under augmentation, pixel metrics and IoU, and the CLI (train, evaluate, predict --masks-out)."""
import json

import numpy as np
import pytest
from PIL import Image

import cnngraph
from cnngraph.cli import main
from cnngraph.errors import DataError, SpecError
from cnngraph.train.augment import build_augmentations
from cnngraph.train.data import DataConfig, load_dataset
from cnngraph.train.metrics import MetricAccumulator, precision_recall
from cnngraph.train.settings import TrainingError

RNG = np.random.default_rng(7)


def seg_spec(classes=3, hw=(8, 8), **train):
    t = {"data": {"dataset": "npz", "path": "seg.npz"}, "loss": {"type": "cross_entropy", "output": "logits"},
         "optimizer": {"type": "adam", "lr": 0.01}, "batch_size": 16, "epochs": 2, "seed": 0}
    t.update(train)
    return {"name": "seg", "inputs": {"image": {"shape": [1, *hw]}},
            "layers": [{"id": "c1", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
                       {"id": "a1", "type": "relu"},
                       {"id": "logits", "type": "conv2d", "out_channels": classes, "kernel_size": 1}],
            "outputs": ["logits"], "train": t}


def squares(n=48, hw=8):
    """Images with a bright square (class 1) and a dim square (class 2) on a dark background."""
    x = np.zeros((n, 1, hw, hw), np.float32)
    y = np.zeros((n, hw, hw), np.int64)
    for i in range(n):
        for cls, value in ((1, 1.0), (2, 0.5)):
            r, c = RNG.integers(0, hw - 3, 2)
            x[i, 0, r:r + 3, c:c + 3] = value
            y[i, r:r + 3, c:c + 3] = cls
    return x, y


def test_npz_masks_load_in_both_layouts_and_bad_ones_are_named(tmp_path):
    x, y = squares(20)
    for masks in (y, y[:, None]):
        np.savez(tmp_path / "seg.npz", x=x, y=masks)
        ds = load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "seg.npz")), (1, 8, 8))
        assert ds.dense and ds.train[1].shape[1:] == (8, 8) and ds.val[1].shape[1:] == (8, 8)
        assert ds.classes == ["0", "1", "2"]
        assert len(ds.train[1]) + len(ds.val[1]) == 20
    np.savez(tmp_path / "bad.npz", x=x, y=y[:, :4])
    with pytest.raises(DataError, match=r"bad.npz' key 'y': expected masks of shape \(N, 8, 8\).*found shape \(20, 4, 8\)"):
        load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "bad.npz")), (1, 8, 8))
    np.savez(tmp_path / "mixed.npz", x=x, y=y, x_val=x[:3], y_val=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="mix class labels and masks"):
        load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "mixed.npz")), (1, 8, 8))


def test_augmented_masks_follow_their_images():
    x, y = squares(64)
    shift_flip = build_augmentations([{"type": "random_crop", "padding": 2}, {"type": "horizontal_flip"},
                                      {"type": "random_shift", "pixels": 1, "fill": "edge"}])
    xa, ya = shift_flip(x, np.random.default_rng(0), y)
    # exact moves: each pixel's class is still read off its grey level
    np.testing.assert_array_equal(ya, np.select([xa[:, 0] == 1.0, xa[:, 0] == 0.5], [1, 2], 0))
    assert not np.array_equal(ya, y)
    turn = build_augmentations([{"type": "random_rotation", "degrees": 30}, {"type": "random_scale"}])
    xa, ya = turn(x, np.random.default_rng(1), y)
    assert set(np.unique(ya)) <= {0, 1, 2} and ya.dtype == y.dtype
    nearest = np.select([xa[:, 0] > 0.75, xa[:, 0] > 0.25], [1, 2], 0)   # bilinear: compare away from edges
    assert (ya == nearest).mean() > 0.9
    # the images got the same draws as without masks
    np.testing.assert_array_equal(xa, turn(x, np.random.default_rng(1)))


def test_pixels_from_outside_the_image_are_class_0_in_the_masks():
    """Where most of a pixel comes from outside the image (zoomed out, turned corners), its class is 0, as
    the image there is mostly the blank fill."""
    x = np.ones((4, 1, 8, 8), np.float32)
    for aug in ({"type": "random_scale", "min": 0.6, "max": 0.6}, {"type": "random_rotation", "degrees": 45}):
        xa, ma = build_augmentations([aug], background=[0.0])(x, np.random.default_rng(3), np.ones((4, 8, 8), np.int64))
        np.testing.assert_array_equal(ma, (xa[:, 0] > 0.5).astype(np.int64))


def test_pixel_metrics_and_iou_by_hand():
    scores = np.zeros((1, 3, 2, 2))
    pred = np.array([[0, 1], [1, 2]])
    truth = np.array([[0, 1], [2, 2]])
    for c in range(3):
        scores[0, c] = pred == c
    acc = MetricAccumulator(num_classes=3)
    acc.add(scores, truth[None], loss_sum=0.5)
    res = acc.result("val_")
    assert res["val_accuracy"] == 0.75 and res["val_loss"] == 0.5
    # class 0: 1/1, class 1: tp 1, fp 1 -> 1/2, class 2: tp 1, fn 1 -> 1/2
    np.testing.assert_allclose(acc.per_class()["iou"], [1.0, 0.5, 0.5])
    assert res["val_mean_iou"] == pytest.approx(2 / 3)
    # a class neither present nor predicted has no IoU and does not count
    report = precision_recall(np.diag([2, 0, 3]))
    assert report["mean_iou"] == 1.0 and report["iou"] == [1.0, None, 1.0] and "iou[1]" in report["undefined"]


def test_train_evaluate_predict_segmentation_from_the_cli(tmp_path, capsys):
    x, y = squares(96)
    np.savez(tmp_path / "seg.npz", x=x, y=y, x_test=x[:16], y_test=y[:16], classes=np.array(["bg", "bright", "dim"]))
    spec = seg_spec(epochs=25, optimizer={"type": "adam", "lr": 0.03}, augment=[{"type": "horizontal_flip"}], early_stopping={"metric": "val_mean_iou"})
    (tmp_path / "seg.yaml").write_text(json.dumps(spec))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "seg.yaml"), "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_metric"] == "val_mean_iou" and metrics["test_mean_iou"] > 0.8, out
    assert "test pixel accuracy" in out and "mean IoU" in out
    assert len(metrics["per_class"]["iou"]) == 3

    assert main(["evaluate", str(tmp_path / "seg.yaml"), "--checkpoint", str(run), "--format", "json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["test_mean_iou"] == pytest.approx(metrics["test_mean_iou"])
    assert np.asarray(ev["confusion"]).sum() == 16 * 64     # pixels, not images

    np.save(tmp_path / "x.npy", x[:3])
    masks = tmp_path / "masks"
    assert main(["predict", str(tmp_path / "seg.yaml"), "--checkpoint", str(run), str(tmp_path / "x.npy"),
                 "--masks-out", str(masks)]) == 0
    text = capsys.readouterr().out
    assert "pixels: bg" in text
    model = cnngraph.load_model(run)
    # predict normalises like training did; the model here is fed the same normalised input
    stats = model.checkpoint_meta["dataset"]
    norm = (x[:3] - np.float32(stats["mean"][0])) / np.float32(stats["std"][0])
    expected = np.asarray(model.forward({"image": norm})["logits"]).argmax(axis=1)
    np.testing.assert_array_equal(np.load(masks / "masks.npy"), expected)
    pngs = sorted(masks.glob("*.mask.png"))
    assert len(pngs) == 3
    with Image.open(pngs[0]) as im:
        # enlarged 16x (8 -> 128 pixels) by repeating each mask pixel, so that it can be seen
        assert im.mode == "P" and im.size == (128, 128)
        np.testing.assert_array_equal(np.asarray(im), expected[0].repeat(16, axis=0).repeat(16, axis=1))


def test_segmentation_needs_per_pixel_scores_and_iou_needs_masks(tmp_path):
    x, y = squares(32)
    np.savez(tmp_path / "seg.npz", x=x, y=y)
    spec = seg_spec()
    spec["layers"] += [{"id": "flat", "type": "flatten"}, {"id": "fc", "type": "dense", "out_features": 3}]
    spec["outputs"] = ["fc"]
    spec["train"]["loss"]["output"] = "fc"
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(TrainingError, match=r"labels are masks of 8x8 pixels, so loss output 'fc' must give class "
                                            r"scores per pixel, \(classes, 8, 8\); it has per-sample shape \(3,\)"):
        cnngraph.train(cnngraph.load_spec(spec_file), out=tmp_path / "r", quiet=True)
    digits = {"name": "d", "inputs": {"image": {"shape": [1, 8, 8]}},
              "layers": [{"id": "flat", "type": "flatten"}, {"id": "logits", "type": "dense", "out_features": 10}],
              "outputs": ["logits"], "train": {"data": {"dataset": "digits", "limit": 64}, "epochs": 1,
                                               "early_stopping": {"metric": "val_mean_iou"}}}
    with pytest.raises(SpecError, match="measured for segmentation masks"):
        cnngraph.train(digits, out=tmp_path / "d", quiet=True)


def test_bundled_digit_pairs_are_fixed_and_consistent():
    ds = load_dataset(DataConfig(dataset="digits_segmentation", normalize="none"), (1, 8, 16))
    assert ds.classes[0] == "background" and ds.num_classes == 11
    assert [len(s[1]) for s in (ds.train, ds.val, ds.test)] == [1077, 270, 450]
    x, y = ds.test
    np.testing.assert_array_equal(y > 0, x[:, 0] > 4)            # ink pixels carry a digit class
    halves = [y[:, :, :8].max(axis=(1, 2)), y[:, :, 8:].max(axis=(1, 2))]
    assert (halves[0] > 0).all() and (halves[1] > 0).all()
    again = load_dataset(DataConfig(dataset="digits_segmentation", normalize="none"), (1, 8, 16))
    np.testing.assert_array_equal(again.test[1], y)


def test_void_pixels_are_left_out_of_loss_metrics_and_move_with_augmentation(tmp_path, capsys):
    """VOC-style masks mark void pixels (object borders) 255: with train.loss.ignore_index they load,
    move with their images, and count in neither the loss nor any metric."""
    x, y = squares(96)
    border = (y > 0) & ~(np.roll(y > 0, 1, axis=1) & np.roll(y > 0, -1, axis=1))
    y = np.where(border, 255, y)
    np.savez(tmp_path / "seg.npz", x=x, y=y, x_test=x[:16], y_test=y[:16])
    xa, ya = build_augmentations([{"type": "random_shift", "pixels": 2}])(x, np.random.default_rng(0), y, ignore=255)
    shifted_void = build_augmentations([{"type": "random_shift", "pixels": 2}])(
        (y == 255)[:, None].astype(np.float32), np.random.default_rng(0))
    np.testing.assert_array_equal(ya == 255, shifted_void[:, 0] > 0.5)
    assert set(np.unique(ya)) <= {0, 1, 2, 255}

    spec = seg_spec(epochs=20, optimizer={"type": "adam", "lr": 0.03}, augment=[{"type": "horizontal_flip"}],
                    loss={"type": "cross_entropy", "output": "logits", "ignore_index": 255})
    (tmp_path / "seg.yaml").write_text(json.dumps(spec))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "seg.yaml"), "--out", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["classes"]) == 3 and np.asarray(metrics["confusion"]).sum() == int((y[:16] != 255).sum())
    np.save(tmp_path / "xt.npy", x[:16])
    assert main(["predict", str(tmp_path / "seg.yaml"), "--checkpoint", str(run), str(tmp_path / "xt.npy"),
                 "--masks-out", str(tmp_path / "m")]) == 0
    pred, truth = np.load(tmp_path / "m" / "masks.npy"), y[:16]
    counted = truth != 255
    assert metrics["test_accuracy"] == pytest.approx((pred == truth)[counted].mean())
    capsys.readouterr()
    np.savez(tmp_path / "bare.npz", x=x, y=y)       # without ignore_index: refused, with the way out named
    with pytest.raises(DataError, match="set train.loss.ignore_index: 255"):
        load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "bare.npz")), (1, 8, 8))


def test_the_loss_over_many_batches_is_torchs_loss_over_the_whole_set_with_weights_and_void():
    """Batches are weighed by their summed class weights (void pixels count 0), as one call would."""
    torch = pytest.importorskip("torch")
    from cnngraph.train.evaluate import evaluate_arrays
    from cnngraph.train.settings import prepare_loss
    rng = np.random.default_rng(0)
    spec = {"name": "w", "inputs": {"image": {"shape": [1, 4, 4]}},
            "layers": [{"id": "logits", "type": "conv2d", "out_channels": 3, "kernel_size": 1}], "outputs": ["logits"],
            "train": {"loss": {"type": "cross_entropy", "output": "logits", "weight": [0.5, 2.0, 1.0],
                               "ignore_index": 255, "label_smoothing": 0.1}}}
    model = cnngraph.compile(spec, dtype="float64")
    x = rng.standard_normal((50, 1, 4, 4))
    y = rng.integers(0, 3, (50, 4, 4))
    y[:20, :2] = 255                                   # the first batches hold most of the void pixels
    loss = prepare_loss(model.spec, model.spec.train, 3, (4, 4))
    acc = evaluate_arrays(model, "image", x, y, loss, 7, num_classes=3, ignore=255)
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(np.asarray(model.forward({"image": x})["logits"])),
                                            torch.from_numpy(y), weight=torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64),
                                            ignore_index=255, label_smoothing=0.1)
    assert acc.loss == pytest.approx(ref.item(), rel=1e-12)


def test_pytorchs_default_void_label_minus_100_loads_and_splits(tmp_path):
    x, y = squares(30)
    y[:, 0, :] = -100
    np.savez(tmp_path / "seg.npz", x=x, y=y)
    ds = load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "seg.npz"), ignore_label=-100), (1, 8, 8))
    assert ds.classes == ["0", "1", "2"] and len(ds.train[1]) + len(ds.val[1]) == 30
