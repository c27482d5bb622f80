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
resumed run continues bit-for-bit (on CPU) where the checkpoint left off (also when the conv
kernels split a batch over worker threads: they sum gradients in chunk order).
Resuming with a larger ``epochs`` under an epoch-dependent schedule (cosine, linear) prints a note:
the completed epochs ran under the shorter schedule.

The parts live beside this module: ``settings`` (train section, overrides, loss setup),
``run_state`` (checkpoint meta, best checkpoint / early stopping, resume), ``evaluate``
(``evaluate_arrays``, ``load_model``), ``nonfinite`` (what a diverged step reports) and
``progress`` (epoch lines, ``--profile`` timer).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import numbers
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TextIO

import numpy as np

from ..backend import to_device, to_numpy
from ..errors import CheckpointError, CnnGraphError, DataError, SpecError
from .checkpoint import (META_FILE, CheckpointWriter, atomic_write, copy_checkpoint, fsync_dir, holds_run,
                         load_checkpoint, plugin_hashes, read_meta, resolve_checkpoint, run_folder)
from .evaluate import evaluate_arrays, load_model
from .guards import UNCHANGED_STEPS, optimizer_step, schedule_rate, unchanged_weights_error
from .metrics import abs_error_per_sample, correct_per_sample, effective_top_k, json_safe, scored_per_batch
from .nonfinite import nonfinite_cause
from .input_kinds import mask_unit
from .progress import EpochProgress, PhaseTimer
from .runlock import LOCK_FILE, RunLock, holder
from .run_state import (Best, recorded_metrics, checkpoint_meta, open_resume, restore, resume_changes, resume_settings,
                        schedule_change_note, spec_differences)
from .settings import (LossSetup, TrainingError, as_spec, parse_data_arg, prepare_loss, resolve_settings,
                       train_spec_of)

# Public names of the training API, importable from here as before the loop was split up.
__all__ = ["train", "load_model", "History", "TrainingError", "Terminated", "resolve_checkpoint", "parse_data_arg",
           "evaluate_arrays", "prepare_loss", "LossSetup", "spec_differences"]


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP during :func:`train`: handled as Ctrl-C is (the run stops cleanly, keeps its last
    good checkpoint and writes its reports); ``signum`` is the signal, so the process can exit 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


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


# --------------------------------------------------------------------------- the run

