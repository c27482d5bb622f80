"""The alternative convolution algorithms that benchmarks/conv_algorithms.py times against cnngraph's
kernel compute the same convolution (checked against PyTorch), so the comparison measures like for like."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "conv_algorithms.py"
_spec = importlib.util.spec_from_file_location("conv_algorithms", _path)
algos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(algos)


def _torch_conv(x, w, b, padding, stride):
    top, bottom, left, right = padding
    xp = torch.nn.functional.pad(torch.from_numpy(x).double(), (left, right, top, bottom))
    return torch.nn.functional.conv2d(xp, torch.from_numpy(w).double(), torch.from_numpy(b).double(),
                                      stride=stride).numpy()


@pytest.mark.parametrize("shape, padding", [((2, 3, 9, 7), (1, 1, 1, 1)),      # odd output: partial tiles
                                            ((3, 4, 8, 8), (0, 2, 1, 0)),      # asymmetric padding
                                            ((1, 5, 6, 11), (0, 0, 0, 0))])
def test_winograd_matches_torch(shape, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((6, shape[1], 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    got = algos.winograd_conv(x, algos.winograd_weights(w), b, padding)
    np.testing.assert_allclose(got, _torch_conv(x, w, b, padding, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel, stride, padding", [(5, 1, (2, 2, 2, 2)), (7, 2, (3, 3, 3, 3)),
                                                     (3, 1, (0, 1, 2, 0))])
def test_fft_conv_matches_torch(kernel, stride, padding):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 13, 12)).astype(np.float32)
    w = rng.standard_normal((4, 3, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    top, bottom, left, right = padding
    wf = algos.fft_weights(w, (13 + top + bottom, 12 + left + right))
    got = algos.fft_conv(x, wf, b, padding, stride, (kernel, kernel))
    np.testing.assert_allclose(got, _torch_conv(x, w, b, padding, stride), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, (1, 1, 1, 1)), (3, 2, (1, 0, 2, 1)), (5, 1, (0, 0, 0, 0))])
def test_nhwc_conv_and_backward_match_torch(kernel, stride, padding):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal((5, 4, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    xh, wk = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), algos.nhwc_weights(w)
    y = algos.nhwc_conv(xh, wk, w.shape, b, stride, padding)
    np.testing.assert_allclose(y.transpose(0, 3, 1, 2), _torch_conv(x, w, b, padding, stride), rtol=1e-4, atol=1e-4)
    # backward against torch's autograd, in float64
    top, bottom, left, right = padding
    tx = torch.from_numpy(x).double().requires_grad_()
    tw = torch.from_numpy(w).double().requires_grad_()
    tb = torch.from_numpy(b).double().requires_grad_()
    ty = torch.nn.functional.conv2d(torch.nn.functional.pad(tx, (left, right, top, bottom)), tw, tb, stride=stride)
    gy = rng.standard_normal(ty.shape).astype(np.float32)
    ty.backward(torch.from_numpy(gy).double())
    dx, dw, db = algos.nhwc_conv_backward(np.ascontiguousarray(gy.transpose(0, 2, 3, 1)), xh, wk, w.shape, stride,
                                          padding)
    np.testing.assert_allclose(dx.transpose(0, 3, 1, 2), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-4, atol=1e-4)
