"""Starting a training run from existing weights (``--init`` / ``train.init``): fine-tuning an imported
or earlier-trained model instead of training it from its random initialisation."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .checkpoint import load_weights

__all__ = ["init_path", "load_init", "constants_without_values", "listed"]

SHOWN = 10   # names listed per kind of mismatch; the rest are counted


def init_path(flag, spec) -> Path | None:
    """The weights to start from: the ``--init`` flag (as given), else the spec's ``train.init``
    (relative to the spec's folder)."""
    if flag is not None:
        return Path(flag)
    raw = spec.train.init if spec.train is not None else None
    if raw is None:
        return None
    p = Path(raw)
    return p if p.is_absolute() or not spec.base_dir else Path(spec.base_dir) / p


def listed(names: list[str]) -> str:
    """The first SHOWN names, then how many more."""
    more = f", … ({len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def load_init(model, path, partial: bool = False) -> str:
    """Load ``path`` (an .npz or a checkpoint folder, its best/ by default) into ``model``: every parameter and
    buffer (batch-norm running statistics too) must be there with its shape. ``partial`` lets parameters be
    missing (they keep their initial values) and the file hold others (a new head for transfer learning);
    shapes must still match. Returns a note on what was left out ('' when nothing was)."""
    arrays, _ = load_weights(path)
    names = list(model.params)
    missing = [n for n in names if n not in arrays]
    unexpected = [n for n in arrays if n not in model.params]
    wrong = [f"{n} {tuple(np.shape(arrays[n]))} (the model's is {tuple(model.params[n].shape)})"
             for n in names if n in arrays and tuple(np.shape(arrays[n])) != tuple(model.params[n].shape)]
    parts = []
    if missing and not partial:
        parts.append(f"{len(missing)} missing: {listed(missing)}")
    if unexpected and not partial:
        parts.append(f"{len(unexpected)} unexpected: {listed(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} of another shape: {listed(wrong)}")
    if parts:
        hint = "" if partial or wrong else " (--init-partial loads the ones that match, for a new head)"
        raise CheckpointError(f"initial weights {path}: they do not fit this network: {'; '.join(parts)}{hint}")
    if not any(n in arrays for n in names):
        raise CheckpointError(f"initial weights {path}: none of the model's {len(names)} parameters is in the file")
    model.load_params({n: arrays[n] for n in names if n in arrays}, strict=False)
    if not (missing or unexpected):
        return ""
    parts = ([f"{len(missing)} parameter{'s' * (len(missing) != 1)} not in the file keep their initial values "
              f"({listed(missing)})"] if missing else []) + (
             [f"{len(unexpected)} array{'s' * (len(unexpected) != 1)} of the file unused ({listed(unexpected)})"]
             if unexpected else [])
    return f"note: initial weights {path}: {'; '.join(parts)}"


def constants_without_values(spec) -> list[str]:
    """Ids of ``constant`` layers that set no ``fill``: imported ones, whose values live in the weights file.
    Trained without those weights they start at 0."""
    return [layer.id for layer in spec.layers if layer.type == "constant" and "fill" not in layer.params.model_fields_set]
