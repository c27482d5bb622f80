"""ONNX forms of the contrib ops, registered with ``cnngraph.onnx.exporter.exports`` (needs the onnx extra)."""
from __future__ import annotations

import numpy as np
from cnngraph.onnx.exporter import exports


@exports("swish")
def export_swish(c, lid, op, ins, attrs):
    gate_in = ins[0]
    if op.p.beta != 1.0:
        c.node("Mul", [ins[0], c.const(lid, "beta", np.array(op.p.beta, np.float32))], [f"{lid}::scaled"],
               f"{lid}::scale")
        gate_in = f"{lid}::scaled"
    c.node("Sigmoid", [gate_in], [f"{lid}::gate"], f"{lid}::sigmoid")
    c.node("Mul", [ins[0], f"{lid}::gate"], [lid], lid)
    return lid


@exports("mish")
def export_mish(c, lid, op, ins, attrs):
    if c.opset >= 18:
        c.node("Mish", [ins[0]], [lid], lid)
        return lid
    c.node("Softplus", [ins[0]], [f"{lid}::softplus"], f"{lid}::softplus")
    c.node("Tanh", [f"{lid}::softplus"], [f"{lid}::gate"], f"{lid}::tanh")
    c.node("Mul", [ins[0], f"{lid}::gate"], [lid], lid)
    return lid


@exports("hard_swish")
def export_hard_swish(c, lid, op, ins, attrs):
    if c.opset >= 14:
        c.node("HardSwish", [ins[0]], [lid], lid)
        return lid
    c.node("HardSigmoid", [ins[0]], [f"{lid}::gate"], f"{lid}::gate", alpha=1 / 6, beta=0.5)
    c.node("Mul", [ins[0], f"{lid}::gate"], [lid], lid)
    return lid


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
