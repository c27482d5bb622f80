"""train, evaluate, predict."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, CnnGraphError, DataError
from ..train.input_kinds import mask_unit
from .common import add_spec_options, load_spec_args, seed_value, whole_number

__all__ = ["register"]


_positive_int = whole_number(1)


def _positive_float(text: str) -> float:
    import argparse
    import math
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, found {text}")
    return v


def register(sub) -> None:
    p = sub.add_parser("train", help="train the network as its train: section says (flags override it)")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--epochs", type=_positive_int, help="total number of epochs (overrides train.epochs)")
    p.add_argument("--batch-size", type=_positive_int, help="mini-batch size (overrides train.batch_size)")
    p.add_argument("--lr", type=_positive_float, help="base learning rate (overrides train.optimizer.lr)")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<spec name>/)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR (a run folder or checkpoint) bit-for-bit")
    p.add_argument("--init", metavar="WEIGHTS",
                   help="start from these weights (an .npz as import-onnx writes, or a run/checkpoint folder) "
                        "instead of random ones; overrides train.init; ignored with --resume")
    p.add_argument("--init-partial", action="store_true",
                   help="with --init: parameters missing from the file keep their initial values and arrays the "
                        "network lacks are ignored (a new head for transfer learning)")
    p.add_argument("--freeze", metavar="LAYERS",
                   help="comma-separated layer ids or globs (conv*,layer1.*) whose parameters stay fixed, e.g. a "
                        "pretrained backbone (overrides train.freeze; '' trains every layer)")
    p.add_argument("--data", metavar="NAME[:PATH]",
                   help="dataset override: a name (digits) or name:path (mnist:/data/mnist, npz:file.npz)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--seed", type=seed_value, help="seed of weights, shuffling, augmentation and dropout (overrides train.seed)")
    p.add_argument("--checkpoint-interval", type=_positive_float, metavar="SECONDS",
                   help="seconds between checkpoint writes, 0 for every epoch (overrides train.checkpoint_interval)")
    p.add_argument("--profile", action="store_true", help="print where the training time went")
    p.add_argument("--quiet", action="store_true", help="print only the final result")
    add_spec_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test metrics, per-class precision/recall and the confusion matrix of a checkpoint")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="run folder, its checkpoint/ folder, or a best/ or last/ checkpoint")
    p.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint of a run folder (default best)")
    p.add_argument("--data", metavar="NAME[:PATH]", help="dataset override (default: the one it was trained on)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="split to evaluate (default test)")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--out", metavar="DIR", help="folder for confusion.png (default: the run folder of the checkpoint)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--format", choices=("text", "json"), default="text")
    add_spec_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images (PNG, JPEG, BMP, GIF, TIFF, WebP) or .npy batches with a trained checkpoint")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (.png, .jpg, .bmp, .gif, .tif, .webp, ...), .npy arrays, or folders of them "
                        "(their files in name order)")
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="run folder, its checkpoint/ folder, or a best/ or last/ checkpoint")
    p.add_argument("--which", choices=("best", "last"), default="best")
    p.add_argument("--invert", action="store_true",
                   help="images are dark ink on a light background (the digits/MNIST data are light on dark)")
    p.add_argument("--top", type=_positive_int, default=3,
                   help="probabilities (for a segmentation model: classes by area) to show per input (default 3)")
    p.add_argument("--masks-out", metavar="DIR",
                   help="segmentation models: write the predicted class masks there, masks.npy (N, H, W) and one "
                        "colour PNG per input")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--format", choices=("text", "json", "csv"), default="text",
                   help="text (default), json, or csv (one row per input, a column per class or value)")
    add_spec_options(p)
    p.set_defaults(func=cmd_predict)


# --------------------------------------------------------------------------- train

def cmd_train(args) -> int:
    from ..train.loop import train
    spec = load_spec_args(args, args.spec)
    try:
        hist = train(spec, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, out=args.out,
                     resume=args.resume, data=args.data, device=args.device, seed=args.seed, quiet=args.quiet,
                     profile=args.profile, allow_plugins=args.allow_plugins, init=args.init,
                     init_partial=args.init_partial, checkpoint_interval=args.checkpoint_interval,
                     freeze=None if args.freeze is None else [p.strip() for p in args.freeze.split(",") if p.strip()])
    except KeyboardInterrupt as exc:   # the loop said what was kept and how to resume
        return 128 + getattr(exc, "signum", 2)   # 130 for Ctrl-C (SIGINT), 143 for SIGTERM, 129 for SIGHUP
    s = hist.summary
    parts = [f"{spec.name}: {s['epochs_run']} epoch{'' if s['epochs_run'] == 1 else 's'} "
             f"({s['stopped'].replace('_', ' ')})"]
    if s.get("test_mae") is not None:
        parts.append(f"test loss {s['test_loss']:.4f}, mae {s['test_mae']:.4f}, rmse {s['test_rmse']:.4f} "
                     f"({s['checkpoint']} checkpoint, epoch {s['epoch']})")
    elif s.get("test_accuracy") is not None:
        seg = s.get("test_mean_iou") is not None
        per = mask_unit(len(next(iter(spec.inputs.values())).shape) - 1) + " " if seg else ""
        parts.append(f"test {per}accuracy {s['test_accuracy']:.4f}, "
                     + (f"mean IoU {s['test_mean_iou']:.4f}, " if seg else "")
                     + f"test loss {s['test_loss']:.4f} ({s['checkpoint']} checkpoint, epoch {s['epoch']})")
    elif s["stopped"] != "diverged":
        parts.append("no test split (set train.data.test_fraction to carve one from the training data)")
    from ..train.input_kinds import INPUT_KINDS
    samples = INPUT_KINDS.get(len(next(iter(spec.inputs.values())).shape), ("", "images"))[1]
    parts.append(f"{s['train_seconds']:.1f}s, {s['images_per_second'] or 0:,.0f} {samples}/s")
    print("; ".join(parts))
    print(f"wrote {hist.out}/ (checkpoint/, metrics.json, history.csv, curves.png)")
    return 0


# --------------------------------------------------------------------------- shared

def _load_checkpointed_model(args, spec):
    """Model of ``spec`` with the checkpoint's weights; returns (model, checkpoint dir, meta)."""
    from ..model import Model
    from ..train.checkpoint import load_checkpoint, resolve_checkpoint, trained_from
    from ..train.run_state import check_meta, check_same_network, input_channels
    ckdir = resolve_checkpoint(args.checkpoint, prefer=args.which)
    ck = load_checkpoint(ckdir)
    check_same_network(ck.meta.get("spec"), spec, ckdir, args.spec)
    check_meta(ck.meta, ckdir, input_channels(spec))
    model = Model(spec, device=args.device)
    try:
        model.load_params(ck.arrays)
    except CnnGraphError as exc:
        raise CheckpointError(f"{ckdir}: {exc}{trained_from(ck.meta)}") from None
    return model, ckdir, ck.meta


