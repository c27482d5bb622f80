"""The training loop: ``cnngraph.train(spec, ...)`` and ``cnngraph.load_model(path)``.

One run, in order: resolve the spec's ``train:`` section (or the defaults) and the overrides,
load and normalise the data, compile the model, then per epoch: shuffle with the seeded generator,
augment, forward (training behaviour: dropout on, batch-norm batch statistics), the loss op applied
outside the graph to the output named by ``train.loss.output``, backward (no input gradient),
optional gradient clipping, one optimizer step at the schedule's learning rate; then validation
(inference behaviour), early stopping, and the ``best/`` and ``last/`` checkpoints. At the end the
best checkpoint is evaluated on the test split and ``metrics.json`` (with the test confusion
matrix and per-class precision/recall), ``history.csv`` and ``curves.png`` are written to the
output folder (``cnngraph evaluate`` draws ``confusion.png``).

Output folder (``out``, default ``runs/<spec name>/``)::

    checkpoint/best/   checkpoint/last/   metrics.json   history.csv   curves.png

Reproducibility: the shuffle/augment generator is ``np.random.default_rng([seed, 1])``, the
model's weights and dropout use ``np.random.default_rng(seed)`` (``Model(seed=seed)``). Both
generators' states, the optimizer state and the history are saved with every checkpoint, so a
resumed run continues bit-for-bit (on CPU) where the checkpoint left off.
"""
from __future__ import annotations

import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..backend import to_device, to_numpy
from ..errors import CheckpointError, CnnGraphError, DataError, SpecError
from .metrics import MetricAccumulator, predicted_classes

__all__ = ["train", "load_model", "History", "TrainingError", "resolve_checkpoint", "parse_data_arg",
           "evaluate_arrays", "prepare_loss", "LossSetup", "spec_differences"]

TARGET_ENCODINGS = ("index", "one_hot")


class TrainingError(CnnGraphError):
    """Training cannot start or had to stop (diverged loss, incompatible settings)."""


class History(list):
    """What :func:`train` returns: a ``list`` with one dict per completed epoch, in order.

    Each row has ``epoch`` (1-based), ``lr`` (the rate of the epoch's last step), ``train_loss``,
    ``train_accuracy``, ``val_loss``, ``val_accuracy``, ``val_top{k}_accuracy`` (``None`` without a
    validation split), ``seconds`` (epoch wall time), ``train_seconds`` (training steps only) and
    ``images_per_second``.

    Attributes
    ----------
    test : dict or None
        Final metrics of the best checkpoint on the test split (None when the split is empty):
        ``test_loss``, ``test_accuracy``, ``test_top{k}_accuracy``, ``per_class`` (precision,
        recall, f1, support lists), ``confusion`` (list of lists), ``classes``, ``checkpoint``
        ("best" or "last") and ``epoch``.
    summary : dict
        The content written to ``metrics.json`` (history, test metrics, ``train_seconds``,
        ``images_per_second``, ``best_epoch``, ``stopped``).
    out : pathlib.Path
        The run folder.
    best_epoch : int or None
    stopped : str
        Why training ended: "completed", "early_stopping" (or "interrupted" / "diverged", which
        raise instead of returning).
    """

    test: dict | None = None
    summary: dict
    out: Path
    best_epoch: int | None = None
    stopped: str = "completed"


# --------------------------------------------------------------------------- helpers

def _as_spec(spec, allow_plugins: bool = False):
    from ..spec import Spec, load_spec
    return spec if isinstance(spec, Spec) else load_spec(spec, allow_plugins=allow_plugins)


def _train_spec(spec):
    """The spec's TrainSpec, or the defaults (digits data, SGD) when it has no ``train:`` section."""
    if spec.train is not None:
        return spec.train, True
    from ..registry import get_registry
    from .config import validate_train
    ts, problems = validate_train({}, spec.positions, spec.file, get_registry())
    if problems:  # pragma: no cover - the defaults always validate
        raise SpecError(problems)
    return ts, False


def parse_data_arg(data, base):
    """Apply a ``--data`` override to the DataConfig ``base``.

    ``data`` is a dataset name (``"digits"``), ``"name:path"`` (``"mnist:/data/mnist"``,
    ``"npz:file.npz"``; the path is relative to the current folder), a dict of DataConfig fields
    (paths relative to the spec's folder) or a DataConfig. Fields not given keep ``base``'s values,
    except ``path``, which is cleared when the dataset changes.
    """
    from pydantic import ValidationError

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
    merged = base.model_dump()
    merged.update(change)
    try:
        return DataConfig.model_validate(merged)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'data'}: {e['msg'].removeprefix('Value error, ')}"
                         for e in exc.errors())
        raise DataError(f"--data {data!r}: {msgs}") from None


