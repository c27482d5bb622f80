"""The training loop's calls into optimizers and schedules (built-in or from plugins), each failure a
TrainingError naming the component, its plugin and the plugin file's line, never a traceback."""
from __future__ import annotations

import math

from ..blame import failed, who
from ..errors import CnnGraphError
from .settings import TrainingError

__all__ = ["optimizer_step", "schedule_rate"]


def optimizer_step(optimizer, weights: dict, grads: dict, rate: float) -> None:
    """``optimizer.step(weights, grads, rate)``; an exception inside it names the optimizer."""
    try:
        optimizer.step(weights, grads, rate)
    except CnnGraphError:
        raise
    except Exception as exc:
        subject = who("optimizer", type(optimizer).type, "optimizers")
        raise TrainingError(failed(subject, "step", exc, type(optimizer))) from exc


def schedule_rate(schedule, base_lr: float, epoch: int, step: int, steps: int, epochs: int) -> float:
    """The schedule's learning rate for this step, checked: a rate the optimizer cannot use (negative,
    NaN, not a number) is blamed on the schedule that gave it, not on the optimizer."""
    subject = who("schedule", type(schedule).type, "schedules")
    try:
        rate = schedule.lr(base_lr, epoch, step, steps, epochs)
    except CnnGraphError:
        raise
    except Exception as exc:
        raise TrainingError(failed(subject, "lr", exc, type(schedule))) from exc
    try:
        value = float(rate)
    except (TypeError, ValueError):
        value = None
    if value is None or not math.isfinite(value) or value < 0:
        raise TrainingError(f"{subject} gave learning rate {rate} at epoch {epoch + 1}, step {step + 1}; "
                            f"expected a finite value >= 0")
    return value