def _input_of(spec) -> tuple[str, tuple]:
    if len(spec.inputs) != 1:
        raise CnnGraphError(f"this command feeds one input; spec '{spec.name}' has inputs "
                            f"{', '.join(spec.inputs)} (`cnngraph run SPEC --input X.npz` runs a model with "
                            f"several inputs, one array per input in the .npz)")
    name, inp = next(iter(spec.inputs.items()))
    if len(inp.shape) not in (2, 3, 4):
        raise CnnGraphError(f"this command needs an image input of shape (C, H, W), a sequence input of shape (C, L) "
                            f"or a volume input of shape (C, D, H, W); input '{name}' has shape {tuple(inp.shape)}")
    return name, tuple(inp.shape)


# --------------------------------------------------------------------------- evaluate

def cmd_evaluate(args) -> int:
    from ..train.data import DataConfig, load_dataset
    from ..train.checkpoint import run_folder
    from ..train.evaluate import evaluate_arrays, match_classes
    from ..train.metrics import effective_top_k, format_confusion, format_per_class, json_safe
    from ..train.settings import parse_data_arg, prepare_loss, saved_data, train_spec_of
    spec = load_spec_args(args, args.spec)
    name, shape = _input_of(spec)
    model, ckdir, meta = _load_checkpointed_model(args, spec)
    ts, _ = train_spec_of(spec)
    settings = meta.get("settings") or {}
    base = saved_data(settings, ts.data, args.data is not None)
    cfg = parse_data_arg(args.data, base)
    if args.data is not None:   # the user's own file: evaluate what it holds, carve nothing off
        cfg = cfg.model_copy(update={"val_fraction": 0.0, "test_fraction": None, "limit": None})
    stats = meta.get("dataset") or {}
    if stats.get("mean") is not None and stats.get("std") is not None:
        # Normalise exactly as training did, whatever data is evaluated.
        cfg = DataConfig.model_validate({**cfg.model_dump(), "normalize": {"mean": stats["mean"], "std": stats["std"]}})
    ds = load_dataset(cfg, shape, seed=int(settings.get("seed", ts.seed)), base_dir=spec.base_dir)
    for note in ds.notes:
        print(note, file=sys.stderr)
    x, y = getattr(ds, args.split)
    whole = args.data is not None and args.split == "test" and len(y) == 0
    if whole:   # a file without a separate test split is itself the test data
        x, y = ds.train
        print(f"note: {ds.source} has no separate test split; evaluating all {len(y)} of its {ds.samples}",
              file=sys.stderr)
    if len(y) == 0:
        raise DataError(f"dataset '{cfg.dataset}' ({ds.source}) has an empty {args.split} split; choose another "
                        f"with --split, or set train.data.test_fraction / val_fraction to carve one")
    where = f"all of {ds.source}" if whole else f"{args.split} split of {ds.source}"
    if ds.values:
        return _evaluate_values(args, spec, ts, model, name, x, y, ckdir, meta, f"{where}: {len(y)} {ds.samples}")
    classes = list(stats.get("classes") or ds.classes)
    numbered = ds.classes == [str(i) for i in range(ds.num_classes)]   # names guessed from the labels
    by_name = not numbered and ds.classes != classes   # named classes (folders, an npz 'classes' key)
    if by_name and classes == [str(i) for i in range(len(classes))] and not set(ds.classes) <= set(classes):
        by_name = False   # the checkpoint's own data named no classes: there is nothing to match names to
        print(f"note: the checkpoint's classes are numbered (its training data named none); {ds.source}'s classes "
              f"{', '.join(ds.classes)} are taken in their sorted order, as classes 0 to {ds.num_classes - 1}",
              file=sys.stderr)
    if by_name:
        y = match_classes(y, ds.classes, classes, ds.source)
    elif ds.num_classes > len(classes):
        raise DataError(f"the checkpoint was trained on {len(classes)} classes but dataset '{cfg.dataset}' has "
                        f"{ds.num_classes}")
    loss = prepare_loss(spec, ts, len(classes), y.shape[1:] if ds.dense else None)
    n_cls = max(len(classes), 2) if loss.units == 1 else len(classes)
    acc = evaluate_arrays(model, name, x, y, loss, args.batch_size, top_k=effective_top_k(ts.top_k, n_cls),
                          num_classes=n_cls, ignore=getattr(ts.loss.params, "ignore_index", None))
    cm = acc.confusion()
    report = acc.per_class()
    result = json_safe({**acc.result(f"{args.split}_"), "samples": int(len(y)), "per_class": report,
                     "confusion": cm.tolist(), "classes": classes, "checkpoint": str(ckdir),
                     "epoch": meta.get("epoch")})
    out_dir = Path(args.out) if args.out else run_folder(ckdir)
    unit = mask_unit(x.ndim - 2)
    what = f"{unit} accuracy" if ds.dense else "accuracy"
    title = (f"{spec.name} ({args.split}): {what} {acc.accuracy:.4f}"
             + (f", mean IoU {report['mean_iou']:.4f}" if ds.dense else ""))
    if args.format == "json":
        result["confusion_png"] = _save_confusion(cm, classes, out_dir / "confusion.png", title)
        print(json.dumps(result, indent=2))
        return 0
    ignore = getattr(ts.loss.params, "ignore_index", None)
    pixels = int(y.size if ignore is None else (y != ignore).sum())
    _print_metrics(spec, ckdir, meta, f"{where}: {len(y)} {ds.samples}" + (f" ({pixels:,} {unit}s scored)" if ds.dense else ""),
                   acc.result(f"{args.split}_"))
    print()
    print(format_per_class(report, classes, iou=ds.dense))
    print()
    print(f"confusion matrix of {unit + 's' if ds.dense else ds.samples} (rows: true class, columns: predicted)")
    print(format_confusion(cm, classes), flush=True)   # the metrics stand even if the picture fails below
    png = _save_confusion(cm, classes, out_dir / "confusion.png", title)
    if png:
        print(f"\nwrote {png}")
    return 0


