"""``train.freeze`` / ``--freeze``: layers whose parameters stay fixed while the rest train (transfer learning:
a pretrained or imported backbone under a new head). Patterns are layer ids or shell-style globs (``conv*``,
``layer1.*``), matched with :func:`fnmatch.fnmatchcase`."""
from __future__ import annotations

from fnmatch import fnmatchcase

__all__ = ["matching_layers", "unmatched_patterns", "frozen_layers"]


def _matches(pattern: str, layer_ids) -> list[str]:
    return [lid for lid in layer_ids if fnmatchcase(lid, pattern)]


def matching_layers(patterns, layer_ids) -> list[str]:
    """The ids among ``layer_ids`` (in their order) that any of ``patterns`` matches; no checks (summary uses it)."""
    return [lid for lid in layer_ids if any(fnmatchcase(lid, p) for p in patterns)]


def unmatched_patterns(patterns, layer_ids) -> list[tuple[int, str]]:
    """(index, message) for each pattern that names no layer of the network (spec validation)."""
    from ..registry import did_you_mean
    layer_ids = list(layer_ids)
    return [(i, f"freeze pattern '{p}' matches no layer of the network{did_you_mean(p, layer_ids)}")
            for i, p in enumerate(patterns) if not _matches(p, layer_ids)]


def frozen_layers(patterns, model) -> list[str]:
    """The layers with parameters that ``patterns`` match, in network order. A pattern that matches only layers
    without parameters (an activation, a pooling) or no layer at all, and freezing every trainable parameter,
    are TrainingErrors: the first is a typo or a no-op, the second leaves nothing to train."""
    from .settings import TrainingError
    layers = model._layer_order()
    with_params = [lid for lid in layers if model._names.get(lid)]
    frozen: list[str] = []
    for i, pattern in enumerate(patterns):
        hits = _matches(pattern, layers)
        if not hits:
            raise TrainingError(unmatched_patterns([pattern], layers)[0][1])
        owners = [lid for lid in hits if lid in with_params]
        if not owners:
            raise TrainingError(f"freeze pattern '{pattern}' matches only layers without parameters "
                                f"({', '.join(hits[:5])}{', ...' if len(hits) > 5 else ''}); nothing to freeze there")
        frozen += [lid for lid in owners if lid not in frozen]
    frozen.sort(key=layers.index)
    left = [n for lid, names in model._names.items() if lid not in frozen for n in names.values()
            if n not in model.buffer_names]
    if frozen and not left:
        raise TrainingError(f"freeze leaves no parameter to train (it matches every layer with weights: "
                            f"{', '.join(frozen[:6])}{', ...' if len(frozen) > 6 else ''})")
    model.freeze(frozen)
    return frozen
