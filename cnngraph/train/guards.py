"""The training loop's calls into optimizers and schedules (built-in or from plugins), each failure a
TrainingError naming the component, its plugin and the plugin file's line, never a traceback."""
from __future__ import annotations

import math

from ..blame import defined_at, failed, who
from ..errors import CnnGraphError
from .settings import TrainingError

__all__ = ["optimizer_step", "unchanged_weights_error", "schedule_rate", "UNCHANGED_STEPS"]


# A step may rightly change nothing (an optimizer that accumulates gradients over a few steps), so only
# this many checked steps without any change, or a whole run that changed nothing, are an error.
UNCHANGED_STEPS = 8


def optimizer_step(optimizer, weights: dict, grads: dict, rate: float, check_update: bool = False) -> bool | None:
    """``optimizer.step(weights, grads, rate)``; an exception inside it names the optimizer. With
    ``check_update`` (the first steps), returns whether the step changed a weight that a plain gradient step
    would visibly move (None where none would: zero gradients, a zero or tiny rate). The loop errors after
    a run of unchanged steps (``unchanged_weights_error``): an ``_update`` that rebinds ``w = w - ...``
    instead of writing into ``w`` would otherwise train nothing, silently."""
    subject = who("optimizer", type(optimizer).type, "optimizers")
    before = _visibly_moved(weights, grads, rate) if check_update else {}
    try:
        optimizer.step(weights, grads, rate)
    except CnnGraphError:
        raise
    except Exception as exc:
        raise TrainingError(failed(subject, "step", exc, type(optimizer))) from exc
    if not before:
        return None
    return not all(bool((weights[name] == old).all()) for name, old in before.items())


def unchanged_weights_error(optimizer, steps: int, rate: float) -> TrainingError:
    """The error for an optimizer whose first ``steps`` checked steps changed no weight."""
    subject = who("optimizer", type(optimizer).type, "optimizers")
    at = defined_at(type(optimizer)._update)
    return TrainingError(f"{subject} changed no weight in its first {steps} step{'s' * (steps != 1)} (learning rate {rate:g}, non-zero "
                         f"gradients){' (_update at ' + at + ')' if at else ''}; update the weight in place "
                         f"(w -= lr * g, w[...] = value): assigning a new array (w = w - lr * g) is lost")


def _visibly_moved(weights: dict, grads: dict, rate: float) -> dict:
    """Copies of the weights that a plain gradient step at ``rate`` would change (a zero gradient or a rate
    too small for the weights' precision changes nothing, rightly): what the first step is checked on."""
    if not rate > 0:
        return {}
    return {name: w.copy() for name, w in weights.items()
            if grads.get(name) is not None and bool((w - rate * grads[name] != w).any())}


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
