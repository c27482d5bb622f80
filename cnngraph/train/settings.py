"""What a training run uses: the spec's ``train:`` section (or the defaults), the overrides of
``train()`` / ``cnngraph train`` (``--epochs``, ``--data`` …) and the loss applied to the output."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import to_device
from ..errors import CnnGraphError, DataError, SpecError
from ..paramtypes import is_whole

__all__ = ["TrainingError", "Settings", "resolve_settings", "as_spec", "train_spec_of", "parse_data_arg", "saved_data",
           "LossSetup", "prepare_loss", "TARGET_ENCODINGS"]

TARGET_ENCODINGS = ("index", "one_hot")


class TrainingError(CnnGraphError):
    """Training cannot start or had to stop (diverged loss, incompatible settings)."""


def as_spec(spec, allow_plugins: bool = False):
    """``spec`` itself when it is a Spec, else ``load_spec(spec)``."""
    from ..spec import Spec, load_spec
    return spec if isinstance(spec, Spec) else load_spec(spec, allow_plugins=allow_plugins)


def train_spec_of(spec):
    """``(TrainSpec, has_train)``: the spec's train section, or the defaults (digits data, SGD) and
    False when it has no ``train:`` section."""
    if spec.train is not None:
        return spec.train, True
    from ..registry import get_registry
    from .config import validate_train
    ts, problems = validate_train({}, spec.positions, spec.file, get_registry())
    if problems:  # pragma: no cover - the defaults always validate
        raise SpecError(problems)
    return ts, False


# --------------------------------------------------------------------------- settings

@dataclass
class Settings:
    """The values a run actually uses (argument > resumed checkpoint > spec)."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    data: Any
    device: str
    freeze: list = field(default_factory=list)   # layer ids / globs kept fixed (train.freeze / --freeze)

    def to_json(self) -> dict:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed,
                "data": self.data.model_dump(mode="json"), "device": self.device, "freeze": list(self.freeze)}


def resolve_settings(ts, saved: dict, epochs, batch_size, lr, seed, data, device: str, freeze=None) -> Settings:
    """Settings from the arguments (``None``: not given), else ``saved`` (a resumed checkpoint's
    ``settings``), else the TrainSpec ``ts``; checked."""

    def pick(arg, key, spec_value):
        return arg if arg is not None else saved.get(key, spec_value)

    def whole(name, value, minimum):
        if not is_whole(value, minimum):
            raise TrainingError(f"{name} must be a whole number >= {minimum}, found {value!r}")
        return int(value)

    def number(name, value):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TrainingError(f"{name} must be a number, found {value!r}") from None

    base_data = saved_data(saved, ts.data, data is not None)
    st = Settings(epochs=whole("epochs", pick(epochs, "epochs", ts.epochs), 1),
                  batch_size=whole("batch_size", pick(batch_size, "batch_size", ts.batch_size), 1),
                  lr=number("lr", pick(lr, "lr", getattr(ts.optimizer.params, "lr", 0.01))),
                  seed=whole("seed", pick(seed, "seed", ts.seed), 0),
                  data=parse_data_arg(data, base_data), device=device,
                  freeze=_patterns(pick(freeze, "freeze", getattr(ts, "freeze", []))))
    if not (st.lr >= 0 and math.isfinite(st.lr)):
        raise TrainingError(f"lr must be a finite number >= 0, found {st.lr}")
    return st


def _patterns(freeze) -> list[str]:
    """``--freeze`` / ``freeze=``: a list of layer ids or globs (one string is one pattern)."""
    if isinstance(freeze, str):
        return [freeze]
    if not isinstance(freeze, (list, tuple)) or not all(isinstance(p, str) for p in freeze):
        raise TrainingError(f"freeze takes a list of layer ids or globs, found {freeze!r}")
    return list(freeze)


