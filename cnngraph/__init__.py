"""cnngraph: declarative convolutional networks compiled to a NetworkX graph of plugin ops.

>>> import cnngraph
>>> spec = cnngraph.load_spec("specs/lenet5.yaml")            # doctest: +SKIP
>>> model = cnngraph.compile(spec, device="cpu", seed=0)       # doctest: +SKIP
"""
import importlib

from .errors import (BackendError, CheckpointError, CnnGraphError, DataError, PluginError, Problem, RunError,
                     ShapeError, SpecError)

# The rest of the API loads on first use (PEP 562): `import cnngraph.cli` then costs milliseconds, so the
# command catches a Ctrl-C during its start-up imports instead of Python printing a traceback.
_LAZY = {
    "hookimpl": ".hookspecs", "loss_and_grad": ".losses", "Model": ".model", "ParamStore": ".model",
    "compile": ".model", "Context": ".op", "Op": ".op", "OpParams": ".op", "get_registry": ".registry",
    "load_plugin_file": ".registry", "register_plugin": ".registry", "Spec": ".spec", "load_spec": ".spec",
    "load_model": ".train.loop",
    "import_onnx": ".onnx", "export_onnx": ".onnx",   # the optional onnx package loads only when used
}

__version__ = "0.1.0"

__all__ = [
    "load_spec", "compile", "Model", "ParamStore", "Spec", "Op", "OpParams", "Context", "hookimpl",
    "get_registry", "register_plugin", "load_plugin_file", "register_op", "loss_and_grad",
    "CnnGraphError", "SpecError", "ShapeError", "PluginError", "RunError", "BackendError", "DataError",
    "CheckpointError", "Problem", "train", "load_model", "import_onnx", "export_onnx", "__version__",
]


def register_op(op_cls):
    """Register one op class at run time (also usable as a class decorator). Registering a class of the
    same module and name again replaces the earlier one (re-running a notebook cell); any other class
    under a taken op type is an error."""
    from .registry import get_registry
    registry = get_registry()
    if not isinstance(op_cls, type):
        raise PluginError(f"register_op takes an Op subclass, found an instance of {type(op_cls).__name__} "
                          f"(pass the class itself)")
    module = getattr(op_cls, "__module__", "<runtime>")
    registry.current_plugin = registry.module_plugins.get(module, module)   # a plugin file: its file name
    try:
        old = registry.ops.get(getattr(op_cls, "type", None))
        if (old is not None and old is not op_cls and registry.owner.get(("ops", op_cls.type)) == registry.current_plugin
                and old.__qualname__ == op_cls.__qualname__):
            del registry.ops[op_cls.type]
            del registry.owner[("ops", op_cls.type)]
        return registry.add(op_cls)
    finally:
        registry.current_plugin = "<runtime>"


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    else:   # a submodule (cnngraph.model, ...), as when the package imported them eagerly; cnngraph.train is
        # its package, which is callable (the training function), so cnngraph.train.loop keeps resolving
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value
