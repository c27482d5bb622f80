"""Upsampling (decoders, U-Nets, feature pyramids, super-resolution): nearest, bilinear and bicubic, as
torch.nn.functional.interpolate with ``scale_factor`` (and ONNX Resize), and pixel shuffle (ONNX DepthToSpace)."""
from __future__ import annotations

import math
from typing import Literal, Optional, Union

import numpy as np
from pydantic import Field, field_validator, model_validator

from cnngraph.backend import xp_of
from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.op import Op, OpParams

__all__ = ["Upsample2d", "PixelShuffle", "interpolation_matrix"]


class UpsampleParams(OpParams):
    scale_factor: Union[float, tuple[float, float]] = Field((2.0, 2.0), description="(h, w) or one factor for both")
    size: Optional[Union[int, tuple[int, int]]] = Field(None, description="output (h, w) instead of scale_factor, as "
                                                                       "F.interpolate(x, size=...)")
    mode: Literal["nearest", "bilinear", "bicubic"] = "nearest"
    align_corners: bool = Field(False, description="bilinear and bicubic: corner pixels of input and output line up")
    cubic_coeff_a: float = Field(-0.75, description="bicubic only: the cubic kernel's a (PyTorch's -0.75; "
                                                    "TensorFlow's and Keys' -0.5)")

    @field_validator("scale_factor")
    @classmethod
    def _positive(cls, v):
        pair = (v, v) if isinstance(v, (int, float)) else tuple(v)
        if len(pair) != 2 or min(pair) <= 0 or not all(math.isfinite(s) for s in pair):
            raise ValueError(f"expected one or two factors > 0, found {v!r}")
        return tuple(float(s) for s in pair)

    @field_validator("size")
    @classmethod
    def _sizes(cls, v):
        if v is None:
            return v
        pair = (v, v) if isinstance(v, int) else tuple(v)
        if len(pair) != 2 or min(pair) < 1:
            raise ValueError(f"expected one or two sizes >= 1, found {v!r}")
        return pair

    @model_validator(mode="after")
    def _mode_settings(self):
        if self.size is not None and "scale_factor" in self.model_fields_set:
            raise ValueError("give scale_factor or size, not both")
        # a setting the chosen mode ignores is a mistake, not a no-op
        if self.align_corners and self.mode == "nearest":
            raise ValueError("align_corners applies to bilinear and bicubic modes, not nearest")
        if self.cubic_coeff_a != -0.75 and self.mode != "bicubic":
            raise ValueError(f"cubic_coeff_a applies to mode bicubic only, not {self.mode}")
        if not math.isfinite(self.cubic_coeff_a):
            raise ValueError(f"cubic_coeff_a must be finite, found {self.cubic_coeff_a}")
        return self


def source_coordinates(dst: np.ndarray, n_in: int, n_out: int, scale: float | None, mode: str,
                       align_corners: bool) -> np.ndarray:
    """PyTorch's source coordinate of output positions ``dst`` along one axis: nearest floor(dst / scale),
    otherwise (dst + 0.5) / scale - 0.5, or with align_corners dst * (n_in - 1) / (n_out - 1). ``scale`` None: the
    output size was given, and 1 / scale is n_in / n_out exactly (dst * n_in / n_out floors exactly in float64,
    where a rounded ratio could land just below a whole number)."""
    if mode == "nearest":
        return np.floor(dst * n_in / n_out if scale is None else dst / scale)
    if align_corners:
        return dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(len(dst))
    return ((dst + 0.5) * n_in / n_out if scale is None else (dst + 0.5) / scale) - 0.5


