"""Training plots: loss/accuracy curves per epoch and the confusion matrix, as PNG files.

The curves are drawn with Pillow; the confusion matrix uses Matplotlib's Agg canvas directly (no
pyplot, no global backend switch). Both work headless and never disturb an interactive session.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["plot_curves", "curves_image", "plot_confusion"]


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
        if v is not None and math.isfinite(float(v)):   # a diverged epoch's inf/NaN is left out
            xs.append(int(row["epoch"]))
            ys.append(float(v))
    return xs, ys


# Pillow, not matplotlib, for the curves: `train` writes them at the end of every run, and importing
# matplotlib's figure stack alone takes ~0.6 s (a quarter of a 20-epoch digits run); Pillow draws
# the same chart in ~30 ms. Colours are matplotlib's defaults, so both pictures look alike.
_TRAIN, _VAL = (31, 119, 180), (255, 127, 14)
_INK, _GRID = (40, 40, 40), (225, 225, 225)


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)     # scalable built-in font (Pillow >= 10.1 with FreeType)
    except TypeError:  # pragma: no cover - older Pillow: fixed bitmap font
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int(math.ceil((hi - first) / step - 1e-9)) + 1)]


def _tick_label(v: float, step: float) -> str:
    digits = max(0, -int(math.floor(math.log10(step)))) if step < 1 else 0
    return f"{v:.{digits}f}"


def _panel(draw, box, series, ylabel, fonts):
    """One chart in ``box`` (left, top, right, bottom): axes, grid, ticks, lines with markers, legend."""
    left, top, right, bottom = box
    small, normal = fonts
    xs_all = [x for xs, _, _, _ in series for x in xs]
    ys_all = [y for _, ys, _, _ in series for y in ys]
    x0, x1 = (min(xs_all), max(xs_all)) if xs_all else (1, 2)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    yticks = _nice_ticks(min(ys_all), max(ys_all), 6) if ys_all else [0.0, 1.0]
    y0, y1 = yticks[0], yticks[-1]
    xstep = max(1, math.ceil((x1 - x0) / 10))
    xticks = list(range(int(math.ceil(x0)), int(x1) + 1, xstep))

    def px(x):
        return left + (x - x0) / (x1 - x0) * (right - left)

    def py(y):
        return bottom - (y - y0) / (y1 - y0) * (bottom - top)

    ystep = yticks[1] - yticks[0] if len(yticks) > 1 else 1.0
    for y in yticks:
        draw.line([(left, py(y)), (right, py(y))], fill=_GRID)
        label = _tick_label(y, ystep)
        w = draw.textlength(label, font=small)
        draw.text((left - 6 - w, py(y) - 7), label, fill=_INK, font=small)
    for x in xticks:
        draw.line([(px(x), top), (px(x), bottom)], fill=_GRID)
        label = str(x)
        draw.text((px(x) - draw.textlength(label, font=small) / 2, bottom + 5), label, fill=_INK, font=small)
    draw.rectangle([left, top, right, bottom], outline=_INK)
    draw.text(((left + right) / 2 - draw.textlength("epoch", font=normal) / 2, bottom + 22), "epoch",
              fill=_INK, font=normal)
    draw.text((left - 58, top - 24), ylabel, fill=_INK, font=normal)
    for xs, ys, colour, square in series:
        points = [(px(x), py(y)) for x, y in zip(xs, ys)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for cx, cy in points:
            r = 3
            if square:
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
            else:
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    # legend on the right, at the top unless the curves end up there (accuracy)
    entries = [(name, colour) for name, (xs, _, colour, _) in zip(("train", "validation"), series) if xs]
    if entries:
        width = max(draw.textlength(n, font=small) for n, _ in entries) + 40
        ends_high = any(ys and ys[-1] > (y0 + y1) / 2 for _, ys, _, _ in series)
        lx = right - width - 8
        ly = bottom - 16 - 18 * len(entries) if ends_high else top + 8
        draw.rectangle([lx, ly, lx + width, ly + 8 + 18 * len(entries)], fill=(255, 255, 255), outline=_GRID)
        for k, (name, colour) in enumerate(entries):
            yy = ly + 13 + 18 * k
            draw.line([(lx + 6, yy), (lx + 26, yy)], fill=colour, width=2)
            draw.text((lx + 32, yy - 7), name, fill=_INK, font=small)


def plot_curves(history: Sequence[dict], path, title: str | None = None) -> Path:
    """Write ``path`` (PNG, 1000x400): loss (left) and accuracy (right; mean absolute error for a
    regression) per epoch, train vs validation."""
    path = Path(path)
    img = curves_image(history, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def curves_image(history: Sequence[dict], title: str | None = None):
    """The picture :func:`plot_curves` writes, as a Pillow image."""
    from PIL import Image, ImageDraw
    width, height = 1000, 400
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    fonts = (_font(12), _font(14))
    top = 60 if title else 40
    if title:
        draw.text((width / 2 - draw.textlength(title, font=_font(16)) / 2, 10), title, fill=_INK, font=_font(16))
    second = "mae" if any("train_mae" in row for row in history) else "accuracy"   # regression: no accuracy
    for i, metric in enumerate(("loss", second)):
        series = []
        for split, colour, square in (("train", _TRAIN, False), ("val", _VAL, True)):
            xs, ys = _series(history, f"{split}_{metric}")
            series.append((xs, ys, colour, square))
        left = 75 + i * width // 2
        _panel(draw, (left, top, left + width // 2 - 105, height - 55), series, metric, fonts)
    return img


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
    from . import make_parent
    make_parent(path)
    fig.savefig(path, format="png")
    return path