def _print_metrics(spec, ckdir, meta, what: str, metrics: dict) -> None:
    print(f"{spec.name}: checkpoint {ckdir}" + (f" (epoch {meta['epoch']})" if meta.get("epoch") else ""))
    print(what)
    for k, v in metrics.items():
        print(f"  {k:<22} {v:.4f}")


def _evaluate_values(args, spec, ts, model, name, x, y, ckdir, meta, where: str) -> int:
    """evaluate for a regression: loss, mean absolute error and RMSE (no classes, no confusion matrix)."""
    from ..train.evaluate import evaluate_arrays
    from ..train.metrics import json_safe
    from ..train.settings import prepare_loss
    loss = prepare_loss(spec, ts, value_shape=y.shape[1:])
    metrics = evaluate_arrays(model, name, x, y, loss, args.batch_size).result(f"{args.split}_")
    if args.format == "json":
        print(json.dumps(json_safe({**metrics, "samples": int(len(y)), "checkpoint": str(ckdir),
                                    "epoch": meta.get("epoch")}), indent=2))
        return 0
    _print_metrics(spec, ckdir, meta, f"{where}, {y.size:,} target values", metrics)
    return 0


def _save_confusion(cm, classes, path: Path, title: str) -> str | None:
    """Write the confusion-matrix picture; a warning instead where it cannot be (no matplotlib, a
    read-only run folder): the metrics are the result, the picture is extra."""
    from ..viz import require_matplotlib
    from ..viz.curves import plot_confusion
    try:
        require_matplotlib(f"the picture {path.name}")
        return str(plot_confusion(cm, classes, path, title=title))
    except CnnGraphError as exc:
        print(f"warning: {path} not written: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"warning: cannot write {path} ({exc.strerror or exc}); choose another folder with --out",
              file=sys.stderr)
    return None