def saved_data(settings: dict, default, overridden: bool):
    """The DataConfig a checkpoint's ``settings`` say the run trained on, else ``default``. A plugin
    dataset whose plugin is not loaded here is a DataError naming it, unless ``overridden`` (--data
    replaces it; ``default`` then lends the other fields)."""
    from .data import DataConfig, _find_loader
    data = settings.get("data")
    if not isinstance(data, dict):
        return default
    name = data.get("dataset")
    if isinstance(name, str) and _find_loader(name) is None:
        if overridden:
            return default
        raise DataError(f"the checkpoint was trained on dataset '{name}', which no loaded plugin provides; load "
                        f"the plugin that registers it (--plugin FILE), or pass --data")
    return DataConfig.model_validate(data)


def parse_data_arg(data, base):
    """Apply a ``--data`` override to the DataConfig ``base``.

    ``data`` is a dataset name (``"digits"``), ``"name:path"`` (``"mnist:/data/mnist"``,
    ``"npz:file.npz"``; the path is relative to the current folder), a dict of DataConfig fields
    (paths relative to the spec's folder) or a DataConfig. Fields not given keep ``base``'s values,
    except ``path`` and ``options``, which are cleared when the dataset changes.
    """
    from pydantic import ValidationError

    from ..registry import format_validation_errors
    from .data import DataConfig
    if data is None:
        return base
    if isinstance(data, DataConfig):
        return data
    if isinstance(data, str):
        name, sep, path = data.partition(":")
        if not name:
            raise DataError(f"--data {data!r}: expected a dataset name or name:path (e.g. mnist:/data/mnist)")
        change = {"dataset": name, "path": str(Path(path).expanduser().resolve()) if sep and path else None}
    elif isinstance(data, dict):
        change = dict(data)
        if "dataset" in change and "path" not in change:
            change["path"] = None
    else:
        raise DataError(f"data: expected a dataset name, 'name:path', a dict or a DataConfig, found "
                        f"{type(data).__name__}")
    if change.get("dataset", base.dataset) != base.dataset:   # another dataset's options would not fit
        change.setdefault("options", {})
    merged = base.model_dump()
    merged.update(change)
    try:
        return DataConfig.model_validate(merged)
    except ValidationError as exc:
        raise DataError(f"--data {data!r}: {format_validation_errors(exc, 'data')}") from None


# --------------------------------------------------------------------------- loss / targets

@dataclass
class LossSetup:
    """The loss op applied to one model output, and how labels become its targets."""

    op: Any
    output: str
    encoding: str            # "index", "one_hot" or "values" (regression: the targets as they are)
    units: int               # output units per sample
    reduction: str = "mean"
    shape: tuple = ()        # the output's per-sample shape
    note: str | None = None  # said once when training starts

    def targets(self, y: np.ndarray, xp, dtype) -> Any:
        y = np.asarray(y)
        if self.encoding == "values":
            return to_device(y.astype(dtype).reshape((len(y),) + self.shape), xp)
        if self.encoding == "one_hot":
            if self.units == 1:
                t = y.astype(dtype).reshape(len(y), 1, *y.shape[1:])
            else:   # masks too: (N, H, W) -> (N, units, H, W)
                t = np.zeros((len(y), self.units) + y.shape[1:], dtype)
                np.put_along_axis(t, y[:, None].astype(np.int64), 1, axis=1)
        elif self.op.index_targets:
            t = y.astype(np.int64)
        else:
            t = y.astype(dtype)
        return to_device(t, xp)

    def value(self, ctx, scores, targets) -> float:
        """The loss op's forward as a float; a failing (plugin) loss is named, not a traceback."""
        try:
            return float(self.op.forward(ctx, [scores, targets], {}))
        except CnnGraphError:
            raise
        except Exception as exc:
            raise TrainingError(f"loss '{self.op.type}' (plugin '{type(self.op).plugin}') failed on scores "
                                f"{tuple(scores.shape)} and {targets.dtype} targets {tuple(targets.shape)}: "
                                f"{type(exc).__name__}: {exc}") from exc

    def predictions(self, scores):
        """What the model predicts from the loss output: for binary_cross_entropy (on logits) the
        probabilities, else the output itself (the regressed values)."""
        if self.op.type == "binary_cross_entropy":
            from ..plugins.activation import sigmoid
            return sigmoid(scores)
        return scores

    def batch_loss(self, value: float, y: np.ndarray) -> tuple[float, float]:
        """(the batch's loss total, what it counts) to accumulate across batches, for labels ``y``: a
        cross_entropy mean over class targets with weights or ignored targets divides by the targets' summed
        weights, so that is its count; any other loss counts the images. Summed totals over summed counts
        then equal the loss of the whole set, as one call over all of it would give."""
        y = np.asarray(y)
        p = self.op.p
        weight, ignore = getattr(p, "weight", None), getattr(p, "ignore_index", None)
        if self.reduction != "mean" or (weight is None and ignore is None) or self.encoding != "index":
            return self.per_sample_sum(value, len(y)), float(len(y))
        t = y if ignore is None else y[y != ignore]
        count = float(len(t.ravel()) if weight is None else np.asarray(weight, np.float64)[t.ravel()].sum())
        return value * count, count

    def per_sample_sum(self, value: float, n: int) -> float:
        """Sum over the batch's samples of the loss the op reported for it."""
        return value * n if self.reduction == "mean" else value


