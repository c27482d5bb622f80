"""Tests run from the repository root so spec paths like specs/lenet5.yaml resolve."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def fresh():
    """A fresh process-wide registry for one test (built-ins and entry points reloaded), then the old one back."""
    from cnngraph import registry
    saved = registry._STATE
    registry._STATE = None
    try:
        yield registry.get_registry()
    finally:
        registry._STATE = saved


@pytest.fixture
def numpy_kernels():
    """Convolutions on cnngraph's own NumPy kernels even where oneDNN is installed (see cnngraph/kernels/_onednn.py)."""
    from cnngraph.kernels import _onednn
    with _onednn.disabled():
        yield