# --------------------------------------------------------------------------- predict

def _probabilities(scores: np.ndarray, loss_type: str | None) -> np.ndarray:
    s = scores.astype(np.float64)
    if s.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-s[:, 0]))
        return np.stack([1 - p, p], axis=1)
    if loss_type == "binary_cross_entropy":
        return 1.0 / (1.0 + np.exp(-s))
    if loss_type == "mse":   # scores are regressed one-hot vectors: report them clipped, not softmaxed
        return np.clip(s, 0.0, 1.0)
    z = s - s.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cmd_predict(args) -> int:
    """Predict every input that can be read; one that cannot is named (error: ...) and the others are still
    predicted, and the command then exits 1."""
    failed: list[str] = []
    rc = _predict(args, failed)
    if failed:
        print(f"error: {len(failed)} input{'s' * (len(failed) > 1)} could not be read (named above); the others "
              f"were predicted", file=sys.stderr)
        return 1
    return rc


def _expand_inputs(inputs: list[str]) -> list[str]:
    """The inputs with each folder replaced by its image and .npy files, in name order (a note counts the
    other files left out)."""
    from ..train.images import inputs_in_folder
    out = []
    for path in inputs:
        if not Path(path).is_dir():
            out.append(path)
            continue
        files, others = inputs_in_folder(path)
        if others:
            print(f"note: '{path}': left out {others} file(s) that are not images or .npy", file=sys.stderr)
        out += [str(f) for f in files]
    return out


