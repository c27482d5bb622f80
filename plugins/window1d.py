"""1-D convolution and pooling on (C, L) samples (audio, sensor and other sequence CNNs): conv1d,
conv_transpose1d, max_pool1d and avg_pool1d, with the parameters and weight layouts of torch.nn.Conv1d,
ConvTranspose1d, MaxPool1d and AvgPool1d.

Each op is its 2-D counterpart run on a (C, 1, L) view of the input: a window size k becomes (1, k), padding
[begin, end] becomes [0, 0, begin, end], and the weights (C_out, C_in/groups, k) gain a unit axis. The views cost
nothing, so the 1-D ops share the 2-D ops' shape checks, fast kernels (im2col GEMM, depthwise, pooling) and
gradients. The spec and its weights still read as the 1-D network, as PyTorch and ONNX write it, which an import
of 1-D ONNX ops as 2-D layers between reshapes would lose. Batch norm and global pooling take (C, L) as it is.
"""
from __future__ import annotations

import re
from typing import ClassVar, Optional

from pydantic import Field

from cnngraph.errors import ShapeError
from cnngraph.hookspecs import hookimpl
from cnngraph.op import Op
from cnngraph.paramtypes import CropPadding1, Int1, NonNegativeInt1, Padding1

from cnngraph.plugins.connection import Conv2d, Conv2dParams, ConvTranspose2d, ConvTranspose2dParams
from cnngraph.plugins.pooling import AvgPool2d, MaxPool2d, PoolParams

__all__ = ["Conv1d", "ConvTranspose1d", "MaxPool1d", "AvgPool1d"]


class Conv1dParams(Conv2dParams):
    kernel_size: Int1
    stride: Int1 = 1
    padding: Padding1 = (0, 0)
    dilation: Int1 = 1


class ConvTranspose1dParams(ConvTranspose2dParams):
    kernel_size: Int1
    stride: Int1 = 1
    padding: CropPadding1 = (0, 0)
    output_padding: NonNegativeInt1 = 0
    dilation: Int1 = 1


class Pool1dParams(PoolParams):
    kernel_size: Int1
    stride: Optional[Int1] = Field(None, description="null: the kernel size (windows side by side, as PyTorch)")
    padding: Padding1 = (0, 0)


class MaxPool1dParams(Pool1dParams):
    dilation: Int1 = 1


class AvgPool1dParams(Pool1dParams):
    count_include_pad: bool = True


def _lift_params(p) -> dict:
    """The 2-D op's parameters: a window size k is (1, k), an output padding o (0, o), padding [b, e] [0, 0, b, e]."""
    out = dict(p)
    for name in ("kernel_size", "stride", "dilation"):
        if out.get(name) is not None:
            out[name] = (1, out[name])
    if "output_padding" in out:
        out["output_padding"] = (0, out["output_padding"])
    if not isinstance(out["padding"], str):
        out["padding"] = (0, 0, *out["padding"])
    return out


def _lift(shape):
    return (shape[0], 1, *shape[1:])


def _weights(arrays: dict, to_2d: bool) -> dict:
    """The weights with the unit kernel axis (kH) added or removed; other arrays (the bias) as they are."""
    return {k: (v[:, :, None] if to_2d else v[:, :, 0]) if k == "weight" else v for k, v in arrays.items()}


