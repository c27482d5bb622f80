"""Run the tests from a checkout too: without `pip install -e plugins/contrib`, import the package from
the source tree (the tests then register it at run time instead of through the entry point)."""
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("cnngraph_contrib") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
