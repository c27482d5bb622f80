"""Optimizers with torch.optim semantics, on NumPy or CuPy arrays.

An optimizer updates ``weights`` in place from ``grads``; the learning rate is passed to
every ``step`` (the schedule owns it), and ``params.lr`` is only the base rate the
schedule starts from. Per-weight state (moment buffers, step counts) is kept on the
weights' device and exported as a flat ``"name/slot" -> numpy array`` dict so that it can
be stored in an ``.npz`` without pickling.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..backend import to_device, to_numpy, xp_of
from ..errors import CheckpointError
from ..paramtypes import StrictSettings
from ..registry import did_you_mean, format_validation_errors

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "RMSprop",
    "OPTIMIZERS", "build_optimizer", "clip_grad_norm",
]

Betas = tuple[float, float]


class _Params(StrictSettings):
    model_config = ConfigDict(frozen=True)


class Optimizer:
    """Base class: per-weight state handling; subclasses implement ``_update``."""

    type: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    SLOTS: ClassVar[tuple[str, ...]]  # array slots this optimizer may keep per weight

    def __init__(self, params: BaseModel | dict | None = None, **settings):
        """``SGD(lr=0.1, momentum=0.9)``, ``SGD({"lr": 0.1})`` or ``SGD(SGD.Params(lr=0.1))``."""
        self.params = make_params(type(self), params, settings, "optimizer")
        self._state: dict[str, dict[str, Any]] = {}

    def step(self, weights: dict, grads: dict, lr: float) -> None:
        """Update every weight that has a gradient, in place, with learning rate ``lr`` (the schedule's
        rate for this step; ``params.lr`` is only its base). ``grads`` may hold other entries (input
        gradients): only the names in ``weights`` are used."""
        lr = float(lr)  # a NumPy float64 scalar would upcast float32 math
        if not lr >= 0 or math.isinf(lr):
            raise ValueError(f"optimizer '{self.type}': the learning rate must be finite and >= 0, found {lr}")
        for name, w in weights.items():
            g = grads.get(name)
            if g is None:
                continue
            if tuple(g.shape) != tuple(w.shape):
                raise ValueError(f"optimizer '{self.type}': the gradient of '{name}' has shape {tuple(g.shape)}, "
                                 f"its weight {tuple(w.shape)}")
            # Gradients in another dtype would silently change the precision of the update.
            g = g.astype(w.dtype, copy=False)
            self._update(w, g, self._slots(name, w), lr)

    def _update(self, w, g, state: dict[str, Any], lr: float) -> None:
        raise NotImplementedError

    def _slots(self, name: str, w) -> dict[str, Any]:
        """State of one weight, moved onto the weight's device (after a load)."""
        state = self._state.setdefault(name, {"step": 0})
        xp = xp_of(w)
        for slot, value in state.items():
            if slot != "step" and xp_of(value) is not xp:
                state[slot] = to_device(value, xp)
        return state

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat ``"name/slot"`` → CPU array; the step count is a 0-d int64 array."""
        out: dict[str, np.ndarray] = {}
        for name, state in self._state.items():
            for slot, value in state.items():
                if slot == "step":
                    out[f"{name}/step"] = np.array(value, dtype=np.int64)
                else:
                    out[f"{name}/{slot}"] = np.array(to_numpy(value), copy=True)
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Replace all state with ``state`` (from :meth:`state_dict`), exactly.

        Arrays stay on the CPU until the next ``step`` moves them next to their weights.
        """
        restored: dict[str, dict[str, Any]] = {}
        for key, value in state.items():
            name, sep, slot = key.rpartition("/")
            if not sep or not name:
                raise CheckpointError(
                    f"optimizer state key {key!r}: expected 'weight_name/slot'")
            if slot != "step" and slot not in self.SLOTS:
                raise CheckpointError(
                    f"optimizer state key {key!r}: slot {slot!r} is not used by "
                    f"optimizer '{self.type}' (expected one of: step, {', '.join(self.SLOTS)}); "
                    "was it saved by a different optimizer?")
            entry = restored.setdefault(name, {"step": 0})
            if slot == "step":
                entry["step"] = int(np.asarray(to_numpy(value)))
            else:
                entry[slot] = np.array(to_numpy(value), copy=True)  # never alias the caller's
        self._state = restored