def _predict(args, failed: list[str]) -> int:
    from ..backend import to_numpy
    from ..train.data import apply_normalization, npy_eight_bit
    from ..train.images import array_units_warning, image_units_warning, polarity_note, read_inputs
    from ..train.settings import train_spec_of
    spec = load_spec_args(args, args.spec)
    name, shape = _input_of(spec)
    model, ckdir, meta = _load_checkpointed_model(args, spec)
    ts, _ = train_spec_of(spec)
    stats = meta.get("dataset") or {}
    loss_meta = meta.get("loss") or {}
    output = loss_meta.get("output") or ts.loss_output or spec.outputs[0]
    if output not in spec.graph:
        raise CheckpointError(f"{ckdir}: the checkpoint's output '{output}' is not a layer of {args.spec}")
    scale = float(stats.get("pixel_scale", 1.0))
    if stats.get("mean") is None:
        print(f"note: {ckdir} holds no dataset normalisation (not written by `cnngraph train`); inputs are fed "
              f"as read, in [0, 1]", file=sys.stderr)
    inputs = _expand_inputs(args.inputs)
    units = image_units_warning(inputs, stats.get("pixel_range"), scale) if len(shape) == 3 else None
    if units:
        print(units, file=sys.stderr)
    eight_bit = npy_eight_bit(stats.get("pixel_range"), scale)   # else .npy arrays are taken as they are
    if args.masks_out:
        _check_masks_out(Path(args.masks_out), inputs)
    labels, parts, notes = [], [], []
    for path in inputs:
        try:
            x = read_inputs([path], shape, scale=scale, invert=args.invert, eight_bit=eight_bit,
                            as_is=stats.get("pixels") == "as_is", notes=notes)
        except DataError as exc:   # one broken file among many: name it, predict the rest
            if len(inputs) == 1:
                raise
            print(f"error: {exc}", file=sys.stderr)
            failed.append(path)
            continue
        npy = path.lower().endswith(".npy")
        units = array_units_warning(path, x, stats.get("pixel_range")) if npy else None
        if units:   # as images get (image_units_warning): numbers far from the training data's
            print(units, file=sys.stderr)
        if not units and stats.get("pixels") != "as_is":
            notes.append(polarity_note(path, x[0], scale, stats.get("mean"), args.invert))
        parts.append(x)
        labels += [path] if len(x) == 1 and not npy else [f"{path}[{i}]" for i in range(len(x))]
    _print_notes([n for n in notes if n])
    if not parts:
        raise DataError(f"none of the {len(inputs)} inputs could be read (named above)")
    x = np.concatenate(parts)
    if stats.get("mean") is not None:
        x = apply_normalization(x, stats["mean"], stats["std"])
    scores = np.concatenate([to_numpy(model.forward({name: x[i:i + 256]}, outputs=[output])[output])
                             for i in range(0, len(x), 256)])
    if loss_meta.get("target") == "values":
        if args.masks_out:
            raise CnnGraphError("--masks-out: this model regresses values, it predicts no class masks")
        if loss_meta.get("type") == "binary_cross_entropy":   # trained on logits: report probabilities
            from ..plugins.activation import sigmoid
            scores = sigmoid(scores.astype(np.float64))
        return _predict_values(args, scores, labels)
    if scores.ndim == len(shape) + 1 and scores.ndim > 2:   # class scores per pixel (or per step of a sequence)
        return _predict_masks(args, scores, labels, stats, loss_meta.get("type") or (ts.loss.type if ts else None))
    if args.masks_out:
        raise CnnGraphError(f"--masks-out: output '{output}' gives one class per sample, not per pixel or step; "
                            f"--masks-out is for segmentation models")
    if scores.ndim != 2:
        raise CnnGraphError(f"output '{output}' has shape {scores.shape[1:]} per sample; predict expects class scores "
                            f"(classes,) or, for segmentation, (classes, H, W) (a sequence's (classes, L))")
    probs = _probabilities(scores, loss_meta.get("type") or (ts.loss.type if ts else None))
    n_cls = probs.shape[1]
    classes = list(stats.get("classes") or [str(i) for i in range(n_cls)])
    if len(classes) != n_cls:
        classes = [str(i) for i in range(n_cls)]
    results = []
    for label, p in zip(labels, probs):
        order = np.argsort(-p, kind="stable")
        results.append({"input": label, "class": classes[order[0]], "index": int(order[0]),
                        "probability": float(p[order[0]]),
                        "probabilities": {classes[i]: float(p[i]) for i in range(n_cls)}})
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return 0
    if args.format == "csv":
        return _print_csv(["input", "class", "probability", *classes],
                          [[r["input"], r["class"], r["probability"], *p.tolist()] for r, p in zip(results, probs)])
    width = max(len(r["input"]) for r in results)
    for r, p in zip(results, probs):
        order = np.argsort(-p, kind="stable")[:args.top]
        top = ", ".join(f"{classes[i]} {p[i]:.4f}" for i in order)
        print(f"{r['input'].ljust(width)}  class {r['class']} ({r['probability']:.4f})  top: {top}")
    return 0