class _Run:
    """One training run: everything is checked and built in the constructor; :meth:`fit` trains."""

    def __init__(self, spec, epochs, batch_size, lr, out, resume, data, device, seed, quiet, stream, profile,
                 allow_plugins, init=None, init_partial=False, freeze=None, checkpoint_interval=None):
        from ..model import Model
        from ..registry import get_registry
        from .data import load_dataset
        if isinstance(out, str) and not out.strip():   # Path("") would be the current folder
            raise TrainingError("--out is empty; name the run folder (default runs/<spec name>/)")
        self.spec = spec = as_spec(spec, allow_plugins)
        self.plugin_sha256 = plugin_hashes(spec)   # the plugin code this run trains with, for its checkpoints
        self.ts, has_train = train_spec_of(spec)
        self.quiet = quiet
        self.stream = BestEffortStream(stream if stream is not None else sys.stderr)
        self.timer = PhaseTimer(profile)

        # --- resume: the checkpoint's settings are the defaults the arguments override
        self.resume_ckpt = self.resume_dir = None
        if resume is not None:
            self.resume_dir, self.resume_ckpt = open_resume(resume, spec, quiet, self.stream)
            if out is None:
                out = run_folder(self.resume_dir)
        saved = resume_settings(self.resume_ckpt.meta, spec) if self.resume_ckpt is not None else {}
        self.settings = st = resolve_settings(self.ts, saved, epochs, batch_size, lr, seed, data, device, freeze)
        if self.resume_ckpt is not None and not quiet:
            changed = resume_changes(self.resume_ckpt.meta.get("settings") or {}, st)
            if changed:
                print(f"note: resuming with {', '.join(changed)}; the continuation is not bit-for-bit the original "
                      f"run", file=self.stream)

        # --- the model's input
        float_inputs = [n for n, i in spec.inputs.items() if i.dtype != "int64"]
        if len(spec.inputs) != 1 or len(float_inputs) != 1:
            raise TrainingError(f"`cnngraph train` supports models with one input only; spec '{spec.name}' "
                                f"has inputs {', '.join(spec.inputs)}. Train it from Python with your own loop "
                                f"(README, Python API)")
        self.input_name = float_inputs[0]
        shape = tuple(spec.inputs[self.input_name].shape)
        if len(shape) not in (2, 3, 4):
            raise TrainingError(f"training needs an image input of shape (C, H, W), a sequence input of shape (C, L) "
                                f"or a volume input of shape (C, D, H, W); input '{self.input_name}' has shape {shape}")

        # --- data
        try:
            self.ignore = getattr(self.ts.loss.params, "ignore_index", None)   # void mask pixels
            if self.ignore is not None:
                st.data = st.data.model_copy(update={"ignore_label": self.ignore})
            self.dataset = load_dataset(st.data, shape, seed=st.seed, base_dir=spec.base_dir)
        except DataError as exc:
            if not has_train and data is None:
                raise TrainingError(f"spec '{spec.name}' has no train: section, so it would train on the default "
                                    f"dataset 'digits', which does not fit: {exc}. Add a train: section with a "
                                    f"data: entry, or pass --data NAME:PATH") from None
            raise
        ds = self.dataset
        for note in ds.notes if not quiet else ():
            print(note, file=self.stream)
        if len(ds.train[1]) == 0:
            raise DataError(f"dataset '{st.data.dataset}': the training split is empty")
        if ds.num_classes < 2 and not ds.values:
            raise DataError(f"dataset '{st.data.dataset}' ({ds.source}) has {ds.num_classes} class"
                            f"{'' if ds.num_classes == 1 else 'es'} ({', '.join(ds.classes)}); a classifier needs at "
                            f"least 2")
        self.loss = prepare_loss(spec, self.ts, ds.num_classes, ds.train[1].shape[1:] if ds.dense else None,
                                 value_shape=ds.train[1].shape[1:] if ds.values else None,
                                 label_sources=ds.label_sources)
        if ds.values and self.loss.op.type == "binary_cross_entropy":
            lo, hi = float(ds.train[1].min()), float(ds.train[1].max())
            if lo < 0 or hi > 1:
                raise DataError(f"loss 'binary_cross_entropy' takes target values in [0, 1] (probabilities, multi-label "
                                f"0/1); the dataset's values lie in [{lo:g}, {hi:g}]: use mse")
        if ds.num_classes and self.ts.top_k > max(ds.num_classes, 3):   # 3: the default, kept for 2 classes
            raise SpecError(spec.problem(f"top_k ({self.ts.top_k}) is more than the {ds.num_classes} classes of the "
                                         f"dataset; its top-k accuracy would always be 1", ("train", "top_k")))
        k, steps = self.ts.gradient_accumulation_steps, epoch_steps(len(ds.train[1]), st.batch_size)
        if k > steps and not quiet:
            print(f"note: gradient_accumulation_steps ({k}) is more than the {steps} batches of an epoch: each epoch "
                  f"makes one optimizer step of all its batches", file=self.stream)
        if self.loss.note and not quiet:
            print(self.loss.note, file=self.stream)
        self.top_k = 1 if ds.values else effective_top_k(self.ts.top_k, ds.num_classes)
        self.has_val = len(ds.val[1]) > 0

        self.best = Best.for_run(spec, self.ts, self.has_val, self.top_k, dense=ds.dense, values=ds.values)
        followed = getattr(self.ts.schedule.params, "metric", None) if self.ts.schedule.type == "reduce_on_plateau" else None
        recorded = recorded_metrics(self.has_val, self.top_k, ds.dense, ds.values)
        if followed is not None and followed not in recorded:
            why = " (the dataset has no validation split)" if followed.startswith("val_") and not self.has_val else ""
            raise SpecError(spec.problem(f"reduce_on_plateau follows '{followed}', which this run does not record{why}, "
                                         f"so the rate would never change; expected one of {', '.join(recorded)}",
                                         ("train", "schedule", "metric")))

        # --- model, optimizer, schedule, augmentation, generators
        reg = get_registry()
        self.model = Model(spec, device=device, seed=st.seed)
        self._freeze(st.freeze)
        self.optimizer = reg.optimizers[self.ts.optimizer.type](self.ts.optimizer.params)
        self.update_checked = False   # the first steps that should move a weight check that one does
        self.unchanged_steps = 0
        self.schedule = reg.schedules[self.ts.schedule.type](self.ts.schedule.params)
        from .augment import build_augmentations
        self.augment = build_augmentations(self.ts.augment, background=ds.background, table=reg.augmentations)
        from .mixing import BatchMixer, mixing_problem
        self.mixer = BatchMixer(self.ts.mixup, self.ts.cutmix)
        why = self.mixer and mixing_problem(self.loss, ds)
        if why:
            which = [f"train.{k}" for k in ("mixup", "cutmix") if getattr(self.ts, k) is not None]
            raise TrainingError(f"{' and '.join(which)} blend{'s' * (len(which) == 1)} the class labels of two samples, "
                                f"which does not work here: {why}")
        # regression targets that are maps of the image's size (a clean image, a depth map; per step of a
        # sequence) move with it
        x_dims, y_shape = ds.train[0].shape[2:], ds.train[1].shape
        self.value_maps = (ds.values and len(y_shape) - len(x_dims) in (1, 2)
                           and y_shape[-len(x_dims):] == x_dims)
        if ds.values and not self.value_maps and not quiet and any(getattr(step, "geometric", True)
                                                                   for step in self.augment.steps):
            print("note: augmentation moves the images, not the target values; use geometric augmentation only "
                  "when the values do not depend on where things are in the image", file=self.stream)
        self.rng = np.random.default_rng([st.seed, 1])
        self.history = History()
        self.start_epoch = 0
        self.out = Path(out) if out is not None else Path("runs") / spec.name
        if self.out.name in ("", ".."):   # '.', 'a/..': an earlier run renamed there takes the current folder along
            self.out = self.out.resolve()
        self.ckpt_dir = self.out / "checkpoint"
        self.last_saved: int | None = None   # epoch of the newest complete last/ checkpoint
        self.copy_best_from: Path | None = None   # a resumed run's best checkpoint, copied into this folder
        self.writer = CheckpointWriter()
        self._unwritten: dict = {}      # "best"/"last" -> (epoch, arrays, meta, optimizer state) not written yet
        self._in_flight: dict = {}      # the same, handed to the writer and not yet known to be on disk
        self._written_at: float | None = None   # when the last write was handed to the writer (see _save)
        if checkpoint_interval is not None and not (isinstance(checkpoint_interval, numbers.Real)
                                                    and not isinstance(checkpoint_interval, bool)
                                                    and 0 <= checkpoint_interval < math.inf):
            raise TrainingError(f"checkpoint_interval must be a number of seconds >= 0 (0: every epoch), found "
                                f"{checkpoint_interval!r}")
        self.checkpoint_interval = (self.ts.checkpoint_interval if checkpoint_interval is None
                                    else float(checkpoint_interval))

        self._start_weights(init, init_partial)
        if self.resume_ckpt is not None:
            restore(self, self.resume_ckpt, self.resume_dir)
            note = schedule_change_note(self.schedule, self.ts.schedule.type, saved, st, self.start_epoch,
                                        epoch_steps(len(ds.train[1]), st.batch_size))
            if note and not quiet:
                print(note, file=self.stream)
        if self.start_epoch >= st.epochs and self.resume_ckpt is not None:
            raise TrainingError(f"{self.resume_dir}: the checkpoint already finished epoch {self.start_epoch} of "
                                f"{st.epochs}; pass a larger --epochs to train further")
        if self.best.should_stop and self.resume_ckpt is not None:   # spec edits (patience, metric) count
            b = self.best
            raise TrainingError(f"{self.resume_dir}: the run already finished: it stopped by early stopping at epoch "
                                f"{self.start_epoch} ({b.metric} did not improve on epoch {b.epoch} for "
                                f"{_epochs(b.bad_epochs)}, patience {b.patience}); to train further raise "
                                f"train.early_stopping.patience or remove train.early_stopping in the spec")
        warm = getattr(self.schedule.params, "warmup_epochs", 0) or 0
        if warm and warm >= st.epochs:
            if warm >= self.ts.epochs:   # the warmup outlasts the spec's own (or the default) number of epochs
                raise SpecError(spec.problem(f"warmup_epochs ({warm:g}) must be less than the run's {_epochs(st.epochs)} "
                                             f"(--epochs or train.epochs, {self.ts.epochs} in the spec"
                                             f"{'' if 'epochs' in self.ts.raw else ' by default'})",
                                             ("train", "schedule", "warmup_epochs")))
            # --epochs / epochs= made the run shorter than the spec's warmup: keep warmup's share of the
            # run, which is then strictly shorter than the run (warm < ts.epochs)
            fitted = warm * st.epochs / self.ts.epochs
            self.schedule = reg.schedules[self.ts.schedule.type](
                self.ts.schedule.params.model_copy(update={"warmup_epochs": fitted}))
            if not quiet:
                print(f"note: a run of {_epochs(st.epochs)} does not outlast the spec's warmup of {_epochs(warm)} "
                      f"(of {self.ts.epochs}); warmup shortened to {_epochs(fitted)}, the same share of the run",
                      file=self.stream)

    def _save(self, epoch: int, improved: bool) -> None:
        """Snapshot the state now. The files are written in the background while the next epoch runs, at most one
        write per train.checkpoint_interval seconds: the snapshots of the epochs in between wait in memory (the
        newest last/ and best/ only) for the next write, the run's end or its stop. A checkpoint save takes about
        4 ms (3 of them CPU; an improved epoch saves two); saving every 50-ms digits epoch made that run 1.25x
        slower."""
        t = time.perf_counter()
        snapshot = (epoch, self.model.params.numpy(),   # copies: the next steps update the weights in place
                    checkpoint_meta(self, epoch), self.optimizer.state_dict())
        if improved:
            self._unwritten["best"] = snapshot
        self._unwritten["last"] = snapshot
        if self._written_at is None or t - self._written_at >= self.checkpoint_interval:
            self._write_unwritten()
        self.timer.add("checkpoints", time.perf_counter() - t)

    def _write_unwritten(self) -> None:
        """Hand the snapshots not written yet to the background writer, once its previous save is done."""
        self._wait_for_writer()
        self._submit_unwritten()

    def _submit_unwritten(self) -> None:
        if not self._unwritten:
            return
        # best first: an interruption between the two leaves last/ behind best/, never ahead
        saves = [(self.ckpt_dir / which, *self._unwritten[which][1:]) for which in ("best", "last")
                 if which in self._unwritten]
        self.writer.submit(saves, tag=self._unwritten["last"][0])
        self._in_flight, self._unwritten = self._unwritten, {}
        self._written_at = time.perf_counter()

    def _wait_for_writer(self) -> None:
        """Wait for the background save. One that failed (disk full ...) is tried again at once, with what waits
        since: its snapshots go back among the unwritten (newer ones of the same checkpoint win), so a best/ that
        failed is written before the last/ that names it. A second failure raises, its snapshots kept for the
        stop's try (an interrupted save is not tried again)."""
        failed = None
        for _ in range(2):
            try:
                self.writer.wait()
            except Exception as exc:
                self._unwritten = {**self._in_flight, **self._unwritten}
                self._in_flight = {}
                if failed is not None:
                    raise
                failed = exc
                self._submit_unwritten()
                continue
            self._in_flight = {}
            if failed is not None and not self.quiet:
                print(f"warning: {failed}; written on a second try", file=self.stream)
            return

    def _finish_saves(self) -> None:
        """Write what waits and wait for it; a save that failed twice raises here."""
        t = time.perf_counter()
        try:
            self._write_unwritten()
            self._wait_for_writer()
        finally:
            if self.writer.done is not None:   # else keep what was on disk before (a resumed run's epoch)
                self.last_saved = self.writer.done
            self.timer.add("checkpoints", time.perf_counter() - t)

    def _settle_saves(self) -> None:
        """Write what waits when stopping anyway, before the reports; a save that fails again only means the
        checkpoints did not move on (the stop's message names what is on disk)."""
        try:
            self._finish_saves()
        except Exception as exc:  # noqa: BLE001 - already stopping
            if self.stopped != "failed" and not self.quiet:   # (a failed save's stop says it already)
                print(f"warning: {exc}", file=self.stream)
            self._unwritten = {}

    def _last_good(self) -> str:
        self._settle_saves()
        if self.last_saved is None:
            return "no checkpoint was saved yet"
        return f"last good checkpoint: {self._last_good_dir()} (epoch {self.last_saved})"

    def _last_good_dir(self) -> Path:
        """Where the newest complete epoch is: this run's last/, or before its first save the checkpoint it resumed
        from (in another folder when it was resumed into a new --out)."""
        if self.resume_dir is not None and self.writer.done is None:   # no save of this run has completed
            return Path(self.resume_dir)
        return self.ckpt_dir / "last"

    def _keep_previous_run(self) -> None:
        """A new run never overwrites an earlier one: an --out folder that already holds a run (other than
        the one being resumed) is renamed to OUT.1 (or .2, ...) first, and the user is told. Any other folder
        that is not empty is refused: its files are the user's, and a run would replace some of them."""
        out = self.out
        self._refuse_if_busy(holder(out))
        if self.resume_dir is not None and run_folder(self.resume_dir).resolve() == out.resolve():
            return
        if not holds_run(out):
            if out.exists() and not out.is_dir():
                raise TrainingError(f"--out {out} is a file; name a folder for the run")
            others = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) if out.is_dir() else []
            if others:
                from .init_weights import listed
                raise TrainingError(f"--out {out} is not empty and holds no cnngraph run ({listed(others)}); a run "
                                    f"writes checkpoint/, metrics.json, history.csv and curves.png there, replacing "
                                    f"files of those names. Choose a new or empty folder")
            return
        k = 1
        while os.path.lexists(out.with_name(f"{out.name}.{k}")):   # a dangling link holds its name too
            k += 1
        kept = out.with_name(f"{out.name}.{k}")
        try:
            out.rename(kept)
        except OSError as exc:
            raise TrainingError(f"{out} holds an earlier run, which could not be kept as {kept} "
                                f"({exc.strerror or exc}); nothing was changed. Move that run away or choose "
                                f"another --out") from None
        print(f"note: {out} held an earlier run; it is kept as {kept}", file=self.stream)

    def _freeze(self, patterns) -> None:
        """Fix the parameters of the layers ``patterns`` match (``train.freeze`` / ``--freeze``) and say which."""
        from .freeze import frozen_layers
        layers = frozen_layers(patterns, self.model)
        if layers and not self.quiet:
            model = self.model
            fixed = sum(model.params[n].size for lid in layers for n in model._names[lid].values()
                        if n not in model.buffer_names)
            shown = ", ".join(layers[:8]) + (f" and {len(layers) - 8} more" if len(layers) > 8 else "")
            print(f"frozen: {shown} ({fixed:,} parameters fixed, {model.param_count():,} trained; frozen layers "
                  f"run in inference mode)", file=self.stream)

    # -- one epoch -------------------------------------------------------------------------
    def _epoch(self, epoch: int) -> dict:
        from ..op import Context
        st, model, loss, timer = self.settings, self.model, self.loss, self.timer
        x, y = self.dataset.train
        steps = epoch_steps(len(x), st.batch_size)
        values = self.dataset.values
        progress = EpochProgress(epoch + 1, st.epochs, steps, stream=self.stream, quiet=self.quiet,
                                 metric="mae" if values else "acc", unit={3: "seq", 5: "vol"}.get(x.ndim, "img"))
        self._progress = progress
        weights = {n: model.params._data[n] for n in model.trainable_names}
        xp, dtype = model.xp, model.dtype
        hook = timer.hook(model)
        t_epoch = time.perf_counter()
        rate = st.lr
        order = self.rng.permutation(len(x))
        observe = getattr(self.schedule, "observe", None)
        if observe is not None:   # a schedule that follows a metric (reduce_on_plateau) reads the epochs so far
            observe(list(self.history))
        prof = timer.enabled
        accumulated = GradientAccumulator(self.ts.gradient_accumulation_steps, mean=loss.reduction == "mean")
        for step in range(steps):
            t0 = time.perf_counter()
            idx = order[step * st.batch_size:(step + 1) * st.batch_size if step < steps - 1 else None]
            xb, yb = x[idx], y[idx]
            if len(self.augment):
                if self.dataset.dense:    # masks move with their images
                    xb, yb = self.augment(xb, self.rng, yb, ignore=self.ignore)
                elif self.value_maps:     # so do value maps of the image's size
                    xb, yb = self.augment(xb, self.rng, maps=yb)
                else:
                    xb = self.augment(xb, self.rng)
            mixed = self.mixer(xb, self.rng) if self.mixer else None
            if mixed is not None:
                xb = mixed.x
            rate = schedule_rate(self.schedule, st.lr, epoch, step, steps, st.epochs)
            if prof:
                t1 = time.perf_counter()
                timer.add("data + augment", t1 - t0)
                timer.mark(t1)
            scores = model.forward({self.input_name: xb}, training=True, grad=True, outputs=[loss.output],
                                   on_output=hook, fused=True)[loss.output]
            if prof:
                t2 = time.perf_counter()
                timer.add("forward", t2 - t1)
            ctx = Context(training=True, grad=True)
            targets = loss.targets(yb, xp, dtype) if mixed is None else to_device(mixed.targets(loss, yb, dtype), xp)
            value = loss.value(ctx, scores, targets)
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
            grads = accumulated.add(grads, len(yb), last=step == steps - 1)
            if grads is not None:   # an optimizer step: every batch, or every gradient_accumulation_steps
                self._optimizer_step(weights, grads, xb, epoch, step, value, rate)
            s_np = to_numpy(scores)
            scored = yb if mixed is None else mixed.major_labels(yb)
            score = abs_error_per_sample(loss.predictions(s_np), yb) if values else correct_per_sample(s_np, scored, self.ignore)
            # a blend's loss is a mean over samples (class weights then do not count targets)
            total, weight = loss.batch_loss(value, yb) if mixed is None else (loss.per_sample_sum(value, len(yb)), float(len(yb)))
            progress.update(len(yb), total, score, loss_weight=weight, scored=scored_per_batch(yb, self.ignore))
            if prof:
                timer.add("optimizer + metrics", time.perf_counter() - t4)
        if self.unchanged_steps and not self.update_checked and epoch + 1 == st.epochs:   # a short run trained nothing
            raise unchanged_weights_error(self.optimizer, self.unchanged_steps, rate)
        train_seconds = time.perf_counter() - t_epoch
        row = {"epoch": epoch + 1, "lr": rate, "train_loss": progress.loss,
               ("train_mae" if values else "train_accuracy"): progress.score}
        if self.has_val:
            t = time.perf_counter()
            acc = evaluate_arrays(model, self.input_name, *self.dataset.val, loss, eval_batch(self.dataset.val, st),
                                  top_k=self.top_k, num_classes=self._confusion_classes() if self.dataset.dense else None,
                                  ignore=self.ignore)
            row.update(acc.result("val_"))
            timer.add("validation", time.perf_counter() - t)
        else:
            row.update({"val_loss": None, ("val_mae" if values else "val_accuracy"): None})
        row["seconds"] = time.perf_counter() - t_epoch
        row["train_seconds"] = train_seconds
        row["images_per_second"] = progress.images / max(train_seconds, 1e-9)
        return json_safe(row)

    def _optimizer_step(self, weights, grads, xb, epoch: int, step: int, value: float, rate: float) -> None:
        """Clip (train.grad_clip), update the weights, and stop a run whose updates change nothing."""
        from .optim import clip_grad_norm
        if self.ts.grad_clip is not None:
            norm = clip_grad_norm(grads, self.ts.grad_clip)
            if not math.isfinite(norm):
                self._diverged(xb, epoch, step, value, rate, grad_norm=norm)
        moved = optimizer_step(self.optimizer, weights, grads, rate, check_update=not self.update_checked)
        self.update_checked = self.update_checked or bool(moved)
        if moved is False:
            self.unchanged_steps += 1
            if self.unchanged_steps >= UNCHANGED_STEPS:
                raise unchanged_weights_error(self.optimizer, self.unchanged_steps, rate)

    def _diverged(self, xb, epoch: int, step: int, value: float, rate: float, grad_norm: float | None = None):
        cause = nonfinite_cause(self.model, self.input_name, xb, self.loss, grad_norm)
        what = f"the loss is {value}" if grad_norm is None or not math.isfinite(value) else \
            f"the gradient norm is {grad_norm}"
        self._stop("diverged")
        raise TrainingError(f"training diverged at epoch {epoch + 1}, step {step + 1} (lr {rate:.4g}): {what}; "
                            f"{cause}. {self._last_good().capitalize()}. Lower the learning rate "
                            f"(train.optimizer.lr / --lr, now {self.settings.lr:g})"
                            + ("" if self.ts.grad_clip else " or set train.grad_clip") + ".")

    # -- the whole run ---------------------------------------------------------------------
    def _start_weights(self, init, partial: bool) -> None:
        """Load the ``--init`` / ``train.init`` weights into the new model; a resume's checkpoint wins over them.
        Without any, warn about constant layers whose values only such a file holds (they would start at 0)."""
        from .init_weights import constants_without_values, init_path, listed, load_init
        path = init_path(init, self.spec)
        if self.resume_ckpt is not None:
            if init is not None and not self.quiet:
                print(f"note: --init {init} is ignored: a resumed run continues from its checkpoint's weights",
                      file=self.stream)
            return
        if path is not None:
            note = load_init(self.model, path, partial)
            if note and not self.quiet:
                print(note, file=self.stream)
            return
        consts = constants_without_values(self.spec)
        if consts and not self.quiet:
            print(f"warning: {len(consts)} constant layer{'s' * (len(consts) != 1)} ({listed(consts)}) set no fill and no "
                  f"weights were given, so they start at 0; for an imported model pass its weights: "
                  f"cnngraph train {self.spec.file or 'SPEC'} --init WEIGHTS.npz", file=self.stream)

    def fit(self) -> History:
        self.stopped = "completed"
        self._keep_previous_run()
        self.out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.out)
        self._refuse_if_busy(lock.acquire())
        if lock.unlocked_why and not self.quiet:
            print(f"note: {lock.unlocked_why}; this run is not protected from a second run into the same folder",
                  file=self.stream)
        try:
            if self.copy_best_from is not None:   # resumed into another folder: it starts with the previous best
                copy_checkpoint(self.copy_best_from, self.ckpt_dir / "best")
            return self._fit()
        finally:
            lock.release()

    def _refuse_if_busy(self, busy: str | None) -> None:
        if busy is not None:
            raise TrainingError(f"{self.out} is in use by another training run ({busy}); wait for it to finish or "
                                f"choose another --out")

    def _fit(self) -> History:
        st = self.settings
        if not self.quiet:
            ds = self.dataset
            what = "resuming from epoch " + str(self.start_epoch) + ", " if self.start_epoch else ""
            print(f"training {self.spec.name}: {what}{len(ds.train[1])} train / {len(ds.val[1])} val / "
                  f"{len(ds.test[1])} test {ds.samples} ({ds.source}){_class_names(ds)}, {_epochs(st.epochs)}, batch {st.batch_size}, "
                  f"{self.ts.optimizer.type} lr {st.lr:g}, out {self.out}", file=self.stream)
        try:
            for epoch in range(self.start_epoch, st.epochs):
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"), warnings.catch_warnings():
                    # divergence is reported below; errstate is per thread, so the kernels' worker
                    # threads still warn: silence NumPy's floating-point warnings for the epoch
                    warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered",
                                            RuntimeWarning)
                    row = self._epoch(epoch)
                self.history.append(row)
                improved = self.best.record(row)
                self._save(row["epoch"], improved)
                self._progress.finish(row)
                if self.best.should_stop:
                    self.stopped = "early_stopping"
                    if not self.quiet:
                        b = self.best
                        tie = ""
                        if b.epoch != row["epoch"] - b.bad_epochs:   # a later epoch tied and won on its loss
                            loss_name = "val_loss" if b.metric.startswith("val_") else "train_loss"
                            tie = f", an equal {b.metric} with a lower {loss_name}"
                        print(f"early stopping: {b.metric} did not improve on {b.value:.4f} for {_epochs(b.bad_epochs)} "
                              f"(best checkpoint: epoch {b.epoch}{tie})", file=self.stream)
                    break
            self._finish_saves()
            test = self._test()       # inside: Ctrl-C during the final test evaluation is reported too
        except KeyboardInterrupt as exc:
            self._stop("interrupted")
            why = f"stopped by {signal.Signals(exc.signum).name}" if isinstance(exc, Terminated) else "interrupted"
            print(f"{why}: training stopped cleanly; {self._last_good()}. {self._how_to_go_on()}",
                  file=self.stream)
            raise
        except CheckpointError as exc:   # a full disk, a folder made read-only ...
            self._stop("failed")
            raise TrainingError(f"{exc}. Training stopped; {self._last_good()}. {self._how_to_go_on()}") from None
        except BaseException:   # a plugin's failure, SystemExit ...: the epochs trained before it still reach
            self._settle_saves()  # checkpoint/
            raise
        try:
            return self._write_outputs(test)
        except KeyboardInterrupt:
            print(f"interrupted while writing metrics.json, history.csv and curves.png; the checkpoints in "
                  f"{self.ckpt_dir} are complete", file=self.stream)
            raise

    def _stop(self, why: str) -> None:
        """Training stops early: the epochs saved so far are still written down; where that fails too (a full
        disk), a warning says so before the stop's own message."""
        if getattr(self, "_progress", None) is not None:
            self._progress.clear()
        self.stopped = why
        self._settle_saves()
        try:
            self._write_outputs(None)
        except CnnGraphError as exc:
            print(f"warning: {exc}", file=self.stream)

    def _how_to_go_on(self) -> str:
        if self.last_saved is None:
            return "Start it again (there is nothing to resume yet)"
        where = self._last_good_dir()
        resume = self.out if where == self.ckpt_dir / "last" else f"{where} --out {self.out}"
        return f"Resume with `cnngraph train {self.spec.file or 'SPEC'} --resume {resume}`"

    def _test(self) -> dict | None:
        ds = self.dataset
        if len(ds.test[1]) == 0:
            return None
        which = "best" if (self.ckpt_dir / "best" / META_FILE).is_file() else "last"
        ck = load_checkpoint(self.ckpt_dir / which)
        self.model.load_params(ck.arrays)
        acc = evaluate_arrays(self.model, self.input_name, *ds.test, self.loss, eval_batch(ds.test, self.settings),
                              top_k=self.top_k, num_classes=None if ds.values else self._confusion_classes(),
                              ignore=self.ignore)
        where = {"checkpoint": which, "epoch": int(ck.meta.get("epoch", 0))}
        if ds.values:
            return json_safe({**acc.result("test_"), **where})
        cm = acc.confusion()
        return json_safe({**acc.result("test_"), "per_class": acc.per_class(), "confusion": cm.tolist(),
                       "classes": list(ds.classes), **where})

    def _write_reports(self, summary: dict) -> None:
        """metrics.json, history.csv and curves.png in the run folder, each replaced atomically as checkpoints
        are: a full disk leaves the earlier file whole, and the error names the file."""
        rows = summary["history"]
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        table = io.StringIO(newline="")
        w = csv.DictWriter(table, fieldnames=keys or ["epoch"])
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r.get(k) for k in keys})
        texts = {"metrics.json": json.dumps(summary, indent=2) + "\n", "history.csv": table.getvalue()}
        writes = {name: (lambda f, t=text: f.write(t.encode("utf-8"))) for name, text in texts.items()}
        if rows:
            from ..viz.curves import curves_image
            image = curves_image(rows, title=self.spec.name)
            writes["curves.png"] = lambda f: image.save(f, format="PNG", compress_level=1)   # 4x faster than 6
        for name, write in writes.items():
            try:
                atomic_write(self.out, name.partition(".")[0], name, write)
            except OSError as exc:
                raise TrainingError(f"{self.out / name}: could not be written ({exc.strerror or exc}); the {name} "
                                    f"there before, if any, is unchanged; the checkpoints in {self.ckpt_dir} are "
                                    f"complete") from None
        fsync_dir(self.out)

    def _confusion_classes(self) -> int:
        """Rows of the confusion matrix: the classes (two for a one-unit binary classifier)."""
        return max(self.dataset.num_classes, 2) if self.loss.units == 1 else self.dataset.num_classes

    def _write_outputs(self, test: dict | None) -> History:
        hist = self.history
        # The reports describe what the checkpoints hold: a run stopped by a failed (background) save trained
        # epochs, and maybe found a best one, that no checkpoint has.
        best_epoch = (read_meta(self.ckpt_dir / "best") or {}).get("epoch")
        saved = max(self.last_saved or 0, best_epoch or 0)
        rows = [r for r in hist if r["epoch"] <= saved]
        hist.out, hist.test, hist.best_epoch, hist.stopped = self.out, test, best_epoch, self.stopped
        train_s = sum(r.get("train_seconds") or 0 for r in rows)
        images = sum((r.get("images_per_second") or 0) * (r.get("train_seconds") or 0) for r in rows)
        summary = {"spec": self.spec.name, "epochs_run": len(rows), "best_epoch": best_epoch,
                   "best_metric": self.best.metric, "stopped": self.stopped,
                   "train_seconds": sum(r.get("seconds") or 0 for r in rows),
                   "images_per_second": images / train_s if train_s else None,
                   "test_accuracy": None, "test_loss": None}
        if test:
            summary.update(test)
        summary["history"] = rows
        hist.summary = json_safe(summary)
        self._write_reports(hist.summary)
        if self.timer.enabled and not self.quiet:
            print(self.timer.report(), file=self.stream)
        if not self.quiet and test:
            if self.dataset.values:
                score = f"mae {test['test_mae']:.4f} rmse {test['test_rmse']:.4f}"
            else:
                iou = f" mean IoU {test['test_mean_iou']:.4f}" if test.get("test_mean_iou") is not None else ""
                per = mask_unit(self.dataset.train[1].ndim - 1) + " " if self.dataset.dense else ""
                score = f"{per}accuracy {test['test_accuracy']:.4f}{iou}"
            print(f"test ({test['checkpoint']} checkpoint, epoch {test['epoch']}): loss {test['test_loss']:.4f} "
                  f"{score}; wrote {self.out}", file=self.stream)
        return hist