def _lerp_(avg, x, weight: float) -> None:
    """``avg += weight * (x - avg)`` in place, as torch's ``lerp_``."""
    avg += weight * (x - avg)


def _ema_square_(avg, g, beta: float) -> None:
    """``avg = beta * avg + (1 - beta) * g * g`` in place."""
    avg *= beta
    avg += (1.0 - beta) * (g * g)


class SGD(Optimizer):
    """torch.optim.SGD: heavy-ball or Nesterov momentum, L2 weight decay added to the grad."""

    type = "sgd"
    SLOTS = ("momentum_buffer",)

    class Params(_Params):
        lr: float = Field(0.01, ge=0)
        momentum: float = Field(0.0, ge=0)
        dampening: float = 0.0
        nesterov: bool = False
        weight_decay: float = Field(0.0, ge=0)

        @model_validator(mode="after")
        def _nesterov_needs_momentum(self):
            if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
                raise ValueError("nesterov needs momentum > 0 and dampening = 0 (as in PyTorch)")
            return self

    def _update(self, w, g, state, lr):
        p = self.params
        state["step"] += 1
        if p.weight_decay:
            g = g + p.weight_decay * w
        if p.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                # PyTorch starts the buffer at the first gradient, undamped.
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= p.momentum
                buf += (1.0 - p.dampening) * g if p.dampening else g
            g = g + p.momentum * buf if p.nesterov else buf
        w -= lr * g


class Adam(Optimizer):
    """torch.optim.Adam: L2 weight decay added to the gradient; optional AMSGrad."""

    type = "adam"
    SLOTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    decoupled: ClassVar[bool] = False

    class Params(_Params):
        lr: float = Field(0.001, ge=0)
        betas: Betas = (0.9, 0.999)
        eps: float = Field(1e-8, ge=0)
        weight_decay: float = Field(0.0, ge=0)
        amsgrad: bool = False

        @model_validator(mode="after")
        def _betas_in_range(self):
            if not all(0.0 <= b < 1.0 for b in self.betas):
                raise ValueError(f"betas must each be in [0, 1), got {list(self.betas)}")
            return self

    def _update(self, w, g, state, lr):
        p = self.params
        beta1, beta2 = p.betas
        xp = xp_of(w)
        if "exp_avg" not in state:
            state["exp_avg"] = xp.zeros_like(w)
            state["exp_avg_sq"] = xp.zeros_like(w)
            if p.amsgrad:
                state["max_exp_avg_sq"] = xp.zeros_like(w)
        state["step"] += 1
        step = state["step"]
        if p.weight_decay:
            if self.decoupled:
                w *= 1.0 - lr * p.weight_decay  # AdamW: decay the weight, not the gradient
            else:
                g = g + p.weight_decay * w
        m, v = state["exp_avg"], state["exp_avg_sq"]
        _lerp_(m, g, 1.0 - beta1)
        _ema_square_(v, g, beta2)
        if p.amsgrad:
            vmax = state.get("max_exp_avg_sq")
            if vmax is None:  # amsgrad switched on after a resume
                vmax = state["max_exp_avg_sq"] = xp.zeros_like(w)
            xp.maximum(vmax, v, out=vmax)
            v = vmax
        # Bias corrections in Python double precision, as PyTorch does.
        step_size = lr / (1.0 - beta1 ** step)
        denom = xp.sqrt(v) / math.sqrt(1.0 - beta2 ** step)
        denom += p.eps
        w -= step_size * (m / denom)


class AdamW(Adam):
    """torch.optim.AdamW: decoupled weight decay ``w *= 1 - lr * weight_decay``."""

    type = "adamw"
    decoupled = True

    class Params(Adam.Params):
        weight_decay: float = Field(0.01, ge=0)