def _print_notes(notes: list[str], most: int = 3) -> None:
    """The first ``most`` notes on the inputs, then how many more (a folder of like images would repeat one)."""
    for note in notes[:most]:
        print(note, file=sys.stderr)
    if len(notes) > most:
        print(f"note: and {len(notes) - most} more like these", file=sys.stderr)


def _check_masks_out(folder: Path, inputs: list[str]) -> None:
    """--masks-out writes masks.npy and NNNN_*.mask.png there, removing an earlier prediction's: refused before any
    work when one of those files is an input."""
    import fnmatch
    import os
    for path in inputs:
        p = Path(path)
        written = p.name == "masks.npy" or fnmatch.fnmatch(p.name, MASK_PNG_PATTERN)
        if written and p.exists() and folder.is_dir() and os.path.samefile(p.parent, folder):
            raise CnnGraphError(f"--masks-out {folder}: the input '{path}' is a file it writes or replaces there; "
                                f"choose another folder")


def _predict_values(args, scores: np.ndarray, labels: list[str]) -> int:
    """A regression model: each input's predicted values."""
    results = [{"input": label, "values": v.tolist()} for label, v in zip(labels, scores.astype(np.float64))]
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return 0
    if args.format == "csv":   # one column per value, flattened in C order
        flat = scores.astype(np.float64).reshape(len(scores), -1)
        return _print_csv(["input", *(f"value_{i}" for i in range(flat.shape[1]))],
                          [[label, *v.tolist()] for label, v in zip(labels, flat)])
    width = max(len(r["input"]) for r in results)
    for label, v in zip(labels, scores.reshape(len(scores), -1)):
        shown = ", ".join(f"{a:.6g}" for a in v[:8]) + (f", ... ({v.size} values)" if v.size > 8 else "")
        print(f"{label.ljust(width)}  {shown}")
    return 0