def train(spec, epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          out=None, resume=None, data=None, device: str = "cpu", seed: int | None = None, quiet: bool = False,
          *, init=None, init_partial: bool = False, freeze=None, profile: bool = False,
          stream: TextIO | None = None, allow_plugins: bool = False,
          checkpoint_interval: float | None = None) -> History:
    """Train the network of ``spec`` as its ``train:`` section says (defaults when it has none).

    Parameters
    ----------
    spec : Spec, path or dict
    epochs, batch_size, lr, seed : override ``train.epochs`` / ``batch_size`` / ``optimizer.lr`` /
        ``seed`` (on resume the checkpoint's values are the defaults). ``epochs`` is the total
        number of epochs, counting those done before a resume.
    out : run folder (default ``runs/<spec name>``; on resume, the resumed run's folder).
    resume : a run folder or checkpoint to continue from (its ``last/`` checkpoint by default).
    init : weights to start from instead of the random initialisation: an ``.npz`` (as ``import-onnx``
        writes) or a run/checkpoint folder (its ``best/``); overrides the spec's ``train.init``. Every
        parameter and buffer must be there with its shape; ``init_partial`` lets some be missing and the
        file hold others (a new head). Ignored on resume: the checkpoint's weights win.
    freeze : layer ids or globs (``"conv*"``) whose parameters stay fixed; overrides ``train.freeze`` (``[]``
        trains every layer). Frozen layers run in inference mode (batch norm keeps its running statistics).
    data : dataset override: ``"digits"``, ``"mnist:/data/mnist"``, ``"npz:file.npz"``, a dict or DataConfig.
    device : "cpu" or "cuda".
    quiet : print nothing (progress and summary go to ``stream``, default stderr).
    profile : print where the time went (phases and forward time per layer) at the end.
    checkpoint_interval : seconds between checkpoint writes (0: every epoch); overrides
        ``train.checkpoint_interval`` (default 2). The first and final epochs are always written, and a stop
        writes the newest one.

    Returns
    -------
    History
        A list of per-epoch dicts with ``.test`` (final test metrics of the best checkpoint),
        ``.summary`` (metrics.json), ``.out``, ``.best_epoch`` and ``.stopped``; see :class:`History`.

    Raises
    ------
    TrainingError
        The loss became NaN/inf (the message names the first non-finite layer) or the settings
        cannot work. KeyboardInterrupt is re-raised after the outputs of the saved epochs are
        written; ``checkpoint/last`` then holds the last completed epoch. SIGTERM and SIGHUP are handled
        the same way (when ``train`` runs in the main thread) and raise :class:`Terminated`, a
        KeyboardInterrupt whose ``signum`` says which.

    Notes
    -----
    While it runs, ``train`` holds the process's BLAS libraries (NumPy's OpenBLAS/MKL) at
    ``CNNGRAPH_BLAS_THREADS`` threads, default 1; ``0`` leaves them alone. The previous thread
    counts are restored when it returns or raises (a threadpoolctl context; without threadpoolctl
    nothing is changed). The limit is process-wide, so BLAS calls made by other threads during
    training are limited too.
    """
    with _blas_threads(), _termination_as_interrupt():
        return _Run(spec, epochs, batch_size, lr, out, resume, data, device, seed, quiet, stream, profile,
                    allow_plugins, init, init_partial, freeze, checkpoint_interval).fit()


