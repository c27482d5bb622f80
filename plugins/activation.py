"""Element-wise activations and softmax."""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from cnngraph.backend import xp_of
from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.kernels._parallel import contiguous_alike, flat, run_blocks
from cnngraph.op import Context, Op, OpParams

__all__ = ["ReLU", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "Softplus", "Softsign", "Tanh", "Sigmoid",
           "Softmax", "LogSoftmax", "sigmoid", "erf"]


def sigmoid(x):
    """Numerically stable logistic function (no overflow warnings for large |x|)."""
    xp = xp_of(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def erf(x):
    """Error function on the array's own device (SciPy / CuPy's scipy when present)."""
    xp = xp_of(x)
    if xp.__name__ == "cupy":  # pragma: no cover - GPU only
        import cupyx.scipy.special as sp
        return sp.erf(x)
    from scipy.special import erf as _erf
    return _erf(x).astype(x.dtype, copy=False)


class _Elementwise(Op):
    """Shape-preserving op; FLOPs counted as one per element."""

    @classmethod
    def examples(cls):
        return [({}, [(3, 5, 5)]), ({}, [(7,)])]

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape)


class ReLU(_Elementwise):
    """max(x, 0)."""

    type = "relu"

    def forward(self, ctx: Context, inputs, params):
        x, = inputs
        out = x if ctx.can_overwrite(0) else None
        if contiguous_alike(x):   # NumPy: big arrays on both cores, in L2-sized pieces
            y = np.empty_like(x) if out is None else out
            fx, fy = flat(x), flat(y)
            run_blocks(lambda s, e: np.maximum(fx[s:e], 0, out=fy[s:e]), fx.size)
        else:
            y = xp_of(x).maximum(x, 0, out=out)
        ctx.save(y=y)
        return y

    def backward(self, ctx, gy):
        y = ctx.saved["y"]
        if not contiguous_alike(gy, y):
            return [gy * (y > 0)], {}
        g = np.empty_like(gy)
        fg, fy, fo = flat(gy), flat(y), flat(g)

        def piece(s, e):
            np.multiply(fg[s:e], fy[s:e] > 0, out=fo[s:e])

        run_blocks(piece, fo.size)
        return [g], {}


class LeakyReLUParams(OpParams):
    negative_slope: float = 0.01


class LeakyReLU(_Elementwise):
    """x if x > 0 else negative_slope * x."""

    type = "leaky_relu"
    Params = LeakyReLUParams

    @classmethod
    def examples(cls):
        return [({"negative_slope": 0.2}, [(3, 5, 5)]), ({}, [(7,)])]

    def forward(self, ctx, inputs, params):
        x, = inputs
        ctx.save(x=x)
        return xp_of(x).where(x > 0, x, x * x.dtype.type(self.p.negative_slope))

    def backward(self, ctx, gy):
        x = ctx.saved["x"]
        return [xp_of(x).where(x > 0, gy, gy * x.dtype.type(self.p.negative_slope))], {}


class PReLUParams(OpParams):
    shared: bool = Field(False, description="one slope for every channel instead of one per channel")


class PReLU(_Elementwise):
    """x if x > 0 else weight[c] * x, with a learnable slope per channel (axis 1), or one shared slope,
    initialised to 0.25, as torch.nn.PReLU(num_parameters=C or 1)."""

    type = "prelu"
    Params = PReLUParams

    @classmethod
    def examples(cls):
        return [({}, [(3, 5, 5)]), ({"shared": True}, [(3, 4, 4)]), ({}, [(7,)])]

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        if len(shape) < 1:
            raise ShapeError("prelu needs a channel axis: found a scalar per sample")
        return shape

    def init_params(self, in_shapes, rng):
        return {"weight": np.full(1 if self.p.shared else in_shapes[0][0], 0.25, np.float32)}

    def param_shapes(self, in_shapes):
        return {"weight": (1 if self.p.shared else in_shapes[0][0],)}

    def _slope(self, w, x):
        return w.astype(x.dtype, copy=False).reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, ctx, inputs, params):
        x, = inputs
        w = self._slope(params["weight"], x)
        ctx.save(x=x, w=w)
        return xp_of(x).where(x > 0, x, w * x)

    def backward(self, ctx, gy):
        x, w = ctx.saved["x"], ctx.saved["w"]
        xp = xp_of(x)
        gw = gy * xp.minimum(x, 0)
        gw = gw.sum() if self.p.shared else gw.sum(axis=(0,) + tuple(range(2, gy.ndim)))
        return [xp.where(x > 0, gy, w * gy)], {"weight": gw.reshape(-1)}

    def flops(self, in_shapes, out_shape):
        return 2 * math.prod(out_shape)


class ELUParams(OpParams):
    alpha: float = 1.0


