"""The progress bar fits the terminal: a line as wide as the terminal wraps, and each redraw leaves a line."""
import io

import pytest

from cnngraph.train.progress import EpochProgress


def _draws(monkeypatch, columns, epoch=10, epochs=10, steps=135, finish=False):
    """Every bar line drawn over one epoch (the probe's: epoch 10 of 10, 135 steps of batch 8) in a terminal
    ``columns`` wide, and the whole output."""
    monkeypatch.setenv("COLUMNS", str(columns))          # what shutil.get_terminal_size reads first
    stream = io.StringIO()
    progress = EpochProgress(epoch, epochs, steps, stream=stream, tty=True, refresh=1e9)
    progress.start -= 1.0                                # about 1,080 img/s at the end
    for _ in range(steps):
        progress.update(8, 8 * 0.1234, 7)
    if finish:
        progress.finish({"epoch": epoch, "train_loss": 0.1234, "train_accuracy": 0.875, "lr": 0.05,
                         "images_per_second": 1080.0, "seconds": 1.0})
    text = stream.getvalue()
    return text.split("\r")[1:], text


@pytest.mark.parametrize("columns", [200, 80, 79, 66, 60, 50, 40, 30, 20, 12, 5, 1])
def test_each_bar_line_is_narrower_than_the_terminal(monkeypatch, columns):
    lines, text = _draws(monkeypatch, columns)
    assert len(lines) == 135 and "\n" not in text         # redrawn in place: nothing wraps, no new line
    assert max(len(line) for line in lines) <= columns - 1
    assert all(line.startswith("epoch 10/10"[:columns - 1]) for line in lines)


@pytest.mark.parametrize("columns,shown,dropped", [
    (200, ["[" + "#" * 24 + "]", "135/135", "loss 0.1234", "acc 0.8750", "img/s"], []),
    (80, ["[####", "] 135/135", "loss 0.1234", "acc 0.8750", "img/s"], ["#" * 24]),    # the bar shrinks first
    (60, ["[####", "135/135", "loss 0.1234", "acc 0.8750"], ["img/s"]),
    (50, ["[####", "135/135", "loss 0.1234"], ["acc", "img/s"]),
    (34, ["135/135", "loss 0.1234"], ["[", "acc"]),                                   # then the bar goes
    (25, ["135/135"], ["loss"]),
])
def test_the_bar_shrinks_first_then_the_less_important_fields_go(monkeypatch, columns, shown, dropped):
    last = _draws(monkeypatch, columns)[0][-1].rstrip()
    assert all(s in last for s in shown) and not any(d in last for d in dropped), last


def test_a_terminal_that_shrinks_between_draws_gets_no_padding_past_its_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    stream = io.StringIO()
    progress = EpochProgress(1, 1, 4, stream=stream, tty=True, refresh=1e9)
    progress.update(8, 1.0, 8)
    monkeypatch.setenv("COLUMNS", "40")
    progress.update(8, 1.0, 8)
    assert len(stream.getvalue().split("\r")[-1]) <= 39


def test_the_epoch_summary_replaces_the_bar(monkeypatch):
    lines, text = _draws(monkeypatch, 80, finish=True)
    assert text.endswith("\n") and text.count("\n") == 1
    assert lines[-1].startswith("epoch 10/10  loss 0.1234 acc 0.8750  | lr 0.05  1,080 img/s")