def interpolation_matrix(n_in: int, n_out: int, scale: float | None, mode: str, align_corners: bool,
                         cubic_a: float = -0.75) -> np.ndarray:
    """(n_out, n_in) float64 matrix A with y = A @ x along one axis, from :func:`source_coordinates` (bilinear
    clamps the source at 0). Bicubic reads the 4 pixels around the source (indices beyond the edge read the edge
    pixel, as PyTorch and ONNX Runtime do)."""
    dst = np.arange(n_out, dtype=np.float64)
    a = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    src = source_coordinates(dst, n_in, n_out, scale, mode, align_corners)
    if mode == "nearest":
        a[rows, np.minimum(src.astype(np.int64), n_in - 1)] = 1.0
        return a
    if mode == "bicubic":
        lo = np.floor(src).astype(np.int64)
        for k, weight in zip(range(-1, 3), cubic_weights(src - lo, cubic_a)):
            np.add.at(a, (rows, np.clip(lo + k, 0, n_in - 1)), weight)
        return a
    src = np.maximum(src, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    np.add.at(a, (rows, lo), 1.0 - frac)
    np.add.at(a, (rows, hi), frac)
    return a


def cubic_weights(t: np.ndarray, a: float) -> tuple[np.ndarray, ...]:
    """Weights of the pixels at floor(src) - 1 .. floor(src) + 2 for the fraction t = src - floor(src) in [0, 1):
    Keys' cubic convolution kernel with parameter ``a`` (PyTorch's upsample_bicubic2d, ONNX Resize cubic)."""
    def near(d):    # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):     # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


class Upsample2d(Op):
    """Enlarges H and W by ``scale_factor`` (output floor(H * s)), or to ``size``: nearest copies the pixel at
    floor(dst / s), bilinear blends the four nearest, bicubic the 4x4 nearest, as torch.nn.functional.interpolate(x,
    scale_factor=s (or size=...), mode=...). Separable, so each mode is two small matrix products per map (whole
    nearest factors are a repeat); backward is their transpose."""

    type = "upsample2d"
    Params = UpsampleParams

    @classmethod
    def examples(cls):
        return [({}, [(3, 4, 5)]), ({"scale_factor": [2, 3], "mode": "bilinear"}, [(2, 3, 4)]),
                ({"scale_factor": 1.5, "mode": "bilinear", "align_corners": True}, [(2, 4, 4)]),
                ({"scale_factor": 2.5}, [(2, 3, 2)]), ({"scale_factor": [2, 1.5], "mode": "bicubic"}, [(2, 3, 4)]),
                ({"scale_factor": 3, "mode": "bicubic", "align_corners": True, "cubic_coeff_a": -0.5}, [(1, 2, 3)]),
                ({"size": [5, 7]}, [(2, 3, 4)]), ({"size": [2, 6], "mode": "bilinear"}, [(2, 5, 4)]),
                ({"size": 4, "mode": "bicubic", "align_corners": True}, [(1, 3, 6)])]

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        if len(shape) != 3:
            raise ShapeError(f"upsample2d expects a (C, H, W) input per sample, found {tuple(shape)}")
        c, h, w = shape
        if self.p.size is not None:
            return (c, *self.p.size)
        # floor(n * s), robust to a factor that is a size ratio rounded in float
        out = tuple(int(math.floor(n * s * (1 + 1e-9))) for n, s in zip((h, w), self.p.scale_factor))
        if min(out) < 1:
            raise ShapeError(f"scale_factor {self.p.scale_factor} leaves no output from {h}x{w}")
        return (c, *out)

    def _scales(self):
        """The (h, w) factors; None for each when the output size is given."""
        return (None, None) if self.p.size is not None else self.p.scale_factor

    def _whole(self, h, w):
        """The integer factors when nearest can repeat pixels, else None."""
        if self.p.mode != "nearest":
            return None
        if self.p.size is not None:
            ho, wo = self.p.size
            return (ho // h, wo // w) if ho % h == 0 and wo % w == 0 else None
        if all(float(s).is_integer() for s in self.p.scale_factor):
            return tuple(int(s) for s in self.p.scale_factor)
        return None

    def _matrices(self, xp, dtype, h, w, ho, wo):
        p = self.p
        return tuple(xp.asarray(interpolation_matrix(n, m, s, p.mode, p.align_corners, p.cubic_coeff_a), dtype=dtype)
                     for n, m, s in zip((h, w), (ho, wo), self._scales()))

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        n, c, h, w = x.shape
        _, ho, wo = self.infer_shape([x.shape[1:]])
        ctx.save(shape=x.shape)
        whole = self._whole(h, w)
        if whole is not None:
            sh, sw = whole
            y = xp.broadcast_to(x[:, :, :, None, :, None], (n, c, h, sh, w, sw))
            return xp.ascontiguousarray(y.reshape(n, c, h * sh, w * sw))
        ah, aw = self._matrices(xp, x.dtype, h, w, ho, wo)
        return xp.ascontiguousarray(ah @ (x @ aw.T))

    def backward(self, ctx, gy):
        xp = xp_of(gy)
        n, c, h, w = ctx.saved["shape"]
        whole = self._whole(h, w)
        if whole is not None:
            sh, sw = whole
            return [gy.reshape(n, c, h, sh, w, sw).sum(axis=(3, 5))], {}
        ah, aw = self._matrices(xp, gy.dtype, h, w, gy.shape[2], gy.shape[3])
        return [xp.ascontiguousarray(ah.T @ (gy @ aw))], {}

    def source_positions(self, axis, pos, n_in, n_out):
        """Input positions each output position in ``pos`` reads, as [(positions, tap exists)] (receptive
        fields; any integer position, as if the map went on beyond its edges)."""
        src = source_coordinates(np.asarray(pos, np.float64), n_in, n_out, self._scales()[axis], self.p.mode,
                                 self.p.align_corners)
        if self.p.mode == "nearest":
            return [(src.astype(np.int64), np.ones(len(pos), bool))]
        lo = np.floor(src).astype(np.int64)
        between = src > lo    # on a pixel exactly, only that pixel has a weight
        if self.p.mode == "bicubic":
            return [(lo - 1, between), (lo, np.ones(len(pos), bool)), (lo + 1, between), (lo + 2, between)]
        return [(lo, np.ones(len(pos), bool)), (lo + 1, between)]

    def flops(self, in_shapes, out_shape):
        return (16 if self.p.mode == "bicubic" else 4) * math.prod(out_shape)


class PixelShuffleParams(OpParams):
    upscale_factor: int = Field(..., ge=1)
    mode: Literal["crd", "dcr"] = Field("crd", description="channel order of each r x r block: crd as "
                                                           "torch.nn.PixelShuffle, dcr as ONNX DepthToSpace's default")


class PixelShuffle(Op):
    """Rearranges (C·r², H, W) into (C, H·r, W·r): each input channel fills one offset of the r x r blocks
    of one output channel (sub-pixel convolution). A pure permutation, so backward is its inverse."""

    type = "pixel_shuffle"
    Params = PixelShuffleParams

    @classmethod
    def examples(cls):
        return [({"upscale_factor": 2}, [(8, 3, 2)]), ({"upscale_factor": 3, "mode": "dcr"}, [(9, 2, 2)]),
                ({"upscale_factor": 1}, [(2, 2, 3)])]

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        r = self.p.upscale_factor
        if len(shape) != 3:
            raise ShapeError(f"pixel_shuffle expects a (C, H, W) input per sample, found {tuple(shape)}")
        if shape[0] % (r * r):
            raise ShapeError(f"pixel_shuffle with upscale_factor {r} needs channels divisible by {r * r}, "
                             f"found {shape[0]}")
        return (shape[0] // (r * r), shape[1] * r, shape[2] * r)

    def _split(self, n, c, h, w):
        """The 6-D view of the input, and the permutation that takes it to (n, c, h, r, w, r)."""
        r = self.p.upscale_factor
        if self.p.mode == "crd":
            return (n, c, r, r, h, w), (0, 1, 4, 2, 5, 3)
        return (n, r, r, c, h, w), (0, 3, 4, 1, 5, 2)

    def forward(self, ctx, inputs, params):
        x, = inputs
        xp = xp_of(x)
        n, _, h, w = x.shape
        c, ho, wo = self.infer_shape([x.shape[1:]])
        view, perm = self._split(n, c, h, w)
        return xp.ascontiguousarray(x.reshape(view).transpose(perm)).reshape(n, c, ho, wo)

    def backward(self, ctx, gy):
        xp = xp_of(gy)
        n, c, ho, wo = gy.shape
        r = self.p.upscale_factor
        _, perm = self._split(n, c, ho // r, wo // r)
        g = gy.reshape(n, c, ho // r, r, wo // r, r).transpose(tuple(np.argsort(perm)))
        return [xp.ascontiguousarray(g).reshape(n, -1, ho // r, wo // r)], {}

    def source_positions(self, axis, pos, n_in, n_out):
        """Output position o reads input position o // r (receptive fields)."""
        return [(np.floor_divide(pos, self.p.upscale_factor).astype(np.int64), np.ones(len(pos), bool))]

    def flops(self, in_shapes, out_shape):
        return 0


@hookimpl
def cnngraph_register_ops(registry):
    registry.add(Upsample2d)
    registry.add(PixelShuffle)
