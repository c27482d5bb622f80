"""General tensor ops: reshape, transpose, slice, take, broadcasting arithmetic, matmul, einsum, pad, expand, tile, clip,
constants.

They exist mostly so that ONNX graphs survive import as trainable specs, but they are ordinary
ops usable in any spec. Conventions: shapes in ``infer_shape`` are per sample; axes named in
parameters (``perm``) count the batch as axis 0, as ``softmax``'s ``axis`` does; ``shape`` and
``pads`` describe the per-sample dimensions only.

Broadcasting ops (``broadcast_add``, ``sub``, ``mul``, ``div``, ``matmul``) follow NumPy rules on
the per-sample shapes; an input with fewer per-sample dimensions is aligned to the right. A
``constant`` layer has batch size 1 and broadcasts against any batch.
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Union

import numpy as np
from pydantic import Field, field_validator

from cnngraph.backend import xp_of
from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.op import Op, OpParams
from cnngraph.paramtypes import FloatOrInf

__all__ = ["Reshape", "Transpose", "BroadcastAdd", "Sub", "Mul", "Div", "MatMul", "Pad", "Expand", "Tile", "Clip",
           "Constant", "Identity", "Take", "Einsum", "broadcast_shapes", "unbroadcast"]


def _all_at_least_one(values: list[int], what: str) -> list[int]:
    """A Params check shared by shapes and repeat counts: every entry >= 1."""
    if any(v < 1 for v in values):
        raise ValueError(f"every {what} must be >= 1, found {values}")
    return values


def broadcast_shapes(shapes, what: str = "inputs") -> tuple[int, ...]:
    """NumPy broadcast of per-sample shapes (aligned right); ShapeError naming them when impossible."""
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0} - {1}
        if len(dims) > 1:
            listed = " and ".join(str(tuple(s)) for s in shapes)
            raise ShapeError(f"{what} of shapes {listed} do not broadcast (per sample, aligned right)")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _expand(x, rank: int):
    """(N, *s) → (N, 1, …, 1, *s) with ``rank`` per-sample dimensions."""
    if x.ndim - 1 == rank:
        return x
    return x.reshape((x.shape[0],) + (1,) * (rank - x.ndim + 1) + tuple(x.shape[1:]))


def unbroadcast(g, shape):
    """Sum ``g`` over the axes that broadcasting expanded so it has ``shape`` (batch included)."""
    shape = tuple(shape)
    rank = len(shape)
    if g.ndim > rank:   # extra per-sample dims were added right after the batch
        lead = g.ndim - rank
        g = g.sum(axis=tuple(range(1, 1 + lead)))
    axes = tuple(i for i, (gs, s) in enumerate(zip(g.shape, shape)) if s == 1 and gs != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


class _Binary(Op):
    arity = (2, 2)

    def infer_shape(self, in_shapes):
        return broadcast_shapes(in_shapes, f"{self.type} inputs")

    def _prep(self, inputs):
        rank = max(x.ndim for x in inputs) - 1
        return [_expand(x, rank) for x in inputs]

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape)


class BroadcastAdd(_Binary):
    """a + b with NumPy broadcasting (``add`` needs equal shapes; this one does not)."""

    type = "broadcast_add"

    def forward(self, ctx, inputs, params):
        a, b = self._prep(inputs)
        ctx.save(shapes=[x.shape for x in inputs])
        return a + b

    def backward(self, ctx, gy):
        sa, sb = ctx.saved["shapes"]
        return [unbroadcast(gy, sa) if ctx.need_grad(0) else None,
                unbroadcast(gy, sb) if ctx.need_grad(1) else None], {}

    @classmethod
    def examples(cls):
        return [({}, [(2, 3, 4), (2, 1, 4)]), ({}, [(3, 4), (4,)])]


class Sub(BroadcastAdd):
    """a - b with NumPy broadcasting."""

    type = "sub"

    def forward(self, ctx, inputs, params):
        a, b = self._prep(inputs)
        ctx.save(shapes=[x.shape for x in inputs])
        return a - b

    def backward(self, ctx, gy):
        sa, sb = ctx.saved["shapes"]
        return [unbroadcast(gy, sa) if ctx.need_grad(0) else None,
                unbroadcast(-gy, sb) if ctx.need_grad(1) else None], {}


class Mul(_Binary):
    """a * b with NumPy broadcasting (per-channel scales, gates)."""

    type = "mul"

    def forward(self, ctx, inputs, params):
        a, b = self._prep(inputs)
        ctx.save(a=a, b=b, shapes=[x.shape for x in inputs])
        return a * b

    def backward(self, ctx, gy):
        s = ctx.saved
        sa, sb = s["shapes"]
        return [unbroadcast(gy * s["b"], sa) if ctx.need_grad(0) else None,
                unbroadcast(gy * s["a"], sb) if ctx.need_grad(1) else None], {}

    @classmethod
    def examples(cls):
        return [({}, [(2, 3, 4), (2, 1, 1)]), ({}, [(3, 4), (3, 4)])]


class Div(_Binary):
    """a / b with NumPy broadcasting."""

    type = "div"

    def forward(self, ctx, inputs, params):
        a, b = self._prep(inputs)
        y = a / b
        ctx.save(b=b, y=y, shapes=[x.shape for x in inputs])
        return y

    def backward(self, ctx, gy):
        s = ctx.saved
        sa, sb = s["shapes"]
        ga = gy / s["b"]
        return [unbroadcast(ga, sa) if ctx.need_grad(0) else None,
                unbroadcast(-ga * s["y"], sb) if ctx.need_grad(1) else None], {}

    @classmethod
    def examples(cls):
        return [({}, [(2, 3, 4), (2, 1, 4)])]


class MatMul(Op):
    """Matrix product per sample with NumPy ``matmul`` rules (1-D operands are vectors; leading
    per-sample dimensions broadcast)."""

    type = "matmul"
    arity = (2, 2)

    def infer_shape(self, in_shapes):
        a, b = (tuple(s) for s in in_shapes)
        if not a or not b:
            raise ShapeError(f"matmul needs at least one dimension per sample, found {a} and {b}")
        a2 = (1,) + a if len(a) == 1 else a
        b2 = b + (1,) if len(b) == 1 else b
        if a2[-1] != b2[-2]:
            raise ShapeError(f"matmul inner dimensions differ: {a} @ {b} ({a2[-1]} vs {b2[-2]})")
        lead = broadcast_shapes([a2[:-2], b2[:-2]], "matmul leading dimensions")
        out = lead + (a2[-2], b2[-1])
        if len(a) == 1:
            out = out[:-2] + out[-1:]
        if len(b) == 1:
            out = out[:-1]
        return out

    def forward(self, ctx, inputs, params):
        a, b = inputs
        va, vb = a.ndim == 2, b.ndim == 2   # per-sample vectors
        a2 = a[:, None, :] if va else a
        b2 = b[:, :, None] if vb else b
        rank = max(a2.ndim, b2.ndim) - 1
        a2, b2 = _expand(a2, rank), _expand(b2, rank)
        y = a2 @ b2
        ctx.save(a=a2, b=b2, va=va, vb=vb, sa=a.shape, sb=b.shape)
        if vb:
            y = y[..., 0]
        if va:
            y = y[..., 0, :] if not vb else y[..., 0]
        return y

    def backward(self, ctx, gy):
        s = ctx.saved
        a, b = s["a"], s["b"]
        g = gy
        if s["va"] and s["vb"]:
            g = gy[..., None, None]
        elif s["vb"]:
            g = gy[..., None]
        elif s["va"]:
            g = gy[..., None, :]
        ga = gb = None
        if ctx.need_grad(0):
            ga = g @ xp_of(b).swapaxes(b, -1, -2)
            ga = unbroadcast(ga, a.shape).reshape(s["sa"])
        if ctx.need_grad(1):
            gb = xp_of(a).swapaxes(a, -1, -2) @ g
            gb = unbroadcast(gb, b.shape).reshape(s["sb"])
        return [ga, gb], {}

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape) * in_shapes[0][-1]

    @classmethod
    def examples(cls):
        return [({}, [(3, 4), (4, 5)]), ({}, [(4,), (4, 5)]), ({}, [(2, 3, 4), (4,)])]


class ReshapeParams(OpParams):
    shape: list[int] = Field(description="per-sample target shape (batch excluded); one entry may be -1")

    @field_validator("shape")
    @classmethod
    def _check(cls, v):
        if sum(d == -1 for d in v) > 1 or any(d < -1 or d == 0 for d in v):
            raise ValueError(f"shape entries are positive, with at most one -1, found {v}")
        return v


class Reshape(Op):
    """Reshapes each sample to ``shape`` (batch kept; one -1 is inferred)."""

    type = "reshape"
    Params = ReshapeParams

    def infer_shape(self, in_shapes):
        n = math.prod(in_shapes[0])
        shape = list(self.p.shape)
        known = math.prod(d for d in shape if d != -1)
        if -1 in shape:
            if known == 0 or n % known:
                raise ShapeError(f"cannot reshape {tuple(in_shapes[0])} ({n} values) to {tuple(shape)}")
            shape[shape.index(-1)] = n // known
        elif known != n:
            raise ShapeError(f"cannot reshape {tuple(in_shapes[0])} ({n} values) to {tuple(shape)} ({known} values)")
        return tuple(shape)

    def forward(self, ctx, inputs, params):
        x, = inputs
        ctx.save(shape=x.shape)
        return x.reshape((x.shape[0],) + tuple(self.p.shape))

    def backward(self, ctx, gy):
        return [gy.reshape(ctx.saved["shape"])], {}

    @classmethod
    def examples(cls):
        return [({"shape": [4, -1]}, [(2, 3, 4)]), ({"shape": [6]}, [(2, 3)])]


class TransposeParams(OpParams):
    perm: list[int] = Field(description="new order of the axes, batch included as axis 0 (which stays first)")


class Transpose(Op):
    """Permutes the axes; ``perm`` counts the batch as axis 0, which must stay in place."""

    type = "transpose"
    Params = TransposeParams

    def infer_shape(self, in_shapes):
        nd = len(in_shapes[0]) + 1
        perm = list(self.p.perm)
        if sorted(perm) != list(range(nd)):
            raise ShapeError(f"perm {perm} is not a permutation of the {nd} axes (batch included as axis 0)")
        if perm[0] != 0:
            raise ShapeError(f"perm {perm} moves the batch axis; perm[0] must be 0")
        full = (None,) + tuple(in_shapes[0])
        return tuple(full[i] for i in perm[1:])

    def forward(self, ctx, inputs, params):
        x, = inputs
        return xp_of(x).transpose(x, self.p.perm)

    def backward(self, ctx, gy):
        return [xp_of(gy).transpose(gy, list(np.argsort(self.p.perm)))], {}

    @classmethod
    def examples(cls):
        return [({"perm": [0, 2, 3, 1]}, [(2, 3, 4)])]


class PadParams(OpParams):
    pads: list[tuple[int, int]] = Field(description="[before, after] for each per-sample dimension, channels "
                                                    "included (not the batch): [[0, 0], [1, 1], [1, 1]] pads H and W "
                                                    "of a (C, H, W) input by 1; a negative entry crops that many")
    mode: Literal["constant", "reflect", "edge", "wrap"] = "constant"
    value: FloatOrInf = 0.0   # -.inf pads before a max, as ONNX models do

    @field_validator("pads", mode="before")
    @classmethod
    def _pairs(cls, v):
        # a flat list (conv2d's padding habit) would give one "not a tuple" error per number
        if isinstance(v, list) and v and not any(isinstance(p, (list, tuple)) for p in v):
            raise ValueError(f"pads takes one [before, after] pair for each per-sample dimension, channels included: "
                             f"[[0, 0], [1, 1], [1, 1]] pads H and W of a (C, H, W) input by 1; found {v}")
        return v


class Pad(Op):
    """Pads each sample: ``constant`` (``value``), ``reflect`` (mirror without the edge), ``edge`` (repeat the
    border) or ``wrap`` (circular: torch's ``mode="circular"``), as ONNX Pad / numpy.pad. Negative pads crop,
    before the padding (as ONNX Runtime), so ``reflect`` and ``wrap`` read the cropped tensor."""

    type = "pad"
    Params = PadParams

    def _split(self):
        """(crop, pad) [before, after] pairs per dimension: the negative and the positive parts of ``pads``."""
        crop = [(max(-b, 0), max(-a, 0)) for b, a in self.p.pads]
        pad = [(max(b, 0), max(a, 0)) for b, a in self.p.pads]
        return crop, pad

    def infer_shape(self, in_shapes):
        shape = tuple(in_shapes[0])
        if len(self.p.pads) != len(shape):
            raise ShapeError(f"pads names {len(self.p.pads)} dimensions, the input has {len(shape)} per sample {shape}")
        crop, pad = self._split()
        for d, (cb, ca), (b, a) in zip(shape, crop, pad):
            if d - cb - ca < 1:
                raise ShapeError(f"negative pads ({-cb}, {-ca}) crop away all {d} values of a dimension")
            if self.p.mode == "reflect" and max(b, a) > d - cb - ca - 1:
                raise ShapeError(f"reflect padding ({b}, {a}) needs a dimension larger than the pad, found "
                                 f"{d - cb - ca}")
        return tuple(d + b + a for d, (b, a) in zip(shape, self.p.pads))

    def _index(self, size, b, a):
        i = np.arange(-b, size + a)
        if self.p.mode == "edge":
            return np.clip(i, 0, size - 1)
        if self.p.mode == "wrap":
            return i % size
        i = np.abs(i)   # reflect
        return np.where(i > size - 1, 2 * (size - 1) - i, i)

    @staticmethod
    def _crop_key(shape, crop):
        return (slice(None),) + tuple(slice(b, d - a) for d, (b, a) in zip(shape[1:], crop))

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        crop, pad = self._split()
        ctx.save(shape=x.shape)
        x = x[self._crop_key(x.shape, crop)]
        if self.p.mode == "constant":
            return xp.pad(x, [(0, 0)] + pad, mode="constant", constant_values=x.dtype.type(self.p.value))
        # Gathers by the same indices backward scatters to (CuPy's pad "wrap" is wrong for pads wider than the axis).
        for axis, (b, a) in enumerate(pad, start=1):
            if b or a:
                x = xp.take(x, xp.asarray(self._index(x.shape[axis], b, a)), axis=axis)
        return x

    def backward(self, ctx, gy):
        shape = ctx.saved["shape"]
        crop, pad = self._split()
        cropped = (shape[0],) + tuple(d - b - a for d, (b, a) in zip(shape[1:], crop))
        xp = xp_of(gy)
        if self.p.mode == "constant":
            g = gy[(slice(None),) + tuple(slice(b, b + d) for d, (b, _) in zip(cropped[1:], pad))]
        else:
            g = gy
            for axis, (d, (b, a)) in enumerate(zip(cropped[1:], pad), start=1):
                if b == 0 and a == 0:
                    continue
                idx = self._index(d, b, a)
                out_shape = list(g.shape)
                out_shape[axis] = d
                acc = xp.zeros(out_shape, dtype=g.dtype)
                moved = xp.moveaxis(acc, axis, 0)
                xp.add.at(moved, xp.asarray(idx), xp.moveaxis(g, axis, 0))
                g = acc
        if not any(b or a for b, a in crop):
            return [g], {}
        dx = xp.zeros(shape, dtype=gy.dtype)   # the cropped values get no gradient
        dx[self._crop_key(shape, crop)] = g
        return [dx], {}

    @classmethod
    def examples(cls):
        return [({"pads": [[0, 0], [1, 2], [2, 1]]}, [(2, 4, 5)]),
                ({"pads": [[0, 0], [1, 2], [2, 1]], "mode": "reflect"}, [(2, 4, 5)]),
                ({"pads": [[1, 0], [0, 2]], "mode": "edge"}, [(3, 4)]),
                ({"pads": [[0, 0], [3, 1], [7, 2]], "mode": "wrap"}, [(2, 4, 5)]),
                ({"pads": [[-1, 1], [2, -2]], "mode": "reflect"}, [(4, 6)]),
                ({"pads": [[0, -1], [-2, 3]], "value": 0.5}, [(3, 5)])]


class ExpandParams(OpParams):
    shape: list[int] = Field(description="per-sample shape to broadcast to (batch excluded), with NumPy's rules "
                                         "(aligned right; a 1 keeps the input's size), as torch's x.expand")

    _positive = field_validator("shape")(classmethod(lambda cls, v: _all_at_least_one(v, "dimension")))


class Expand(Op):
    """Broadcasts each sample to ``shape`` (ONNX Expand, which also keeps a larger input dimension where
    ``shape`` says 1); extra leading dimensions go after the batch. The gradient sums over the copies."""

    type = "expand"
    Params = ExpandParams

    @classmethod
    def examples(cls):
        return [({"shape": [3, 4, 5]}, [(3, 1, 5)]), ({"shape": [2, 1, 4]}, [(3, 1)])]

    def infer_shape(self, in_shapes):
        return broadcast_shapes([in_shapes[0], tuple(self.p.shape)], "expand input and shape")

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        out = self.infer_shape([x.shape[1:]])
        ctx.save(shape=x.shape)
        return xp.ascontiguousarray(xp.broadcast_to(_expand(x, len(out)), (x.shape[0],) + out))

    def backward(self, ctx, gy):
        return [unbroadcast(gy, ctx.saved["shape"])], {}


class TileParams(OpParams):
    repeats: list[int] = Field(description="how many copies along each per-sample dimension (batch excluded), "
                                           "as torch's x.repeat(1, *repeats)")

    _positive = field_validator("repeats")(classmethod(lambda cls, v: _all_at_least_one(v, "repeat")))


class Tile(Op):
    """Repeats each sample ``repeats[i]`` times along dimension i (ONNX Tile, numpy.tile). The gradient sums
    over the copies."""

    type = "tile"
    Params = TileParams

    @classmethod
    def examples(cls):
        return [({"repeats": [1, 2, 3]}, [(2, 3, 2)]), ({"repeats": [3]}, [(4,)])]

    def infer_shape(self, in_shapes):
        shape = tuple(in_shapes[0])
        if len(self.p.repeats) != len(shape):
            raise ShapeError(f"repeats names {len(self.p.repeats)} dimensions, the input has {len(shape)} per "
                             f"sample {shape}")
        return tuple(d * r for d, r in zip(shape, self.p.repeats))

    def forward(self, ctx, inputs, params):
        x, = inputs
        ctx.save(shape=x.shape)
        return xp_of(x).tile(x, (1, *self.p.repeats))

    def backward(self, ctx, gy):
        shape = ctx.saved["shape"]
        # (N, r1·d1, r2·d2, …) → (N, r1, d1, r2, d2, …), summed over the r axes
        split = (shape[0],) + tuple(v for r, d in zip(self.p.repeats, shape[1:]) for v in (r, d))
        g = gy.reshape(split).sum(axis=tuple(range(1, 2 * len(self.p.repeats), 2)))
        return [g], {}


class ClipParams(OpParams):
    min: Optional[FloatOrInf] = None    # -.inf / .inf: no bound, as torch.clamp takes them
    max: Optional[FloatOrInf] = None


class Clip(Op):
    """Clamps values to [min, max] (either bound may be omitted); clip(0, 6) is ReLU6."""

    type = "clip"
    Params = ClipParams

    def infer_shape(self, in_shapes):
        if self.p.min is not None and self.p.max is not None and self.p.min > self.p.max:
            raise ShapeError(f"min {self.p.min} is larger than max {self.p.max}")
        return in_shapes[0]

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        t = x.dtype.type
        y = x
        if self.p.min is not None:
            y = xp.maximum(y, t(self.p.min))
        if self.p.max is not None:
            y = xp.minimum(y, t(self.p.max))
        ctx.save(x=x)
        return y

    def backward(self, ctx, gy):
        x = ctx.saved["x"]
        mask = xp_of(x).ones(x.shape, dtype=bool)
        if self.p.min is not None:
            mask &= x >= self.p.min
        if self.p.max is not None:
            mask &= x <= self.p.max
        return [gy * mask], {}

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape)

    @classmethod
    def examples(cls):
        return [({"min": 0.0, "max": 6.0}, [(3, 4)]), ({"min": -0.5}, [(5,)])]


class ConstantParams(OpParams):
    shape: list[int] = Field(description="shape of the tensor (no batch dimension: it broadcasts over the batch)")
    fill: float = Field(0.0, description="initial value of every element (imported models load the real values)")
    trainable: bool = Field(True, description="false: a fixed tensor (a buffer: no gradient, optimizers leave it "
                                              "alone), as ONNX constants import")

    _positive = field_validator("shape")(classmethod(lambda cls, v: _all_at_least_one(v, "dimension")))


class Constant(Op):
    """A learnable tensor ``value`` of the given shape (fixed with ``trainable: false``). With no input its output has batch size 1
    (it broadcasts in ``broadcast_add``/``sub``/``mul``/``div``/``matmul``); with an input it is
    repeated to that input's batch size (a view; the input only lends its batch size)."""

    type = "constant"
    int_inputs = (0,)   # the input only lends its batch size
    Params = ConstantParams
    arity = (0, 1)
    grad_inputs = ()

    def __init__(self, params=None, layer_id: str = ""):
        super().__init__(params, layer_id)
        if not self.p.trainable:   # per layer: a fixed value is state, like running statistics
            self.buffers = ("value",)

    def infer_shape(self, in_shapes):
        return tuple(self.p.shape)

    def init_params(self, in_shapes, rng):
        return {"value": np.full(tuple(self.p.shape), self.p.fill, np.float32)}

    def param_shapes(self, in_shapes):
        return {"value": tuple(self.p.shape)}

    def forward(self, ctx, inputs, params):
        v = params["value"]
        ctx.save(n=len(inputs))
        if inputs:
            return xp_of(v).broadcast_to(v, (inputs[0].shape[0],) + tuple(v.shape))
        return v.reshape((1,) + tuple(v.shape))

    def backward(self, ctx, gy):
        return [None] * ctx.saved["n"], ({"value": gy.sum(axis=0)} if self.p.trainable else {})

    @classmethod
    def examples(cls):
        return [({"shape": [3, 1, 1]}, []), ({"shape": [2]}, [(4,)]), ({"shape": [2], "trainable": False}, [(4,)])]


class SliceParams(OpParams):
    axis: int = 1
    start: Optional[int] = None
    end: Optional[int] = None
    step: int = 1

    @field_validator("step")
    @classmethod
    def _nonzero(cls, v):
        if v == 0:
            raise ValueError("step must not be 0")
        return v


class Slice(Op):
    """``x[..., start:end:step, ...]`` along one ``axis`` (batch = 0 is not allowed; default 1 =
    channels), with Python's slicing rules: negative indices count from the end, ``start: null`` (the
    default) and ``end: null`` run from the beginning and to the end (the other way round for a negative step). ShuffleNet V2's channel split, ONNX Slice/Split."""

    type = "slice"
    Params = SliceParams

    @classmethod
    def examples(cls):
        return [({"start": 2, "end": 5}, [(6, 3, 3)]), ({"axis": -1, "start": -1, "end": 0, "step": -2}, [(2, 7)]),
                ({"axis": 2, "start": 1}, [(2, 4, 5)]), ({"step": -1}, [(3, 2)])]

    def _index(self, shape):
        """(per-sample axis, slice) for a per-sample ``shape``."""
        nd = len(shape) + 1
        if not -nd <= self.p.axis < nd or self.p.axis % nd == 0:
            raise ShapeError(f"axis {self.p.axis} is out of range or the batch axis for {nd}-D tensors")
        return self.p.axis % nd - 1, slice(self.p.start, self.p.end, self.p.step)

    def infer_shape(self, in_shapes):
        shape = list(in_shapes[0])
        a, sl = self._index(shape)
        shape[a] = len(range(*sl.indices(shape[a])))
        if shape[a] == 0:
            text = ":".join("" if v is None else str(v) for v in (sl.start, sl.stop, sl.step))
            raise ShapeError(f"slice {text} of axis {self.p.axis} (size {in_shapes[0][a]}) "
                             f"is empty")
        return tuple(shape)

    def _key(self, shape):
        a, sl = self._index(shape[1:])
        return (slice(None),) * (a + 1) + (sl,)

    def forward(self, ctx, inputs, params):
        x, = inputs
        ctx.save(shape=x.shape)
        return x[self._key(x.shape)]

    def backward(self, ctx, gy):
        shape = ctx.saved["shape"]
        dx = xp_of(gy).zeros(shape, dtype=gy.dtype)
        dx[self._key(shape)] = gy
        return [dx], {}


class TakeParams(OpParams):
    axis: int = 1
    indices: Union[int, list[int]] = Field(description="positions along axis (negative = from the end; repeats "
                                                       "allowed); a single int removes the axis, as x[:, i]")

    @field_validator("indices")
    @classmethod
    def _nonempty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("indices must not be empty")
        return v


class Take(Op):
    """Picks ``indices`` along one ``axis`` (batch = 0 is not allowed; default 1 = channels), as
    ``x[:, [2, 0, 1]]``, ``x.index_select`` or ONNX Gather with constant indices; a single int index removes
    the axis (``x[:, :, -1]``). The gradient adds into the picked positions, so repeated indices accumulate."""

    type = "take"
    Params = TakeParams

    @classmethod
    def examples(cls):
        return [({"indices": [2, 0, 1]}, [(3, 2, 2)]), ({"axis": 2, "indices": -1}, [(2, 3, 4)]),
                ({"axis": -1, "indices": [0, -1, 0, 1]}, [(2, 3)]), ({"axis": 3, "indices": [1, 1]}, [(2, 2, 3)])]

    def _index(self, shape):
        """(per-sample axis, indices made non-negative) for a per-sample ``shape``."""
        nd = len(shape) + 1
        if not -nd <= self.p.axis < nd or self.p.axis % nd == 0:
            raise ShapeError(f"axis {self.p.axis} is out of range or the batch axis for {nd}-D tensors")
        a = self.p.axis % nd - 1
        idx = self.p.indices
        bad = [i for i in (idx if isinstance(idx, list) else [idx]) if not -shape[a] <= i < shape[a]]
        if bad:
            raise ShapeError(f"indices {bad} are out of range for axis {self.p.axis} of size {shape[a]}")
        return a, ([i % shape[a] for i in idx] if isinstance(idx, list) else idx % shape[a])

    def infer_shape(self, in_shapes):
        shape = list(in_shapes[0])
        a, idx = self._index(shape)
        return tuple(shape[:a] + ([len(idx)] if isinstance(idx, list) else []) + shape[a + 1:])

    def _key(self, x):
        a, idx = self._index(x.shape[1:])
        # a device array for CuPy; one advanced index among slices keeps its place in the result
        return (slice(None),) * (a + 1) + (xp_of(x).asarray(idx) if isinstance(idx, list) else idx,)

    def forward(self, ctx, inputs, params):
        x, = inputs
        ctx.save(shape=x.shape)
        return x[self._key(x)]

    def backward(self, ctx, gy):
        xp = xp_of(gy)
        dx = xp.zeros(ctx.saved["shape"], dtype=gy.dtype)
        xp.add.at(dx, self._key(dx), gy)   # not dx[key] += gy: a repeated index must add each time
        return [dx], {}


class EinsumParams(OpParams):
    equation: str = Field(description="per-sample subscripts with an explicit output, batch excluded: 'ij,jk->ik' "
                                      "(letters only; no letter twice in one operand or in the output)")

    @field_validator("equation")
    @classmethod
    def _parse(cls, v):
        _terms(v)
        return v.replace(" ", "")


def _terms(equation: str) -> tuple[list[str], str]:
    """(input terms, output term) of an einsum equation; ValueError saying what is wrong."""
    eq = equation.replace(" ", "")
    if eq.count("->") != 1:
        raise ValueError(f"equation {equation!r} needs one '->' and an explicit output ('ij,jk->ik')")
    lhs, out = eq.split("->")
    terms = lhs.split(",")
    for term in terms + [out]:
        if not all(c.isascii() and c.isalpha() for c in term):
            raise ValueError(f"equation {equation!r}: subscripts are letters a-z, A-Z ('...' is not supported)")
        if len(set(term)) != len(term):
            raise ValueError(f"equation {equation!r}: '{term}' repeats a letter (diagonals are not supported)")
    missing = sorted(set(out) - set("".join(terms)))
    if missing:
        raise ValueError(f"equation {equation!r}: output letters {missing} appear in no input")
    return terms, out


class Einsum(Op):
    """Einstein summation per sample (``torch.einsum`` / ONNX Einsum with the batch axis leading every operand):
    ``equation`` names the per-sample axes of each input and of the output; letters missing from the output
    are summed over. A ``constant`` input (batch 1) broadcasts over the batch."""

    type = "einsum"
    arity = (1, 8)
    Params = EinsumParams

    @classmethod
    def examples(cls):
        return [({"equation": "ij,jk->ik"}, [(2, 3), (3, 4)]), ({"equation": "chw->hwc"}, [(2, 3, 4)]),
                ({"equation": "ij,ij->i"}, [(3, 4), (3, 4)]), ({"equation": "ck,kd,d->c"}, [(2, 3), (3, 4), (4,)]),
                ({"equation": "hqd,hkd->hqk"}, [(2, 3, 4), (2, 5, 4)]), ({"equation": "ij,jk->i"}, [(2, 3), (3, 4)])]

    def _sizes(self, in_shapes) -> dict[str, int]:
        terms, _ = _terms(self.p.equation)
        if len(terms) != len(in_shapes):
            raise ShapeError(f"equation {self.p.equation!r} has {len(terms)} operand(s), the layer {len(in_shapes)} "
                             f"input(s)")
        sizes: dict[str, int] = {}
        for term, shape in zip(terms, in_shapes):
            if len(term) != len(shape):
                raise ShapeError(f"'{term}' of equation {self.p.equation!r} names {len(term)} axes, its input has "
                                 f"per-sample shape {tuple(shape)}")
            for letter, n in zip(term, shape):
                if sizes.setdefault(letter, n) != n:
                    raise ShapeError(f"letter '{letter}' of equation {self.p.equation!r} is {sizes[letter]} in one "
                                     f"input and {n} in another")
        return sizes

    def infer_shape(self, in_shapes):
        sizes = self._sizes(in_shapes)
        return tuple(sizes[c] for c in _terms(self.p.equation)[1])

    def batched_terms(self) -> tuple[list[str], str]:
        """The input terms and the output term with a batch letter (one the equation does not use) in front."""
        terms, out = _terms(self.p.equation)
        b = next(c for c in "zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPONMLKJIHGFEDCBA" if c not in self.p.equation)
        return [b + t for t in terms], b + out

    def forward(self, ctx, inputs, params):
        terms, out = self.batched_terms()
        n = max(x.shape[0] for x in inputs)
        xp = xp_of(*inputs)
        full = [xp.broadcast_to(x, (n,) + x.shape[1:]) for x in inputs]   # constants: batch 1
        ctx.save(inputs=full, shapes=[x.shape for x in inputs])
        return xp.einsum(f"{','.join(terms)}->{out}", *full, optimize=len(full) > 2)

    def backward(self, ctx, gy):
        terms, out = self.batched_terms()
        xs, shapes = ctx.saved["inputs"], ctx.saved["shapes"]
        xp = xp_of(gy)
        grads = []
        for k, term in enumerate(terms):
            if not ctx.need_grad(k):
                grads.append(None)
                continue
            others = [t for i, t in enumerate(terms) if i != k]
            seen = set(out).union(*others)
            kept = "".join(c for c in term if c in seen)   # letters only this input has: summed, so broadcast back
            g = xp.einsum(f"{','.join([out] + others)}->{kept}", gy, *[x for i, x in enumerate(xs) if i != k],
                          optimize=len(others) > 1)
            g = g.reshape(tuple(xs[k].shape[term.index(c)] if c in kept else 1 for c in term))
            g = xp.broadcast_to(g, xs[k].shape)
            grads.append(xp.ascontiguousarray(unbroadcast(g, shapes[k])))
        return grads, {}

    def flops(self, in_shapes, out_shape):
        return math.prod(self._sizes(in_shapes).values()) * max(1, len(in_shapes) - 1)


class Identity(Op):
    """Passes its input through unchanged."""

    type = "identity"

    def forward(self, ctx, inputs, params):
        return inputs[0]

    def backward(self, ctx, gy):
        return [gy], {}

    @classmethod
    def examples(cls):
        return [({}, [(3, 4)])]


@hookimpl
def cnngraph_register_ops(registry):
    for op in (Reshape, Transpose, Slice, Take, BroadcastAdd, Sub, Mul, Div, MatMul, Pad, Expand, Tile, Clip, Constant,
               Identity, Einsum):
        registry.add(op)
