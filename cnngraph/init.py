"""Seeded weight initialisation schemes (float32 NumPy arrays)."""
from __future__ import annotations

import math
from typing import Literal

import numpy as np

__all__ = ["InitScheme", "init_weight", "init_bias"]

InitScheme = Literal["pytorch", "he_normal", "he_uniform", "xavier_normal", "xavier_uniform"]


def init_weight(shape: tuple[int, ...], fan_in: int, fan_out: int, scheme: str, rng: np.random.Generator) -> np.ndarray:
    """Initial weights. ``pytorch`` is torch's default for Conv2d/Linear: Kaiming-uniform with a=√5,
    i.e. U(±1/√fan_in); ``he_*`` use gain √2 (ReLU); ``xavier_*`` use fan_in + fan_out."""
    if scheme == "pytorch":
        bound = 1 / math.sqrt(fan_in)
        w = rng.uniform(-bound, bound, shape)
    elif scheme == "he_normal":
        w = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    elif scheme == "he_uniform":
        bound = math.sqrt(6.0 / fan_in)
        w = rng.uniform(-bound, bound, shape)
    elif scheme == "xavier_normal":
        w = rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), shape)
    elif scheme == "xavier_uniform":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-bound, bound, shape)
    else:  # validated by the Params model before we get here
        raise ValueError(f"unknown init scheme {scheme!r}")
    return w.astype(np.float32)


def init_bias(n: int, fan_in: int, rng: np.random.Generator) -> np.ndarray:
    """torch's default bias: U(±1/√fan_in)."""
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, (n,)).astype(np.float32)
