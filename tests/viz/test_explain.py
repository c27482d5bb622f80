"""explain: feature maps, filters, Grad-CAM (via Model.backward(wrt=...)), saliency, checkpoints."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import cnngraph
from cnngraph.cli import main
from cnngraph.errors import CheckpointError, CnnGraphError, RunError
from cnngraph.viz import explain as ex

from viz_helpers import TINY_DIGITS, train_tiny_digits


@pytest.fixture(scope="module")
def trained():
    model, ds, acc = train_tiny_digits()
    assert acc > 0.85, acc          # the model really learned the digits
    return model, ds


def _raw(ds, x):
    return x * np.asarray(ds.std, np.float32).reshape(1, -1, 1, 1) + np.asarray(ds.mean, np.float32).reshape(1, -1, 1, 1)


def _not_blank(path, min_w=300, min_h=200):
    im = Image.open(path)
    im.load()
    a = np.asarray(im.convert("RGB"), np.float32)
    assert im.size[0] >= min_w and im.size[1] >= min_h
    assert a.std() > 15 and len(np.unique(a.reshape(-1, 3), axis=0)) > 50
    return im


def test_backward_wrt_matches_the_gradient_of_the_tail(trained):
    model, ds = trained
    x = ds.test[0][:3]
    out = model.forward({"image": x}, grad=True, outputs=["act2", "logits"])
    g = np.zeros_like(out["logits"])
    g[:, 4] = 1.0
    grads = model.backward({"logits": g}, wrt=["act2", "act1"])
    assert grads["act2"].shape == (3, 16, 8, 8) and grads["act1"].shape == (3, 8, 8, 8)
    # the same gradient from a network that starts at act2: its input gradient
    tail = cnngraph.compile({"inputs": {"a": {"shape": [16, 8, 8]}},
                             "layers": [{"id": "pool", "type": "max_pool2d", "kernel_size": 2},
                                        {"id": "flat", "type": "flatten"},
                                        {"id": "logits", "type": "dense", "out_features": 10}],
                             "outputs": ["logits"]})
    tail.load_params({k: v for k, v in model.params.numpy().items() if k.startswith("logits.")})
    tail.forward({"a": out["act2"]}, grad=True)
    ref = tail.backward({"logits": g})["a"]
    np.testing.assert_allclose(grads["act2"], ref, rtol=1e-5, atol=1e-6)
    # act1 is upstream of act2: its gradient flows through conv2
    assert np.abs(grads["act1"]).sum() > 0
    model.forward({"image": x}, grad=True)
    with pytest.raises(RunError, match="not a layer computed"):
        model.backward({"logits": g}, wrt=["nope"])


def test_gradcam_puts_mass_on_the_strokes(trained):
    model, ds = trained
    xt, yt = ds.test
    raw = _raw(ds, xt[:40])
    ring = np.zeros((8, 8), bool)
    ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = True
    stroke_mass, border_mass, wins, right = [], [], 0, 0
    for i in range(40):
        r = ex.gradcam(model, xt[i:i + 1])
        assert r["layer"] == "act2"                         # last spatial non-pooling layer
        assert r["cam"].shape == (8, 8) and 0 <= r["cam"].min() and r["cam"].max() <= 1
        stroke = raw[i, 0] > 8
        border = ring & (raw[i, 0] < 1)
        s, b = r["cam"][stroke].mean(), r["cam"][border].mean()
        stroke_mass.append(s)
        border_mass.append(b)
        wins += s > b
        right += r["class_index"] == yt[i]
    assert right >= 34
    assert np.mean(stroke_mass) > 2 * np.mean(border_mass), (np.mean(stroke_mass), np.mean(border_mass))
    assert wins >= 32
    # a chosen class, and the saliency map agrees with an explicit input gradient
    r = ex.gradcam(model, xt[:1], "act2", class_index=3)
    assert r["class_index"] == 3
    sal = ex.saliency(model, xt[:1], 3)
    np.testing.assert_allclose(sal, r["saliency"], rtol=1e-5, atol=1e-6)
    with pytest.raises(CnnGraphError, match="out of range"):
        ex.gradcam(model, xt[:1], class_index=10)
    with pytest.raises(CnnGraphError, match="Grad-CAM needs"):
        ex.gradcam(model, xt[:1], layer="flat")


def test_feature_maps_are_the_layer_output(trained, tmp_path):
    model, ds = trained
    x = ds.test[0][:1]
    maps = ex.feature_maps(model, x, "act1")
    ref = model.forward({"image": x}, outputs=["act1"])["act1"][0]
    np.testing.assert_array_equal(maps, ref)
    for scale in ("shared", "per-map"):
        size = ex.plot_feature_maps(maps, tmp_path / f"{scale}.png", "act1", "relu", scale, _raw(ds, x)[0], 16.0)
        im = _not_blank(tmp_path / f"{scale}.png")
        assert im.size == size
    with pytest.raises(CnnGraphError, match="no layer 'actt1'.*did you mean 'act1'"):
        ex.feature_maps(model, x, "actt1")
    # a flat layer becomes a bar chart
    ex.plot_feature_maps(ex.feature_maps(model, x, "logits"), tmp_path / "bars.png", "logits", "dense")
    _not_blank(tmp_path / "bars.png")


def _save_run(model, ds, folder):
    meta = {"dataset": {"mean": ds.mean, "std": ds.std, "classes": ds.classes, "pixel_scale": ds.pixel_scale}}
    model.save(folder / "checkpoint" / "best", meta=meta)


def test_cli_explain_with_a_checkpoint_and_a_png(trained, tmp_path, capsys):
    model, ds = trained
    _save_run(model, ds, tmp_path / "run")
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY_DIGITS))
    # a dark-on-white PNG of a test digit, 32x32: resized, inverted and scaled to the digits' 0..16
    i = 7
    raw = _raw(ds, ds.test[0][i:i + 1])[0, 0]
    Image.fromarray(np.uint8(255 - np.clip(raw / 16, 0, 1) * 255)).resize((32, 32), Image.NEAREST).save(tmp_path / "d.png")
    out = tmp_path / "cam.png"
    rc = main(["explain", str(spec), "--checkpoint", str(tmp_path / "run"), "--image", str(tmp_path / "d.png"),
               "--invert", "--gradcam", "-o", str(out)])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert f"for class {ds.classes[ds.test[1][i]]}" in text.out
    assert "random" not in text.err
    _not_blank(out, 800, 300)
    # feature maps of conv2 from the run's checkpoint folder, per-map scale
    rc = main(["explain", str(spec), "--checkpoint", str(tmp_path / "run" / "checkpoint"), "--image",
               str(tmp_path / "d.png"), "--invert", "--layer", "conv2", "--scale", "per-map", "-o", str(tmp_path / "m.png")])
    assert rc == 0
    assert "16 maps of conv2" in capsys.readouterr().out
    _not_blank(tmp_path / "m.png", 500, 400)
    # filters from an .npz of parameters
    np.savez(tmp_path / "w.npz", **model.params.numpy())
    assert main(["explain", str(spec), "--params", str(tmp_path / "w.npz"), "--filters", "-o", str(tmp_path / "f.png")]) == 0
    assert "filters of conv1" in capsys.readouterr().out
    _not_blank(tmp_path / "f.png", 300, 200)


def test_cli_explain_errors_and_random_weights(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8), np.float32) + 3)
    rc = main(["explain", "specs/digits_cnn.yaml", "--image", str(tmp_path / "x.npy"), "-o", str(tmp_path / "m.png")])
    assert rc == 0
    captured = capsys.readouterr()
    assert "random weights (seed 0)" in captured.err and "16 maps of conv1" in captured.out
    assert main(["explain", "specs/digits_cnn.yaml", "--checkpoint", str(tmp_path), "--image",
                 str(tmp_path / "x.npy"), "-o", str(tmp_path / "m.png")]) == 1
    assert "no meta.json found" in capsys.readouterr().err
    assert main(["explain", "specs/digits_cnn.yaml", "--image", str(tmp_path / "x.npy"), "--layer", "fc9",
                 "-o", str(tmp_path / "m.png")]) == 1
    assert "no layer 'fc9'" in capsys.readouterr().err
    assert main(["explain", "specs/digits_cnn.yaml", "-o", str(tmp_path / "m.png")]) == 1
    assert "--image" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.zeros((3, 5, 5), np.float32))
    assert main(["explain", "specs/digits_cnn.yaml", "--image", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "m.png")]) == 1
    assert "expected an array of shape" in capsys.readouterr().err
    assert main(["explain", "specs/digits_cnn.yaml", "--filters", "--layer", "conv9", "-o", str(tmp_path / "f.png")]) == 1
    assert "no layer 'conv9'" in capsys.readouterr().err
    assert main(["explain", "specs/digits_cnn.yaml", "--image", str(tmp_path / "x.npy"), "--class", "3",
                 "-o", str(tmp_path / "m.png")]) == 1
    assert "add --gradcam" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        ex.resolve_checkpoint(tmp_path / "missing")


def test_gradcam_of_a_softmax_output_explains_the_class_scores(trained):
    """A network that ends in softmax is explained through the softmax's input: the gradient of the
    class score, and a headline probability that is not a softmax of probabilities."""
    model, ds = trained
    spec = model.spec.to_dict()
    spec["layers"].append({"id": "probs", "type": "softmax"})
    spec["outputs"] = ["probs"]
    spec.pop("train", None)
    soft = cnngraph.compile(spec)
    soft.load_params(model.params.numpy())
    x = ds.test[0][:1]
    assert ex.class_output(soft) == model.spec.outputs[0]
    got, want = ex.gradcam(soft, x), ex.gradcam(model, x)
    np.testing.assert_allclose(got["cam"], want["cam"], rtol=1e-5, atol=1e-6)
    k = want["class_index"]
    p = soft.forward(x)["probs"][0, k]
    assert f"softmax {p:.2f}" in ex.attribution_title(got["scores"], k, got["output"])


def test_filters_of_an_rgb_net_are_drawn_in_colour(tmp_path):
    """A 3-channel first convolution is drawn as RGB images: a kernel that only reads the red channel
    is a red square, one that only reads green is green."""
    spec = {"inputs": {"image": {"shape": [3, 8, 8]}},
            "layers": [{"id": "conv1", "type": "conv2d", "out_channels": 2, "kernel_size": 3},
                       {"id": "gap", "type": "global_avg_pool2d"}, {"id": "flat", "type": "flatten"}],
            "outputs": ["flat"]}
    model = cnngraph.compile(spec)
    w = np.zeros((2, 3, 3, 3), np.float32)
    w[0, 0] = 1.0
    w[1, 1] = 1.0
    model.load_params({"conv1.weight": w, "conv1.bias": np.zeros(2, np.float32)})
    size = ex.plot_filters(model, tmp_path / "f.png")
    a = np.asarray(Image.open(tmp_path / "f.png").convert("RGB")).astype(int)
    assert a.shape[1::-1] == size
    red = (a[..., 0] > 230) & (a[..., 1] < 30) & (a[..., 2] < 30)
    green = (a[..., 1] > 230) & (a[..., 0] < 30) & (a[..., 2] < 30)
    assert red.sum() > 400 and green.sum() > 400, (red.sum(), green.sum())


def test_cli_gradcam_on_an_npy_sample_for_a_chosen_class(trained, tmp_path, capsys):
    model, ds = trained
    _save_run(model, ds, tmp_path / "run")
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY_DIGITS))
    raw = _raw(ds, ds.test[0][:5])                 # raw pixels 0..16, as the dataset stores them
    np.save(tmp_path / "x.npy", raw)
    i = 3
    pred = int(model.predict(ds.test[0][i:i + 1]).argmax())
    other = (pred + 1) % 10
    base = ["explain", str(spec), "--checkpoint", str(tmp_path / "run"), "--image", str(tmp_path / "x.npy"),
            "--index", str(i), "--gradcam"]
    assert main(base + ["-o", str(tmp_path / "p.png")]) == 0
    assert f"for class {ds.classes[pred]} (predicted)" in capsys.readouterr().out
    assert main(base + ["--class", str(other), "-o", str(tmp_path / "c.png")]) == 0
    assert f"for class {ds.classes[other]} (chosen; the network predicts {ds.classes[pred]})" in capsys.readouterr().out
    _not_blank(tmp_path / "c.png", 800, 300)
    # the figure's headline says the same
    scores = np.array([0.0, 3.0, 1.0])
    assert ex.attribution_title(scores, 1, "logits").startswith("predicted class 1 (softmax 0.84")
    assert ex.attribution_title(scores, 2, "logits", ["a", "b", "c"]) == \
        "chosen class c (softmax 0.11 of logits) · the network predicts b (0.84)"


def test_gradcam_overlay_is_drawn_pixel_for_pixel_like_the_input(tmp_path):
    """The Grad-CAM overlay was drawn with bilinear interpolation over a nearest-drawn input: on an
    8x8 map it invented sub-pixel peaks. A CAM hot in one pixel over a black image is one solid
    square, the size of one input pixel."""
    cam = np.zeros((8, 8), np.float32)
    cam[3, 5] = 1.0
    res = {"class_index": 0, "scores": np.zeros(10, np.float32), "output": "logits", "layer": "act2",
           "cam": cam, "saliency": np.zeros((8, 8), np.float32)}
    ex.plot_attribution(np.zeros((1, 8, 8), np.float32), res, tmp_path / "gc.png")
    a = np.asarray(Image.open(tmp_path / "gc.png").convert("RGB")).astype(int)
    a = a[:, a.shape[1] // 3:2 * a.shape[1] // 3]          # the middle panel (the saliency colour bar has this red too)
    hot = np.abs(a - [64, 0, 0]).max(axis=2) <= 8          # jet's top colour at alpha 0.5 over black
    rows, cols = np.nonzero(hot)
    h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert hot.sum() >= 0.9 * h * w and h >= 20 and abs(h - w) <= 2, (hot.sum(), h, w)


def test_training_curves_and_confusion_pictures_have_content(tmp_path):
    from cnngraph.viz.curves import plot_confusion, plot_curves
    hist = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "train_accuracy": 1 - 0.5 / e,
             "val_accuracy": 1 - 0.6 / e} for e in range(1, 6)]
    plot_curves(hist, tmp_path / "curves.png", "run")
    im = _not_blank(tmp_path / "curves.png", 600, 300)
    a = np.asarray(im.convert("RGB")).astype(int)
    # both series are drawn: matplotlib's default blue (train) and orange (validation)
    blue = (abs(a[..., 0] - 31) < 25) & (abs(a[..., 1] - 119) < 25) & (abs(a[..., 2] - 180) < 25)
    orange = (abs(a[..., 0] - 255) < 25) & (abs(a[..., 1] - 127) < 25) & (abs(a[..., 2] - 14) < 25)
    assert blue.sum() > 200 and orange.sum() > 200
    cm = np.diag([40, 35, 30]) + 2
    plot_confusion(cm, ["a", "b", "c"], tmp_path / "confusion.png")
    a = np.asarray(Image.open(tmp_path / "confusion.png").convert("RGB")).astype(int)
    assert a.shape[0] >= 300 and a.shape[1] >= 300
    dark = (a[..., 2] > 60) & (a[..., 0] < 40)     # the dark-blue diagonal cells
    assert dark.sum() > 1000


def test_seg_gradcam_matches_torch_autograd_over_the_predicted_region():
    """Segmentation (per-pixel scores): Grad-CAM of a class is the gradient of the sum of its scores over
    the pixels predicted as it (Seg-Grad-CAM), computed here independently with torch autograd."""
    torch = pytest.importorskip("torch")
    model = cnngraph.compile({"inputs": {"image": {"shape": [1, 6, 6]}},
                              "layers": [{"id": "c1", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
                                         {"id": "a1", "type": "relu"},
                                         {"id": "logits", "type": "conv2d", "out_channels": 3, "kernel_size": 1}],
                              "outputs": ["logits"]}, seed=4, dtype="float64")
    x = np.random.default_rng(2).standard_normal((1, 1, 6, 6))
    res = ex.gradcam(model, x, layer="a1")
    F = torch.nn.functional
    w = {k: torch.from_numpy(np.array(v)).requires_grad_() for k, v in model.params.items()}
    a1 = F.relu(F.conv2d(torch.from_numpy(x), w["c1.weight"], w["c1.bias"], padding=1))
    a1.retain_grad()
    scores = F.conv2d(a1, w["logits.weight"], w["logits.bias"])
    pred = scores.detach().numpy()[0].argmax(0)
    area = np.bincount(pred.ravel(), minlength=3)
    k = int(np.argmax(area[1:]) + 1) if area[1:].any() else 0
    assert res["class_index"] == k and res["pixels"] == int((pred == k).sum()) > 0
    (scores[0, k] * torch.from_numpy((pred == k).astype(np.float64))).sum().backward()
    a, g = a1.detach().numpy()[0], a1.grad.numpy()[0]
    ref = np.maximum((g.mean(axis=(1, 2))[:, None, None] * a).sum(axis=0), 0)
    assert ref.max() > 0
    np.testing.assert_allclose(res["raw_cam"], ref, rtol=1e-8, atol=1e-12)


def _binary_net(seg: bool):
    """A one-unit sigmoid classifier (dense(1)) or binary segmenter (1-channel 1x1 conv), float64."""
    head = ([{"id": "logits", "type": "conv2d", "out_channels": 1, "kernel_size": 1}] if seg else
            [{"id": "gap", "type": "global_avg_pool2d"}, {"id": "flat", "type": "flatten"},
             {"id": "logits", "type": "dense", "out_features": 1}])
    return cnngraph.compile({"inputs": {"image": {"shape": [1, 6, 6]}},
                             "layers": [{"id": "c1", "type": "conv2d", "out_channels": 4, "kernel_size": 3,
                                         "padding": 1},
                                        {"id": "a1", "type": "relu"}] + head + [{"id": "prob", "type": "sigmoid"}],
                             "outputs": ["prob"]}, seed=4, dtype="float64")


@pytest.mark.parametrize("bias", [4.0, -4.0])
def test_gradcam_reads_a_one_unit_sigmoid_output_as_predict_does(bias):
    """One sigmoid unit is a binary classifier: class 1 when p > 0.5, class 0 explained by the negative
    logit; --class 0 and 1 are both accepted; the default layer is not the classifier itself."""
    model = _binary_net(seg=False)
    model.params["logits.bias"] = np.full(1, bias)
    x = np.random.default_rng(2).random((1, 1, 6, 6))
    p = float(model.forward({"image": x})["prob"][0, 0])
    res = ex.gradcam(model, x)
    assert res["output"] == "logits" and res["layer"] == "a1" and res["binary"]
    assert res["class_index"] == int(p > 0.5)
    assert f"predicted class {int(p > 0.5)} (sigmoid {max(p, 1 - p):.2f}" in \
        ex.attribution_title(res["scores"], res["class_index"], res["output"], binary=True)
    one, zero = ex.gradcam(model, x, class_index=1), ex.gradcam(model, x, class_index=0)
    # class 0's evidence is class 1's negated: the two maps are the two halves of one signed map
    assert (one["raw_cam"] + zero["raw_cam"]).any()
    assert not np.any((one["raw_cam"] > 0) & (zero["raw_cam"] > 0))
    with pytest.raises(CnnGraphError, match="one unit, a binary classifier.*--class 0 or 1"):
        ex.gradcam(model, x, class_index=2)


def test_gradcam_of_a_binary_segmenter_explains_the_predicted_pixels():
    model = _binary_net(seg=True)
    x = np.random.default_rng(2).standard_normal((1, 1, 6, 6))
    logit = model.forward({"image": x}, outputs=["logits"])["logits"][0, 0]
    assert 0 < (logit > 0).sum() < logit.size
    res = ex.gradcam(model, x)
    assert res["layer"] == "a1" and res["class_index"] == 1 and res["pixels"] == int((logit > 0).sum())
    res0 = ex.gradcam(model, x, class_index=0)
    assert res0["class_index"] == 0 and res0["pixels"] == int((logit <= 0).sum())


def test_the_default_gradcam_layer_skips_the_per_pixel_classifier_head():
    model = cnngraph.compile({"inputs": {"image": {"shape": [1, 6, 6]}},
                              "layers": [{"id": "c1", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
                                         {"id": "a1", "type": "relu"},
                                         {"id": "logits", "type": "conv2d", "out_channels": 3, "kernel_size": 1},
                                         {"id": "up", "type": "upsample2d", "scale_factor": 2}],
                              "outputs": ["up"]})
    assert ex.default_cam_layer(model, "up") == "a1"


def test_a_negative_index_counts_from_the_end_of_the_batch(trained, tmp_path, capsys):
    model, ds = trained
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY_DIGITS))
    raw = _raw(ds, ds.test[0][:5])
    np.save(tmp_path / "x.npy", raw)
    prep = ex.preprocessing(model.spec)
    last, _ = ex.load_input(tmp_path / "x.npy", model.spec, prep, index=-1)
    first, _ = ex.load_input(tmp_path / "x.npy", model.spec, prep, index=-5)
    np.testing.assert_array_equal(last, ex.load_input(tmp_path / "x.npy", model.spec, prep, index=4)[0])
    np.testing.assert_array_equal(first, ex.load_input(tmp_path / "x.npy", model.spec, prep, index=0)[0])
    assert last.shape == (1, 1, 8, 8)
    assert main(["explain", str(spec), "--image", str(tmp_path / "x.npy"), "--index", "-1", "-o",
                 str(tmp_path / "m.png")]) == 0
    capsys.readouterr()
    assert main(["explain", str(spec), "--image", str(tmp_path / "x.npy"), "--index", "-6", "-o",
                 str(tmp_path / "m.png")]) == 1
    assert "--index -6 is out of range (-5 to 4)" in capsys.readouterr().err


def test_an_output_that_is_a_folder_is_named_as_one(tmp_path, capsys):
    """-o DIR said 'unknown format (no extension)' (viz) or 'use a .png, .pdf or .svg file' (explain)."""
    for cmd in (["viz", "specs/digits_cnn.yaml"], ["explain", "specs/digits_cnn.yaml", "--filters"]):
        for out in (str(tmp_path), str(tmp_path / "new") + "/"):
            assert main(cmd + ["-o", out]) == 1
            err = capsys.readouterr().err
            assert f"cannot write '{out}': it is a folder; give a file name, such as" in err, err
    assert not (tmp_path / "new").exists()
    # a missing folder above a file name is created
    assert main(["viz", "specs/digits_cnn.yaml", "-o", str(tmp_path / "a" / "b" / "g.svg")]) == 0
    assert main(["explain", "specs/digits_cnn.yaml", "--filters", "-o", str(tmp_path / "c" / "f.png")]) == 0
    assert (tmp_path / "a" / "b" / "g.svg").is_file() and (tmp_path / "c" / "f.png").is_file()


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures explain draws, kept instead of written."""
    kept = []
    monkeypatch.setattr(ex, "_save", lambda fig, path: kept.append(fig))
    return kept


