"""make_waves.py: a small synthetic data set of sequences for specs/examples/waves1d.yaml (no download).

Each sample is 64 steps of one wave, a sine, a square or a sawtooth (the three classes), with a random
number of periods (2 to 4), phase and amplitude, plus Gaussian noise: x is (N, 1, 64) float32, y (N,).

    python specs/examples/make_waves.py              # writes specs/examples/waves.npz (600 sequences)
    python specs/examples/make_waves.py OUT.npz 300  # another file and size
"""
import sys
from pathlib import Path

import numpy as np

CLASSES = ["sine", "square", "sawtooth"]


def waves(n: int, length: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy waves as (x (n, 1, length) float32, y (n,) int64 class indices into CLASSES)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    periods, phase, amplitude = rng.uniform(2, 4, (n, 1)), rng.uniform(0, 1, (n, 1)), rng.uniform(0.5, 1.5, (n, 1))
    u = (periods * np.arange(length) / length + phase) % 1.0            # where each step is in its period
    shapes = np.stack([np.sin(2 * np.pi * u), np.sign(u - 0.5), 2 * u - 1])   # (classes, n, length)
    x = amplitude * shapes[y, np.arange(n)] + 0.1 * rng.standard_normal((n, length))
    return x[:, None].astype(np.float32), y.astype(np.int64)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("waves.npz")
    x, y = waves(int(sys.argv[2]) if len(sys.argv) > 2 else 600)
    np.savez(out, x=x, y=y, classes=np.array(CLASSES))
    print(f"wrote {out}: x {x.shape}, y {y.shape}, classes {', '.join(CLASSES)}")
