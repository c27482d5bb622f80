"""Side-by-side CPU benchmark, cnngraph vs PyTorch (same as `cnngraph bench`).

Run with the OpenBLAS overrides of this environment removed, as on a user's machine:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/run.py
"""
import sys

from cnngraph.bench import main

if __name__ == "__main__":
    sys.exit(main())
