"""Reusable parameter types for op ``Params`` models, with one clear message each.

Spec authors write ``kernel_size: 3`` or ``kernel_size: [3, 5]``; ``padding`` also takes
``"same"``/``"valid"`` or four numbers ``[top, bottom, left, right]``. The 1-D ops take ``kernel_size: 5``
(or ``[5]``) and ``padding: 2``, ``[begin, end]``, ``"same"`` or ``"valid"``; the 3-D ops ``kernel_size: 3`` or
``[d, h, w]`` and ``padding: 1``, ``[d, h, w]``, ``[front, back, top, bottom, left, right]``, ``"same"`` or ``"valid"``.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Union

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticKnownError

__all__ = ["StrictScalars", "StrictSettings", "IntPair", "NonNegativePair", "Padding", "Int1", "NonNegativeInt1", "Padding1", "IntTriple",
           "NonNegativeTriple", "Padding3", "FloatOrInf", "SpecForm", "is_whole"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_whole(v: Any, minimum: int) -> bool:
    """``v`` is an integer (Python or NumPy, not a bool) >= ``minimum``: for seeds, epochs, batch sizes."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum


def _written(v: Any) -> Any:
    """The value as the spec wrote it, for messages (a tuple read from ONNX or Python shown as a list)."""
    return list(v) if isinstance(v, tuple) else v


def _pair(minimum: int, axes: str = "h, w"):
    """One integer for every axis, or a list with one per axis (``axes`` names them in messages)."""
    n = len(axes.split(", "))

    def check(v: Any):
        pair = [v] * n if _is_int(v) else v
        if isinstance(pair, (list, tuple)) and len(pair) == n and all(_is_int(e) for e in pair):
            if min(pair) < minimum:
                what = "an integer" if _is_int(v) else "integers"
                raise ValueError(f"expected {what} >= {minimum}, found {_written(v)}")
            return tuple(pair)
        raise ValueError(f"expected an integer >= {minimum} or a list [{axes}] of them, found {v!r}")
    return check


def _single(minimum: int):
    """One integer, also written as a list of one (``[5]``, as torch.nn.Conv1d's ``kernel_size=(5,)``)."""
    def check(v: Any):
        one = v[0] if isinstance(v, (list, tuple)) and len(v) == 1 else v
        if _is_int(one):
            if one < minimum:
                raise ValueError(f"expected an integer >= {minimum}, found {_written(v)}")
            return one
        raise ValueError(f"expected an integer >= {minimum} (or a list of one), found {v!r}")
    return check


def _padding(lengths: tuple[int, ...], forms: str, words: tuple[str, ...] = ("same", "valid")):
    """An int (the same on every side), a list of ``lengths`` entries, or one of ``words`` ('same' / 'valid';
    none for a transposed convolution, whose padding crops its output)."""
    def check(v: Any):
        if isinstance(v, str):
            if v in words:
                return v
            if not words:
                raise ValueError(f"expected an integer{forms}, found {v!r}: a transposed convolution's padding crops "
                                 f"its output, so 'same' and 'valid' do not apply")
        else:
            pads = [v] * lengths[0] if _is_int(v) else v
            if isinstance(pads, (list, tuple)) and len(pads) in lengths and all(_is_int(e) for e in pads):
                if min(pads) < 0:
                    raise ValueError(f"padding must be >= 0, found {_written(v)}")
                return tuple(pads)
        named = "".join(f"'{w}', " for w in words)
        raise ValueError(f"expected {named}an integer{forms}, found {v!r}")
    return check


class SpecForm(str):
    """How a spec writes a parameter type, for ``cnngraph ops`` (``Annotated[..., SpecForm("int or [h, w]")]``):
    the Python type of a value after its validator (a tuple) is not what the spec accepts (also one int)."""


