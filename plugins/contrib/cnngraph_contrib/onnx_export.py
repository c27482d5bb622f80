"""ONNX forms of the contrib ops, registered with ``cnngraph.onnx.exporter.exports``, and the import of ONNX Mish
(``cnngraph.onnx.import_ops.handles``), so a contrib export reads back (needs the onnx extra)."""
from __future__ import annotations

import numpy as np
from cnngraph.onnx.exporter import exports
from cnngraph.onnx.import_ops import handles


def _gated(c, lid, x, steps):
    """x times a gate computed from x by ``steps``, a chain of (ONNX op, attributes)."""
    value = x
    for k, (op_type, attrs) in enumerate(steps):
        c.node(op_type, [value], [f"{lid}::g{k}"], f"{lid}::g{k}", **attrs)
        value = f"{lid}::g{k}"
    c.node("Mul", [x, value], [lid], lid)
    return lid


@exports("swish")
def export_swish(c, lid, op, ins, attrs):
    x = ins[0]
    if op.p.beta != 1.0:   # sigmoid(beta x)
        c.node("Mul", [x, c.const(lid, "beta", np.array(op.p.beta, np.float32))], [f"{lid}::bx"], f"{lid}::bx")
        c.node("Sigmoid", [f"{lid}::bx"], [f"{lid}::gate"], f"{lid}::gate")
        c.node("Mul", [x, f"{lid}::gate"], [lid], lid)
        return lid
    return _gated(c, lid, x, [("Sigmoid", {})])


@exports("mish")
def export_mish(c, lid, op, ins, attrs):
    if c.opset >= 18:
        c.node("Mish", [ins[0]], [lid], lid)
        return lid
    return _gated(c, lid, ins[0], [("Softplus", {}), ("Tanh", {})])


@handles("Mish")
def import_mish(imp, node, a):
    """Opset 18's Mish; below 18 the export is Softplus → Tanh → Mul, which the importer fuses back into one mish
    (cnngraph/onnx/patterns.py)."""
    return [imp.emit("mish", [imp.dyn_of(node.input[0])])]


@exports("hard_swish")
def export_hard_swish(c, lid, op, ins, attrs):
    if c.opset >= 14:
        c.node("HardSwish", [ins[0]], [lid], lid)
        return lid
    return _gated(c, lid, ins[0], [("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5})])


@exports("squeeze_excitation")
def export_squeeze_excitation(c, lid, op, ins, attrs):
    """Global average pool, two 1x1 convolutions (the dense layers on (N, C, 1, 1)), the gate, the scale."""
    w1, w2 = (np.asarray(c.params[f"{lid}.{k}"], np.float32) for k in ("w1", "w2"))
    b1, b2 = (np.asarray(c.params[f"{lid}.{k}"], np.float32) for k in ("b1", "b2"))
    c.node("GlobalAveragePool", [ins[0]], [f"{lid}::squeezed"], f"{lid}::pool")
    c.node("Conv", [f"{lid}::squeezed", c.const(lid, "w1", w1[:, :, None, None]), c.const(lid, "b1", b1)],
           [f"{lid}::hidden"], f"{lid}::fc1")
    c.node("Relu", [f"{lid}::hidden"], [f"{lid}::hidden_relu"], f"{lid}::relu")
    c.node("Conv", [f"{lid}::hidden_relu", c.const(lid, "w2", w2[:, :, None, None]), c.const(lid, "b2", b2)],
           [f"{lid}::logits"], f"{lid}::fc2")
    c.node("Sigmoid", [f"{lid}::logits"], [f"{lid}::gate"], f"{lid}::sigmoid")
    c.node("Mul", [ins[0], f"{lid}::gate"], [lid], lid)
    return lid