class BestEffortStream:
    """The run's message stream: once a write fails (a closed pipe, as in `cnngraph train ... 2>&1 | head`, or a
    full disk), later messages are dropped and training goes on to save its run, instead of the first failed
    message ending the run with nothing saved."""

    def __init__(self, stream):
        self._stream, self.failed = stream, False

    def write(self, text: str) -> int:
        if not self.failed:
            try:
                self._stream.write(text)
            except (OSError, ValueError):   # ValueError: a closed file
                self.failed = True
        return len(text)

    def flush(self) -> None:
        if not self.failed:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self.failed = True

    def __getattr__(self, name):   # isatty, fileno, encoding: the real stream's
        return getattr(self._stream, name)


class GradientAccumulator:
    """``train.gradient_accumulation_steps``: every ``steps`` batches make one optimizer step with the gradient one
    batch of all their samples would give (a batch ``steps`` times larger in the memory of one; batch norm still
    sees single batches). For a loss that averages over samples, each batch's gradient is weighted by its samples
    (a short last batch counts less); for one that sums (``reduction: sum``), the gradients add up. An epoch's
    leftover batches make a step of their own, so epochs (and resumes) stay independent."""

    def __init__(self, steps: int, mean: bool = True):
        self.steps, self.mean = steps, mean
        self.sum, self.count, self.samples = None, 0, 0

    def add(self, grads: dict, samples: int, last: bool) -> dict | None:
        """The gradients to step with now, or None while accumulating; ``samples``: the batch's size."""
        if self.steps == 1:
            return grads
        weight = samples if self.mean else 1
        if self.sum is None:
            self.sum = {k: v * weight for k, v in grads.items()}
        else:
            for k, v in grads.items():
                self.sum[k] += v * weight
        self.count, self.samples = self.count + 1, self.samples + samples
        if self.count < self.steps and not last:
            return None
        total = {k: v / self.samples for k, v in self.sum.items()} if self.mean else self.sum
        self.sum, self.count, self.samples = None, 0, 0
        return total