_PADS2, _PADS3 = "[h, w], [top, bottom, left, right]", "[d, h, w], [front, back, top, bottom, left, right]"
IntPair = Annotated[tuple[int, int], BeforeValidator(_pair(1)), SpecForm("int or [int, int]")]
NonNegativePair = Annotated[tuple[int, int], BeforeValidator(_pair(0)), SpecForm("int or [int, int]")]
Padding = Annotated[Union[str, tuple[int, ...]],
                    BeforeValidator(_padding((2, 4), ", [h, w] or [top, bottom, left, right]")),
                    SpecForm(f"int, {_PADS2}, same or valid")]
Int1 = Annotated[int, BeforeValidator(_single(1)), SpecForm("int or [int]")]
NonNegativeInt1 = Annotated[int, BeforeValidator(_single(0)), SpecForm("int or [int]")]
Padding1 = Annotated[Union[str, tuple[int, int]], BeforeValidator(_padding((2,), " or [begin, end]")),
                     SpecForm("int, [begin, end], same or valid")]
IntTriple = Annotated[tuple[int, int, int], BeforeValidator(_pair(1, "d, h, w")), SpecForm("int or [int, int, int]")]
NonNegativeTriple = Annotated[tuple[int, int, int], BeforeValidator(_pair(0, "d, h, w")), SpecForm("int or [int, int, int]")]
Padding3 = Annotated[Union[str, tuple[int, ...]],
                     BeforeValidator(_padding((3, 6), ", [d, h, w] or [front, back, top, bottom, left, right]")),
                     SpecForm(f"int, {_PADS3}, same or valid")]
# a transposed convolution's padding crops its output: numbers only
CropPadding = Annotated[tuple[int, ...], BeforeValidator(_padding((2, 4), ", [h, w] or [top, bottom, left, right]", ())),
                        SpecForm(f"int, {_PADS2}")]
CropPadding1 = Annotated[tuple[int, int], BeforeValidator(_padding((2,), " or [begin, end]", ())),
                         SpecForm("int or [begin, end]")]
CropPadding3 = Annotated[tuple[int, ...],
                         BeforeValidator(_padding((3, 6), ", [d, h, w] or [front, back, top, bottom, left, right]", ())),
                         SpecForm(f"int, {_PADS3}")]


def _not_nan(v: float) -> float:
    if math.isnan(v):
        raise ValueError("expected a number or -.inf/.inf, found nan")
    return v


# Op parameters must be finite (OpParams), except where an infinity means something: a clip bound (no bound),
# a pad value (-inf padding before a max, as ONNX models have). NaN never does.
FloatOrInf = Annotated[float, Field(allow_inf_nan=True), AfterValidator(_not_nan), SpecForm("float (or -.inf, .inf)")]


class StrictScalars(BaseModel):
    """A model whose numbers and booleans must be written as such, in its fields and their lists: pydantic's
    lax mode would take ``true`` as 1, ``"8"`` as 8 and ``"yes"`` as true."""

    @field_validator("*", mode="wrap")
    @classmethod
    def _no_lax_scalars(cls, raw, handler):
        value = handler(raw)
        kind = _lax_conversion(raw, value)
        if kind:   # a field's own error: reported with the other fields' problems
            raise PydanticKnownError(kind)
        return value


class StrictSettings(StrictScalars):
    """A training setting (the spec's ``train:`` section): strict scalars, finite numbers, no unknown keys."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _lax_conversion(raw, value) -> str | None:
    """The pydantic error type when ``raw`` only became ``value`` by lax conversion (bool <-> number,
    string -> number/bool, also inside a list), else None."""
    if isinstance(raw, (list, tuple)) and isinstance(value, (list, tuple)) and len(raw) == len(value):
        return next(filter(None, map(_lax_conversion, raw, value)), None)
    if isinstance(value, bool) and not isinstance(raw, bool):
        return "bool_type"
    if isinstance(raw, (bool, str)) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return "int_type" if isinstance(value, int) else "float_type"
    return None
