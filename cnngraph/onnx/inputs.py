"""ONNX graph inputs → cnngraph spec inputs: initializers, element types and shape resolution.

A graph input's shape comes from its declaration or from ``--input-shape``; only the first (batch)
dimension may be dynamic, and the spec keeps the per-sample shape.
"""
from __future__ import annotations

import numpy as np

from .common import OnnxError
from .folding import Dyn

__all__ = ["read_inputs"]


def read_inputs(imp) -> dict[str, dict]:
    """Record the initializers as constants and each graph input as a model input of ``imp`` (its
    per-sample shape from the declaration or ``--input-shape``); returns the spec's ``inputs``."""
    from onnx import numpy_helper
    for init in imp.graph.initializer:
        try:
            imp.consts[init.name] = numpy_helper.to_array(init)
        except Exception as exc:  # noqa: BLE001 - onnx's own errors: external data not loaded, a bad tensor
            raise OnnxError(f"initializer '{init.name}' cannot be read ({type(exc).__name__}: {exc}); if its data "
                            f"is in a separate file, import the model from its path (beside that file)") from None
    for sp in getattr(imp.graph, "sparse_initializer", []):
        raise OnnxError(f"sparse initializer '{sp.values.name}' is not supported")
    spec_inputs = {}
    unknown = set(imp.input_shapes) - {i.name for i in imp.graph.input}
    if unknown:
        raise OnnxError(f"--input-shape names {', '.join(sorted(unknown))}, which the model does not take "
                        f"(its inputs: {', '.join(i.name for i in imp.graph.input if i.name not in imp.consts)})")
    for inp in imp.graph.input:
        if inp.name in imp.consts:
            continue   # an initializer listed as an input (IR < 4): a weight
        tt = inp.type.tensor_type
        if not inp.type.HasField("tensor_type"):
            raise OnnxError(f"input '{inp.name}' is not a tensor; only tensor inputs are supported")
        elem = tt.elem_type
        from onnx import TensorProto
        if elem in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            dtype = "float32"
        elif elem in (TensorProto.INT64, TensorProto.INT32):
            dtype = "int64"
        else:
            raise OnnxError(f"input '{inp.name}' has element type "
                            f"{TensorProto.DataType.Name(elem)}; supported: float, double, float16, int32, int64")
        if inp.name in imp.input_shapes:
            given = list(imp.input_shapes[inp.name])
            if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in given):
                raise OnnxError(f"the input shape given for '{inp.name}' (--input-shape / input_shapes=) must be "
                                f"whole numbers >= 1, found {given}")
            dims = [int(d) for d in given]
            if tt.HasField("shape") and len(tt.shape.dim) != len(dims):
                raise OnnxError(f"--input-shape for '{inp.name}' has {len(dims)} dimensions, the model "
                                f"declares {len(tt.shape.dim)}")
            if tt.HasField("shape"):
                for i, d in enumerate(tt.shape.dim):
                    if d.HasField("dim_value") and i > 0 and d.dim_value != dims[i]:
                        raise OnnxError(f"--input-shape for '{inp.name}' gives dimension {i} as {dims[i]}, "
                                        f"the model fixes it at {d.dim_value}")
        else:
            if not tt.HasField("shape"):
                raise OnnxError(f"input '{inp.name}' has no declared shape; give one with "
                                f"--input-shape {inp.name}=1,3,224,224")
            dims = []
            for i, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value > 0:
                    dims.append(int(d.dim_value))
                elif i == 0:
                    dims.append(-1)   # dynamic batch
                else:
                    sym = d.dim_param or "?"
                    example = ",".join("1" if j == 0 else str(x.dim_value) if x.HasField("dim_value") else "224"
                                       for j, x in enumerate(tt.shape.dim))
                    raise OnnxError(f"input '{inp.name}' has a symbolic dimension {i} ('{sym}'); only the "
                                    f"batch dimension may be dynamic. Fix the others with --input-shape (Python: "
                                    f"input_shapes=), e.g. --input-shape {inp.name}={example} with your sizes")
        if len(dims) < 1:
            raise OnnxError(f"input '{inp.name}' is a scalar; inputs need a batch dimension")
        if dims[0] > 0:
            imp.declared_batch = dims[0]
        name = imp.names.take(inp.name, "input")
        imp.input_names[inp.name] = name
        imp.dyn[inp.name] = Dyn(name, tuple(dims[1:]))
        imp.shapes[name] = tuple(dims[1:])
        spec_inputs[name] = {"shape": list(dims[1:])} | ({"dtype": dtype} if dtype != "float32" else {})
    if not spec_inputs:
        raise OnnxError("the model has no inputs besides its initializers")
    return spec_inputs
