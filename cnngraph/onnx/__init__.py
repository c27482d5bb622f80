"""ONNX interchange: import ONNX models as cnngraph specs, export cnngraph models to ONNX.

>>> from cnngraph.onnx import import_onnx, export_onnx          # doctest: +SKIP
>>> model = import_onnx("resnet.onnx")                           # doctest: +SKIP
>>> export_onnx(model, "back.onnx", opset=17)                    # doctest: +SKIP

The ``onnx`` package (and ``onnxruntime`` for checks) is an optional extra: pip install 'cnngraph[onnx]'.
"""
from .common import OnnxError

__all__ = ["import_onnx", "onnx_to_spec", "export_onnx", "OnnxError", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17


def __getattr__(name):
    if name in ("import_onnx", "onnx_to_spec", "OnnxModel", "ImportResult"):
        from . import importer
        return getattr(importer, name)
    if name in ("export_onnx", "spec_to_onnx"):
        from . import exporter
        return getattr(exporter, name)
    raise AttributeError(name)
