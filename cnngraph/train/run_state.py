"""What a training checkpoint's meta holds, and how a run continues from it.

Every checkpoint ``train`` writes carries, besides the weights and the optimizer state, the meta
built by :func:`checkpoint_meta`: the spec, the settings, both generators' states, the history, the
best-checkpoint / early-stopping state (:class:`Best`) and the dataset statistics. Resuming
(:func:`open_resume`, :func:`restore`) reads them back, so a resumed run continues bit-for-bit (on
CPU). :func:`check_same_network` guards resume, ``evaluate`` and ``predict`` against a checkpoint
of another network.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..errors import CheckpointError, SpecError
from .checkpoint import (META_FILE, Checkpoint, load_checkpoint, resolve_checkpoint, rng_state_from_json,
                         rng_state_to_json, run_folder)
from .metrics import json_safe

__all__ = ["Best", "spec_differences", "check_same_network", "checkpoint_meta", "check_meta", "input_channels",
           "open_resume",
           "restore", "schedule_change_note"]


@dataclass
class Best:
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

    @classmethod
    def for_run(cls, spec, ts, has_val: bool, top_k: int | None = None, dense: bool = False,
                values: bool = False) -> "Best":
        """The state ``ts.early_stopping`` asks for; without it, the best ``val_accuracy`` (or
        ``train_accuracy`` without a validation split) and no early stopping. SpecError for a metric
        the run does not compute."""
        es = ts.early_stopping
        if values:   # regression: no accuracy; the best checkpoint has the lowest loss
            metric = es.metric if es is not None else ("val_loss" if has_val else "train_loss")
            known = recorded_metrics(has_val, 1, dense, values)
            if metric not in known:
                raise SpecError(spec.problem(f"unknown early-stopping metric '{metric}' for values to regress; "
                                             f"expected one of {', '.join(known)}", ("train", "early_stopping", "metric")))
            return cls(metric, False) if es is None else cls(metric, es.maximize, es.min_delta, es.patience)
        metric = es.metric if es is not None else ("val_accuracy" if has_val else "train_accuracy")
        k = ts.top_k if top_k is None else top_k   # the k the run computes (1: none)
        known = recorded_metrics(has_val, k, dense, values)
        if metric not in known:
            why = " (the dataset has no validation split)" if metric.startswith("val_") and not has_val else ""
            if metric == "val_mean_iou" and has_val and not dense:
                why = " (it is measured for segmentation masks; this dataset has one label per image)"
            if metric == f"val_top{ts.top_k}_accuracy" and has_val and k == 1:   # k covers every class
                raise SpecError(spec.problem(
                    f"early-stopping metric '{metric}' needs more than {ts.top_k} classes (with {ts.top_k} or fewer "
                    f"it is always 1, so it is not measured); expected one of {', '.join(known)}",
                    ("train", "early_stopping", "metric")))
            raise SpecError(spec.problem(f"unknown early-stopping metric '{metric}'{why}; expected one of "
                                         f"{', '.join(known)}", ("train", "early_stopping", "metric")))
        if es is None:
            return cls(metric, True)
        return cls(metric, es.maximize, es.min_delta, es.patience)

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

    def record(self, row: dict) -> bool:
        """:meth:`update` with a history row: its metric value, epoch and tie-breaking loss
        (``val_loss``, else ``train_loss``; none when the metric is itself a loss)."""
        tiebreak = None
        if not self.metric.endswith("loss"):
            tiebreak = row.get("val_loss") if self.metric.startswith("val_") else row.get("train_loss")
        return self.update(row.get(self.metric), row["epoch"], tiebreak)

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state(self) -> dict:
        return {"metric": self.metric, "value": self.value, "epoch": self.epoch, "bad_epochs": self.bad_epochs,
                "tiebreak": self.tiebreak}


# --------------------------------------------------------------------------- same network?

NOT_THE_NETWORK = {"train", "plugins", "description", "name"}   # spec keys that do not change the network's weights


def spec_differences(a: dict, b: dict, limit: int = 6) -> list[str]:
    """Human-readable differences between two spec dicts, ignoring their ``train`` sections, their
    names and descriptions (renaming a network keeps its weights) and where their plugin files lie
    (``cnngraph expand`` writes those paths absolute); the op types the plugins provide are compared
    with the layers."""
    out: list[str] = []
    keys = sorted((set(a) | set(b)) - NOT_THE_NETWORK)
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


def check_same_network(saved, spec, ckdir, spec_name) -> None:
    """Raise CheckpointError when ``saved`` (the spec dict stored in the checkpoint ``ckdir``) describes
    another network than ``spec`` (``spec_name`` in the message); ``saved=None`` (no stored spec) passes."""
    if not isinstance(saved, dict):
        return
    diff = spec_differences(saved, spec.to_dict())
    if diff:
        raise CheckpointError(f"{ckdir}: the checkpoint was trained from a different network than "
                              f"{spec_name}:\n  " + "\n  ".join(diff))


# --------------------------------------------------------------------------- checkpoint meta

def checkpoint_meta(run, epoch: int) -> dict:
    """The meta saved with a training run's checkpoints after ``epoch`` (``run``: the loop's state)."""
    return {**_run_meta(run), **json_safe({
        "epoch": epoch, "rng": {"loop": rng_state_to_json(run.rng), "model": rng_state_to_json(run.model.rng)},
        "history": list(run.history), "best": run.best.state()})}


def _run_meta(run) -> dict:
    """The part of checkpoint_meta that stays the same for the whole run, made once (the spec's deep copy and
    conversion took 1.3 ms of every epoch's save)."""
    made = getattr(run, "_run_meta", None)
    if made is None:
        from .. import __version__
        ds = run.dataset
        made = run._run_meta = json_safe({
            "kind": "training", "spec": run.spec.to_dict(), "spec_sha256": run.spec.sha256,
            "spec_dir": run.spec.base_dir, "plugin_sha256": run.plugin_sha256, "spec_name": run.spec.name,
            "settings": run.settings.to_json(),
            "dataset": {"mean": ds.mean, "std": ds.std, "classes": ds.classes, "pixel_scale": ds.pixel_scale,
                        "pixel_range": ds.pixel_range, "pixels": ds.pixels, "source": ds.source, "input": run.input_name},
            "loss": {"type": run.ts.loss.type, "output": run.loss.output, "target": run.loss.encoding},
            "dtype": str(run.model.dtype), "cnngraph_version": __version__,
        })
    return made


# --------------------------------------------------------------------------- reading it back

def _bad(ckdir: Path, key: str, expected: str, value) -> CheckpointError:
    return CheckpointError(f"{Path(ckdir) / META_FILE}: meta.{key}: expected {expected}, found "
                           f"{json.dumps(value)[:60]}; the checkpoint's meta is damaged or was edited")


def _finite(v, above: float | None = None) -> bool:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return ok and (above is None or v > above)


def input_channels(spec) -> int | None:
    """C of the spec's one (C, H, W) or (C, L) input, else None."""
    shapes = [tuple(i.shape) for i in spec.inputs.values()]
    return int(shapes[0][0]) if len(shapes) == 1 and len(shapes[0]) in (2, 3) else None


def check_meta(meta: dict, ckdir, channels: int | None = None) -> None:
    """The meta keys that evaluate, predict, explain, load_model and resume read, checked up front: a
    hand-edited or damaged ``meta.json`` is named with its key, instead of failing later, feeding NaN
    (a std of 0) or silently using other data (a missing ``settings``). ``channels``: the model's input
    channels, which ``dataset.mean``/``std`` must match (1 value, or one per channel)."""
    from ..paramtypes import is_whole
    from .data import _find_loader
    if meta.get("kind") == "training":
        st = meta.get("settings")
        if not isinstance(st, dict):
            raise _bad(ckdir, "settings", "the run's settings {epochs, batch_size, lr, seed, data}", st)
        for key, minimum in (("epochs", 1), ("batch_size", 1), ("seed", 0)):
            if key in st and not is_whole(st[key], minimum):
                raise _bad(ckdir, f"settings.{key}", f"a whole number >= {minimum}", st[key])
        if "lr" in st and not (_finite(st["lr"]) and st["lr"] >= 0):
            raise _bad(ckdir, "settings.lr", "a finite number >= 0", st["lr"])
        data = st.get("data")
        if isinstance(data, dict) and isinstance(data.get("dataset"), str) and _find_loader(data["dataset"]) is None:
            pass   # a plugin dataset whose plugin is not loaded here: predict and load_model need no data; a
            #        command that loads it (evaluate, resume) names the unknown dataset itself
        elif "data" in st:
            from pydantic import ValidationError

            from .data import DataConfig
            try:
                DataConfig.model_validate(st["data"])
            except ValidationError as exc:
                why = exc.errors()[0]
                where = ".".join(str(k) for k in why["loc"])
                raise _bad(ckdir, "settings.data" + (f".{where}" if where else ""), f"a train.data section "
                           f"({why['msg'].removeprefix('Value error, ')})", st["data"]) from None
    ds = meta.get("dataset")
    if ds is None:
        return
    if not isinstance(ds, dict):
        raise _bad(ckdir, "dataset", "a mapping (mean, std, classes, pixel_scale)", ds)
    if ds.get("mean") is not None or ds.get("std") is not None:
        for key in ("mean", "std"):
            values = ds.get(key)
            if not isinstance(values, list) or not values or not all(_finite(v) for v in values):
                raise _bad(ckdir, f"dataset.{key}", "a list of finite numbers, one per input channel", values)
            n = channels or len(ds["mean"])
            if len(values) not in (1, n):
                raise _bad(ckdir, f"dataset.{key}", f"1 value or {n} (one per input channel)" if n > 1 else
                           "1 value (the input has one channel)", values)
        if not all(v > 0 for v in ds["std"]):   # each channel is divided by it: 0 gives NaN predictions
            raise _bad(ckdir, "dataset.std", "values > 0", ds["std"])
    if "pixel_scale" in ds and not _finite(ds["pixel_scale"], above=0):
        raise _bad(ckdir, "dataset.pixel_scale", "a number > 0", ds["pixel_scale"])


# --------------------------------------------------------------------------- resume

def open_resume(resume, spec, quiet: bool, stream: TextIO) -> tuple[Path, Checkpoint]:
    """The checkpoint to resume from (a run folder's ``last/`` by default) and its directory.

    Checks that it is a training checkpoint of the same network; notes a changed train section.
    """
    rdir = resolve_checkpoint(resume, prefer="last", fall_back=True)
    ck = load_checkpoint(rdir)
    last = rdir.parent / "last"
    if rdir.name == "best" and Path(resume).name != "best" and not quiet:
        why = "holds no complete checkpoint (its first save did not finish)" if last.is_dir() else "is missing"
        print(f"note: {last} {why}; resuming from the best checkpoint (epoch {ck.meta.get('epoch')}), "
              f"not from where the run stopped", file=stream)
    meta = ck.meta
    if meta.get("kind") != "training" or "rng" not in meta:
        raise CheckpointError(f"{rdir}: not a training checkpoint (no optimizer/RNG state); "
                              f"resume needs OUT/checkpoint/last of a `cnngraph train` run")
    _check_resume_meta(meta, rdir)
    check_meta(meta, rdir, input_channels(spec))
    check_same_network(meta.get("spec", {}), spec, rdir, spec.file or "this spec")
    old_train, new_train = (meta.get("spec") or {}).get("train") or {}, spec.to_dict().get("train") or {}
    changed = sorted(k for k in (set(old_train) | set(new_train)) - _IO_ONLY if old_train.get(k) != new_train.get(k))
    if changed and not quiet:
        print(f"note: resuming with a changed train section ({', '.join('train.' + k for k in changed)}); "
              f"the continuation is not bit-for-bit the original run", file=stream)
    return rdir, ck


_IO_ONLY = {"checkpoint_interval"}   # train keys that change when files are written, not what is trained


# where each run setting is written in a spec's train section
_SETTING_IN_SPEC = {"epochs": ("epochs",), "batch_size": ("batch_size",), "seed": ("seed",),
                    "lr": ("optimizer", "lr"), "data": ("data",), "freeze": ("freeze",)}


def _at(d, path):
    for key in path:
        d = d.get(key) if isinstance(d, dict) else None
    return d


def recorded_metrics(has_val: bool, top_k: int, dense: bool, values: bool) -> list[str]:
    """The per-epoch metrics a run records (what early stopping and reduce_on_plateau can follow): losses, then
    accuracy (classes; top-k for k > 1, mean IoU for masks) or mae/rmse (values); val_ ones need a validation split."""
    if values:
        return ["train_loss", "train_mae"] + (["val_loss", "val_mae", "val_rmse"] if has_val else [])
    val = ["val_loss", "val_accuracy"] + ([f"val_top{top_k}_accuracy"] if top_k > 1 else []) + (
        ["val_mean_iou"] if dense else [])
    return ["train_loss", "train_accuracy"] + (val if has_val else [])


def resume_settings(meta: dict, spec) -> dict:
    """The settings a resumed run starts from: the checkpoint's, except those edited in the spec since
    (a value changed in the spec file is what the user means now)."""
    saved = dict(meta.get("settings") or {})
    old_train = (meta.get("spec") or {}).get("train") or {}
    new_train = spec.to_dict().get("train") or {}
    for key, path in _SETTING_IN_SPEC.items():
        if _at(old_train, path) != _at(new_train, path):
            saved.pop(key, None)
    return saved


def resume_changes(saved: dict, st) -> list[str]:
    """The settings of a resumed run that differ from the checkpoint's (epochs has its own note)."""
    from .data import DataConfig
    now = st.to_json()
    if isinstance(saved.get("data"), dict):   # an older checkpoint lacks keys added since: compare with defaults
        try:
            saved = {**saved, "data": DataConfig.model_validate(saved["data"]).model_dump(mode="json")}
        except Exception:  # noqa: BLE001 - unreadable: reported as changed, below
            pass
    return [f"{k} {now[k]!r} (was {saved[k]!r})" for k in ("batch_size", "lr", "seed", "data", "freeze")
            if k in saved and saved[k] != now[k]]


def _check_resume_meta(meta: dict, rdir: Path) -> None:
    """The parts of meta.json a resume relies on, checked up front (a hand-edited file must not end in a
    traceback or in a misleading error much later)."""
    def bad(key: str, expected: str):
        raise _bad(rdir, key, expected, meta.get(key))
    epoch = meta.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        bad("epoch", "a whole number >= 0 (the epochs trained)")
    rng = meta.get("rng")
    if not isinstance(rng, dict) or not all(isinstance(rng.get(k), dict) for k in ("loop", "model")):
        bad("rng", "the generators' states {loop: {...}, model: {...}}")
    try:
        rng_state_from_json(rng["loop"]), rng_state_from_json(rng["model"])
    except Exception:   # noqa: BLE001 - whatever NumPy says about a state it cannot take
        bad("rng", "the generators' states as written by cnngraph")
    history = meta.get("history", [])
    if not isinstance(history, list) or not all(isinstance(r, dict) and isinstance(r.get("epoch"), int)
                                                for r in history):
        bad("history", "a list of per-epoch records")
    if meta.get("best") is not None and not isinstance(meta.get("best"), dict):
        bad("best", "a mapping")


def restore(run, ck: Checkpoint, rdir: Path) -> None:
    """Put the state saved in ``ck`` (from ``rdir``) into ``run``: weights, optimizer state, both
    generators, history, epoch and best-checkpoint state; copy the previous best checkpoint when
    the run continues in another folder."""
    meta = ck.meta
    run.model.load_params(ck.arrays)
    if ck.optimizer_state is not None:
        run.optimizer.load_state_dict(ck.optimizer_state)
    run.rng = rng_state_from_json(meta["rng"]["loop"])
    run.model.rng = rng_state_from_json(meta["rng"]["model"])
    run.history.extend(meta.get("history", []))
    run.start_epoch = int(meta["epoch"])
    run.last_saved = run.start_epoch
    best, b = run.best, meta.get("best") or {}
    if b.get("metric") == best.metric:
        best.value, best.epoch = b.get("value"), b.get("epoch")
        best.bad_epochs, best.tiebreak = b.get("bad_epochs", 0), b.get("tiebreak")
    else:  # a different selection metric: rebuild the state from the history
        for row in run.history:
            best.record(row)
    ds = meta.get("dataset", {})
    if ds and (ds.get("mean") != run.dataset.mean or ds.get("std") != run.dataset.std):
        print(f"note: the data normalisation differs from the checkpoint's (mean {ds.get('mean')} → "
              f"{run.dataset.mean}); the data changed since the checkpoint was written", file=run.stream)
    # Keep the previous best when resuming into another folder (copied by fit, once the folder is the run's).
    src_best = run_folder(rdir) / "checkpoint" / "best"
    if src_best.resolve() != (run.ckpt_dir / "best").resolve() and (src_best / META_FILE).is_file():
        run.copy_best_from = src_best


def schedule_change_note(schedule, kind: str, saved: dict, st, done: int, steps: int) -> str | None:
    """A note when a resumed run changes the number of epochs and the learning-rate schedule of the
    ``done`` epochs already trained depended on it (cosine, linear): the continuation then differs
    from a straight run of the new length. None when nothing the completed epochs used changed."""
    old = saved.get("epochs")
    if not done or old is None or int(old) == st.epochs:
        return None
    try:
        same = all(schedule.lr(st.lr, e, s, steps, int(old)) == schedule.lr(st.lr, e, s, steps, st.epochs)
                   for e in range(done) for s in range(steps))
    except Exception:   # a schedule that refuses one of the lengths differs by definition
        same = False
    if same:
        return None
    return (f"note: the '{kind}' learning-rate schedule depends on the number of epochs; epochs 1-{done} ran "
            f"on a schedule for {old} epochs, so these {st.epochs} epochs will not equal a straight "
            f"{st.epochs}-epoch run (resuming an interrupted run with its own epoch count does)")