def _headline_fits(fig):
    """The figure's title lines lie within its width and above every plot (their titles included)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    box = fig._suptitle.get_window_extent(r)
    width = fig.get_figwidth() * fig.dpi
    assert box.x0 >= 0 and box.x1 <= width, (box, width)
    assert box.y0 >= max(ax.get_tightbbox(r).y1 for ax in fig.axes) - 1
    assert box.y1 <= fig.get_figheight() * fig.dpi


LONG = "digits_cnn · digit3.png · checkpoint /tmp/probe-plugins/run/checkpoint/best · normalisation from the checkpoint"


def test_titles_wrap_to_fit_a_narrow_figure(trained, figures):
    """The subtitle was clipped at both edges of a narrow grid ('igits_cnn · … from the checkpoin')."""
    model, ds = trained
    x = ds.test[0][:1]
    image = _raw(ds, x)[0]
    ex.plot_feature_maps(ex.feature_maps(model, x, "pool"), "m.png", "pool", "max_pool2d", "per-map", image, 16.0,
                         LONG, max_maps=1)
    ex.plot_feature_maps(ex.feature_maps(model, x, "logits"), "b.png", "logits", "dense", subtitle=LONG)
    ex.plot_filters(model, "f.png", "conv1", subtitle=LONG + " /a/very/long/folder/name/without/any/spaces/in/it")
    flat = (lambda t: t.replace("\n", "").replace(" ", ""))
    for fig in figures:
        _headline_fits(fig)
        assert flat(LONG) in flat(fig._suptitle.get_text())        # all of it, only wrapped
    from cnngraph.viz.scene import text_width
    assert all(text_width(line, 10) <= 150 for line in ex._wrap(LONG, 150, 10))
    assert "".join(ex._wrap("/a/b/" * 40, 100, 10)) == "/a/b/" * 40


def test_cli_says_how_many_maps_are_drawn_and_names_the_classes(trained, tmp_path, capsys, figures):
    model, ds = trained
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    model.save(tmp_path / "run" / "checkpoint" / "best",
               meta={"dataset": {"mean": ds.mean, "std": ds.std, "classes": names, "pixel_scale": ds.pixel_scale}})
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY_DIGITS))
    np.save(tmp_path / "x.npy", _raw(ds, ds.test[0][:1]))
    base = ["explain", str(spec), "--checkpoint", str(tmp_path / "run"), "--image", str(tmp_path / "x.npy")]
    assert main(base + ["--layer", "conv2", "--max-maps", "8", "-o", str(tmp_path / "m.png")]) == 0
    assert "8 of 16 maps of conv2" in capsys.readouterr().out
    assert main(base + ["--layer", "logits", "-o", str(tmp_path / "b.png")]) == 0
    assert "10 units of logits" in capsys.readouterr().out
    ax = figures[-1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names     # every unit, by its class name
    assert ax.get_xlabel() == "class"
    # a hidden layer's units are numbered, each one where they fit
    ex.plot_feature_maps(np.arange(12, dtype=np.float32) - 6, "u.png", "fc", "dense")
    ax = figures[-1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(i) for i in range(12)] and ax.get_xlabel() == "unit"


def test_cropped_filters_say_what_is_shown_and_have_a_colour_bar(figures):
    model = cnngraph.compile({"inputs": {"image": {"shape": [16, 8, 8]}},
                              "layers": [{"id": "conv", "type": "conv2d", "out_channels": 32, "kernel_size": 3}],
                              "outputs": ["conv"]})
    ex.plot_filters(model, "f.png", "conv")
    fig = figures[-1]
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "32 filters of 16x3x3" in title
    assert "rows: filters #0-#15 of 32, columns: input channels 0-11 of 16" in title
    assert len(fig.axes) == 16 * 12 + 1                        # the kernels and a colour bar
    assert getattr(fig.axes[-1], "_colorbar", None) is not None
    _headline_fits(fig)


def _ink_png(ds, path, size=(32, 32), i=7):
    """A test digit drawn dark on white (as scanned), enlarged: it needs --invert."""
    raw = _raw(ds, ds.test[0][i:i + 1])[0, 0]
    Image.fromarray(np.uint8(255 - np.clip(raw / 16, 0, 1) * 255)).resize(size, Image.NEAREST).save(path)
    return path


def _tiny_run_and_ink_image(trained, tmp_path, name):
    """(the tiny digits spec file, a dark-on-white digit image, the dataset), the trained run saved in tmp_path/run."""
    model, ds = trained
    _save_run(model, ds, tmp_path / "run")
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY_DIGITS))
    return spec, _ink_png(ds, tmp_path / name), ds


def test_an_output_that_is_one_of_the_inputs_is_refused_before_any_work(trained, tmp_path, capsys):
    """explain --image mine.png -o mine.png replaced the user's image with the picture."""
    spec, img, ds = _tiny_run_and_ink_image(trained, tmp_path, "mine.png")
    (tmp_path / "link.png").symlink_to(img)
    before = img.read_bytes()
    base = ["explain", str(spec), "--checkpoint", str(tmp_path / "run"), "--image", str(img), "--invert"]
    for out in (img, tmp_path / "link.png", tmp_path / "new" / ".." / "mine.png"):
        assert main(base + ["-o", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"cannot write '{out}': it is the --image file this command reads" in err and err.count("\n") == 1
    assert img.read_bytes() == before and not (tmp_path / "new").exists()
    spec_text = spec.read_text()
    assert main(["viz", str(spec), "-o", str(spec)]) == 1      # a spec with a drawing's name is still the spec
    assert "it is the spec file this command reads" in capsys.readouterr().err and spec.read_text() == spec_text


def test_replacing_another_file_is_said_and_svg_has_no_pixel_size(trained, tmp_path, capsys):
    model, ds = trained
    _save_run(model, ds, tmp_path / "run")
    base = ["explain", "specs/digits_cnn.yaml", "--filters"]
    assert main(base + ["-o", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {tmp_path / 'f.png'} (") and " px): filters of conv1" in out
    assert "replaced" not in out
    assert main(base + ["-o", str(tmp_path / "f.png")]) == 0
    assert " px, replaced the existing file): filters of conv1" in capsys.readouterr().out
    for ext in (".svg", ".pdf"):    # no pixels: a vector drawing has no pixel size
        assert main(base + ["-o", str(tmp_path / f"f{ext}")]) == 0
        assert capsys.readouterr().out == f"wrote {tmp_path / f'f{ext}'}: filters of conv1\n"
    (tmp_path / "notes.svg").write_text("my notes")
    assert main(["viz", "specs/digits_cnn.yaml", "-o", str(tmp_path / "notes.svg")]) == 0
    assert "nodes, replaced the existing file)" in capsys.readouterr().out


def test_a_light_background_image_gets_a_polarity_note_and_a_dark_one_none(trained, tmp_path, capsys):
    spec, img, ds = _tiny_run_and_ink_image(trained, tmp_path, "ink.png")
    base = ["explain", str(spec), "--checkpoint", str(tmp_path / "run"), "--image", str(img), "-o", str(tmp_path / "m.png")]
    assert main(base) == 0
    err = capsys.readouterr().err
    assert "ink.png' is mostly light" in err and "add --invert" in err and err.count("\n") == 1
    assert main(base + ["--invert"]) == 0           # the same digit the right way round: nothing to say
    assert capsys.readouterr().err == ""
    np.save(tmp_path / "x.npy", _raw(ds, ds.test[0][:1]))   # a normal sample, and the other digits: no note
    assert main(base[:-4] + ["--image", str(tmp_path / "x.npy"), "-o", str(tmp_path / "m.png")]) == 0
    assert capsys.readouterr().err == ""
    for i in range(20):
        raw = _raw(ds, ds.test[0][i:i + 1])[0, 0]
        Image.fromarray(np.uint8(np.clip(raw / 16, 0, 1) * 255)).save(tmp_path / "d.png")
        assert main(base[:-4] + ["--image", str(tmp_path / "d.png"), "-o", str(tmp_path / "m.png")]) == 0
        assert capsys.readouterr().err == ""


def test_an_image_of_another_shape_or_colour_gets_a_conversion_note(trained, tmp_path, capsys):
    model, ds = trained
    _save_run(model, ds, tmp_path / "run")
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY_DIGITS))
    base = ["explain", str(spec), "--checkpoint", str(tmp_path / "run"), "--invert", "-o", str(tmp_path / "m.png")]
    grey = np.asarray(Image.open(_ink_png(ds, tmp_path / "ink.png", (64, 32))))
    colour = np.stack([grey, grey, np.full_like(grey, 255)], axis=-1)    # white and blue ink
    Image.fromarray(colour).save(tmp_path / "wide.png")
    assert main(base + ["--image", str(tmp_path / "wide.png")]) == 0
    err = capsys.readouterr().err
    assert err == (f"note: '{tmp_path / 'wide.png'}' (64x32, mode RGB) was stretched to 8x8, converted from colour "
                   f"to grey to fit the model's input (1, 8, 8)\n")
    # a square image, and an RGB one whose pixels are all grey: nothing to say
    _ink_png(ds, tmp_path / "sq.png", (33, 31))
    Image.open(tmp_path / "sq.png").convert("RGB").save(tmp_path / "sq_rgb.png")
    for name in ("sq.png", "sq_rgb.png"):
        assert main(base + ["--image", str(tmp_path / name)]) == 0
        assert capsys.readouterr().err == ""


def test_options_the_picture_does_not_use_are_refused(trained, tmp_path, capsys):
    """--filters --image X ignored the image and --layer fc1 --scale per-map the scale, silently."""
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8), np.float32) + 3)
    x, out = str(tmp_path / "x.npy"), str(tmp_path / "m.png")
    cases = [(["--filters", "--image", x], "--image is not used by --filters"),
             (["--filters", "--scale", "per-map"], "--scale is not used by --filters"),
             (["--image", x, "--gradcam", "--max-maps", "3"], "--max-maps sets how feature maps are drawn; --gradcam draws none"),
             (["--image", x, "--layer", "fc1", "--scale", "per-map"],
              "--scale sets how feature maps are drawn; layer 'fc1' gives 64 units, drawn as one bar chart"),
             (["--image", x, "--invert"], "--invert turns image files dark-on-light to light-on-dark; "),
             (["--image", x, "--layer", "image"], "'image' is the input of digits_cnn, not a layer; --layer takes one "
                                                  "of its layers: conv1, act1")]
    for extra, message in cases:
        assert main(["explain", "specs/digits_cnn.yaml", *extra, "-o", out]) == 1, extra
        err = capsys.readouterr().err   # after the random-weights note where it gets that far
        assert err.splitlines()[-1].startswith("error: ") and message in err.splitlines()[-1], err
        assert "Traceback" not in err
    assert main(["explain", "specs/digits_cnn.yaml", "--image", x, "--layer", "conv2", "--scale", "per-map",
                 "-o", out]) == 0


def test_a_checkpoint_of_another_spec_names_the_spec_it_came_from(trained, tmp_path, capsys):
    model, ds = trained
    _save_run(model, ds, tmp_path / "run")
    renamed = json.loads(json.dumps(TINY_DIGITS).replace('"conv1"', '"first"'))
    renamed["name"] = "renamed"
    wider = json.loads(json.dumps(TINY_DIGITS).replace('"out_channels": 8', '"out_channels": 4'))
    for name, spec in (("renamed", renamed), ("wider", wider)):
        (tmp_path / f"{name}.json").write_text(json.dumps(spec))
        assert main(["explain", str(tmp_path / f"{name}.json"), "--checkpoint", str(tmp_path / "run"), "--filters",
                     "-o", str(tmp_path / "f.png")]) == 1
        err = capsys.readouterr().err
        assert "(trained from a different network?)" in err and "trained from spec 'tiny_digits'" in err, err
        assert err.count("\n") == 1
