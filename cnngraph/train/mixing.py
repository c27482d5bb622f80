"""MixUp and CutMix (``train.mixup`` / ``train.cutmix``): each training batch is blended with a shuffled copy of
itself and the labels become the same blend of the two one-hot labels (Zhang et al. 2018; Yun et al. 2019), a
regulariser against overfitting on small datasets. As timm's batch mode: one mixing weight per batch,
lam ~ Beta(alpha, alpha); MixUp takes lam * x + (1 - lam) * x[perm], CutMix pastes a box of x[perm] covering a
1 - lam share of the image (a span of a sequence) and sets lam to the share actually kept. With both given,
each batch uses one of them, chosen with equal chance; ``prob`` is the chance that a batch is mixed at all."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from ..paramtypes import StrictSettings

__all__ = ["MixSettings", "BatchMixer", "Mixed", "mixing_problem"]


class MixSettings(StrictSettings):
    alpha: float = Field(..., gt=0, le=100, description="Beta(alpha, alpha) of the mixing weight (0.2 for MixUp "
                                                         "and 1.0 for CutMix are the usual choices)")
    prob: float = Field(1.0, ge=0, le=1, description="chance that a batch is mixed")


@dataclass
class Mixed:
    """A mixed batch: the images, and the blend of the labels as ``lam`` of ``y`` plus ``1 - lam`` of ``y[perm]``."""

    x: np.ndarray
    perm: np.ndarray
    lam: float

    def targets(self, loss, y: np.ndarray, dtype) -> np.ndarray:
        """The loss's targets for the blend: class probabilities (N, classes) for a loss that takes class indices
        (cross_entropy also takes probabilities), else the blend of its own float targets (one-hot, or 0/1)."""
        y = np.asarray(y)
        if loss.encoding == "index" and loss.op.index_targets:
            eye = np.eye(loss.units, dtype=dtype)
            a, b = eye[y.astype(np.int64)], eye[y[self.perm].astype(np.int64)]
        else:
            a, b = loss.targets(y, np, dtype), loss.targets(y[self.perm], np, dtype)
        return (self.lam * a + (1 - self.lam) * b).astype(dtype, copy=False)

    def major_labels(self, y: np.ndarray) -> np.ndarray:
        """The label of larger weight per sample (what training accuracy scores)."""
        return y if self.lam >= 0.5 else np.asarray(y)[self.perm]


class BatchMixer:
    """Draws the mixing of each batch from the run's generator (so a resumed run repeats it bit for bit)."""

    def __init__(self, mixup: MixSettings | None, cutmix: MixSettings | None):
        # prob 0 mixes nothing: such a setting draws nothing either (the run equals one without it)
        self.mixup, self.cutmix = (s if s is not None and s.prob > 0 else None for s in (mixup, cutmix))

    def __bool__(self) -> bool:
        return self.mixup is not None or self.cutmix is not None

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> Mixed | None:
        """The mixed batch, or None when this batch stays as it is."""
        kinds = [k for k in ("mixup", "cutmix") if getattr(self, k) is not None]
        if not kinds:
            return None
        kind = kinds[0] if len(kinds) == 1 else kinds[int(rng.integers(2))]
        settings = getattr(self, kind)
        if len(x) < 2 or rng.random() >= settings.prob:
            return None
        lam = float(rng.beta(settings.alpha, settings.alpha))
        perm = rng.permutation(len(x))
        if kind == "mixup":
            return Mixed((lam * x + (1 - lam) * x[perm]).astype(x.dtype, copy=False), perm, lam)
        return _cutmix(x, perm, lam, rng)


def _cutmix(x: np.ndarray, perm: np.ndarray, lam: float, rng: np.random.Generator) -> Mixed:
    """Paste one box of x[perm] (side ratio sqrt(1 - lam) of each spatial axis; a span of 1 - lam of a
    sequence), centred uniformly and clipped to the image; lam becomes the share of x kept."""
    sizes = x.shape[2:]
    ratio = (1 - lam) ** (1 / len(sizes))
    box = []
    for n in sizes:
        cut, centre = int(n * ratio), int(rng.integers(n))
        box.append(slice(max(centre - cut // 2, 0), min(centre + cut // 2 + cut % 2, n)))
    out = x.copy()
    out[(slice(None), slice(None), *box)] = x[perm][(slice(None), slice(None), *box)]
    area = np.prod([s.stop - s.start for s in box]) / np.prod(sizes)
    return Mixed(out, perm, float(1 - area))


def mixing_problem(loss, dataset) -> str | None:
    """Why batches of this run cannot be mixed ('' / None when they can): mixing blends class labels, so the
    targets must be classes of whole samples and the loss must take their blend (class probabilities)."""
    from ..errors import ShapeError
    if dataset.dense:
        return "the labels are segmentation masks"
    if dataset.values:
        return "the targets are values to regress"
    if getattr(loss.op.p, "ignore_index", None) is not None:
        return "the loss ignores a class index (ignore_index), which a blend of labels cannot keep"
    if loss.encoding == "index" and loss.op.index_targets:
        try:
            loss.op.infer_shape([loss.shape, loss.shape])
        except ShapeError:
            return f"loss '{loss.op.type}' takes class indices only, not the class probabilities a blend gives"
    return None
