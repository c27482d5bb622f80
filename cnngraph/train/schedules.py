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

``one_cycle`` is OneCycleLR stepped every batch (the base rate is its ``max_lr``). ``reduce_on_plateau`` is
ReduceLROnPlateau stepped once per epoch with a metric: its rate is a pure function of the run's history of that
metric, which the loop hands it before each epoch (:meth:`Schedule.observe`); a resumed run's history is saved
in its checkpoint, so it needs no state of its own either.

Per-epoch closed forms equal torch.optim.lr_scheduler stepped once per epoch:
``step`` = StepLR, ``multistep`` = MultiStepLR, ``exponential`` = ExponentialLR,
``cosine`` = CosineAnnealingLR(T_max=total_epochs), ``linear`` =
LinearLR(start_factor, end_factor, total_iters) with the defaults 1, 0 and total_epochs (PyTorch's are
1/3, 1 and 5). ``cosine`` and ``linear`` also
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
    "Schedule", "Constant", "Step", "MultiStep", "Exponential", "Cosine", "Linear", "OneCycle", "ReduceOnPlateau",
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

    def observe(self, history: list[dict]) -> None:
        """The per-epoch records of the run so far (``train_loss``, ``val_accuracy``, ...), before each epoch.
        Only schedules that follow a metric use them."""


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
    """Linear from ``base_lr * start_factor`` to ``base_lr * end_factor`` over ``total_iters`` epochs (LinearLR),
    by default the training epochs after any warmup; then held at the end value.

    The defaults (start 1, end 0, to the end of training) make it a decay to 0; PyTorch's LinearLR defaults
    (start 1/3, end 1, 5 epochs) make a warmup, which ``warmup_epochs`` gives here.
    """

    type = "linear"

    class Params(_Params):
        start_factor: float = Field(1.0, gt=0, le=1)
        end_factor: float = Field(0.0, ge=0)
        total_iters: int | None = Field(None, ge=1, description="epochs of the ramp (default: to the end)")
        per_step: bool = False

    def _lr(self, base_lr, pos):
        p = self.params
        if p.total_iters is None:
            frac = pos.progress_after_warmup(p.per_step, p.warmup_epochs)
        else:   # as LinearLR counts: epochs (or steps) since the warmup, over total_iters epochs
            done = pos.t - pos.warmup_steps if p.per_step else pos.epoch - p.warmup_epochs
            frac = min(max(done / (p.total_iters * (pos.steps_per_epoch if p.per_step else 1)), 0.0), 1.0)
        return base_lr * (p.start_factor + (p.end_factor - p.start_factor) * frac)


class OneCycle(Schedule):
    """The 1cycle policy (Smith 2018; torch.optim.lr_scheduler.OneCycleLR stepped every batch, with the base rate
    as ``max_lr``): from ``max_lr / div_factor`` up to ``max_lr`` over the first ``pct_start`` of all steps, then
    down to ``max_lr / div_factor / final_div_factor``; ``three_phase`` goes back to the start rate first."""

    type = "one_cycle"

    class Params(_Params):
        pct_start: float = Field(0.3, gt=0, lt=1)
        div_factor: float = Field(25.0, gt=0)
        final_div_factor: float = Field(1e4, gt=0)
        anneal: str = Field("cos", pattern="^(cos|linear)$", description="cos or linear")
        three_phase: bool = False

    def _lr(self, base_lr, pos):
        p = self.params
        total = pos.total_epochs * pos.steps_per_epoch
        start = base_lr / p.div_factor
        low = start / p.final_div_factor
        up = p.pct_start * total - 1
        phases = ([(up, start, base_lr), (2 * p.pct_start * total - 2, base_lr, start), (total - 1, start, low)]
                  if p.three_phase else [(up, start, base_lr), (total - 1, base_lr, low)])
        begin = 0.0
        for i, (end, a, b) in enumerate(phases):   # as torch: the phase whose end is not yet passed
            if pos.t <= end or i == len(phases) - 1:
                frac = (pos.t - begin) / (end - begin) if end != begin else 1.0
                if p.anneal == "cos":
                    return b + (a - b) / 2.0 * (math.cos(math.pi * frac) + 1)
                return a + (b - a) * frac
            begin = end
        return low   # pragma: no cover - the last phase always answers


class ReduceOnPlateau(Schedule):
    """Multiply the rate by ``factor`` when ``metric`` has not improved for more than ``patience`` epochs
    (torch.optim.lr_scheduler.ReduceLROnPlateau stepped after each epoch with that metric; ``threshold`` in its
    ``rel`` or ``abs`` mode, then ``cooldown`` epochs without counting, never below ``min_lr``). Epochs without
    the metric (a val_ metric of a run without a validation split) are skipped."""

    type = "reduce_on_plateau"

    class Params(_Params):
        metric: str = "val_loss"
        mode: str = Field("auto", pattern="^(auto|min|max)$", description="auto: min for losses and errors")
        factor: float = Field(0.1, gt=0, lt=1)
        patience: int = Field(10, ge=0)
        threshold: float = Field(1e-4, ge=0)
        threshold_mode: str = Field("rel", pattern="^(rel|abs)$")
        cooldown: int = Field(0, ge=0)
        min_lr: float = Field(0.0, ge=0)

    def __init__(self, params=None, **settings):
        super().__init__(params, **settings)
        self._values: list[float] = []

    def observe(self, history):
        self._values = [float(r[self.params.metric]) for r in history if r.get(self.params.metric) is not None]

    def _better(self, value: float, best: float, maximize: bool) -> bool:
        p = self.params
        if p.threshold_mode == "rel":
            return value > best * (1 + p.threshold) if maximize else value < best * (1 - p.threshold)
        return value > best + p.threshold if maximize else value < best - p.threshold

    def _lr(self, base_lr, pos):
        p = self.params
        maximize = p.mode == "max" or (p.mode == "auto" and not p.metric.endswith(("loss", "mae", "rmse")))
        rate, best, bad, cooling = base_lr, -math.inf if maximize else math.inf, 0, 0
        for value in self._values:   # torch's step(metric), epoch by epoch
            if self._better(value, best, maximize):
                best, bad = value, 0
            else:
                bad += 1
            if cooling > 0:
                cooling, bad = cooling - 1, 0
            if bad > p.patience:
                lowered = max(rate * p.factor, p.min_lr)
                if rate - lowered > 1e-8:
                    rate = lowered
                cooling, bad = p.cooldown, 0
        return rate


SCHEDULES: dict[str, type[Schedule]] = {
    cls.type: cls for cls in (Constant, Step, MultiStep, Exponential, Cosine, Linear, OneCycle, ReduceOnPlateau)
}


def build_schedule(cfg: dict | None) -> Schedule:
    """``{"type": "cosine", "warmup_epochs": 1}`` → a schedule; ``None`` → constant."""
    if cfg is None:
        return Constant()
    from ..registry import get_registry
    return build_from_registry(get_registry().schedules, cfg, "schedule")
