"""`cnngraph train` / evaluate / predict on volumes (C, D, H, W) from an npz file."""
import io

import numpy as np
import pytest

import cnngraph
from cnngraph.cli import main
from cnngraph.errors import DataError


def _spec(path, **train):
    t = {"data": {"dataset": "npz", "path": str(path), "test_fraction": 0.2}, "batch_size": 8, "epochs": 1,
         "optimizer": {"type": "adam", "lr": 0.01}, **train}
    return {"name": "vol", "inputs": {"v": {"shape": [2, 4, 6, 6]}},
            "layers": [{"id": "c", "type": "conv3d", "out_channels": 4, "kernel_size": 3, "padding": 1},
                       {"id": "bn", "type": "batch_norm2d"}, {"id": "act", "type": "relu"},
                       {"id": "pool", "type": "max_pool3d", "kernel_size": 2},
                       {"id": "gap", "type": "global_avg_pool2d"}, {"id": "flat", "type": "flatten"},
                       {"id": "fc", "type": "dense", "out_features": 3}],
            "outputs": ["fc"], "train": t}


def _data(tmp_path, layout="ncdhw"):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 2, 4, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    x[np.arange(60), 0, :, y, y] += 3.0          # a learnable cue
    if layout == "ndhwc":
        x = np.moveaxis(x, 1, -1)
    np.savez(tmp_path / f"{layout}.npz", x=x, y=y)
    return tmp_path / f"{layout}.npz"


@pytest.mark.parametrize("layout", ["ncdhw", "ndhwc"])
def test_volumes_train_evaluate_and_predict(tmp_path, capsys, layout):
    path = _data(tmp_path, layout)
    stream = io.StringIO()
    hist = cnngraph.train(_spec(path, epochs=3, cutmix={"alpha": 1.0}, augment=[{"type": "random_noise", "std": 0.05}]),
                          out=tmp_path / "run", stream=stream)
    assert hist.test["test_accuracy"] is not None and "volumes" in stream.getvalue() and " vol/s" in stream.getvalue()
    x = np.load(path)["x"][:2]
    np.save(tmp_path / "two.npy", x)
    import yaml
    (tmp_path / "vol.yaml").write_text(yaml.safe_dump(_spec(path)))
    assert main(["evaluate", str(tmp_path / "vol.yaml"), "--checkpoint", str(tmp_path / "run")]) == 0
    assert main(["predict", str(tmp_path / "vol.yaml"), "--checkpoint", str(tmp_path / "run"),
                 str(tmp_path / "two.npy")]) == 0
    out = capsys.readouterr().out
    assert "test_accuracy" in out and "two.npy[1]  class" in out


def test_image_steps_and_image_datasets_are_refused_for_volumes(tmp_path):
    path = _data(tmp_path)
    with pytest.raises(cnngraph.SpecError) as info:
        cnngraph.load_spec(_spec(path, augment=[{"type": "random_shift", "pixels": 1}]))
    (p,) = info.value.problems
    assert p.path == "train.augment[0].type"
    assert "the model's input is a volume (C, D, H, W) = (2, 4, 6, 6)" in p.message and "random_noise" in p.message
    with pytest.raises(cnngraph.SpecError, match=r"dataset 'digits' holds images \(C, H, W\) but the model's input is "
                                                 r"a volume \(C, D, H, W\).*npz with x of shape \(N, C, D, H, W\)"):
        cnngraph.load_spec(_spec(path, data={"dataset": "digits"}))


def test_a_volume_of_the_wrong_shape_or_an_image_file_is_named(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((10, 2, 4, 6, 5), np.float32), y=np.zeros(10, np.int64))
    with pytest.raises(DataError, match=r"expected volumes of shape \(N, 2, 4, 6, 6\) \(NCDHW\) or \(N, 4, 6, 6, 2\) "
                                        r"\(NDHWC\) for the model's input_shape"):
        cnngraph.train(_spec(path), out=tmp_path / "run", stream=io.StringIO())
    from cnngraph.train.images import read_inputs
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"the model's input is a volume \(C, D, H, W\) = .*expected an .npy file of "
                                        r"shape \(N, C, D, H, W\)"):
        read_inputs([tmp_path / "a.png"], (2, 4, 6, 6))


