"""A plugin file that fails to import (line 3)."""
import numpy as np  # noqa: F401
import cnngraph_no_such_module_xyz  # noqa: F401
