"""The README's Python examples run as written (docs that rot mislead new users first)."""
from __future__ import annotations

import re
import runpy
from pathlib import Path

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
