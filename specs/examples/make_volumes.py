"""make_volumes.py: a small synthetic data set of volumes for specs/examples/volumes3d.yaml (no download).

Each sample is an 8x16x16 volume (depth, height, width) holding one bright solid, a ball, a box or a rod along
the depth axis (the three classes), of random size, position and brightness, in Gaussian noise, like a small
CT patch: x is (N, 1, 8, 16, 16) float32, y (N,).

    python specs/examples/make_volumes.py              # writes specs/examples/volumes.npz (480 volumes)
    python specs/examples/make_volumes.py OUT.npz 200  # another file and size
"""
import sys
from pathlib import Path

import numpy as np

CLASSES = ["ball", "box", "rod"]


def volumes(n: int, shape=(8, 16, 16), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy volumes as (x (n, 1, *shape) float32, y (n,) int64 class indices into CLASSES)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    d, h, w = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    x = 0.3 * rng.standard_normal((n, *shape)).astype(np.float32)
    for i, label in enumerate(y):
        centre = [rng.uniform(s * 0.3, s * 0.7) for s in shape]
        r = rng.uniform(2.0, 3.5)
        dd, dh, dw = d - centre[0], h - centre[1], w - centre[2]
        if label == 0:     # a ball
            solid = dd ** 2 + dh ** 2 + dw ** 2 <= r ** 2
        elif label == 1:   # a box
            solid = (np.abs(dd) <= r * 0.8) & (np.abs(dh) <= r * 0.8) & (np.abs(dw) <= r * 0.8)
        else:              # a rod through the depth
            solid = dh ** 2 + dw ** 2 <= (r * 0.6) ** 2
        x[i][solid] += rng.uniform(0.8, 1.5)
    return x[:, None], y.astype(np.int64)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("volumes.npz")
    x, y = volumes(int(sys.argv[2]) if len(sys.argv) > 2 else 480)
    np.savez(out, x=x, y=y, classes=np.array(CLASSES))
    print(f"wrote {out}: x {x.shape}, y {y.shape}, classes {', '.join(CLASSES)}")
