"""Why a training step's loss (or gradient norm) became NaN/inf: the first non-finite layer."""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy

__all__ = ["nonfinite_cause"]


def nonfinite_cause(model, input_name: str, xb, loss, grad_norm: float | None = None) -> str:
    """Re-run the training forward of batch ``xb`` and describe where NaN/inf first appears.

    Names the input batch itself, else the first layer whose output is non-finite (and its
    parameters that already hold NaN/inf), else the gradient norm or the loss op ``loss`` (a
    :class:`~cnngraph.train.settings.LossSetup`) on its output.
    """
    xp = model.xp
    first: list[str] = []

    def check(node, y):
        if not first and not bool(xp.all(xp.isfinite(y))):
            first.append(node)

    if not bool(np.all(np.isfinite(to_numpy(xb)))):
        return "the input batch itself contains NaN or inf (check the data)"
    model.forward({input_name: xb}, training=True, grad=False, outputs=[loss.output], on_output=check)
    if first:
        node = first[0]
        cause = f"the first layer whose output became non-finite is '{node}' ({model.graph.nodes[node]['type']})"
        bad = [n for n in model._names.get(node, {}).values()
               if not bool(xp.all(xp.isfinite(model.params._data[n])))]
        if bad:
            cause += f"; its parameter{'s' if len(bad) > 1 else ''} {', '.join(bad)} already hold NaN/inf"
        return cause
    if grad_norm is not None:
        return "every layer output is finite but the gradient norm is " + str(grad_norm)
    return (f"every layer output is finite; the loss '{loss.op.type}' itself overflowed "
            f"(output '{loss.output}' holds very large values)")
