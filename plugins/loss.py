"""Losses: ops with (prediction, target) inputs and a scalar output for the whole batch."""
from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import Field, field_validator

from cnngraph.backend import xp_of
from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.op import Op, OpParams
from cnngraph.plugins.activation import sigmoid

__all__ = ["CrossEntropy", "BinaryCrossEntropy", "MSE"]


class LossParams(OpParams):
    reduction: Literal["mean", "sum"] = "mean"


class _Loss(Op):
    arity = (2, 2)
    reduces_batch = True
    grad_inputs = (0,)

    def _reduce(self, total, count):
        return total / count if self.p.reduction == "mean" else total

    def _scale(self, gy, count, dtype):
        s = gy / count if self.p.reduction == "mean" else gy
        return dtype.type(s)

    def flops(self, in_shapes, out_shape):
        return 3 * math.prod(in_shapes[0])


class CrossEntropyParams(LossParams):
    label_smoothing: float = Field(0.0, ge=0, le=1)
    weight: Optional[list[float]] = Field(None, min_length=1, description="a weight per class (rare classes "
                                          "count more); the mean divides by the targets' summed weights")
    ignore_index: Optional[int] = Field(None, description="class targets of this value add nothing (void "
                                        "pixels); the mean is over the others")

    @field_validator("weight")
    @classmethod
    def _non_negative(cls, v):
        if v is not None and any(not (w >= 0 and math.isfinite(w)) for w in v):
            raise ValueError(f"every class weight must be a finite number >= 0, found {v}")
        return v


class CrossEntropy(_Loss):
    """Softmax cross-entropy of logits (N, C) against integer class targets (N,) or class
    probabilities (N, C), with label smoothing, as torch.nn.functional.cross_entropy; also per
    position, for segmentation: logits (N, C, d1, ...) against targets (N, d1, ...) or
    probabilities (N, C, d1, ...), the mean taken over every position of every sample. ``weight`` and
    ``ignore_index`` as torch: the mean divides by the summed weights of the counted class targets."""

    type = "cross_entropy"
    Params = CrossEntropyParams
    index_targets = True
    grad_inputs = None   # probability targets get a gradient too (distillation from a trainable teacher)

    @classmethod
    def examples(cls):
        return [
            ({}, [(5,), {"shape": (), "dtype": "int64", "high": 5}]),
            ({"label_smoothing": 0.1, "reduction": "sum"}, [(4,), {"shape": (), "dtype": "int64", "high": 4}]),
            ({"label_smoothing": 0.2}, [(3,), {"shape": (3,), "low": 0, "high": 1}]),
            ({}, [(3, 4, 5), {"shape": (4, 5), "dtype": "int64", "high": 3}]),
            ({"label_smoothing": 0.1}, [(3, 2, 4), {"shape": (3, 2, 4), "low": 0, "high": 1}]),
            ({"weight": [0.5, 2.0, 1.0], "label_smoothing": 0.1, "ignore_index": 1},
             [(3, 2, 3), {"shape": (2, 3), "dtype": "int64", "high": 3}]),
            ({"weight": [1.0, 3.0, 0.5, 2.0]}, [(4,), {"shape": (4,), "low": 0, "high": 1}]),
        ]

    def infer_shape(self, in_shapes):
        logits, target = (tuple(s) for s in in_shapes)
        if len(logits) < 1:
            raise ShapeError(f"cross_entropy expects logits of shape (classes,) or (classes, d1, ...) per sample, "
                             f"found {logits}")
        if target not in (logits[1:], logits):
            raise ShapeError(f"cross_entropy expects targets of shape {logits[1:]} (class indices) or {logits} "
                             f"(probabilities) per sample, found {target}")
        return ()

    def forward(self, ctx, inputs, params):
        x, target = inputs
        xp = xp_of(x)
        shape = x.shape
        if x.ndim > 2:   # per position: classes last, positions become samples
            x = xp.moveaxis(x, 1, -1).reshape(-1, shape[1])
            target = (xp.moveaxis(target, 1, -1) if target.ndim == len(shape) else target).reshape(-1, *(
                (shape[1],) if target.ndim == len(shape) else ()))
        n, c = x.shape
        z = x - x.max(axis=1, keepdims=True)
        logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
        eps = x.dtype.type(self.p.label_smoothing)
        w = None
        if self.p.weight is not None:
            if len(self.p.weight) != c:
                raise ValueError(f"weight has {len(self.p.weight)} values but the logits have {c} classes")
            w = xp.asarray(self.p.weight, dtype=x.dtype)
        count = n
        if target.ndim == 1:
            t = target.astype(xp.int64, copy=False)
            keep = None if self.p.ignore_index is None else t != self.p.ignore_index
            if keep is not None:
                t = xp.where(keep, t, 0)
            if n and (int(t.min()) < 0 or int(t.max()) >= c):
                raise ValueError(f"class targets must lie in [0, {c}), found values in [{int(t.min())}, {int(t.max())}]")
            q = xp.zeros_like(x)
            q[xp.arange(n), t] = 1
            if eps:
                q = q * (1 - eps) + eps / c
            if w is not None:   # torch: the target's weight on its term, each class's on the smoothing
                q = q * w
            row = (w[t] if w is not None else xp.ones(n, x.dtype))
            if keep is not None:
                q = q * keep[:, None]
                row = row * keep
            count = float(row.sum()) if (w is not None or keep is not None) else n
            if count == 0:   # every target ignored (or weighted 0): nothing to learn from, a loss of 0, not 0/0
                count = 1.0
        else:
            if self.p.ignore_index is not None:
                raise ValueError("ignore_index applies to class targets, not to probabilities (as in PyTorch)")
            q = target.astype(x.dtype, copy=False)
            if eps:
                q = q * (1 - eps) + eps / c
            if w is not None:
                q = q * w
        loss = -(q * logp).sum()
        ctx.save(p=xp.exp(logp), q=q, n=count, logp=logp if target.ndim == 2 else None, tdtype=target.dtype,
                 shape=shape, w=w)
        return self._reduce(loss, count).astype(x.dtype)

    def backward(self, ctx, gy):
        s = ctx.saved
        scale = self._scale(gy, s["n"], s["p"].dtype)
        dt = None
        if s["logp"] is not None and ctx.need_grad(1):   # d/dq of -sum(w q' logp), q' = q (1 - eps) + eps / c
            g = s["logp"] * (-(1 - self.p.label_smoothing) * scale)
            if s["w"] is not None:
                g = g * s["w"]
            dt = _unflatten(g.astype(s["tdtype"], copy=False), s["shape"])
        p, q = s["p"], s["q"]
        if s["logp"] is not None or s["w"] is not None or self.p.ignore_index is not None:
            p = p * q.sum(axis=1, keepdims=True)   # the weights need not sum to 1: d/dx = p * sum(q) - q
        return [_unflatten((p - q) * scale, s["shape"]), dt], {}