def _predict_masks(args, scores: np.ndarray, labels: list[str], stats: dict, loss_type: str | None) -> int:
    """Segmentation: each pixel's (a sequence's: each step's) class; prints each input's classes by area, writes
    the masks on request (masks.npy; a PNG per image)."""
    from ..train.metrics import predicted_classes
    masks = predicted_classes(scores)                                  # (N, H, W), (N, L) or (N, D, H, W)
    unit = mask_unit(masks.ndim - 1) + "s"
    n_cls = max(scores.shape[1], 2)
    classes = list(stats.get("classes") or [])
    if len(classes) != n_cls:
        classes = [str(i) for i in range(n_cls)]
    results = []
    for label, m in zip(labels, masks):
        share = np.bincount(m.ravel(), minlength=n_cls) / m.size
        results.append({"input": label, unit: {classes[i]: float(share[i]) for i in range(n_cls) if share[i] > 0}})
    if args.masks_out:
        for r, path in zip(results, _write_masks(Path(args.masks_out), masks, labels, n_cls)):
            r["mask_png"] = str(path)
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return 0
    if args.format == "csv":   # each class's share of the input's pixels (steps, voxels)
        return _print_csv(["input", *classes], [[r["input"], *(r[unit].get(c, 0.0) for c in classes)]
                                                for r in results])
    width = max(len(r["input"]) for r in results)
    for r in results:
        top = sorted(r[unit].items(), key=lambda kv: -kv[1])[:args.top]
        print(f"{r['input'].ljust(width)}  {unit}: " + ", ".join(f"{c} {v:.1%}" for c, v in top))
    if args.masks_out:
        pngs = (f" and {len(results)} mask PNG{'s' * (len(results) != 1)}" if masks.ndim == 3
                else f" (one class per {unit[:-1]})")
        print(f"wrote {Path(args.masks_out) / 'masks.npy'}{pngs}")
    return 0


def _print_csv(header: list[str], rows: list[list]) -> int:
    """predict --format csv: a header row, then one row per input (numbers as Python writes them)."""
    import csv
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return 0


MASK_PNG_MIN_SIDE = 128
MASK_PNG_PATTERN = "[0-9][0-9][0-9][0-9]_*.mask.png"


def _write_masks(folder: Path, masks: np.ndarray, labels: list[str], n_cls: int) -> list[Path]:
    """masks.npy plus one palette PNG per input (class k in colour k of tab20; class 0 black), enlarged by a
    whole factor to at least MASK_PNG_MIN_SIDE pixels on its shorter side (masks.npy keeps the model's size)."""
    import re

    import matplotlib
    from PIL import Image
    if folder.exists() and not folder.is_dir():
        raise CnnGraphError(f"--masks-out {folder}: is a file; expected a folder (it is created if missing)")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(MASK_PNG_PATTERN):   # an earlier prediction's pictures: never mixed
        old.unlink()
    np.save(folder / "masks.npy", masks)
    if masks.ndim != 3:   # a sequence's classes per step, a volume's per voxel: the array says it all
        return []
    colours = [(0, 0, 0)] + [tuple(int(255 * c) for c in matplotlib.colormaps["tab20"](i % 20)[:3])
                             for i in range(max(n_cls - 1, 1))]
    palette = [v for c in colours for v in c]
    paths = []
    for i, (label, m) in enumerate(zip(labels, masks)):
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(label).name.replace("[", "_").replace("]", ""))
        img = Image.fromarray(m.astype(np.uint8), mode="P") if n_cls <= 256 else None
        if img is None:
            raise CnnGraphError(f"--masks-out: {n_cls} classes do not fit a palette PNG (at most 256); masks.npy "
                                f"was written")
        img.putpalette(palette)
        paths.append(folder / f"{i:04d}_{stem}.mask.png")
        zoom = -(-MASK_PNG_MIN_SIDE // min(m.shape))   # whole pixels per mask pixel, so small masks can be seen
        if zoom > 1:
            img = img.resize((m.shape[1] * zoom, m.shape[0] * zoom), Image.NEAREST)
        img.save(paths[-1])
    return paths