class RMSprop(Optimizer):
    """torch.optim.RMSprop, including centered and momentum variants."""

    type = "rmsprop"
    SLOTS = ("square_avg", "momentum_buffer", "grad_avg")

    class Params(_Params):
        lr: float = Field(0.01, ge=0)
        alpha: float = Field(0.99, ge=0)
        eps: float = Field(1e-8, ge=0)
        weight_decay: float = Field(0.0, ge=0)
        momentum: float = Field(0.0, ge=0)
        centered: bool = False

    def _update(self, w, g, state, lr):
        p = self.params
        xp = xp_of(w)
        if "square_avg" not in state:
            state["square_avg"] = xp.zeros_like(w)
        state["step"] += 1
        if p.weight_decay:
            g = g + p.weight_decay * w
        sq = state["square_avg"]
        _ema_square_(sq, g, p.alpha)
        if p.centered:
            gavg = state.get("grad_avg")
            if gavg is None:
                gavg = state["grad_avg"] = xp.zeros_like(w)
            _lerp_(gavg, g, 1.0 - p.alpha)
            avg = xp.sqrt(sq - gavg * gavg)
        else:
            avg = xp.sqrt(sq)
        avg += p.eps
        if p.momentum > 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = xp.zeros_like(w)
            buf *= p.momentum
            buf += g / avg
            w -= lr * buf
        else:
            w -= lr * (g / avg)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.type: cls for cls in (SGD, Adam, AdamW, RMSprop)
}


# --- building from config ------------------------------------------------------------

def make_params(cls, params, settings: dict, what: str):
    """A component's validated Params from a Params instance, a dict and/or keyword settings."""
    if isinstance(params, cls.Params) and not settings:
        return params
    if params is not None and not isinstance(params, dict):
        raise TypeError(f"{what} '{cls.type}' takes {cls.__name__}.Params, a dict or keyword settings, found "
                        f"{type(params).__name__}")
    try:
        return cls.Params.model_validate({**(params or {}), **settings})
    except ValidationError as err:
        msg = format_validation_errors(err, fields=cls.Params.model_fields)
        raise ValueError(f"{what} '{cls.type}': {msg}") from None


def build_from_registry(registry: dict[str, type], cfg: dict, what: str):
    """Instantiate ``registry[cfg['type']]`` with the rest of ``cfg`` as validated Params.

    Shared by optimizers and schedules; raises ``ValueError`` with a readable message.
    """
    if not isinstance(cfg, dict):
        raise ValueError(f"{what} config must be a mapping, got {type(cfg).__name__}")
    rest = dict(cfg)
    kind = rest.pop("type", None)
    known = ", ".join(sorted(registry))
    if kind is None:
        raise ValueError(f"{what} config needs a 'type' (one of: {known})")
    cls = registry.get(kind)
    if cls is None:
        raise ValueError(
            f"unknown {what} type {kind!r}{did_you_mean(kind, registry)}; known: {known}")
    return cls(make_params(cls, None, rest, what))


def build_optimizer(cfg: dict) -> Optimizer:
    """``{"type": "adam", "lr": 3e-4, ...}`` → a ready optimizer (built-in or from a plugin)."""
    from ..registry import get_registry
    return build_from_registry(get_registry().optimizers, cfg, "optimizer")


# --- gradient clipping ---------------------------------------------------------------

def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all grads in place so their total L2 norm is at most ``max_norm``.

    Same as ``torch.nn.utils.clip_grad_norm_``: the coefficient is
    ``max_norm / (norm + 1e-6)``, applied only when below 1. Returns the norm before
    clipping (it may be inf or nan; callers decide whether to skip the step).
    """
    arrays = [g for g in grads.values() if g is not None]
    if not arrays:
        return 0.0
    xp = xp_of(*arrays)
    # One norm per array on the device, then a single host transfer.
    norms = xp.stack([xp.linalg.norm(g.reshape(-1)) for g in arrays])
    total = float(xp.linalg.norm(norms))
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1.0 or math.isnan(coef):
        for g in arrays:
            g *= coef
    return total