def eval_batch(split, settings) -> int:
    """The batch size of a validation or test pass: the training batch size, at least 256 (inference keeps no
    tape), or the whole split when that is at most a quarter more (digits' 270 validation images: one pass
    instead of 256 + 14)."""
    size = max(settings.batch_size, 256)
    n = len(split[1])
    return n if size < n <= size * 5 // 4 else size


def epoch_steps(n: int, batch_size: int) -> int:
    """Training steps per epoch: the last partial batch is a step of its own, except that a single
    leftover sample joins the batch before it (batch norm has no statistics over one value)."""
    steps = math.ceil(n / batch_size)
    return steps - 1 if steps > 1 and n % batch_size == 1 else steps


def _class_names(ds, shown: int = 5) -> str:
    """', 2 classes: cat, dog' for the header line (the first few), so a wrong reading of the data shows at once."""
    if ds.values or not ds.classes:
        return ""
    names = ", ".join(ds.classes[:shown]) + (", ..." if len(ds.classes) > shown else "")
    return f", {len(ds.classes)} classes: {names}"


def _epochs(n) -> str:
    return f"{n:g} epoch" + ("" if n == 1 else "s")


@contextlib.contextmanager
def _termination_as_interrupt():
    """SIGTERM (a scheduler or `kill`) and SIGHUP (a closed terminal) raise :class:`Terminated`, which the loop
    handles as Ctrl-C, instead of ending the process with nothing written. Python lets only the main thread set
    signal handlers, so elsewhere nothing changes; the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated(signum)
    signums = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, stop) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)   # None: a handler set outside Python


def _blas_threads():
    """A context holding BLAS at ``CNNGRAPH_BLAS_THREADS`` threads (default 1) and restoring the
    previous counts on exit; a no-op context for ``0`` (or less) and without threadpoolctl.

    The conv kernels already parallelise over batch chunks with BLAS single-threaded; the other
    matrix products of a CNN (dense layers, small GEMMs) are too small to gain from BLAS threads,
    and on a busy machine OpenBLAS's spinning threads make them ~10x slower (a 64x512 @ 512x64
    product: 2 ms with 2 threads on a loaded 2-core box, 0.17 ms with 1). Whole runs on 2 cores
    (``benchmarks/digits.py --blas-threads 1,2``, medians of 3, 1 thread vs 2): at load 1.1,
    digits_cnn 10 epochs 1.93 s vs 1.91 s, cifarnet 1 epoch of 1,000 32x32 images 2.26 s vs 2.68 s;
    at load 3-4, 2.7 s vs 9.9 s and 8.0 s vs 8.3 s. One thread is never slower, so it is the default.
    ``threadpool_limits`` applies the limit when it is created, so create it only in a ``with`` statement.
    """
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