def resolve_checkpoint(path, prefer: str = "best") -> Path:
    """The checkpoint directory for ``path``: a checkpoint itself, a run folder (``checkpoint/best``
    or ``checkpoint/last``, ``prefer`` first), or a run's ``checkpoint/`` folder."""
    from .checkpoint import META_FILE
    p = Path(path)
    if (p / META_FILE).is_file():
        return p
    other = "last" if prefer == "best" else "best"
    for cand in (p / "checkpoint" / prefer, p / prefer, p / "checkpoint" / other, p / other):
        if (cand / META_FILE).is_file():
            return cand
    what = "does not exist" if not p.exists() else "holds no checkpoint"
    raise CheckpointError(f"{path}: {what}; expected a run folder (with checkpoint/best/ or checkpoint/last/), "
                          f"its checkpoint/ folder, or a best/ or last/ folder containing {META_FILE}")


def _run_folder_of(ckpt: Path) -> Path:
    if ckpt.name in ("best", "last") and ckpt.parent.name == "checkpoint":
        return ckpt.parent.parent
    if ckpt.name in ("best", "last"):
        return ckpt.parent
    return ckpt


def spec_differences(a: dict, b: dict, limit: int = 6) -> list[str]:
    """Human-readable differences between two spec dicts, ignoring their ``train`` sections."""
    out: list[str] = []
    keys = sorted((set(a) | set(b)) - {"train"})
    for key in keys:
        va, vb = a.get(key), b.get(key)
        if va == vb:
            continue
        if key == "layers" and isinstance(va, list) and isinstance(vb, list):
            la = {l.get("id"): l for l in va if isinstance(l, dict)}
            lb = {l.get("id"): l for l in vb if isinstance(l, dict)}
            for lid in [l for l in la if l not in lb]:
                out.append(f"layer '{lid}' only in the checkpoint")
            for lid in [l for l in lb if l not in la]:
                out.append(f"layer '{lid}' only in the spec")
            for lid in [l for l in la if l in lb and la[l] != lb[l]]:
                out.append(f"layer '{lid}': checkpoint {json.dumps(la[lid], sort_keys=True)} vs spec "
                           f"{json.dumps(lb[lid], sort_keys=True)}")
            if not out and [l.get("id") for l in va] != [l.get("id") for l in vb]:
                out.append("layer order differs")
        else:
            out.append(f"{key}: checkpoint {json.dumps(va, sort_keys=True)} vs spec {json.dumps(vb, sort_keys=True)}")
    if len(out) > limit:
        out = out[:limit] + [f"… and {len(out) - limit} more"]
    return out


def _clean(v):
    """JSON-safe: NaN/inf → None, NumPy scalars → Python."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# --------------------------------------------------------------------------- loss / targets

@dataclass
class LossSetup:
    """The loss op applied to one model output, and how labels become its targets."""

    op: Any
    output: str
    encoding: str            # "index" or "one_hot"
    units: int               # output units per sample
    reduction: str = "mean"

    def targets(self, y: np.ndarray, xp, dtype) -> Any:
        y = np.asarray(y)
        if self.encoding == "one_hot":
            if self.units == 1:
                t = y.astype(dtype).reshape(-1, 1)
            else:
                t = np.zeros((len(y), self.units), dtype)
                t[np.arange(len(y)), y] = 1
        elif self.op.type == "cross_entropy":
            t = y.astype(np.int64)
        else:
            t = y.astype(dtype)
        return to_device(t, xp)

    def per_sample_sum(self, value: float, n: int) -> float:
        """Sum over the batch's samples of the loss the op reported for it."""
        return value * n if self.reduction == "mean" else value


def prepare_loss(spec, ts, num_classes: int | None = None) -> LossSetup:
    """Build the loss op of ``ts.loss`` for the output it names; checks the output and target shapes."""
    from ..errors import ShapeError
    from ..registry import get_registry
    output = ts.loss_output or spec.outputs[0]
    if output not in spec.graph or spec.graph.nodes[output].get("kind") != "layer":
        known = ", ".join(spec.outputs)
        raise SpecError(spec.problem(f"loss output '{output}' is not a layer of the network; expected one of the "
                                     f"outputs ({known}) or a layer id", ("train", "loss", "output")))
    shape = tuple(spec.graph.nodes[output]["out_shape"])
    if len(shape) != 1:
        raise SpecError(spec.problem(f"loss output '{output}' has per-sample shape {shape}; training needs a "
                                     f"vector of class scores (classes,) — add a flatten/dense layer",
                                     ("train", "loss", "output")))
    units = shape[0]
    op = get_registry().ops[ts.loss.type](ts.loss.params)
    encoding = ts.loss_target
    if encoding is None:
        encoding = "index" if ts.loss.type == "cross_entropy" or (units == 1) else "one_hot"
    if encoding not in TARGET_ENCODINGS:
        raise SpecError(spec.problem(f"unknown target encoding '{encoding}'; expected one of "
                                     f"{', '.join(TARGET_ENCODINGS)}", ("train", "loss", "target")))
    target_shape = (units,) if encoding == "one_hot" else ()
    try:
        op.infer_shape([shape, target_shape])
    except ShapeError as exc:
        raise SpecError(spec.problem(f"loss '{ts.loss.type}' on output '{output}' {shape} with '{encoding}' "
                                     f"targets: {exc}", ("train", "loss"))) from None
    if num_classes is not None and units != num_classes and not (units == 1 and num_classes == 2):
        raise TrainingError(f"loss output '{output}' has {units} units per sample but the dataset has "
                            f"{num_classes} classes; expected out_features: {num_classes}"
                            + (" (or 1 for a binary classifier)" if num_classes == 2 else ""))
    return LossSetup(op=op, output=output, encoding=encoding, units=units,
                     reduction=getattr(op.p, "reduction", "mean"))


