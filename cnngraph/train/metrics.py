"""Classification metrics on NumPy arrays: accuracy, top-k accuracy, confusion matrix, per-class
precision / recall / F1, and a streaming accumulator used by the training loop and ``evaluate``.

Conventions
-----------
``scores`` are a model output of shape (N, C): logits or probabilities, one column per class.
A single column (N, 1) is a binary classifier on logits: class 1 when the score is > 0.
Segmentation scores (N, C, H, W) with masks (N, H, W) count every pixel as one prediction
(pixel accuracy, a confusion matrix of pixels); ``iou`` = TP / (TP + FP + FN) per class.
``confusion[i, j]`` counts samples of true class ``i`` predicted as class ``j`` (rows: truth).
Precision / recall of a class with no predicted / no true samples is undefined; it is reported
as 0.0 (scikit-learn's ``zero_division=0``) and listed in ``undefined``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["predicted_classes", "correct_per_sample", "scored_per_batch", "abs_error_per_sample", "ValueAccumulator", "accuracy", "effective_top_k", "top_k_accuracy", "confusion_matrix",
           "precision_recall", "MetricAccumulator", "format_confusion", "format_per_class", "json_safe"]


def _scores(scores) -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim < 2:
        raise ValueError(f"scores must have shape (N, classes) or (N, classes, H, W), found {s.shape}")
    return s


def _labels(y, scores: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    want = (len(scores),) + scores.shape[2:]
    if y.shape != want:
        raise ValueError(f"labels must have shape {want}, found {y.shape}")
    return y.astype(np.int64, copy=False)


def _per_position(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segmentation scores and masks as (positions, C) scores and (positions,) labels."""
    if s.ndim == 2:
        return s, y
    return np.moveaxis(s, 1, -1).reshape(-1, s.shape[1]), y.reshape(-1)


def predicted_classes(scores) -> np.ndarray:
    """Predicted class per sample (or pixel): argmax over the class axis (first one on ties); for one
    class column, score > 0."""
    s = _scores(scores)
    if s.shape[1] == 1:
        return (s[:, 0] > 0).astype(np.int64)
    return s.argmax(axis=1).astype(np.int64)


def scored_per_batch(y, ignore: int | None = None) -> int:
    """The samples an accuracy counts in a batch of labels: all, or for class labels all but ``ignore``
    (an image of masks always counts once, as the fraction of its scored pixels)."""
    y = np.asarray(y)
    return len(y) if ignore is None or y.ndim > 1 else int((y != ignore).sum())


def correct_per_sample(scores, y, ignore: int | None = None) -> float:
    """How many samples were classified right: for masks, each image counts its fraction of right pixels
    (of those that are not void, ``ignore``)."""
    s = _scores(scores)
    y = _labels(y, s)
    counted = np.ones(y.shape, bool) if ignore is None else y != ignore
    hits = (predicted_classes(s) == y) & counted
    if s.ndim <= 2:   # the right ones among the counted samples (see scored_per_batch)
        return int(hits.sum())
    per_image = hits.reshape(len(s), -1).sum(axis=1) / np.maximum(counted.reshape(len(s), -1).sum(axis=1), 1)
    return float(per_image.sum())


def accuracy(scores, y) -> float:
    """Fraction of samples whose predicted class equals the label (nan for no samples)."""
    s = _scores(scores)
    y = _labels(y, s)
    return float((predicted_classes(s) == y).mean()) if y.size else float("nan")


