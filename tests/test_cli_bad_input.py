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