def test_volume_segmentation_learns_per_voxel_classes(tmp_path, capsys):
    """Masks (N, D, H, W): a ball of class 1 in noise, found by a fully convolutional 3-D net."""
    rng = np.random.default_rng(0)
    x = 0.3 * rng.standard_normal((80, 1, 4, 8, 8)).astype(np.float32)
    y = np.zeros((80, 4, 8, 8), np.int64)
    d, h, w = np.meshgrid(np.arange(4), np.arange(8), np.arange(8), indexing="ij")
    for i in range(80):
        ball = (d - rng.uniform(1, 3)) ** 2 + (h - rng.uniform(2, 6)) ** 2 + (w - rng.uniform(2, 6)) ** 2 <= 4
        x[i, 0][ball] += 1.2
        y[i][ball] = 1
    np.savez(tmp_path / "seg.npz", x=x, y=y)
    spec = {"name": "vseg", "inputs": {"v": {"shape": [1, 4, 8, 8]}},
            "layers": [{"id": "c1", "type": "conv3d", "out_channels": 6, "kernel_size": 3, "padding": 1},
                       {"id": "a1", "type": "relu"},
                       {"id": "out", "type": "conv3d", "out_channels": 2, "kernel_size": 3, "padding": 1}],
            "outputs": ["out"],
            "train": {"data": {"dataset": "npz", "path": str(tmp_path / "seg.npz"), "test_fraction": 0.2},
                      "optimizer": {"type": "adam", "lr": 0.02}, "batch_size": 16, "epochs": 6}}
    hist = cnngraph.train(spec, out=tmp_path / "run", stream=io.StringIO())
    assert hist.test["test_mean_iou"] > 0.7
    import yaml
    (tmp_path / "vseg.yaml").write_text(yaml.safe_dump(spec))
    np.save(tmp_path / "one.npy", x[:1])
    assert main(["predict", str(tmp_path / "vseg.yaml"), "--checkpoint", str(tmp_path / "run"), str(tmp_path / "one.npy"),
                 "--masks-out", str(tmp_path / "masks")]) == 0
    assert "voxels:" in capsys.readouterr().out and np.load(tmp_path / "masks" / "masks.npy").shape == (1, 4, 8, 8)


def test_explain_draws_a_volume_at_one_depth(tmp_path, capsys):
    """Feature maps and Grad-CAM of a volume model at an input depth (--slice, default the middle); the layer's
    plane is the one at the same relative depth."""
    from cnngraph.viz.explain import depth_slice
    path = _data(tmp_path)
    cnngraph.train(_spec(path, epochs=2), out=tmp_path / "run", stream=io.StringIO())
    import yaml
    (tmp_path / "vol.yaml").write_text(yaml.safe_dump(_spec(path)))
    np.save(tmp_path / "one.npy", np.load(path)["x"][:1])
    base = ["explain", str(tmp_path / "vol.yaml"), "--checkpoint", str(tmp_path / "run"), "--image",
            str(tmp_path / "one.npy")]
    assert main(base + ["-o", str(tmp_path / "maps.png")]) == 0
    assert main(base + ["--gradcam", "--slice", "-1", "-o", str(tmp_path / "cam.png")]) == 0
    out = capsys.readouterr().out
    assert "4 maps of c" in out and "Grad-CAM at" in out
    for name in ("maps.png", "cam.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(base + ["--slice", "4", "-o", str(tmp_path / "x.png")]) == 1
    assert "--slice 4 is out of range: the volume has 4 depths (0 to 3)" in capsys.readouterr().err
    assert main(base[:4] + ["--filters", "-o", str(tmp_path / "f.png")]) == 0   # depth planes side by side
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "filters of c" in capsys.readouterr().out
    maps = np.arange(2 * 2 * 1 * 1).reshape(2, 2, 1, 1)      # depth pooled from 4 to 2
    assert [int(depth_slice(maps, d, 4)[0, 0, 0]) for d in range(4)] == [0, 0, 1, 1]
