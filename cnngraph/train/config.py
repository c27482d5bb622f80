"""The spec's ``train:`` section: defaults, validation and located errors.

Typed entries (optimizer, schedule, loss, augment) are validated by the ``Params`` model of the
component registered under their ``type``, so plugin components get the same errors as built-ins.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pydantic import Field, ValidationError

from ..errors import Problem
from ..paramtypes import StrictSettings
from .mixing import MixSettings

__all__ = ["TrainSpec", "Typed", "EarlyStopping", "validate_train"]


class EarlyStopping(StrictSettings):
    metric: str = "val_accuracy"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0)
    mode: Literal["auto", "max", "min"] = "auto"

    @property
    def maximize(self) -> bool:
        # auto: errors (loss, mae, rmse) go down, scores (accuracy, IoU) go up
        return self.mode == "max" or (self.mode == "auto" and not self.metric.endswith(("loss", "mae", "rmse")))


class _TrainTop(StrictSettings):
    data: dict[str, Any] = {}
    loss: dict[str, Any] = {}
    optimizer: dict[str, Any] = {}
    schedule: Optional[dict[str, Any]] = None
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(20, ge=1)
    augment: list[Any] = []
    early_stopping: Optional[EarlyStopping] = None
    grad_clip: Optional[float] = Field(None, gt=0, description="max global L2 norm of the gradients")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="batches whose mean gradient makes "
                                                                          "one optimizer step")
    top_k: int = Field(3, ge=1, description="k of the top-k accuracy metric")
    checkpoint_interval: float = Field(2.0, ge=0, allow_inf_nan=False, description=(
        "seconds between checkpoint writes: an epoch's checkpoint is written when this long has passed since the "
        "last write (0: every epoch); the first and final epochs' always are, and a stop (Ctrl-C, an error) "
        "writes the newest epoch's"))
    seed: int = Field(0, ge=0)
    init: Optional[str] = Field(None, description="weights to start from (.npz or checkpoint folder), relative "
                                                  "to the spec's folder")
    freeze: list[str] = Field([], description="layer ids or globs (conv*, layer1.*) whose parameters stay fixed")
    mixup: Optional[MixSettings] = None
    cutmix: Optional[MixSettings] = None


@dataclass
class Typed:
    """A validated ``{type: ..., **params}`` entry."""

    type: str
    params: Any
    raw: dict = field(default_factory=dict)


@dataclass
class TrainSpec:
    data: Any                      # cnngraph.train.data.DataConfig
    loss: Typed
    loss_output: Optional[str]
    loss_target: Optional[str]
    optimizer: Typed
    schedule: Typed
    augment: list[Typed]
    batch_size: int
    epochs: int
    early_stopping: Optional[EarlyStopping]
    grad_clip: Optional[float]
    top_k: int
    seed: int
    raw: dict
    init: Optional[str] = None     # weights to start from, as written in the spec
    freeze: list[str] = field(default_factory=list)   # layer ids / globs kept fixed (cnngraph.train.freeze)
    mixup: Optional[MixSettings] = None   # batch mixing (cnngraph.train.mixing)
    gradient_accumulation_steps: int = 1
    cutmix: Optional[MixSettings] = None
    checkpoint_interval: float = 2.0   # seconds between checkpoint writes (cnngraph.train.loop._Run._save)


DEFAULT_OPTIMIZER = {"type": "sgd", "lr": 0.05, "momentum": 0.9}


def _typed(raw: Any, table: dict, path: tuple, what: str, positions, file, default_type: str | None,
           skip: tuple = ()) -> tuple[Optional[Typed], list[Problem]]:
    from ..registry import did_you_mean
    from ..spec import _locate, spec_problems_from_validation
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        return None, [_locate(f"expected a mapping with a 'type', found {raw!r}", path, positions, file)]
    kind = raw.get("type", default_type)
    if kind is None:
        return None, [_locate(f"missing required key 'type' (one of: {', '.join(sorted(table))})", path,
                              positions, file)]
    if kind not in table:
        from ..registry import get_registry
        reg = get_registry()
        names = [t for t in ("optimizers", "schedules", "augmentations", "ops") if getattr(reg, t) is table]
        why = reg.contested_note(names[0], kind) if names else None
        return None, [_locate(why or f"unknown {what} type '{kind}'{did_you_mean(kind, table)}; known: "
                              f"{', '.join(sorted(table))}", path + ("type",), positions, file)]
    params_model = table[kind].Params
    rest = {k: v for k, v in raw.items() if k != "type" and k not in skip}
    try:
        return Typed(kind, params_model.model_validate(rest), raw), []
    except ValidationError as exc:
        return None, spec_problems_from_validation(exc, rest, path, positions, file, model=params_model)


def validate_train(raw: dict, positions, file, registry, layer_ids=(), input_shapes=None
                   ) -> tuple[Optional[TrainSpec], list[Problem]]:
    """Validate the ``train:`` section; returns (TrainSpec or None, problems). Every entry is checked
    even when another fails, so all problems show at once; ``layer_ids`` and ``input_shapes`` (name →
    per-sample shape) let the checks that need the network run here too, not only at training."""
    from ..spec import spec_problems_from_validation
    from .data import DataConfig
    base = ("train",)
    problems: list[Problem] = []
    try:
        top = _TrainTop.model_validate(raw)
    except ValidationError as exc:
        problems += spec_problems_from_validation(exc, raw, base, positions, file, model=_TrainTop)
        top = _lenient_top(raw)

    try:
        data = DataConfig.model_validate(top.data)
    except ValidationError as exc:
        data = None
        problems += spec_problems_from_validation(exc, top.data, base + ("data",), positions, file, model=DataConfig)
    loss_ops = {k: v for k, v in registry.ops.items() if v.reduces_batch}
    loss, p = _typed(top.loss, loss_ops, base + ("loss",), "loss", positions, file, "cross_entropy",
                     skip=("output", "target"))
    problems += p
    opt, p = _typed(top.optimizer or DEFAULT_OPTIMIZER, registry.optimizers, base + ("optimizer",), "optimizer",
                    positions, file, "sgd")
    problems += p
    sched, p = _typed(top.schedule or {"type": "constant"}, registry.schedules, base + ("schedule",), "schedule",
                      positions, file, None)
    problems += p + _warmup_problems(raw, sched, positions, file)
    problems += _schedule_metric_problems(sched, top.top_k if isinstance(top.top_k, int) else 3, positions, file)
    augs = []
    for i, entry in enumerate(top.augment):
        a, p = _typed(entry, registry.augmentations, base + ("augment", i), "augmentation", positions, file, None)
        problems += p
        augs.append(a)
    problems += _network_problems(top, data, augs, registry, layer_ids, input_shapes or {}, positions, file)
    if problems:
        return None, problems
    return TrainSpec(data=data, loss=loss, loss_output=top.loss.get("output"), loss_target=top.loss.get("target"),
                     optimizer=opt, schedule=sched, augment=augs, batch_size=top.batch_size, epochs=top.epochs,
                     early_stopping=top.early_stopping, grad_clip=top.grad_clip, top_k=top.top_k, seed=top.seed,
                     raw=raw, init=top.init, freeze=list(top.freeze), mixup=top.mixup, cutmix=top.cutmix,
                     gradient_accumulation_steps=top.gradient_accumulation_steps,
                     checkpoint_interval=top.checkpoint_interval), []


def _warmup_problems(raw: Any, sched: Optional[Typed], positions, file) -> list[Problem]:
    """A warmup that lasts the whole run (when the spec gives both numbers): no epoch would reach the
    full rate, and the schedule would refuse it only once training started."""
    from ..spec import _locate
    warm = getattr(getattr(sched, "params", None), "warmup_epochs", 0) or 0
    epochs = raw.get("epochs") if isinstance(raw, dict) else None
    if not warm or isinstance(epochs, bool) or not isinstance(epochs, int) or warm < epochs:
        return []
    return [_locate(f"warmup_epochs ({warm:g}) must be less than train.epochs ({epochs}); the warmup would last the "
                    f"whole run", ("train", "schedule", "warmup_epochs"), positions, file)]


def _lenient_top(raw: Any):
    """The train section's entries that can still be checked after its top level failed: each of the
    nested sections that has the right container type (the rest take their defaults)."""
    from types import SimpleNamespace
    raw = raw if isinstance(raw, dict) else {}
    values = {}
    for name, f in _TrainTop.model_fields.items():
        value = raw.get(name)
        default = f.get_default(call_default_factory=True)
        ok = isinstance(value, list) if name == "augment" else isinstance(value, dict)
        values[name] = value if ok and name in ("data", "loss", "optimizer", "schedule", "augment") else default
    try:   # (its own mistakes are among the top level's problems already)
        values["early_stopping"] = EarlyStopping.model_validate(raw["early_stopping"])
    except (KeyError, ValidationError):
        values["early_stopping"] = None
    top_k = raw.get("top_k")
    values["top_k"] = top_k if isinstance(top_k, int) and top_k >= 1 else values["top_k"]
    return SimpleNamespace(**values)


def metric_names(top_k: int) -> list[str]:
    """The per-epoch metrics a run records, which early stopping and reduce_on_plateau can follow."""
    return (["train_loss", "train_accuracy", "val_loss", "val_accuracy"] + ([f"val_top{top_k}_accuracy"] if top_k > 1 else [])
            + ["val_mean_iou", "train_mae", "val_mae", "val_rmse"])


def _schedule_metric_problems(sched, top_k: int, positions, file) -> list[Problem]:
    """A schedule that follows a metric (reduce_on_plateau) must name one the run records."""
    from ..registry import did_you_mean
    from ..spec import _locate
    metric = getattr(getattr(sched, "params", None), "metric", None)
    known = metric_names(top_k)
    if sched is None or sched.type != "reduce_on_plateau" or metric in known:
        return []
    return [_locate(f"unknown metric '{metric}' for reduce_on_plateau{did_you_mean(metric, known)}; expected one of "
                    f"{', '.join(known)}", ("train", "schedule", "metric"), positions, file)]


def _network_problems(top, data, augs, registry, layer_ids, input_shapes, positions, file) -> list[Problem]:
    """Checks of the train section against the network: the loss output, the early-stopping metric,
    the number of normalisation values, a dataset or augmentation for images on a sequence input (C, L)
    (or one for sequences on an image) and the augmentations' settings for the input's size."""
    from ..registry import did_you_mean
    from ..spec import _locate
    from .data import image_only_reason
    from .input_kinds import input_kind
    problems = []
    output = top.loss.get("output") if isinstance(top.loss, dict) else None
    if layer_ids and isinstance(output, str) and output not in layer_ids:
        problems.append(_locate(f"loss output '{output}' is not a layer of the network{did_you_mean(output, layer_ids)}",
                                ("train", "loss", "output"), positions, file))
    if layer_ids:
        from .freeze import unmatched_patterns
        for i, message in unmatched_patterns(top.freeze, layer_ids):
            problems.append(_locate(message, ("train", "freeze", i), positions, file))
    es = top.early_stopping
    if es is not None:
        known = metric_names(top.top_k)
        if es.metric not in known:
            problems.append(_locate(f"unknown early-stopping metric '{es.metric}'{did_you_mean(es.metric, known)}; "
                                    f"expected one of {', '.join(known)}", ("train", "early_stopping", "metric"),
                                    positions, file))
        else:
            problems += _metric_kind_problems(es.metric, known, top, data, positions, file)
    shapes = [tuple(s) for s in input_shapes.values()]
    if len(shapes) != 1 or len(shapes[0]) not in (2, 3, 4):   # not one image, sequence or volume: training refuses it
        return problems
    shape = shapes[0]
    kind = input_kind(shape)
    stats = getattr(data, "normalize", None)
    if hasattr(stats, "mean") and len(stats.mean) not in (1, shape[0]):
        problems.append(_locate(f"normalize: expected 1 or {shape[0]} mean/std values (one per channel of the input "
                                f"{shape}), found {len(stats.mean)}", ("train", "data", "normalize"), positions, file))
    why = image_only_reason(data.dataset, shape) if data is not None else None
    if why:
        given = isinstance(top.data, dict) and "dataset" in top.data
        problems.append(_locate(why if given else f"train.data defaults to the bundled digits: {why}",
                                ("train", "data", "dataset"), positions, file))
    for i, a in enumerate(augs):
        cls = a and registry.augmentations[a.type]   # None: a failed entry
        if cls and kind not in getattr(cls, "inputs", ("image",)):
            problems.append(_locate(_wrong_kind(a.type, cls, kind, shape, registry), ("train", "augment", i, "type"),
                                    positions, file))
            continue
        check = cls and getattr(cls, "input_problems", None)
        for name, message in (check(a.params, shape) if check else ()):
            problems.append(_locate(f"({a.type}) {message}", ("train", "augment", i, name), positions, file))
    return problems


_VALUE_METRICS = ("train_mae", "val_mae", "val_rmse")
_CLASS_DATASETS = ("digits", "digits_segmentation", "mnist", "fashion_mnist", "cifar10", "image_folder")


def _target_kind(top, data) -> tuple[str | None, str]:
    """("classes" | "values" | None, why) as far as the spec alone tells: the loss cross_entropy, a dataset of
    class labels or targets: classes mean classes; targets: values or digits_rotation mean values."""
    loss = top.loss.get("type", "cross_entropy") if isinstance(top.loss, dict) else None
    targets = getattr(data, "targets", "auto")
    dataset = getattr(data, "dataset", None)
    if targets == "values" or (dataset == "digits_rotation" and targets != "classes"):
        return "values", ""
    if targets == "classes":
        return "classes", " (train.data.targets: classes)"
    if loss == "cross_entropy":
        return "classes", " (loss cross_entropy)"
    if dataset in _CLASS_DATASETS:
        return "classes", f" (dataset '{dataset}')"
    return None, ""


def _metric_kind_problems(metric: str, known: list[str], top, data, positions, file) -> list[Problem]:
    """An early-stopping metric that the kind of targets never records (val_mae for a classifier,
    val_accuracy for a regression), found here rather than when training starts."""
    from ..spec import _locate
    kind, why = _target_kind(top, data)
    if kind == "classes" and metric in _VALUE_METRICS:
        fits = [m for m in known if m not in _VALUE_METRICS]
        what = f"for class labels{why}"
    elif kind == "values" and metric not in _VALUE_METRICS and metric not in ("train_loss", "val_loss"):
        fits = ["train_loss", "train_mae", "val_loss", "val_mae", "val_rmse"]
        what = "for values to regress"
    else:
        return []
    return [_locate(f"unknown early-stopping metric '{metric}' {what}; expected one of {', '.join(fits)}",
                    ("train", "early_stopping", "metric"), positions, file)]


def _wrong_kind(name: str, cls, kind: str, shape, registry) -> str:
    """Why augmentation ``name`` cannot run on the model's input, an image, a sequence or a volume (``kind``)."""
    from .input_kinds import INPUT_KINDS
    fits = sorted(n for n, c in registry.augmentations.items() if kind in getattr(c, "inputs", ("image",)))
    hint = (" (it would reverse them in time: if that keeps their class, use time_reversal)"
            if name == "horizontal_flip" and kind == "sequence" else "")
    takes = " and ".join(k + "s" for k in getattr(cls, "inputs", ("image",)))
    form = INPUT_KINDS[len(shape)][2]
    return (f"augmentation '{name}' works on {takes}, but the model's input is "
            f"{'an' if kind == 'image' else 'a'} {kind} {form} = {shape}{hint}; "
            f"augmentations for {kind}s: {', '.join(fits) or 'none yet'}")