def _top_k_hits(s: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    if s.shape[1] == 1:                      # binary: top-1 is the only meaningful ranking
        return predicted_classes(s) == y if k < 2 else np.ones(len(y), bool)
    true = s[np.arange(len(y)), y][:, None]
    # Ties are resolved in the label's favour only as far as argmax would: a sample is a hit when
    # fewer than k classes score strictly higher than the true class.
    return (s > true).sum(axis=1) < k


def effective_top_k(top_k: int, num_classes: int | None) -> int:
    """The k worth reporting: 1 (no top-k metric) when k covers every class, where it is always 1.0."""
    return top_k if not num_classes or top_k < max(num_classes, 2) else 1


def top_k_accuracy(scores, y, k: int) -> float:
    """Fraction of samples whose label is among the ``k`` highest scores."""
    if k < 1:
        raise ValueError(f"k must be >= 1, found {k}")
    s, y = _per_position(_scores(scores), _labels(y, _scores(scores)))
    return float(_top_k_hits(s, y, k).mean()) if len(y) else float("nan")


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted class."""
    t = np.asarray(y_true, np.int64).ravel()
    p = np.asarray(y_pred, np.int64).ravel()
    if len(t) != len(p):
        raise ValueError(f"y_true has {len(t)} samples, y_pred {len(p)}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if len(a) and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} holds classes outside [0, {num_classes}): {a.min()}..{a.max()}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def precision_recall(confusion) -> dict:
    """Per-class ``precision``, ``recall``, ``f1``, ``iou`` and ``support`` lists from a confusion matrix,
    their unweighted means (``macro_*``, ``mean_iou``) and ``undefined`` (which class/metric was 0/0).

    As scikit-learn defines them: precision is undefined (None) for a class never predicted, recall for a
    class with no samples, and F1 (``2 tp / (2 tp + fp + fn)``) and IoU for a class neither present nor
    predicted. Undefined values are left out of the means (scikit-learn's ``zero_division=np.nan``): held-out
    data with only some classes is not scored 0 on the others."""
    cm = np.asarray(confusion, np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    union = predicted + actual - tp          # tp + fp + fn
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, actual)
    f1 = _ratio(2 * tp, predicted + actual)
    iou = _ratio(tp, union)
    undefined = [f"{name}[{i}]" for name, values in (("precision", precision), ("recall", recall), ("f1", f1),
                                                     ("iou", iou)) for i, v in enumerate(values) if v is None]
    return {"precision": precision, "recall": recall, "f1": f1, "iou": iou,
            "support": actual.astype(np.int64).tolist(),
            "mean_iou": _mean(iou), "macro_precision": _mean(precision), "macro_recall": _mean(recall),
            "macro_f1": _mean(f1), "undefined": undefined}


def _ratio(num: np.ndarray, den: np.ndarray) -> list:
    """``num / den`` per class as floats, None where ``den`` is 0 (undefined)."""
    return [float(n / d) if d > 0 else None for n, d in zip(num, den)]


def _mean(values: list) -> float:
    """The mean of the defined values (NaN when none is)."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else float("nan")


@dataclass
class MetricAccumulator:
    """Streams batches of (scores, labels, batch loss) and reports epoch-level metrics.

    ``add(scores, y, loss_sum)`` takes the *sum* of the per-sample losses of the batch (the loss
    op's mean times the batch size). ``result(prefix)`` gives ``{prefix}loss``, ``{prefix}accuracy``,
    ``{prefix}top{k}_accuracy`` (when ``top_k`` > 1); with ``num_classes`` set the confusion matrix
    is accumulated too (``confusion()``, ``per_class()``), and for segmentation masks the result
    has ``{prefix}mean_iou``. ``loss`` is per image, ``accuracy`` per prediction (pixel for masks).
    """

    top_k: int = 1
    num_classes: int | None = None
    count: int = 0           # predictions: images, or pixels for masks
    images: int = 0
    loss_sum: float = 0.0
    loss_weight: float = 0.0    # what loss_sum counts: images, or a weighted loss's summed weights
    correct: int = 0
    top_k_correct: int = 0
    dense: bool = False      # masks seen
    ignore: int | None = None   # the mask value of void pixels, left out of every metric
    _cm: np.ndarray | None = field(default=None, repr=False)

    def add(self, scores, y, loss_sum: float | None = None, loss_weight: float | None = None) -> None:
        s = _scores(scores)
        y = _labels(y, s)
        self.images += len(s)
        self.loss_weight += len(s) if loss_weight is None else loss_weight
        self.dense = self.dense or s.ndim > 2
        s, y = _per_position(s, y)
        if self.ignore is not None:
            keep = y != self.ignore
            s, y = s[keep], y[keep]
        pred = predicted_classes(s)
        self.count += len(y)
        if loss_sum is not None:
            self.loss_sum += float(loss_sum)
        self.correct += int((pred == y).sum())
        if self.top_k > 1:
            self.top_k_correct += int(_top_k_hits(s, y, self.top_k).sum())
        if self.num_classes is not None:
            cm = confusion_matrix(y, pred, self.num_classes)
            self._cm = cm if self._cm is None else self._cm + cm

    @property
    def loss(self) -> float:
        return self.loss_sum / self.loss_weight if self.loss_weight else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else float("nan")

    def result(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}loss": self.loss, f"{prefix}accuracy": self.accuracy}
        if self.top_k > 1:
            out[f"{prefix}top{self.top_k}_accuracy"] = self.top_k_correct / self.count if self.count else float("nan")
        if self.dense and self.num_classes is not None:
            out[f"{prefix}mean_iou"] = self.per_class()["mean_iou"]
        return out

    def confusion(self) -> np.ndarray:
        if self.num_classes is None:
            raise ValueError("MetricAccumulator(num_classes=None) does not keep a confusion matrix")
        return self._cm if self._cm is not None else np.zeros((self.num_classes,) * 2, np.int64)

    def per_class(self) -> dict:
        return precision_recall(self.confusion())


@dataclass
class ValueAccumulator:
    """:class:`MetricAccumulator`'s counterpart for regression: streams (predictions, target values,
    batch loss) and reports ``{prefix}loss`` (per image), ``{prefix}mae`` and ``{prefix}rmse`` (per value)."""

    count: int = 0           # values compared
    images: int = 0
    loss_sum: float = 0.0
    loss_weight: float = 0.0    # what loss_sum counts (images)
    abs_sum: float = 0.0
    sq_sum: float = 0.0

    def add(self, predictions, y, loss_sum: float | None = None, loss_weight: float | None = None) -> None:
        p = np.asarray(predictions, np.float64).reshape(len(predictions), -1)
        t = np.asarray(y, np.float64).reshape(len(y), -1)
        if p.shape != t.shape:
            raise ValueError(f"predictions {np.shape(predictions)} and targets {np.shape(y)} differ in size")
        d = p - t
        self.images += len(p)
        self.loss_weight += len(p) if loss_weight is None else loss_weight
        self.count += d.size
        self.abs_sum += float(np.abs(d).sum())
        self.sq_sum += float((d * d).sum())
        if loss_sum is not None:
            self.loss_sum += float(loss_sum)

    @property
    def loss(self) -> float:
        return self.loss_sum / self.loss_weight if self.loss_weight else float("nan")

    @property
    def mae(self) -> float:
        return self.abs_sum / self.count if self.count else float("nan")

    def result(self, prefix: str = "") -> dict[str, float]:
        rmse = math.sqrt(self.sq_sum / self.count) if self.count else float("nan")
        return {f"{prefix}loss": self.loss, f"{prefix}mae": self.mae, f"{prefix}rmse": rmse}


def abs_error_per_sample(predictions, y) -> float:
    """Sum over the batch of each sample's mean absolute error (the running ``mae`` of the progress line)."""
    d = np.abs(np.asarray(predictions, np.float64).reshape(len(y), -1) - np.asarray(y, np.float64).reshape(len(y), -1))
    return float(d.mean(axis=1).sum())


def format_per_class(report: dict, classes: Sequence[str], iou: bool = False) -> str:
    """A text table: class, precision, recall, f1 (and IoU with ``iou``), support."""
    width = max([len(str(c)) for c in classes] + [5])
    extra = "     iou" if iou else ""
    lines = [f"{'class'.ljust(width)}  precision  recall     f1{extra}  support"]
    for i, name in enumerate(classes):
        cell = "  " + _cell(report["iou"][i], 6) if iou else ""
        lines.append(f"{str(name).ljust(width)}  {_cell(report['precision'][i], 9)}  {_cell(report['recall'][i], 6)}  "
                     f"{_cell(report['f1'][i], 5)}{cell}  {report['support'][i]:7d}")
    cell = "  " + _cell(report["mean_iou"], 6) if iou else ""
    lines.append(f"{'macro'.ljust(width)}  {_cell(report['macro_precision'], 9)}  {_cell(report['macro_recall'], 6)}  "
                 f"{_cell(report['macro_f1'], 5)}{cell}  {sum(report['support']):7d}")
    return "\n".join(lines)


def _cell(value, width: int) -> str:
    """A table value; ``-`` where it is undefined (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:{width}.4f}"


def format_confusion(cm, classes: Sequence[str]) -> str:
    """The confusion matrix as text (rows: true class, columns: predicted class)."""
    cm = np.asarray(cm)
    names = [str(c) for c in classes]
    cell = max([len(n) for n in names] + [len(str(int(cm.max()))) if cm.size else 1, 3])
    head = "true\\pred".ljust(max(cell, 9)) + " " + " ".join(n.rjust(cell) for n in names)
    lines = [head]
    for i, n in enumerate(names):
        lines.append(n.ljust(max(cell, 9)) + " " + " ".join(str(int(v)).rjust(cell) for v in cm[i]))
    return "\n".join(lines)


def json_safe(v):
    """``v`` made JSON-safe for reports and checkpoint meta: NaN/inf → None, NumPy scalars → Python."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
