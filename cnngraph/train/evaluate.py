"""Evaluating a model on labelled arrays, and loading a trained model from a checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..backend import to_numpy
from ..errors import CheckpointError, CnnGraphError, DataError, SpecError
from .checkpoint import load_checkpoint, resolve_checkpoint
from .metrics import MetricAccumulator, ValueAccumulator
from .settings import LossSetup

__all__ = ["evaluate_arrays", "load_model", "match_classes"]


def evaluate_arrays(model, input_name: str, x: np.ndarray, y: np.ndarray, loss: LossSetup, batch_size: int,
                    top_k: int = 1, num_classes: int | None = None, ignore: int | None = None):
    """Inference-mode metrics of ``model`` on (x, y) in batches; returns the accumulator (a
    :class:`ValueAccumulator` when ``y`` holds values to regress)."""
    from ..op import Context
    acc = ValueAccumulator() if y.dtype.kind == "f" else MetricAccumulator(top_k=top_k, num_classes=num_classes,
                                                                           ignore=ignore)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        scores = model.forward({input_name: xb}, training=False, grad=False, outputs=[loss.output],
                               fused=True)[loss.output]
        value = loss.value(Context(training=False, grad=False), scores, loss.targets(yb, model.xp, model.dtype))
        s = to_numpy(loss.predictions(scores) if isinstance(acc, ValueAccumulator) else scores)
        acc.add(s, yb, *loss.batch_loss(value, yb))
    return acc


def match_classes(y: np.ndarray, names: list[str], known: list[str], source: str) -> np.ndarray:
    """Labels ``y`` that index ``names`` (the evaluated data's classes, e.g. its class folders) turned
    into indices of ``known`` (the checkpoint's classes), matched by name: held-out data may hold only
    some classes, in another order. A name the checkpoint does not know is a DataError. Values outside
    the names (void mask pixels) are kept."""
    inside = (y >= 0) & (y < len(names))
    unknown = [names[i] for i in np.unique(y[inside]) if names[i] not in known]
    if unknown:
        raise DataError(f"{source}: class{'es' if len(unknown) > 1 else ''} {', '.join(repr(n) for n in unknown)} "
                        f"{'are' if len(unknown) > 1 else 'is'} not among the checkpoint's classes; expected "
                        f"names from: {', '.join(known)}")
    lut = np.array([known.index(n) if n in known else -1 for n in names], dtype=np.int64)
    out = y.copy()
    out[inside] = lut[y[inside]]
    return out


def _plugins_from(raw: dict, spec_dir) -> dict:
    """The stored spec with its relative plugin files found where the spec was (``spec_dir``), not in
    the current directory, when they are still there."""
    plugins = raw.get("plugins")
    if not isinstance(spec_dir, str) or not isinstance(plugins, list):
        return raw
    moved = [str(Path(spec_dir, p)) if isinstance(p, str) and p.endswith(".py") and not Path(p).is_absolute()
             and Path(spec_dir, p).is_file() else p for p in plugins]
    return {**raw, "plugins": moved}


def load_model(path, device: str = "cpu", allow_plugins: bool = False, which: str = "best"):
    """Load a Model from a checkpoint written by ``train`` or ``Model.save``.

    ``path`` may be a run folder (``which``: its ``best`` or ``last`` checkpoint), its
    ``checkpoint/`` folder or a checkpoint directory (see :func:`~cnngraph.train.checkpoint.resolve_checkpoint`).
    The model gets the checkpoint's spec and weights; ``model.checkpoint_meta`` holds the checkpoint's
    meta (dataset mean/std/classes/pixel_scale under ``"dataset"`` for training checkpoints) and
    ``model.checkpoint_dir`` the checkpoint directory.
    """
    from ..model import Model
    from ..spec import load_spec
    ckpt_dir = resolve_checkpoint(path, prefer=which)
    ck = load_checkpoint(ckpt_dir)
    raw = ck.meta.get("spec")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{ckpt_dir}: the checkpoint holds no spec (meta.json 'meta.spec'); it was not "
                              "written by cnngraph.train or Model.save")
    raw = _plugins_from(raw, ck.meta.get("spec_dir"))
    try:
        spec = load_spec(raw, allow_plugins=allow_plugins)
    except SpecError as exc:
        raise CheckpointError(f"{ckpt_dir}: the spec stored in the checkpoint does not load here:\n{exc}") from None
    from .run_state import check_meta, input_channels
    check_meta(ck.meta, ckpt_dir, input_channels(spec))
    dtype = str(ck.meta.get("dtype", "float32"))
    model = Model(spec, device=device, dtype=dtype if dtype in ("float32", "float64") else "float32")
    try:
        model.load_params(ck.arrays)
    except CnnGraphError as exc:
        raise CheckpointError(f"{ckpt_dir}: {exc}") from None
    model.checkpoint_meta = ck.meta
    model.checkpoint_dir = ckpt_dir
    return model
