"""Import-time tensor values: constants folded with ``onnx.reference``, and dynamic tensors (``Dyn``).

Every tensor of the ONNX graph is either a *constant* (an initializer, a Constant node, or anything
computed only from constants, including ``Shape`` of a tensor whose shape is known) held as a NumPy
array, or a *dynamic* tensor produced by a cnngraph layer, whose first dimension is the batch.
The batch dimension stands as the sentinel value ``BATCH`` while folding, so shape arithmetic such
as ``Reshape(x, [Shape(x)[0], -1])`` is recognised.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BATCH", "BATCH_ALT", "Dyn", "f32", "evaluate"]

BATCH = 999983   # stand-in for the batch size inside folded shape computations (a prime no real dim uses)
BATCH_ALT = 999979   # a second stand-in: a folded value that changes with it depends on the batch size


def f32(v) -> float:
    """A float32 attribute as the shortest decimal that reads back to it (0.2, not 0.2000000029)."""
    return float(str(np.float32(v)))


@dataclass
class Dyn:
    """A tensor computed at run time by cnngraph layer (or model input) ``id``; ``shape`` is per sample. ``layout``
    (None: the ONNX tensor is the layer output itself) says how the ONNX tensor's axes are made of the layer
    output's when the graph moved its batch axis (see layouts.py)."""

    id: str
    shape: tuple
    layout: tuple | None = None


def evaluate(nodes: list, feeds: dict[str, np.ndarray], outputs: list[str], opset: int) -> list:
    """Run ``nodes`` (in order) on the constant ``feeds`` with ``onnx.reference``; the values of
    ``outputs``, in order. Raises whatever the evaluator raises."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator
    graph = helper.make_graph(nodes, "fold", [helper.make_empty_tensor_value_info(n) for n in feeds],
                              [helper.make_empty_tensor_value_info(o) for o in outputs])
    ev = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    return ev.run(None, feeds)
