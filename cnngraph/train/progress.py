"""Per-epoch progress output of the training loop.

On a terminal (``stream.isatty()``) a bar is redrawn in place at most ``refresh`` times a second
with the running loss, accuracy and images/s, and replaced by the epoch's summary line at the end.
The bar line stays shorter than the terminal is wide (a longer one would wrap, and each redraw would
leave a line behind): the bar shrinks first, then images/s, the accuracy, the bar itself, the loss and
the step count are dropped in that order.
Anywhere else (logs, pipes, CI) exactly one line is written per epoch. ``quiet`` writes nothing.
:class:`PhaseTimer` collects the ``--profile`` report (time per phase and per layer).
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

__all__ = ["EpochProgress", "format_epoch", "PhaseTimer"]

BAR_CELLS, MIN_BAR_CELLS = 24, 8


def _short(key: str) -> str:
    return key.replace("accuracy", "acc")


def format_epoch(row: dict, epochs: int, unit: str = "img") -> str:
    """One summary line for a history row, e.g.
    ``epoch  3/20  loss 0.1234 acc 0.9650 | val_loss 0.0812 val_acc 0.9777 | lr 0.04500  3,421 img/s  0.3s``."""
    score = f"mae {row['train_mae']:.4f}" if "train_mae" in row else f"acc {row['train_accuracy']:.4f}"
    parts = [f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}", f"loss {row['train_loss']:.4f} {score}"]
    val = [f"{_short(k)} {v:.4f}" for k, v in row.items() if k.startswith("val_") and v is not None]
    if val:
        parts.append("| " + " ".join(val))
    parts.append(f"| lr {row['lr']:.5g}")
    parts.append(f"{row['images_per_second']:,.0f} {unit}/s")
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)


class EpochProgress:
    """Progress of one epoch: ``update`` after each step, ``finish(row)`` at the end."""

    def __init__(self, epoch: int, epochs: int, steps: int, stream: TextIO | None = None, quiet: bool = False,
                 refresh: float = 10.0, tty: bool | None = None, metric: str = "acc", unit: str = "img"):
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.unit = unit        # what a sample is in the rate: "img" (images), "seq" (sequences) or "vol" (volumes)
        self.metric = metric    # what ``correct`` sums per image: "acc" (right or not) or "mae" (its error)
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        if tty is None:
            try:
                tty = bool(self.stream.isatty())
            except (AttributeError, ValueError):
                tty = False
        self.tty = tty and not quiet
        self.min_interval = 1.0 / refresh
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._width = 0
        self.step = 0
        self.images = 0
        self.loss_sum = 0.0
        self.loss_weight = 0.0   # what loss_sum counts: images, or a weighted loss's summed weights
        self.scored = 0          # what ``correct`` counts: images, less those whose label is ignored
        self.correct = 0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.loss_weight if self.loss_weight else float("nan")

    @property
    def score(self) -> float:
        return self.correct / self.scored if self.scored else float("nan")

    def update(self, images: int, loss_sum: float, correct: int, loss_weight: float | None = None,
               scored: int | None = None) -> None:
        self.step += 1
        self.images += images
        self.loss_sum += loss_sum
        self.loss_weight += images if loss_weight is None else loss_weight
        self.scored += images if scored is None else scored
        self.correct += correct
        if not self.tty:
            return
        now = time.perf_counter()
        if now - self._last_draw < self.min_interval and self.step < self.steps:
            return
        self._last_draw = now
        limit = _columns(self.stream) - 1   # the last column would wrap the line on some terminals
        text = self._bar_line(self.images / max(now - self.start, 1e-9), limit)
        self._write("\r" + text.ljust(min(self._width, limit)))
        self._width = len(text)

    def _bar_line(self, rate: float, limit: int) -> str:
        """The bar line in at most ``limit`` characters (see the module docstring)."""
        head = f"epoch {self.epoch}/{self.epochs}"
        fields = [f"{self.step}/{self.steps}", f"loss {self.loss:.4f}", f"{self.metric} {self.score:.4f}",
                  f"{rate:,.0f} {self.unit}/s"]
        for bar, n in ((True, 4), (True, 3), (True, 2), (False, 2), (False, 1)):   # richest first
            tail = "  ".join(fields[:n])
            if bar:
                cells = min(BAR_CELLS, limit - len(head) - len(tail) - 4)   # 4: " [" and "] "
                if cells >= MIN_BAR_CELLS:
                    return f"{head} [{'#' * int(self.step / max(self.steps, 1) * cells):<{cells}}] {tail}"
            elif len(head) + 2 + len(tail) <= limit:
                return f"{head}  {tail}"
        return head[:max(limit, 0)]

    def finish(self, row: dict) -> None:
        if self.quiet:
            return
        line = format_epoch(row, self.epochs, self.unit)
        if self.tty:
            self._write("\r" + line.ljust(self._width) + "\n")
        else:
            self._write(line + "\n")

    def clear(self) -> None:
        """End an unfinished bar line (before printing a message mid-epoch)."""
        if self.tty and self._width:
            self._write("\n")
            self._width = 0

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # closed pipe / stream: progress is best effort
            pass


def _columns(stream) -> int:
    """The terminal's width: $COLUMNS or stdout's terminal (``shutil.get_terminal_size``), else the
    progress stream's own terminal (stdout redirected), else 80."""
    cols = shutil.get_terminal_size((0, 0)).columns
    if cols <= 0:
        try:
            cols = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            pass
    return cols if cols > 0 else 80


@dataclass
class PhaseTimer:
    """Wall time per training phase and per layer (``--profile``); records nothing when disabled."""

    enabled: bool
    phases: dict = field(default_factory=dict)
    layers: dict = field(default_factory=dict)
    _t: float = 0.0

    def add(self, phase: str, seconds: float) -> None:
        if self.enabled:
            self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def hook(self, model):
        """An ``on_output`` callback for ``model.forward`` timing each layer (None when disabled)."""
        if not self.enabled:
            return None
        self._t = time.perf_counter()

        def on_output(node, y):
            now = time.perf_counter()
            key = (node, model._tape_graph.nodes[node]["type"])   # fused training layers: "conv2d+relu"
            self.layers[key] = self.layers.get(key, 0.0) + now - self._t
            self._t = now
        return on_output

    def mark(self, t: float) -> None:
        """The first layer timed by :meth:`hook` from now on starts at ``t`` (after input preparation)."""
        self._t = t

    def report(self) -> str:
        total = sum(self.phases.values()) or 1e-12
        lines = ["profile (wall time over the run)", f"  {'phase':<22}{'seconds':>9}{'share':>8}"]
        for k, v in sorted(self.phases.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {k:<22}{v:9.3f}{v / total * 100:7.1f}%")
        if self.layers:
            ftotal = sum(self.layers.values()) or 1e-12
            lines.append("  forward per layer (training steps; the first includes input preparation)")
            for (node, typ), v in sorted(self.layers.items(), key=lambda kv: -kv[1]):
                lines.append(f"    {node:<20}{typ:<16}{v:9.3f}{v / ftotal * 100:7.1f}%")
        return "\n".join(lines)
