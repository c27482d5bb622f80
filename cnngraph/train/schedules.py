"""Learning-rate schedules, evaluated before every optimizer step.

``schedule.lr(base_lr, epoch, step, steps_per_epoch, total_epochs)`` is a pure function
of the position in training (``epoch`` 0-based, ``step`` 0-based within the epoch), so a
resumed run needs no schedule state: the training loop just passes the same position.

Warmup (every schedule, ``warmup_epochs`` may be fractional): over the first
``W = round(warmup_epochs * steps_per_epoch)`` steps the rate is multiplied by ``t / W``
for global step ``t``, i.e. 0 at the very first step rising linearly to the full rate at
step ``W``. Decays that depend on the end of training (``cosine``, ``linear``) start after
the warmup and run over the remaining epochs; the epoch-indexed decays (``step``,
``multistep``, ``exponential``) count epochs from the start of training, like PyTorch.

Per-epoch closed forms equal torch.optim.lr_scheduler stepped once per epoch:
``step`` = StepLR, ``multistep`` = MultiStepLR, ``exponential`` = ExponentialLR,
``cosine`` = CosineAnnealingLR(T_max=total_epochs), ``linear`` =
LinearLR(start_factor=1, total_iters=total_epochs). ``cosine`` and ``linear`` also
offer ``per_step: true`` to decay smoothly within epochs.
"""
from __future__ import annotations

import bisect
import math
from typing import ClassVar

from pydantic import ConfigDict, Field, field_validator

from ..paramtypes import StrictSettings
from .optim import build_from_registry, make_params

__all__ = [
    "Schedule", "Constant", "Step", "MultiStep", "Exponential", "Cosine", "Linear",
    "SCHEDULES", "build_schedule",
]


class _Params(StrictSettings):
    model_config = ConfigDict(frozen=True)

    warmup_epochs: float = Field(0.0, ge=0)


class Schedule:
    """Base class: warmup and argument checks; subclasses implement ``_lr``."""

    type: ClassVar[str]
    Params: ClassVar[type[_Params]] = _Params

    def __init__(self, params: _Params | dict | None = None, **settings):
        """``Cosine(warmup_epochs=1)``, ``Cosine({"warmup_epochs": 1})`` or ``Cosine(Cosine.Params(...))``."""
        self.params = make_params(type(self), params, settings, "schedule")

    def lr(self, base_lr: float, epoch: int, step: int, steps_per_epoch: int,
           total_epochs: int) -> float:
        """Learning rate for ``step`` of ``epoch`` (both 0-based)."""
        if steps_per_epoch < 1 or total_epochs < 1:
            raise ValueError(
                f"steps_per_epoch ({steps_per_epoch}) and total_epochs ({total_epochs}) "
                "must be at least 1")
        if self.params.warmup_epochs and self.params.warmup_epochs >= total_epochs:
            raise ValueError(
                f"schedule '{self.type}': warmup_epochs ({self.params.warmup_epochs}) must be "
                f"less than the number of training epochs ({total_epochs})")
        t = epoch * steps_per_epoch + step
        rate = self._lr(float(base_lr), _Position(epoch, t, steps_per_epoch, total_epochs,
                                                  self._warmup_steps(steps_per_epoch)))
        return float(rate * self._warmup_factor(t, steps_per_epoch))

    def _warmup_steps(self, steps_per_epoch: int) -> int:
        w = self.params.warmup_epochs
        return max(1, round(w * steps_per_epoch)) if w > 0 else 0

    def _warmup_factor(self, t: int, steps_per_epoch: int) -> float:
        w = self._warmup_steps(steps_per_epoch)
        return t / w if t < w else 1.0

    def _lr(self, base_lr: float, pos: "_Position") -> float:
        raise NotImplementedError


class _Position:
    """Where training is, in the units the decays need."""

    __slots__ = ("epoch", "t", "steps_per_epoch", "total_epochs", "warmup_steps")

    def __init__(self, epoch, t, steps_per_epoch, total_epochs, warmup_steps):
        self.epoch, self.t = epoch, t
        self.steps_per_epoch, self.total_epochs = steps_per_epoch, total_epochs
        self.warmup_steps = warmup_steps

    def progress_after_warmup(self, per_step: bool, warmup_epochs: float) -> float:
        """Fraction in [0, 1] of the post-warmup part of training done at this point."""
        if per_step:
            done = self.t - self.warmup_steps
            total = self.total_epochs * self.steps_per_epoch - self.warmup_steps
        else:
            done = self.epoch - warmup_epochs
            total = self.total_epochs - warmup_epochs
        return min(max(done / total, 0.0), 1.0)


class Constant(Schedule):
    """The base rate throughout (after any warmup)."""

    type = "constant"

    def _lr(self, base_lr, pos):
        return base_lr


class Step(Schedule):
    """Multiply by ``gamma`` every ``step_size`` epochs (StepLR)."""

    type = "step"

    class Params(_Params):
        step_size: int = Field(ge=1)
        gamma: float = Field(0.1, gt=0)

    def _lr(self, base_lr, pos):
        return base_lr * self.params.gamma ** (pos.epoch // self.params.step_size)


class MultiStep(Schedule):
    """Multiply by ``gamma`` at each milestone epoch (MultiStepLR)."""

    type = "multistep"

    class Params(_Params):
        milestones: list[int] = Field(min_length=1)
        gamma: float = Field(0.1, gt=0)

        @field_validator("milestones")
        @classmethod
        def _sorted(cls, v: list[int]) -> list[int]:
            if any(m < 0 for m in v):
                raise ValueError("milestones must be epoch numbers >= 0")
            return sorted(v)

    def _lr(self, base_lr, pos):
        passed = bisect.bisect_right(self.params.milestones, pos.epoch)
        return base_lr * self.params.gamma ** passed


class Exponential(Schedule):
    """Multiply by ``gamma`` every epoch (ExponentialLR)."""

    type = "exponential"

    class Params(_Params):
        gamma: float = Field(gt=0)

    def _lr(self, base_lr, pos):
        return base_lr * self.params.gamma ** pos.epoch


class Cosine(Schedule):
    """Cosine from the base rate down to ``eta_min`` at the end of training.

    Per epoch by default (CosineAnnealingLR with ``T_max`` = training epochs, so the last
    epoch is one step short of ``eta_min``); ``per_step: true`` anneals every step.
    """

    type = "cosine"

    class Params(_Params):
        eta_min: float = Field(0.0, ge=0)
        per_step: bool = False

    def _lr(self, base_lr, pos):
        p = self.params
        frac = pos.progress_after_warmup(p.per_step, p.warmup_epochs)
        return p.eta_min + (base_lr - p.eta_min) * (1.0 + math.cos(math.pi * frac)) / 2.0


class Linear(Schedule):
    """Linear from the base rate to ``base_lr * end_factor`` at the end of training."""

    type = "linear"

    class Params(_Params):
        end_factor: float = Field(0.0, ge=0)
        per_step: bool = False

    def _lr(self, base_lr, pos):
        p = self.params
        frac = pos.progress_after_warmup(p.per_step, p.warmup_epochs)
        return base_lr * (1.0 + (p.end_factor - 1.0) * frac)


SCHEDULES: dict[str, type[Schedule]] = {
    cls.type: cls for cls in (Constant, Step, MultiStep, Exponential, Cosine, Linear)
}


def build_schedule(cfg: dict | None) -> Schedule:
    """``{"type": "cosine", "warmup_epochs": 1}`` → a schedule; ``None`` → constant."""
    if cfg is None:
        return Constant()
    from ..registry import get_registry
    return build_from_registry(get_registry().schedules, cfg, "schedule")
