"""cnngraph's standard layer library, registered through the same hooks third-party plugins use.

Installed as the subpackage ``cnngraph.plugins`` (setuptools package-dir mapping), so no top-level
module named ``plugins`` lands in site-packages.
"""
