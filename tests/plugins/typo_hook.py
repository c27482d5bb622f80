"""A plugin file whose hook name is misspelled (cnngraph_register_op, no 's')."""
import cnngraph


@cnngraph.hookimpl
def cnngraph_register_op(registry):
    pass
