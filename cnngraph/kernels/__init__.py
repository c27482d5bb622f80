"""Convolution and pooling kernels (NCHW at the boundary, NumPy or CuPy)."""
from .conv import conv2d_backward, conv2d_forward, conv_output_shape
from .pool import (avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward,
                   max_pool2d_forward, pool_output_size)

__all__ = [
    "conv2d_forward", "conv2d_backward", "conv_output_shape",
    "max_pool2d_forward", "max_pool2d_backward",
    "avg_pool2d_forward", "avg_pool2d_backward", "pool_output_size",
]
