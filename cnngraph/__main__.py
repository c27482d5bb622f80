"""`python -m cnngraph`: the CLI where the `cnngraph` script is not installed (a --system-site-packages venv)."""
import sys

from .cli import main

sys.exit(main())
