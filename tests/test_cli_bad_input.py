"""Bad input on the command line: one-line errors naming what was wrong, exit status 1 or 2, no
traceback (cases found by probing every command with broken files and flags)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnngraph.cli import main


def _fails(argv, capsys, text, code=1):
    """``cnngraph ARGV`` exits with ``code`` (2: argparse's usage error) printing ``text``."""
    if code == 2:
        with pytest.raises(SystemExit) as exit_:
            main([str(a) for a in argv])
        assert exit_.value.code == 2
    else:
        assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err, err


def test_flags_and_output_names_are_checked_before_any_work(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    _fails(["run", "specs/lenet5.yaml", "--input", tmp_path / "x.npy", "--seed", "-1"], capsys,
           "argument --seed: expected a whole number >= 0, found -1", code=2)
    _fails(["run", "specs/lenet5.yaml", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.txt"], capsys,
           "expected a .npy file (or .npz")
    assert not list(tmp_path.glob("y.txt*"))
    _fails(["export-onnx", "specs/lenet5.yaml", "-o", tmp_path / "m.txt"], capsys,
           "expected a file name ending in .onnx")
    _fails(["bench", "--cases", "lenet5:0:infer"], capsys, "expected NET:BATCH:MODE", code=2)
    _fails(["bench", "--cases", "nonet:1:train"], capsys, "no network 'nonet'", code=2)
    _fails(["bench", "--rounds", "0"], capsys, "argument --rounds: expected a whole number >= 1", code=2)
    _fails(["plugins", "--plugin", "specs/lenet5.yaml"], capsys, "expected a Python file (.py)")


def test_broken_inputs_name_the_file(tmp_path, capsys):
    x = np.zeros((1, 1, 28, 28), np.float32)
    x[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    _fails(["run", "specs/lenet5.yaml", "--input", tmp_path / "nan.npy"], capsys,
           "nan.npy: 1 of 784 values are NaN or infinite")
    (tmp_path / "empty.onnx").write_bytes(b"")
    _fails(["import-onnx", tmp_path / "empty.onnx", "-o", tmp_path / "m.yaml"], capsys,
           "empty.onnx: the file is empty; expected an ONNX model")


def test_an_image_class_folder_without_images_is_refused(tmp_path, capsys):
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / cls / "0.png")
    (tmp_path / "imgs" / "c").mkdir()
    _fails(["train", "specs/digits_cnn.yaml", "--data", f"image_folder:{tmp_path / 'imgs'}", "--out",
            tmp_path / "r", "--quiet"], capsys, "class folder(s) c hold no images (.png, .jpg")


def _forged_npy(shape=(10**12, 1, 8, 8)) -> bytes:
    """A .npy of a few bytes whose header declares ``shape`` (233 TiB of float32 for the default)."""
    import io
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return head.getvalue() + bytes(64)


def test_forged_array_headers_are_refused_before_numpy_allocates(tmp_path, capsys):
    import zipfile
    (tmp_path / "h.npy").write_bytes(_forged_npy())
    with zipfile.ZipFile(tmp_path / "h.npz", "w") as z:
        z.writestr("x.npy", _forged_npy())
        z.writestr("y.npy", _forged_npy((10**12,)))
    declares = "the header declares float32 data of shape (1000000000000, 1, 8, 8) (256,000,000,000,000 bytes), " \
               "but only 64 bytes follow it"
    spec, out = "specs/digits_cnn.yaml", ["--out", tmp_path / "r", "--quiet"]
    _fails(["run", spec, "--input", tmp_path / "h.npy"], capsys, f"h.npy: not a readable .npy/.npz array ({declares}")
    _fails(["run", spec, "--input", tmp_path / "h.npz"], capsys, f"h.npz: not a readable .npy/.npz array "
                                                                 f"(member 'x.npy': {declares}")
    _fails(["run", spec, "--input", tmp_path / "h.npy", "--params", tmp_path / "h.npz"], capsys,
           f"h.npz: not a readable .npz of parameters (member 'x.npy': {declares}")
    _fails(["train", spec, "--init", tmp_path / "h.npz", *out], capsys, f"member 'x.npy': {declares}")
    _fails(["train", spec, "--data", f"npz:{tmp_path / 'h.npz'}", *out], capsys, f"member 'x.npy': {declares}")


def test_forged_inputs_to_predict_and_forged_zip_sizes_are_refused(tmp_path):
    """predict and explain read .npy batches through read_inputs; a zip member may also lie about its
    size (NumPy allocates a member's array before decompressing it)."""
    import struct
    import zipfile

    from cnngraph.arrayfile import load_arrays
    from cnngraph.errors import DataError
    from cnngraph.train.images import read_inputs
    (tmp_path / "h.npy").write_bytes(_forged_npy())
    with pytest.raises(DataError, match="h.npy': expected a .npy array .*but only 64 bytes follow it"):
        read_inputs([tmp_path / "h.npy"], (1, 8, 8))
    with zipfile.ZipFile(tmp_path / "f.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _forged_npy((10**9,)))
    data = bytearray((tmp_path / "f.npz").read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):   # the local and central sizes
        struct.pack_into("<I", data, data.find(signature) + offset, 4 * 10**9)
    (tmp_path / "f.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="member 'x.npy': claims 4,000,000,000 bytes from"):
        load_arrays(tmp_path / "f.npz")
    np.savez_compressed(tmp_path / "ok.npz", x=np.zeros((1000, 1000), np.float32), y=np.arange(3))
    np.save(tmp_path / "ok.npy", np.ones((2, 3), np.float64))
    assert load_arrays(tmp_path / "ok.npz")["x"].shape == (1000, 1000) and load_arrays(tmp_path / "ok.npy").sum() == 6


def test_labels_beyond_the_models_classes_are_named_with_file_key_and_index(tmp_path, capsys):
    """Without class names the classes are numbered up to the largest label: one stray label (57 among
    0..9) must be named where it is, not only as '58 classes'."""
    x = np.random.default_rng(0).random((60, 1, 8, 8)).astype(np.float32)
    y = np.arange(60) % 10
    y[5] = 57
    np.savez(tmp_path / "good.npz", x=x, y=y, x_test=x[:10], y_test=np.r_[np.arange(9), 12])
    _fails(["train", "specs/digits_cnn.yaml", "--data", f"npz:{tmp_path / 'good.npz'}", "--out", tmp_path / "r",
            "--quiet"], capsys,
           f"error: '{tmp_path / 'good.npz'}' key 'y': 1 label >= 10 (57 at index 5); '{tmp_path / 'good.npz'}' key "
           f"'y_test': 1 label >= 10 (12 at index 9); loss output 'logits' has 10 units per sample. The data names "
           f"no classes, so they are numbered up to its largest label: correct those labels, or set out_features: "
           f"58 if the data has 58 classes")


def test_labels_beyond_lists_a_few_and_counts_all():
    from cnngraph.train.datasets._common import labels_beyond
    masks = np.zeros((2, 3, 3), np.int64)
    masks[1, 2, 0], masks[0, 0, 1] = 7, 255
    assert labels_beyond([("m", masks)], 4, ignore=255) == "m: 1 label >= 4 (7 at index (1, 2, 0))"
    assert labels_beyond([("y", np.arange(8))], 3) == "y: 5 labels >= 3 (3 at index 3, 4 at index 4, 5 at index 5, ...)"
    assert labels_beyond([("y", np.arange(3))], 3) == ""


def test_run_input_that_is_a_folder_or_missing_is_named_so(tmp_path, capsys):
    for path, what in ((tmp_path, "is a folder"), (tmp_path / "nope.npy", "file not found")):
        assert main(["run", "specs/digits_cnn.yaml", "--input", str(path)]) == 1
        err = capsys.readouterr().err
        assert f"error: {path}: {what}; expected a .npy or .npz array file" in err and "Traceback" not in err
