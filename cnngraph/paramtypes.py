"""Reusable parameter types for op ``Params`` models, with one clear message each.

Spec authors write ``kernel_size: 3`` or ``kernel_size: [3, 5]``; ``padding`` also takes
``"same"``/``"valid"`` or four numbers ``[top, bottom, left, right]``.
"""
from __future__ import annotations

from typing import Annotated, Any, Union

import numpy as np
from pydantic import BeforeValidator

__all__ = ["IntPair", "Padding", "is_whole"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_whole(v: Any, minimum: int) -> bool:
    """``v`` is an integer (Python or NumPy, not a bool) >= ``minimum``: for seeds, epochs, batch sizes."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum


def _written(v: Any) -> Any:
    """The value as the spec wrote it, for messages (a tuple read from ONNX or Python shown as a list)."""
    return list(v) if isinstance(v, tuple) else v


def _pair(minimum: int):
    def check(v: Any):
        pair = [v, v] if _is_int(v) else v
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and all(_is_int(e) for e in pair):
            if min(pair) < minimum:
                what = "an integer" if _is_int(v) else "integers"
                raise ValueError(f"expected {what} >= {minimum}, found {_written(v)}")
            return tuple(pair)
        raise ValueError(f"expected an integer >= {minimum} or a list [h, w] of them, found {v!r}")
    return check


def _padding(v: Any):
    if isinstance(v, str):
        if v in ("same", "valid"):
            return v
        raise ValueError(f"expected 'same', 'valid', an integer, [h, w] or [top, bottom, left, right], found {v!r}")
    pads = [v, v] if _is_int(v) else v
    if isinstance(pads, (list, tuple)) and len(pads) in (2, 4) and all(_is_int(e) for e in pads):
        if min(pads) < 0:
            raise ValueError(f"padding must be >= 0, found {_written(v)}")
        return tuple(pads)
    raise ValueError(f"expected 'same', 'valid', an integer, [h, w] or [top, bottom, left, right], found {v!r}")


IntPair = Annotated[tuple[int, int], BeforeValidator(_pair(1))]
NonNegativePair = Annotated[tuple[int, int], BeforeValidator(_pair(0))]
Padding = Annotated[Union[str, tuple[int, ...]], BeforeValidator(_padding)]

