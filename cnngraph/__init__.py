"""cnngraph: declarative convolutional networks compiled to a NetworkX graph of plugin ops.

>>> import cnngraph
>>> spec = cnngraph.load_spec("specs/lenet5.yaml")            # doctest: +SKIP
>>> model = cnngraph.compile(spec, device="cpu", seed=0)       # doctest: +SKIP
"""
from .errors import (BackendError, CheckpointError, CnnGraphError, DataError, PluginError, Problem, RunError,
                     ShapeError, SpecError)
from .hookspecs import hookimpl
from .losses import loss_and_grad
from .model import Model, ParamStore, compile
from .op import Context, Op, OpParams
from .registry import get_registry, load_plugin_file, register_plugin
from .spec import Spec, load_spec

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
    registry = get_registry()
    if not isinstance(op_cls, type):
        raise PluginError(f"register_op takes an Op subclass, found an instance of {type(op_cls).__name__} "
                          f"(pass the class itself)")
    registry.current_plugin = getattr(op_cls, "__module__", "<runtime>")
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
    # training pulls in data/optimizer modules: import on first use
    if name == "train":
        from .train.loop import train
        return train
    if name == "load_model":
        from .train.loop import load_model
        return load_model
    if name in ("import_onnx", "export_onnx"):   # the optional onnx package loads only when used
        from . import onnx
        return getattr(onnx, name)
    raise AttributeError(name)