class _OneD(Op):
    """A 1-D window op computed by the 2-D op ``two_d`` (``self.as_2d``) on (N, C, 1, L)."""

    two_d: ClassVar[type[Op]]

    def __init__(self, params=None, layer_id: str = ""):
        super().__init__(params, layer_id)
        self.as_2d = self.two_d(self.two_d.Params.model_validate(_lift_params(self.p)), layer_id)

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        if len(shape) != 2:
            raise ShapeError(f"{self.type} expects a (C, L) input per sample, found {len(shape)}-D {tuple(shape)}")
        try:
            c, _, length = self.as_2d.infer_shape([_lift(shape)])
        except ShapeError as exc:   # said of the 2-D op and its W axis
            raise ShapeError(re.sub(r"\bW\b", "L", str(exc).replace(self.two_d.type, self.type))) from None
        return (c, length)

    def init_params(self, in_shapes, rng):
        return _weights(self.as_2d.init_params([_lift(in_shapes[0])], rng), to_2d=False)

    def param_shapes(self, in_shapes):
        shapes = self.as_2d.param_shapes([_lift(in_shapes[0])])
        # the 2-D weight's unit kernel axis (kH) dropped, as _weights does to the arrays
        return None if shapes is None else {k: (v[:2] + v[3:] if k == "weight" else v) for k, v in shapes.items()}

    def forward(self, ctx, inputs, params, **fused):
        """``fused``: conv1d's ``relu=True`` from the inference fusion (see cnngraph.passes)."""
        return self.as_2d.forward(ctx, [inputs[0][:, :, None]], _weights(params, to_2d=True), **fused)[:, :, 0]

    def backward(self, ctx, gy):
        (dx,), grads = self.as_2d.backward(ctx, gy[:, :, None])
        return [None if dx is None else dx[:, :, 0]], _weights(grads, to_2d=False)

    def flops(self, in_shapes, out_shape):
        return self.as_2d.flops([_lift(in_shapes[0])], _lift(out_shape))


class Conv1d(_OneD):
    """1-D convolution (cross-correlation), (C, L) samples, weights (C_out, C_in/groups, k) as torch.nn.Conv1d;
    padding an int, [begin, end], 'same' or 'valid'."""

    type = "conv1d"
    Params = Conv1dParams
    two_d = Conv2d

    @classmethod
    def examples(cls):
        return [({"out_channels": 4, "kernel_size": 3, "padding": 1}, [(3, 9)]),
                ({"out_channels": 4, "kernel_size": 3, "stride": 2, "dilation": 2, "groups": 2, "padding": [2, 1],
                  "bias": False}, [(4, 11)]),
                ({"out_channels": 6, "kernel_size": 4, "groups": 3, "padding": "same"}, [(3, 8)])]


class ConvTranspose1d(_OneD):
    """Transposed 1-D convolution, (C, L) samples, weights (C_in, C_out/groups, k) as torch.nn.ConvTranspose1d:
    output (L - 1) * stride - begin - end + dilation * (k - 1) + output_padding + 1."""

    type = "conv_transpose1d"
    Params = ConvTranspose1dParams
    two_d = ConvTranspose2d
    transposed = True

    @classmethod
    def examples(cls):
        return [({"out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}, [(4, 5)]),
                ({"out_channels": 4, "kernel_size": 2, "stride": 3, "dilation": 2, "padding": [1, 0], "groups": 2,
                  "bias": False}, [(2, 4)])]


class MaxPool1d(_OneD):
    """Maximum over each window of (C, L) samples (padding counts as -inf), as torch.nn.MaxPool1d."""

    type = "max_pool1d"
    Params = MaxPool1dParams
    two_d = MaxPool2d

    @classmethod
    def examples(cls):
        return [({"kernel_size": 2}, [(2, 8)]),
                ({"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2, "ceil_mode": True}, [(2, 10)]),
                ({"kernel_size": 3, "stride": 1, "padding": [2, 0]}, [(1, 6)])]


class AvgPool1d(_OneD):
    """Mean over each window of (C, L) samples; ``count_include_pad`` as torch.nn.AvgPool1d."""

    type = "avg_pool1d"
    Params = AvgPool1dParams
    two_d = AvgPool2d

    @classmethod
    def examples(cls):
        return [({"kernel_size": 3}, [(2, 9)]),
                ({"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False, "ceil_mode": True},
                 [(2, 8)]),
                ({"kernel_size": 2, "padding": [1, 0]}, [(1, 5)])]


@hookimpl
def cnngraph_register_ops(registry):
    for op in (Conv1d, ConvTranspose1d, MaxPool1d, AvgPool1d):
        registry.add(op)
