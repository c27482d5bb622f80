"""Depthwise convolutions: cnngraph's shifted multiply-add kernel against the generic im2col path it
replaced, forward (inference) and forward + backward (training), alternating, medians of 5.

Run as:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/depthwise.py
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnngraph.kernels import conv  # noqa: E402

# name: (batch, channels, height, width, kernel, stride), as in MobileNet V2, EfficientNet-B0, ConvNeXt-T
CASES = {
    "mbv2 b1 96@56 3x3": (1, 96, 56, 56, 3, 1),
    "mbv2 b32 144@28 3x3": (32, 144, 28, 28, 3, 1),
    "effnet b8 240@28 5x5": (8, 240, 28, 28, 5, 1),
    "convnext b1 96@56 7x7": (1, 96, 56, 56, 7, 1),
    "convnext b8 192@28 7x7": (8, 192, 28, 28, 7, 1),
    "mbv2 b32 32@112 s2": (32, 32, 112, 112, 3, 2),
}


def main() -> None:
    rng = np.random.default_rng(0)
    for name, (N, C, H, W, k, s) in CASES.items():
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        w = rng.standard_normal((C, 1, k, k)).astype(np.float32)
        b = np.zeros(C, np.float32)
        pad = (k // 2,) * 4
        out = conv.conv_output_shape(x.shape, w.shape, (s, s), pad, (1, 1))

        def ours(train):
            y, saved = conv.conv2d_forward(x, w, b, (s, s), pad, (1, 1), C, save=train)
            if train:
                conv.conv2d_backward(y, saved)

        def generic(train):
            y, saved = conv._generic_forward(x, w, b, (s, s), pad, (1, 1), C, out, train)
            if train:
                conv._generic_backward(y, saved, True)

        for train in (False, True):
            times = {"ours": [], "generic": []}
            for _ in range(5):
                for label, fn in (("ours", ours), ("generic", generic)):
                    t = time.perf_counter()
                    fn(train)
                    times[label].append(time.perf_counter() - t)
            a, g = np.median(times["ours"]), np.median(times["generic"])
            print(f"{name:24s} {'train' if train else 'infer'}: depthwise kernel {a * 1e3:7.1f} ms, "
                  f"im2col {g * 1e3:7.1f} ms, speed-up x{g / a:.2f}")


if __name__ == "__main__":
    main()