class ELU(_Elementwise):
    """x if x > 0 else alpha * (exp(x) - 1)."""

    type = "elu"
    Params = ELUParams

    @classmethod
    def examples(cls):
        return [({"alpha": 0.7}, [(3, 5, 5)]), ({}, [(7,)])]

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        a = x.dtype.type(self.p.alpha)
        y = xp.where(x > 0, x, a * xp.expm1(xp.minimum(x, 0)))
        ctx.save(x=x, y=y)
        return y

    def backward(self, ctx, gy):
        x, y = ctx.saved["x"], ctx.saved["y"]
        a = x.dtype.type(self.p.alpha)
        return [xp_of(x).where(x > 0, gy, gy * (y + a))], {}


class SELUParams(OpParams):
    alpha: float = 1.6732632423543772
    scale: float = Field(1.0507009873554805, description="ONNX Selu's gamma")


class SELU(_Elementwise):
    """scale * (x if x > 0 else alpha * (exp(x) - 1)), with torch.nn.SELU's constants by default
    (ONNX Selu's alpha and gamma)."""

    type = "selu"
    Params = SELUParams

    @classmethod
    def examples(cls):
        return [({}, [(3, 5, 5)]), ({"alpha": 1.5, "scale": 2.0}, [(7,)])]

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        t = x.dtype.type
        e = t(self.p.alpha) * xp.exp(xp.minimum(x, 0))     # alpha * exp(x) on the negative side
        ctx.save(x=x, e=e)
        return t(self.p.scale) * xp.where(x > 0, x, e - t(self.p.alpha))

    def backward(self, ctx, gy):
        x, e = ctx.saved["x"], ctx.saved["e"]
        return [gy * (xp_of(x).where(x > 0, 1, e) * x.dtype.type(self.p.scale))], {}

    def flops(self, in_shapes, out_shape):
        return 3 * math.prod(out_shape)


class CELUParams(OpParams):
    alpha: float = Field(1.0, gt=0)


class CELU(_Elementwise):
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1)), as torch.nn.CELU and ONNX Celu."""

    type = "celu"
    Params = CELUParams

    @classmethod
    def examples(cls):
        return [({}, [(3, 5, 5)]), ({"alpha": 0.5}, [(7,)])]

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        a = x.dtype.type(self.p.alpha)
        e = xp.exp(xp.minimum(x, 0) / a)
        ctx.save(x=x, e=e)
        return xp.where(x > 0, x, a * (e - 1))

    def backward(self, ctx, gy):
        x, e = ctx.saved["x"], ctx.saved["e"]
        return [xp_of(x).where(x > 0, gy, gy * e)], {}

    def flops(self, in_shapes, out_shape):
        return 3 * math.prod(out_shape)


class GELUParams(OpParams):
    approximate: Literal["none", "tanh"] = "none"


class GELU(_Elementwise):
    """x * Φ(x) (exact, erf) or the tanh approximation, as torch.nn.GELU."""

    type = "gelu"
    Params = GELUParams

    @classmethod
    def examples(cls):
        return [({}, [(3, 5, 5)]), ({"approximate": "tanh"}, [(7,)])]

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        t = x.dtype.type
        if self.p.approximate == "tanh":
            inner = t(math.sqrt(2 / math.pi)) * (x + t(0.044715) * x ** 3)
            th = xp.tanh(inner)
            ctx.save(x=x, th=th)
            return t(0.5) * x * (1 + th)
        cdf = t(0.5) * (1 + erf(x * t(1 / math.sqrt(2))))
        ctx.save(x=x, cdf=cdf)
        return x * cdf

    def backward(self, ctx, gy):
        x = ctx.saved["x"]
        xp = xp_of(x)
        t = x.dtype.type
        if self.p.approximate == "tanh":
            th = ctx.saved["th"]
            d_inner = t(math.sqrt(2 / math.pi)) * (1 + t(3 * 0.044715) * x * x)
            return [gy * (t(0.5) * (1 + th) + t(0.5) * x * (1 - th * th) * d_inner)], {}
        pdf = xp.exp(t(-0.5) * x * x) * t(1 / math.sqrt(2 * math.pi))
        return [gy * (ctx.saved["cdf"] + x * pdf)], {}


class SoftplusParams(OpParams):
    beta: float = Field(1.0, gt=0)
    threshold: float = Field(20.0, description="linear (y = x) where beta * x exceeds it, for stability")


class Softplus(_Elementwise):
    """log(1 + exp(beta * x)) / beta, as torch.nn.Softplus (ONNX Softplus is beta 1 without the
    threshold; above it the two differ by less than exp(-20))."""

    type = "softplus"
    Params = SoftplusParams

    @classmethod
    def examples(cls):
        return [({}, [(3, 5, 5)]), ({"beta": 2.0, "threshold": 1.0}, [(7,)])]

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        bx = x * x.dtype.type(self.p.beta)
        linear = bx > self.p.threshold
        ctx.save(bx=bx, linear=linear)
        return xp.where(linear, x, xp.logaddexp(x.dtype.type(0), bx) / x.dtype.type(self.p.beta))

    def backward(self, ctx, gy):
        bx, linear = ctx.saved["bx"], ctx.saved["linear"]
        return [xp_of(gy).where(linear, gy, gy * sigmoid(bx))], {}

    def flops(self, in_shapes, out_shape):
        return 3 * math.prod(out_shape)


class Softsign(_Elementwise):
    """x / (1 + |x|)."""

    type = "softsign"

    def forward(self, ctx, inputs, params):
        x, = inputs
        d = 1 + xp_of(x).abs(x)
        ctx.save(d=d)
        return x / d

    def backward(self, ctx, gy):
        d = ctx.saved["d"]
        return [gy / (d * d)], {}

    def flops(self, in_shapes, out_shape):
        return 2 * math.prod(out_shape)


class Tanh(_Elementwise):
    """Hyperbolic tangent."""

    type = "tanh"

    def forward(self, ctx, inputs, params):
        y = xp_of(inputs[0]).tanh(inputs[0])
        ctx.save(y=y)
        return y

    def backward(self, ctx, gy):
        y = ctx.saved["y"]
        return [gy * (1 - y * y)], {}


class Sigmoid(_Elementwise):
    """Logistic function 1 / (1 + exp(-x)) (for binary or multi-label outputs)."""

    type = "sigmoid"

    def forward(self, ctx, inputs, params):
        y = sigmoid(inputs[0])
        ctx.save(y=y)
        return y

    def backward(self, ctx, gy):
        y = ctx.saved["y"]
        return [gy * y * (1 - y)], {}


class HardSigmoidParams(OpParams):
    alpha: float = 0.2
    beta: float = 0.5


class HardSigmoid(_Elementwise):
    """max(0, min(1, alpha * x + beta)), as ONNX HardSigmoid (defaults 0.2, 0.5; PyTorch's
    hardsigmoid is alpha 1/6). MobileNet V3's squeeze-excitation gate."""

    type = "hard_sigmoid"
    Params = HardSigmoidParams

    @classmethod
    def examples(cls):
        return [({}, [(3, 4, 4)]), ({"alpha": 1 / 6, "beta": 0.5}, [(5,)])]

    def forward(self, ctx, inputs, params):
        x = inputs[0]
        xp = xp_of(x)
        z = x * x.dtype.type(self.p.alpha) + x.dtype.type(self.p.beta)
        ctx.save(inside=(z > 0) & (z < 1))
        return xp.clip(z, 0, 1).astype(x.dtype, copy=False)

    def backward(self, ctx, gy):
        return [gy * ctx.saved["inside"] * gy.dtype.type(self.p.alpha)], {}


