"""The README's Python examples run as written (docs that rot mislead new users first)."""
from __future__ import annotations

import re
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_hand_written_training_loop_runs_and_learns(tmp_path, monkeypatch, capsys):
    (loop,) = [b for b in _python_blocks() if "opt.step(" in b]
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "loop.py"
    path.write_text(loop)
    runpy.run_path(str(path))
    losses = [float(line.split()[1]) for line in capsys.readouterr().out.splitlines()]
    assert len(losses) == 5 and losses[-1] < 0.8 * losses[0]
    assert (tmp_path / "runs" / "seg_by_hand").is_dir()


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_every_python_block_at_least_compiles(index):
    compile(_python_blocks()[index], f"README python block {index}", "exec")


def test_the_normalisation_example_keeps_the_raw_pixels(tmp_path, monkeypatch):
    """apply_normalization works in place: the example passes a copy, so `raw` still holds the pixels to draw."""
    import cnngraph
    (block,) = [b for b in _python_blocks() if "apply_normalization(" in b]
    model = cnngraph.compile({"name": "tiny", "inputs": {"image": {"shape": [1, 8, 8]}},
                              "layers": [{"id": "flat", "type": "flatten"},
                                         {"id": "logits", "type": "dense", "out_features": 10}],
                              "outputs": ["logits"]})
    model.save(tmp_path / "runs" / "digits_cnn" / "checkpoint" / "best",
               meta={"dataset": {"mean": [4.9], "std": [6.0], "classes": [str(i) for i in range(10)],
                                 "pixel_scale": 16.0}})
    (tmp_path / "docs" / "images").mkdir(parents=True)
    shutil.copy(README.parent / "docs" / "images" / "digit3.png", tmp_path / "docs" / "images")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "normalise.py"
    path.write_text(block)
    names = runpy.run_path(str(path))
    raw, x = names["raw"], names["x"]
    assert raw.min() >= 0 and raw.max() <= 16 and raw.max() > 8     # the pixels, in 0..pixel_scale
    np.testing.assert_allclose(x, (raw - 4.9) / 6.0, rtol=1e-5, atol=1e-6)
