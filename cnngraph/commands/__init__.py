"""Command families of the ``cnngraph`` CLI (one module each, with ``register(subparsers)``)."""