def prepare_loss(spec, ts, num_classes: int | None = None, mask_shape: tuple[int, int] | None = None,
                 value_shape: tuple | None = None, label_sources=()) -> LossSetup:
    """Build the loss op of ``ts.loss`` for the output it names; checks the output and target shapes.

    ``mask_shape`` (H, W): the labels are segmentation masks, so the output must give class scores
    per pixel, (classes, H, W). ``value_shape``: the targets are values to regress, of this shape per
    sample; the output must hold as many values (they are compared in the output's shape).
    ``label_sources``: the dataset's (Dataset.label_sources), to name the labels beyond the output's classes."""
    from ..registry import get_registry
    output = ts.loss_output or spec.outputs[0]
    if output not in spec.graph or spec.graph.nodes[output].get("kind") != "layer":
        known = ", ".join(spec.outputs)
        raise SpecError(spec.problem(f"loss output '{output}' is not a layer of the network; expected one of the "
                                     f"outputs ({known}) or a layer id", ("train", "loss", "output")))
    output, note = _logits_behind(spec, ts.loss.type, output)
    shape = tuple(spec.graph.nodes[output]["out_shape"])
    if value_shape is not None:
        return _value_loss(spec, ts, output, shape, tuple(value_shape), note)
    if mask_shape is not None:
        mask_shape = tuple(mask_shape)
        if len(shape) != 1 + len(mask_shape) or shape[1:] != mask_shape:
            from .input_kinds import mask_unit
            unit = mask_unit(len(mask_shape))
            what = f"{'x'.join(map(str, mask_shape))} {unit}s"
            raise TrainingError(f"the dataset's labels are masks of {what}, so loss output '{output}' must give class "
                                f"scores per {unit}, (classes, {', '.join(map(str, mask_shape))}); it has per-sample "
                                f"shape {shape}")
    elif len(shape) != 1:
        raise SpecError(spec.problem(f"loss output '{output}' has per-sample shape {shape}; training needs a "
                                     f"vector of class scores (classes,) — add a flatten/dense layer (or, to "
                                     f"train segmentation, give the data per-pixel masks)",
                                     ("train", "loss", "output")))
    units = shape[0]
    op = get_registry().ops[ts.loss.type](ts.loss.params)
    encoding = ts.loss_target
    if encoding is None:
        encoding = "index" if type(op).index_targets or (units == 1) else "one_hot"
    if encoding not in TARGET_ENCODINGS:
        raise SpecError(spec.problem(f"unknown target encoding '{encoding}'; expected one of "
                                     f"{', '.join(TARGET_ENCODINGS)}", ("train", "loss", "target")))
    _check_targets(spec, ts, op, output, shape, shape if encoding == "one_hot" else shape[1:],
                   f"'{encoding}' targets", " (if the data's y holds values to regress, set train.data.targets: values)")
    weight = getattr(op.p, "weight", None)
    if weight is not None and len(weight) != max(units, 2):
        raise SpecError(spec.problem(f"weight has {len(weight)} values, but loss output '{output}' gives "
                                     f"{units} classes; expected one weight per class", ("train", "loss", "weight")))
    if num_classes is not None and units != num_classes and not (units == 1 and num_classes == 2):
        what = ("channel" if units == 1 else "channels") if mask_shape else "units per sample"
        other = (f" (a single {'channel' if mask_shape else 'unit'} with {ts.loss.type} suits two classes; for "
                 f"{num_classes}, use cross_entropy)" if units == 1 and ts.loss.type != "cross_entropy" else "")
        void = (f" (the masks hold values up to {num_classes - 1}; if that is a void label, set "
                f"train.loss.ignore_index: {num_classes - 1})" if mask_shape and num_classes > units + 1 else "")
        from .datasets._common import labels_beyond
        field = "out_channels" if mask_shape else "out_features"
        beyond = labels_beyond(label_sources, max(units, 2), getattr(op.p, "ignore_index", None))
        if beyond:   # classes numbered from the labels: a few stray labels are as likely as a wrong model
            raise TrainingError(f"{beyond}; loss output '{output}' has {units} {what}. The data names no classes, "
                                f"so they are numbered up to its largest label: correct those labels, or set "
                                f"{field}: {num_classes} if the data has {num_classes} classes{void}")
        raise TrainingError(f"loss output '{output}' has {units} {what} but the dataset has "
                            f"{num_classes} classes; expected {field}: "
                            f"{num_classes}{other}{void}"
                            + (" (or 1 for a binary classifier)" if num_classes == 2 else ""))
    return LossSetup(op=op, output=output, encoding=encoding, units=units,
                     reduction=getattr(op.p, "reduction", "mean"), note=note, shape=shape)