def evaluate_arrays(model, input_name: str, x: np.ndarray, y: np.ndarray, loss: LossSetup, batch_size: int,
                    top_k: int = 1, num_classes: int | None = None) -> MetricAccumulator:
    """Inference-mode metrics of ``model`` on (x, y) in batches; returns the accumulator."""
    from ..op import Context
    acc = MetricAccumulator(top_k=top_k, num_classes=num_classes)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        scores = model.forward({input_name: xb}, training=False, grad=False, outputs=[loss.output])[loss.output]
        value = loss.op.forward(Context(training=False, grad=False), [scores, loss.targets(yb, model.xp, model.dtype)], {})
        acc.add(to_numpy(scores), yb, loss.per_sample_sum(float(value), len(yb)))
    return acc


# --------------------------------------------------------------------------- the run

@dataclass
class _Settings:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    data: Any
    device: str


@dataclass
class _Best:
    """The selection metric's best value (best checkpoint) and the early-stopping patience count.

    An epoch is the new best when the metric improves by more than ``min_delta``; an exact tie
    (common for accuracies on a small validation split) goes to the epoch with the lower
    ``tiebreak`` loss, which replaces the best checkpoint without resetting the patience count.
    """

    metric: str
    maximize: bool
    min_delta: float = 0.0
    patience: int | None = None
    value: float | None = None
    epoch: int | None = None
    bad_epochs: int = 0
    tiebreak: float | None = None

    def update(self, value: float | None, epoch: int, tiebreak: float | None = None) -> bool:
        """Record an epoch; returns whether it is the new best checkpoint."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            self.bad_epochs += 1
            return False
        better = self.value is None or (value > self.value + self.min_delta if self.maximize
                                        else value < self.value - self.min_delta)
        if better:
            self.value, self.epoch, self.bad_epochs, self.tiebreak = float(value), epoch, 0, tiebreak
            return True
        self.bad_epochs += 1
        if value == self.value and tiebreak is not None and (self.tiebreak is None or tiebreak < self.tiebreak):
            self.epoch, self.tiebreak = epoch, tiebreak
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state(self) -> dict:
        return {"metric": self.metric, "value": self.value, "epoch": self.epoch, "bad_epochs": self.bad_epochs,
                "tiebreak": self.tiebreak}


@dataclass
class _Timer:
    enabled: bool
    phases: dict = field(default_factory=dict)
    layers: dict = field(default_factory=dict)
    _t: float = 0.0

    def add(self, phase: str, seconds: float) -> None:
        if self.enabled:
            self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def hook(self, model):
        if not self.enabled:
            return None
        self._t = time.perf_counter()

        def on_output(node, y):
            now = time.perf_counter()
            key = (node, model.graph.nodes[node]["type"])
            self.layers[key] = self.layers.get(key, 0.0) + now - self._t
            self._t = now
        return on_output

    def report(self) -> str:
        total = sum(self.phases.values()) or 1e-12
        lines = ["profile (wall time over the run)", f"  {'phase':<22}{'seconds':>9}{'share':>8}"]
        for k, v in sorted(self.phases.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {k:<22}{v:9.3f}{v / total * 100:7.1f}%")
        if self.layers:
            ftotal = sum(self.layers.values()) or 1e-12
            lines.append(f"  forward per layer (training steps; the first includes input preparation)")
            for (node, typ), v in sorted(self.layers.items(), key=lambda kv: -kv[1]):
                lines.append(f"    {node:<20}{typ:<16}{v:9.3f}{v / ftotal * 100:7.1f}%")
        return "\n".join(lines)


class _Run:
    def __init__(self, spec, epochs, batch_size, lr, out, resume, data, device, seed, quiet, stream, profile,
                 allow_plugins):
        from ..model import Model
        from ..registry import get_registry
        from .data import load_dataset
        self.spec = spec = _as_spec(spec, allow_plugins)
        self.ts, has_train = _train_spec(spec)
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.timer = _Timer(profile)

        # --- resume: the checkpoint's settings are the defaults the arguments override
        self.resume_ckpt = None
        saved: dict = {}
        if resume is not None:
            from .checkpoint import load_checkpoint
            rdir = resolve_checkpoint(resume, prefer="last")
            self.resume_ckpt = load_checkpoint(rdir)
            self.resume_dir = rdir
            meta = self.resume_ckpt.meta
            if meta.get("kind") != "training" or "rng" not in meta:
                raise CheckpointError(f"{rdir}: not a training checkpoint (no optimizer/RNG state); "
                                      f"resume needs OUT/checkpoint/last of a `cnngraph train` run")
            diff = spec_differences(meta.get("spec", {}), spec.to_dict())
            if diff:
                raise CheckpointError(f"{rdir}: the checkpoint was trained from a different network than "
                                      f"{spec.file or 'this spec'}:\n  " + "\n  ".join(diff))
            old_train, new_train = (meta.get("spec") or {}).get("train") or {}, spec.to_dict().get("train") or {}
            changed = sorted(k for k in set(old_train) | set(new_train) if old_train.get(k) != new_train.get(k))
            if changed and not quiet:
                print(f"note: resuming with a changed train section ({', '.join('train.' + k for k in changed)}); "
                      f"the continuation is not bit-for-bit the original run", file=self.stream)
            saved = meta.get("settings", {})
            if out is None:
                out = _run_folder_of(rdir)

        # --- settings: argument > checkpoint > spec
        def pick(arg, key, spec_value):
            return arg if arg is not None else saved.get(key, spec_value)

        from .data import DataConfig
        base_data = DataConfig.model_validate(saved["data"]) if "data" in saved else self.ts.data
        self.settings = _Settings(
            epochs=int(pick(epochs, "epochs", self.ts.epochs)),
            batch_size=int(pick(batch_size, "batch_size", self.ts.batch_size)),
            lr=float(pick(lr, "lr", getattr(self.ts.optimizer.params, "lr", 0.01))),
            seed=int(pick(seed, "seed", self.ts.seed)),
            data=parse_data_arg(data, base_data), device=device)
        st = self.settings
        for name, v in (("epochs", st.epochs), ("batch_size", st.batch_size)):
            if v < 1:
                raise TrainingError(f"{name} must be >= 1, found {v}")
        if not (st.lr >= 0 and math.isfinite(st.lr)):
            raise TrainingError(f"lr must be a finite number >= 0, found {st.lr}")

        # --- the model's input
        float_inputs = [n for n, i in spec.inputs.items() if i.dtype != "int64"]
        if len(spec.inputs) != 1 or len(float_inputs) != 1:
            raise TrainingError(f"training feeds one image input; spec '{spec.name}' has inputs "
                                f"{', '.join(spec.inputs)}")
        self.input_name = float_inputs[0]
        shape = tuple(spec.inputs[self.input_name].shape)
        if len(shape) != 3:
            raise TrainingError(f"training needs an image input of shape (C, H, W); input '{self.input_name}' "
                                f"has shape {shape}")

        # --- data
        try:
            self.dataset = load_dataset(st.data, shape, seed=st.seed, base_dir=spec.base_dir)
        except DataError as exc:
            if not has_train and data is None:
                raise TrainingError(f"spec '{spec.name}' has no train: section, so it would train on the default "
                                    f"dataset 'digits', which does not fit: {exc}. Add a train: section with a "
                                    f"data: entry, or pass --data NAME:PATH") from None
            raise
        ds = self.dataset
        if len(ds.train[1]) == 0:
            raise DataError(f"dataset '{st.data.dataset}': the training split is empty")
        self.loss = prepare_loss(spec, self.ts, ds.num_classes)
        self.has_val = len(ds.val[1]) > 0

        # --- early stopping / best checkpoint metric
        es = self.ts.early_stopping
        metric = es.metric if es is not None else ("val_accuracy" if self.has_val else "train_accuracy")
        k = self.ts.top_k
        known = ["train_loss", "train_accuracy"]
        if self.has_val:
            known += ["val_loss", "val_accuracy"] + ([f"val_top{k}_accuracy"] if k > 1 else [])
        if metric not in known:
            why = " (the dataset has no validation split)" if metric.startswith("val_") and not self.has_val else ""
            raise SpecError(spec.problem(f"unknown early-stopping metric '{metric}'{why}; expected one of "
                                         f"{', '.join(known)}", ("train", "early_stopping", "metric")))
        maximize = es.maximize if es is not None else True
        self.best = _Best(metric, maximize, es.min_delta if es else 0.0, es.patience if es else None)

        # --- model, optimizer, schedule, augmentation, generators
        reg = get_registry()
        self.model = Model(spec, device=device, seed=st.seed)
        self.optimizer = reg.optimizers[self.ts.optimizer.type](self.ts.optimizer.params)
        self.schedule = reg.schedules[self.ts.schedule.type](self.ts.schedule.params)
        from .augment import build_augmentations
        self.augment = build_augmentations(self.ts.augment, background=ds.background, table=reg.augmentations)
        self.rng = np.random.default_rng([st.seed, 1])
        self.history = History()
        self.start_epoch = 0
        self.out = Path(out) if out is not None else Path("runs") / spec.name
        self.ckpt_dir = self.out / "checkpoint"
        self.last_saved: int | None = None   # epoch of the newest complete last/ checkpoint

        if self.resume_ckpt is not None:
            self._restore()
        if self.start_epoch >= st.epochs and self.resume_ckpt is not None:
            raise TrainingError(f"{self.resume_dir}: the checkpoint already finished epoch {self.start_epoch} of "
                                f"{st.epochs}; pass a larger --epochs to train further")
        warm = getattr(self.schedule.params, "warmup_epochs", 0) or 0
        if warm and warm >= st.epochs:
            raise SpecError(spec.problem(f"warmup_epochs ({warm}) must be less than the number of epochs "
                                         f"({st.epochs})", ("train", "schedule", "warmup_epochs")))

    # -- resume ----------------------------------------------------------------------------
    def _restore(self) -> None:
        from .checkpoint import load_checkpoint, rng_state_from_json, save_checkpoint
        ck, meta = self.resume_ckpt, self.resume_ckpt.meta
        self.model.load_params(ck.arrays)
        if ck.optimizer_state is not None:
            self.optimizer.load_state_dict(ck.optimizer_state)
        self.rng = rng_state_from_json(meta["rng"]["loop"])
        self.model.rng = rng_state_from_json(meta["rng"]["model"])
        self.history = History(meta.get("history", []))
        self.start_epoch = int(meta["epoch"])
        self.last_saved = self.start_epoch
        b = meta.get("best") or {}
        if b.get("metric") == self.best.metric:
            self.best.value, self.best.epoch = b.get("value"), b.get("epoch")
            self.best.bad_epochs, self.best.tiebreak = b.get("bad_epochs", 0), b.get("tiebreak")
        else:  # a different selection metric: rebuild the state from the history
            for row in self.history:
                self.best.update(row.get(self.best.metric), row["epoch"], self._tiebreak(row))
        ds = meta.get("dataset", {})
        if ds and (ds.get("mean") != self.dataset.mean or ds.get("std") != self.dataset.std):
            print(f"note: the data normalisation differs from the checkpoint's (mean {ds.get('mean')} → "
                  f"{self.dataset.mean}); the data changed since the checkpoint was written", file=self.stream)
        # Keep the previous best when resuming into another folder.
        src_best = _run_folder_of(self.resume_dir) / "checkpoint" / "best"
        dst_best = self.ckpt_dir / "best"
        if src_best.resolve() != dst_best.resolve() and (src_best / "meta.json").is_file():
            prev = load_checkpoint(src_best)
            save_checkpoint(dst_best, prev.arrays, prev.meta, prev.optimizer_state)

    # -- checkpoints -----------------------------------------------------------------------
    def _meta(self, epoch: int) -> dict:
        from .. import __version__
        from .checkpoint import rng_state_to_json
        st, ds = self.settings, self.dataset
        return _clean({
            "kind": "training", "spec": self.spec.to_dict(), "spec_sha256": self.spec.sha256,
            "spec_name": self.spec.name, "epoch": epoch,
            "settings": {"epochs": st.epochs, "batch_size": st.batch_size, "lr": st.lr, "seed": st.seed,
                         "data": st.data.model_dump(mode="json"), "device": st.device},
            "rng": {"loop": rng_state_to_json(self.rng), "model": rng_state_to_json(self.model.rng)},
            "history": list(self.history), "best": self.best.state(),
            "dataset": {"mean": ds.mean, "std": ds.std, "classes": ds.classes, "pixel_scale": ds.pixel_scale,
                        "source": ds.source, "input": self.input_name},
            "loss": {"type": self.ts.loss.type, "output": self.loss.output, "target": self.loss.encoding},
            "dtype": str(self.model.dtype), "cnngraph_version": __version__,
        })

    def _save(self, epoch: int, improved: bool) -> None:
        from .checkpoint import save_checkpoint
        t = time.perf_counter()
        meta = self._meta(epoch)
        arrays = self.model.params.numpy()
        opt = self.optimizer.state_dict()
        if improved:   # best first: an interruption between the two leaves last/ one epoch behind, never ahead
            save_checkpoint(self.ckpt_dir / "best", arrays, meta, opt)
        save_checkpoint(self.ckpt_dir / "last", arrays, meta, opt)
        self.last_saved = epoch
        self.timer.add("checkpoints", time.perf_counter() - t)

    def _last_good(self) -> str:
        if self.last_saved is None:
            return "no checkpoint was saved yet"
        return f"last good checkpoint: {self.ckpt_dir / 'last'} (epoch {self.last_saved})"

    # -- one epoch -------------------------------------------------------------------------
    def _epoch(self, epoch: int) -> dict:
        from ..op import Context
        from .optim import clip_grad_norm
        from .progress import EpochProgress
        st, model, loss, timer = self.settings, self.model, self.loss, self.timer
        x, y = self.dataset.train
        steps = math.ceil(len(x) / st.batch_size)
        progress = EpochProgress(epoch + 1, st.epochs, steps, stream=self.stream, quiet=self.quiet)
        self._progress = progress
        weights = {n: model.params._data[n] for n in model.trainable_names}
        xp, dtype = model.xp, model.dtype
        hook = timer.hook(model)
        t_epoch = time.perf_counter()
        rate = st.lr
        order = self.rng.permutation(len(x))
        prof = timer.enabled
        for step in range(steps):
            t0 = time.perf_counter()
            idx = order[step * st.batch_size:(step + 1) * st.batch_size]
            xb, yb = x[idx], y[idx]
            if len(self.augment):
                xb = self.augment(xb, self.rng)
            rate = self.schedule.lr(st.lr, epoch, step, steps, st.epochs)
            if prof:
                t1 = time.perf_counter()
                timer.add("data + augment", t1 - t0)
                timer._t = t1
            scores = model.forward({self.input_name: xb}, training=True, grad=True, outputs=[loss.output],
                                   on_output=hook)[loss.output]
            if prof:
                t2 = time.perf_counter()
                timer.add("forward", t2 - t1)
            ctx = Context(training=True, grad=True)
            value = float(loss.op.forward(ctx, [scores, loss.targets(yb, xp, dtype)], {}))
            if not math.isfinite(value):
                self._diverged(xb, epoch, step, value, rate)
            (g_out, *_), _ = loss.op.backward(ctx, 1.0)
            if prof:
                t3 = time.perf_counter()
                timer.add("loss", t3 - t2)
            grads = model.backward({loss.output: g_out}, input_grads=False)
            if prof:
                t4 = time.perf_counter()
                timer.add("backward", t4 - t3)
            if self.ts.grad_clip is not None:
                norm = clip_grad_norm(grads, self.ts.grad_clip)
                if not math.isfinite(norm):
                    self._diverged(xb, epoch, step, value, rate, grad_norm=norm)
            self.optimizer.step(weights, grads, rate)
            s_np = to_numpy(scores)
            correct = int((predicted_classes(s_np) == yb).sum())
            progress.update(len(yb), loss.per_sample_sum(value, len(yb)), correct)
            if prof:
                timer.add("optimizer + metrics", time.perf_counter() - t4)
        train_seconds = time.perf_counter() - t_epoch
        row = {"epoch": epoch + 1, "lr": rate,
               "train_loss": progress.loss_sum / progress.images, "train_accuracy": progress.correct / progress.images}
        if self.has_val:
            t = time.perf_counter()
            k = self.ts.top_k
            acc = evaluate_arrays(model, self.input_name, *self.dataset.val, loss, max(st.batch_size, 256), top_k=k)
            row.update(acc.result("val_"))
            timer.add("validation", time.perf_counter() - t)
        else:
            row.update({"val_loss": None, "val_accuracy": None})
        row["seconds"] = time.perf_counter() - t_epoch
        row["train_seconds"] = train_seconds
        row["images_per_second"] = progress.images / max(train_seconds, 1e-9)
        return _clean(row)

    def _diverged(self, xb, epoch: int, step: int, value: float, rate: float, grad_norm: float | None = None):
        xp, model = self.model.xp, self.model
        first: list[str] = []

        def check(node, y):
            if not first and not bool(xp.all(xp.isfinite(y))):
                first.append(node)

        if not bool(np.all(np.isfinite(to_numpy(xb)))):
            cause = "the input batch itself contains NaN or inf (check the data)"
        else:
            model.forward({self.input_name: xb}, training=True, grad=False, outputs=[self.loss.output],
                          on_output=check)
            if first:
                node = first[0]
                cause = f"the first layer whose output became non-finite is '{node}' ({model.graph.nodes[node]['type']})"
                bad = [n for n in model._names.get(node, {}).values()
                       if not bool(xp.all(xp.isfinite(model.params._data[n])))]
                if bad:
                    cause += f"; its parameter{'s' if len(bad) > 1 else ''} {', '.join(bad)} already hold NaN/inf"
            elif grad_norm is not None:
                cause = "every layer output is finite but the gradient norm is " + str(grad_norm)
            else:
                cause = (f"every layer output is finite; the loss '{self.loss.op.type}' itself overflowed "
                         f"(output '{self.loss.output}' holds very large values)")
        what = f"the loss is {value}" if grad_norm is None or not math.isfinite(value) else \
            f"the gradient norm is {grad_norm}"
        if getattr(self, "_progress", None) is not None:
            self._progress.clear()
        self.stopped = "diverged"
        self._write_outputs(None)
        raise TrainingError(f"training diverged at epoch {epoch + 1}, step {step + 1} (lr {rate:.4g}): {what}; "
                            f"{cause}. {self._last_good().capitalize()}. Lower the learning rate "
                            f"(train.optimizer.lr / --lr, now {self.settings.lr:g})"
                            + ("" if self.ts.grad_clip else " or set train.grad_clip") + ".")

    # -- the whole run ---------------------------------------------------------------------
    def fit(self) -> History:
        st = self.settings
        self.stopped = "completed"
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.quiet:
            ds = self.dataset
            what = "resuming from epoch " + str(self.start_epoch) + ", " if self.start_epoch else ""
            print(f"training {self.spec.name}: {what}{len(ds.train[1])} train / {len(ds.val[1])} val / "
                  f"{len(ds.test[1])} test images ({ds.source}), {st.epochs} epochs, batch {st.batch_size}, "
                  f"{self.ts.optimizer.type} lr {st.lr:g}, out {self.out}", file=self.stream)
        try:
            for epoch in range(self.start_epoch, st.epochs):
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):   # divergence is reported below
                    row = self._epoch(epoch)
                self.history.append(row)
                improved = self.best.update(row.get(self.best.metric), row["epoch"], self._tiebreak(row))
                self._save(row["epoch"], improved)
                self._progress.finish(row)
                if self.best.should_stop:
                    self.stopped = "early_stopping"
                    if not self.quiet:
                        print(f"early stopping: {self.best.metric} did not improve for {self.best.bad_epochs} "
                              f"epochs (best {self.best.value:.4f} at epoch {self.best.epoch})", file=self.stream)
                    break
        except KeyboardInterrupt:
            if getattr(self, "_progress", None) is not None:
                self._progress.clear()
            self.stopped = "interrupted"
            self._write_outputs(None)
            print(f"interrupted: training stopped cleanly; {self._last_good()}. Resume with "
                  f"`cnngraph train SPEC --resume {self.out}`", file=self.stream)
            raise
        test = self._test()
        return self._write_outputs(test)

    def _tiebreak(self, row: dict) -> float | None:
        """Loss that breaks exact ties of the selection metric (val_loss, else train_loss)."""
        if self.best.metric.endswith("loss"):
            return None
        return row.get("val_loss") if self.best.metric.startswith("val_") else row.get("train_loss")

    def _test(self) -> dict | None:
        from .checkpoint import load_checkpoint
        ds = self.dataset
        if len(ds.test[1]) == 0:
            return None
        which = "best" if (self.ckpt_dir / "best" / "meta.json").is_file() else "last"
        ck = load_checkpoint(self.ckpt_dir / which)
        self.model.load_params(ck.arrays)
        k = self.ts.top_k
        acc = evaluate_arrays(self.model, self.input_name, *ds.test, self.loss, max(self.settings.batch_size, 256),
                              top_k=k, num_classes=max(ds.num_classes, 2) if self.loss.units == 1 else ds.num_classes)
        cm = acc.confusion()
        return _clean({**acc.result("test_"), "per_class": acc.per_class(), "confusion": cm.tolist(),
                       "classes": list(ds.classes), "checkpoint": which, "epoch": int(ck.meta.get("epoch", 0))})

    def _write_outputs(self, test: dict | None) -> History:
        hist = self.history
        hist.out, hist.test, hist.best_epoch, hist.stopped = self.out, test, self.best.epoch, self.stopped
        train_s = sum(r.get("train_seconds") or 0 for r in hist)
        images = sum((r.get("images_per_second") or 0) * (r.get("train_seconds") or 0) for r in hist)
        summary = {"spec": self.spec.name, "epochs_run": len(hist), "best_epoch": self.best.epoch,
                   "best_metric": self.best.metric, "stopped": self.stopped,
                   "train_seconds": sum(r.get("seconds") or 0 for r in hist),
                   "images_per_second": images / train_s if train_s else None,
                   "test_accuracy": None, "test_loss": None}
        if test:
            summary.update(test)
        summary["history"] = list(hist)
        hist.summary = _clean(summary)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "metrics.json").write_text(json.dumps(hist.summary, indent=2) + "\n")
        keys: list[str] = []
        for r in hist:
            keys += [k for k in r if k not in keys]
        with open(self.out / "history.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys or ["epoch"])
            w.writeheader()
            for r in hist:
                w.writerow({k: "" if r.get(k) is None else r.get(k) for k in keys})
        if hist:
            from ..viz.curves import plot_curves
            plot_curves(hist, self.out / "curves.png", title=self.spec.name)
        if self.timer.enabled and not self.quiet:
            print(self.timer.report(), file=self.stream)
        if not self.quiet and test:
            print(f"test ({test['checkpoint']} checkpoint, epoch {test['epoch']}): loss {test['test_loss']:.4f} "
                  f"accuracy {test['test_accuracy']:.4f}; wrote {self.out}", file=self.stream)
        return hist


def train(spec, epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          out=None, resume=None, data=None, device: str = "cpu", seed: int | None = None, quiet: bool = False,
          *, profile: bool = False, stream: TextIO | None = None, allow_plugins: bool = False) -> History:
    """Train the network of ``spec`` as its ``train:`` section says (defaults when it has none).

    Parameters
    ----------
    spec : Spec, path or dict
    epochs, batch_size, lr, seed : override ``train.epochs`` / ``batch_size`` / ``optimizer.lr`` /
        ``seed`` (on resume the checkpoint's values are the defaults). ``epochs`` is the total
        number of epochs, counting those done before a resume.
    out : run folder (default ``runs/<spec name>``; on resume, the resumed run's folder).
    resume : a run folder or checkpoint to continue from (its ``last/`` checkpoint by default).
    data : dataset override: ``"digits"``, ``"mnist:/data/mnist"``, ``"npz:file.npz"``, a dict or DataConfig.
    device : "cpu" or "cuda".
    quiet : print nothing (progress and summary go to ``stream``, default stderr).
    profile : print where the time went (phases and forward time per layer) at the end.

    Returns
    -------
    History
        A list of per-epoch dicts with ``.test`` (final test metrics of the best checkpoint),
        ``.summary`` (metrics.json), ``.out``, ``.best_epoch`` and ``.stopped``; see :class:`History`.

    Raises
    ------
    TrainingError
        The loss became NaN/inf (the message names the first non-finite layer) or the settings
        cannot work. KeyboardInterrupt is re-raised after the outputs of the completed epochs are
        written; ``checkpoint/last`` then holds the last completed epoch.
    """
    with _blas_threads():
        return _Run(spec, epochs, batch_size, lr, out, resume, data, device, seed, quiet, stream, profile,
                    allow_plugins).fit()


def _blas_threads():
    """Hold NumPy's BLAS at ``CNNGRAPH_BLAS_THREADS`` threads (default 1) during training.

    The conv kernels already parallelise over batch chunks with BLAS single-threaded; the other
    matrix products of a CNN (dense layers, small GEMMs) are too small to gain from BLAS threads,
    and on a busy machine OpenBLAS's spinning threads make them ~10x slower (a 64x512 @ 512x64
    product: 2 ms with 2 threads on a loaded 2-core box, 0.17 ms with 1). ``0`` leaves BLAS alone.
    Without threadpoolctl this is a no-op.
    """
    import contextlib
    import os
    try:
        n = int(os.environ.get("CNNGRAPH_BLAS_THREADS", "1"))
    except ValueError:
        raise TrainingError(f"CNNGRAPH_BLAS_THREADS must be a whole number (0 = leave BLAS alone), found "
                            f"{os.environ['CNNGRAPH_BLAS_THREADS']!r}") from None
    if n <= 0:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def load_model(path, device: str = "cpu", allow_plugins: bool = False, which: str = "best"):
    """Load a Model from a checkpoint written by ``train`` or ``Model.save``.

    ``path`` may be a run folder (``which``: its ``best`` or ``last`` checkpoint), its
    ``checkpoint/`` folder or a checkpoint directory. The model gets the checkpoint's spec and
    weights; ``model.checkpoint_meta`` holds the checkpoint's meta (dataset mean/std/classes/
    pixel_scale under ``"dataset"`` for training checkpoints).
    """
    from ..model import Model
    from ..spec import load_spec
    from .checkpoint import load_checkpoint
    ckpt_dir = resolve_checkpoint(path, prefer=which)
    ck = load_checkpoint(ckpt_dir)
    raw = ck.meta.get("spec")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{ckpt_dir}: the checkpoint holds no spec (meta.json 'meta.spec'); it was not "
                              "written by cnngraph.train or Model.save")
    try:
        spec = load_spec(raw, allow_plugins=allow_plugins)
    except SpecError as exc:
        raise CheckpointError(f"{ckpt_dir}: the spec stored in the checkpoint does not load here:\n{exc}") from None
    dtype = str(ck.meta.get("dtype", "float32"))
    model = Model(spec, device=device, dtype=dtype if dtype in ("float32", "float64") else "float32")
    try:
        model.load_params(ck.arrays)
    except CnnGraphError as exc:
        raise CheckpointError(f"{ckpt_dir}: {exc}") from None
    model.checkpoint_meta = ck.meta
    model.checkpoint_dir = ckpt_dir
    return model
