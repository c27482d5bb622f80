"""Training plots: loss/accuracy curves per epoch and the confusion matrix, as PNG files.

Uses Matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it works headless
and never disturbs an interactive session.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["plot_curves", "plot_confusion"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _series(history: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in history:
        v = row.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            xs.append(int(row["epoch"]))
            ys.append(float(v))
    return xs, ys


def plot_curves(history: Sequence[dict], path, title: str | None = None) -> Path:
    """Write ``path`` (PNG): loss (left) and accuracy (right) per epoch, train vs validation."""
    from matplotlib.ticker import MaxNLocator
    path = Path(path)
    fig = _figure(10, 4)
    for i, (metric, label) in enumerate((("loss", "loss"), ("accuracy", "accuracy"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for split, style in (("train", "-o"), ("val", "-s")):
            xs, ys = _series(history, f"{split}_{metric}")
            if xs:
                ax.plot(xs, ys, style, markersize=3, label="train" if split == "train" else "validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.88 if title else 0.95, wspace=0.22)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_confusion(confusion, classes: Sequence[str], path, title: str | None = None) -> Path:
    """Write ``path`` (PNG): the confusion matrix (rows: true class, columns: predicted) with counts."""
    path = Path(path)
    cm = np.asarray(confusion)
    n = len(classes)
    size = max(4.0, min(0.5 * n + 2, 16.0))
    fig = _figure(size, size)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(cm, cmap="Blues", interpolation="nearest")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels([str(c) for c in classes], rotation=45 if n > 10 else 0)
    ax.set_yticklabels([str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        top = cm.max() if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if top and cm[i, j] > top / 2 else "black")
    ax.set_title(title or "confusion matrix", fontsize=10)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.1, top=0.92)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