class AxisParams(OpParams):
    axis: int = Field(1, description="axis counted with the batch as axis 0; negative counts from the end")


class _AxisOp(_Elementwise):
    Params = AxisParams

    @classmethod
    def examples(cls):
        return [({}, [(4, 3, 3)]), ({"axis": -1}, [(2, 5)]), ({"axis": 2}, [(3, 4, 2)])]

    def infer_shape(self, in_shapes):
        nd = len(in_shapes[0]) + 1
        if not -nd <= self.p.axis < nd or self.p.axis % nd == 0:
            raise ShapeError(f"axis {self.p.axis} is out of range for a tensor of {nd} dimensions "
                             f"(batch included; axis 0 is the batch)")
        return in_shapes[0]


class Softmax(_AxisOp):
    """exp(x) / sum(exp(x)) along ``axis`` (default 1, the channels/classes)."""

    type = "softmax"

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        e = xp.exp(x - x.max(axis=self.p.axis, keepdims=True))
        y = e / e.sum(axis=self.p.axis, keepdims=True)
        ctx.save(y=y)
        return y

    def backward(self, ctx, gy):
        y = ctx.saved["y"]
        return [y * (gy - (gy * y).sum(axis=self.p.axis, keepdims=True))], {}


class LogSoftmax(_AxisOp):
    """x - log(sum(exp(x))) along ``axis``."""

    type = "log_softmax"

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        z = x - x.max(axis=self.p.axis, keepdims=True)
        y = z - xp.log(xp.exp(z).sum(axis=self.p.axis, keepdims=True))
        ctx.save(y=y)
        return y

    def backward(self, ctx, gy):
        y = ctx.saved["y"]
        return [gy - xp_of(y).exp(y) * gy.sum(axis=self.p.axis, keepdims=True)], {}


@hookimpl
def cnngraph_register_ops(registry):
    for op in (ReLU, LeakyReLU, PReLU, ELU, SELU, CELU, GELU, Softplus, Softsign, Tanh, Sigmoid, HardSigmoid, Softmax,
               LogSoftmax):
        registry.add(op)