def _unflatten(g, shape):
    """(positions, C) back to the logits' (N, C, d1, ...) layout."""
    if len(shape) <= 2:
        return g
    xp = xp_of(g)
    return xp.ascontiguousarray(xp.moveaxis(g.reshape(shape[0], *shape[2:], shape[1]), -1, 1))


class BinaryCrossEntropy(_Loss):
    """Binary cross-entropy on logits (sigmoid applied inside, numerically stable), targets in
    [0, 1] of the same shape, as torch.nn.functional.binary_cross_entropy_with_logits."""

    type = "binary_cross_entropy"
    Params = LossParams

    @classmethod
    def examples(cls):
        return [
            ({}, [(4,), {"shape": (4,), "low": 0, "high": 1}]),
            ({"reduction": "sum"}, [(1,), {"shape": (), "low": 0, "high": 1}]),
        ]
    grad_inputs = None   # float targets get a gradient too

    def infer_shape(self, in_shapes):
        x, t = in_shapes
        if tuple(t) != tuple(x) and not (tuple(x)[:1] == (1,) and tuple(t) == tuple(x)[1:]):
            raise ShapeError(f"binary_cross_entropy expects targets shaped like the logits {tuple(x)}, found {tuple(t)}")
        return ()

    def forward(self, ctx, inputs, params):
        x, target = inputs
        xp = xp_of(x)
        t = target.astype(x.dtype, copy=False).reshape(x.shape)
        loss = (xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))).sum()
        ctx.save(x=x, t=t, tshape=target.shape)
        return self._reduce(loss, x.size).astype(x.dtype)

    def backward(self, ctx, gy):
        x, t = ctx.saved["x"], ctx.saved["t"]
        scale = self._scale(gy, x.size, x.dtype)
        dt = (-x * scale).reshape(ctx.saved["tshape"]) if ctx.need_grad(1) else None
        return [(sigmoid(x) - t) * scale, dt], {}


class MSE(_Loss):
    """Mean squared error between prediction and a target of the same shape."""

    type = "mse"
    Params = LossParams

    @classmethod
    def examples(cls):
        return [({}, [(3, 4), (3, 4)]), ({"reduction": "sum"}, [(5,), (5,)])]
    grad_inputs = None

    def infer_shape(self, in_shapes):
        x, t = in_shapes
        if tuple(t) != tuple(x):
            raise ShapeError(f"mse expects a target shaped like the prediction {tuple(x)}, found {tuple(t)}")
        return ()

    def forward(self, ctx, inputs, params):
        x, target = inputs
        d = x - target.astype(x.dtype, copy=False)
        ctx.save(d=d)
        return self._reduce((d * d).sum(), x.size).astype(x.dtype)

    def backward(self, ctx, gy):
        d = ctx.saved["d"]
        g = d * self._scale(2 * gy, d.size, d.dtype)
        return [g, -g if ctx.need_grad(1) else None], {}


@hookimpl
def cnngraph_register_ops(registry):
    for op in (CrossEntropy, BinaryCrossEntropy, MSE):
        registry.add(op)