def _check_targets(spec, ts, op, output: str, shape: tuple, target_shape: tuple, what: str, hint: str = "") -> None:
    """The loss op's own shape check of (output, targets), as a located spec problem."""
    from ..errors import ShapeError
    try:
        op.infer_shape([shape, target_shape])
    except ShapeError as exc:
        raise SpecError(spec.problem(f"loss '{ts.loss.type}' on output '{output}' {shape} with {what}: {exc}{hint}",
                                     ("train", "loss"))) from None


def _value_loss(spec, ts, output: str, shape: tuple, value_shape: tuple, note) -> LossSetup:
    """The loss of a regression run: the targets, reshaped to the output's shape, compared as they are."""
    from ..registry import get_registry
    if math.prod(value_shape) != math.prod(shape):
        raise TrainingError(f"the dataset's targets are values of shape {value_shape} per sample, so loss output "
                            f"'{output}' must give {math.prod(value_shape)} value(s); it has per-sample shape {shape}")
    op = get_registry().ops[ts.loss.type](ts.loss.params)
    if type(op).index_targets:
        raise TrainingError(f"the dataset's targets are values to regress, but loss '{ts.loss.type}' takes class "
                            f"labels; use mse (or binary_cross_entropy for values in [0, 1]), or set "
                            f"train.data.targets: classes if the values are class labels")
    _check_targets(spec, ts, op, output, shape, shape, "value targets")
    return LossSetup(op=op, output=output, encoding="values", units=math.prod(shape),
                     reduction=getattr(op.p, "reduction", "mean"), note=note, shape=shape)


# The losses take scores (logits) and apply their own sigmoid/softmax, stably. A network that ends in
# that very activation (as the classic output layer does) is trained on the activation's input instead:
# the same loss value, without applying the activation twice (which stalls learning).
_OWN_ACTIVATION = {"binary_cross_entropy": "sigmoid", "cross_entropy": "softmax"}


def _logits_behind(spec, loss_type: str, output: str) -> tuple[str, str | None]:
    node = spec.graph.nodes[output]
    act = _OWN_ACTIVATION.get(loss_type)
    if act is None or node.get("type") != act or len(node.get("inputs", ())) != 1:
        return output, None
    (source,) = node["inputs"]
    if tuple(spec.graph.nodes[source].get("out_shape", ())) != tuple(node["out_shape"]):
        return output, None
    return source, (f"note: loss '{loss_type}' applies its own {act}, so it is computed from '{source}', the "
                    f"input of the {act} layer '{output}' (same value, computed stably); '{output}' still gives "
                    f"the probabilities at inference")
