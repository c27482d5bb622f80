"""The training-component examples of docs/plugins.md work as written: their code blocks, joined, are a
plugin file whose optimizer, schedule, dataset (with options) and augmentations train the section's spec."""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

import cnngraph

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
SECTION = "## Write your own optimizer, schedule, dataset or augmentation"


def _blocks(lang: str) -> list[str]:
    text = DOCS.read_text(encoding="utf-8")
    start = text.index(SECTION)
    section = text[start:text.index("\n## ", start + len(SECTION))]
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def test_the_documented_training_components_train_a_spec(fresh, tmp_path):
    (tmp_path / "my_training.py").write_text("\n\n".join(_blocks("python")), encoding="utf-8")
    (yaml,) = _blocks("yaml")
    spec = tmp_path / "uses_my_training.yaml"
    spec.write_text(yaml, encoding="utf-8")
    log = io.StringIO()
    hist = cnngraph.train(str(spec), epochs=1, out=str(tmp_path / "run"), stream=log, allow_plugins=True)
    assert len(hist) == 1 and np.isfinite(hist[0]["train_loss"]) and hist[0]["lr"] == 0.01
    reg = cnngraph.get_registry()
    assert {"sign_sgd", "halving", "stripes", "vertical_flip", "gaussian_noise"} <= (
        set(reg.optimizers) | set(reg.schedules) | set(reg.datasets) | set(reg.augmentations))
    # the spec's data options reached the loader (n_samples: 300), and the plugin optimizer ran
    assert "(stripes, 300 images)" in log.getvalue() and "sign_sgd lr 0.01" in log.getvalue(), log.getvalue()


def test_the_bundled_example_files_are_the_documented_blocks():
    examples = DOCS.parent.parent / "specs" / "examples"
    assert (examples / "my_training.py").read_text(encoding="utf-8") == "\n\n".join(_blocks("python"))
    assert (examples / "uses_my_training.yaml").read_text(encoding="utf-8") == _blocks("yaml")[0]
