"""A registered loss op on plain arrays, for hand-written training loops (no loss layer in the spec)."""
from __future__ import annotations

from .backend import xp_of
from .errors import CnnGraphError
from .op import Context

__all__ = ["loss_and_grad"]


def loss_and_grad(loss_type: str, prediction, target, **params) -> tuple[float, object]:
    """``(value, d value / d prediction)`` of a loss op (``cross_entropy``, ``binary_cross_entropy``,
    ``mse`` or a plugin's) on a batch, with the op's parameters as keywords; feed the gradient to
    ``model.backward({output: gradient})``.

    Example
    -------
    >>> value, g = loss_and_grad("cross_entropy", logits, labels, label_smoothing=0.1)   # doctest: +SKIP
    >>> grads = model.backward({"logits": g}, input_grads=False)                          # doctest: +SKIP
    """
    from pydantic import ValidationError

    from .registry import did_you_mean, format_validation_errors, get_registry
    ops = {k: v for k, v in get_registry().ops.items() if v.reduces_batch}
    if loss_type not in ops:
        raise CnnGraphError(f"unknown loss '{loss_type}'{did_you_mean(loss_type, ops)}; losses: {', '.join(sorted(ops))}")
    cls = ops[loss_type]
    try:
        op = cls(cls.Params.model_validate(params))
    except ValidationError as exc:
        raise CnnGraphError(f"loss '{loss_type}': {format_validation_errors(exc, fields=cls.Params.model_fields)}") from None
    xp = xp_of(prediction)
    prediction = xp.asarray(prediction)
    if prediction.dtype.kind != "f":
        raise CnnGraphError(f"loss '{loss_type}': the prediction must hold floats, found {prediction.dtype}")
    target = xp.asarray(target)
    if target.dtype.kind == "f" or not cls.index_targets:   # class indices stay integers
        target = target.astype(prediction.dtype, copy=False)
    ctx = Context(training=True, grad=True)
    try:
        op.infer_shape([prediction.shape[1:], target.shape[1:]])
        value = op.forward(ctx, [prediction, target], {})
        (grad, *_), _ = op.backward(ctx, 1.0)
    except CnnGraphError:
        raise
    except Exception as exc:
        raise CnnGraphError(f"loss '{loss_type}' on a prediction {prediction.shape} and a target {target.shape}: "
                            f"{type(exc).__name__}: {exc}") from None
    return float(value), grad
