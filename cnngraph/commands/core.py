"""validate, summary, run, ops, plugins."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import CnnGraphError, SpecError
from .common import add_spec_options, load_spec_args, read_model_inputs, seed_value

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("validate", help="check spec files; prints OK or every problem found")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    add_spec_options(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("summary", help="per-layer table: output shape, parameters, FLOPs, memory")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--batch-size", type=int, default=1, help="batch size for the memory columns (default 1)")
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    p.add_argument("--no-training-memory", dest="training_memory", action="store_false",
                   help="skip measuring the training activation peak (it runs the model at batch 1 and 2)")
    add_spec_options(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("run", help="run the network forward on an .npy input")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--input", required=True, metavar="X.npy",
                   help="(N, C, H, W) or a single (C, H, W) sample: a .npy, or an .npz holding one array; "
                        "for a model with several inputs, an .npz with one array per input, named as in the spec")
    p.add_argument("--params", metavar="WEIGHTS", help=".npz of parameters, or a checkpoint or run folder")
    p.add_argument("--output", metavar="Y.npy", help="write the output (.npy; .npz for several outputs)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the random weights used without --params")
    p.add_argument("--profile", action="store_true", help="print time and memory per layer")
    add_spec_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ops", help="list every registered op (or the named ones) with its parameters and plugin")
    p.add_argument("types", nargs="*", metavar="TYPE", help="show only these op types")
    p.add_argument("--format", choices=("text", "json"), default="text")
    add_spec_options(p, reads_spec=False)
    p.set_defaults(func=cmd_ops)

    p = sub.add_parser("plugins", help="list loaded plugins and where they came from")
    add_spec_options(p, reads_spec=False)
    p.set_defaults(func=cmd_plugins)


def cmd_validate(args) -> int:
    failed = 0
    for path in args.specs:
        try:
            spec = load_spec_args(args, path)
        except SpecError as exc:
            failed += 1
            print(f"FAIL {path}")
            for problem in exc.problems:
                print("  " + problem.format().replace("\n", "\n  "))
            continue
        print(f"OK   {path} ({spec.name}: {len(spec.layers)} layers)")
        for problem in spec.warnings:
            print("  warning: " + problem.format().replace("\n", "\n  "))
    return 1 if failed else 0


def frozen_rows(spec, s) -> str:
    """What the spec's train.freeze keeps fixed (see summary.frozen_line)."""
    from ..summary import frozen_line
    from ..train.freeze import matching_layers
    return frozen_line(s, matching_layers(spec.train.freeze if spec.train is not None else [], [r.id for r in s.rows]))


def cmd_summary(args) -> int:
    from ..summary import add_training_memory, summarize
    from .summary_format import format_summary, training_totals
    spec = load_spec_args(args, args.spec)
    if args.batch_size < 1:
        raise CnnGraphError(f"--batch-size must be >= 1, found {args.batch_size}")
    s = summarize(spec.graph, spec.name, args.batch_size)
    frozen = frozen_rows(spec, s)
    if frozen:
        s.extra["frozen by train.freeze"] = frozen
    text = args.format != "json"    # JSON is one document, printed at the end
    if text:   # the static table first: measuring may take long on a big network
        print(format_summary(s, args.format), flush=True)
    if args.training_memory:   # runs a training step at batch 1 and 2, unless too big for this machine
        add_training_memory(s, spec)
    if text:
        for line in training_totals(s):
            print(("- " if args.format == "markdown" else "") + line)
    else:
        print(format_summary(s, "json"))
    return 0


def cmd_run(args) -> int:
    from ..backend import to_numpy
    from ..model import Model
    spec = load_spec_args(args, args.spec)
    model = Model(spec, device=args.device, seed=args.seed)
    if args.params:
        from ..train.checkpoint import load_weights, trained_from
        arrays, meta = load_weights(args.params)
        try:
            model.load_params(arrays)
        except CnnGraphError as exc:
            raise CnnGraphError(f"{args.params}: {exc}{trained_from(meta)}") from None
        stats = (meta or {}).get("dataset") or {}
        if stats.get("mean") is not None:
            print(f"note: run feeds --input to the network as given; training normalised its inputs ((x - mean) / std, "
                  f"mean {stats['mean']}, std {stats['std']}): `cnngraph predict` applies that", file=sys.stderr)
    elif model.trainable_names or model.buffer_names:
        beside = Path(args.spec).with_suffix(".npz")
        hint = (f"; {beside} lies beside the spec (import-onnx writes the weights there): pass --params {beside}"
                if beside.is_file() else "; pass --params WEIGHTS (an .npz or a training run's folder)")
        print(f"warning: no weights given, so the layers have their random initial weights (seed {args.seed}){hint}",
              file=sys.stderr)
    if args.output and not args.output.endswith((".npy", ".npz")):
        raise CnnGraphError(f"--output {args.output}: expected a .npy file (or .npz, which also holds "
                            f"several outputs)")
    inputs = read_model_inputs(args.input, spec.inputs)
    for name, x in inputs.items():   # as given: `run` does not scale (predict applies the training's units)
        if x.dtype == np.uint8:
            which = f"'{name}' " if len(inputs) > 1 else ""
            print(f"note: input {which}is uint8 and is fed as its raw values 0..255 (not scaled to [0, 1]); divide "
                  f"by 255 first if the network expects [0, 1]", file=sys.stderr)
    profiler = None
    if args.profile:
        from ..profile import Profiler
        start = time.perf_counter()
        model.forward(inputs)   # untimed per layer: one-time set-up (oneDNN's kernels for these shapes, CuPy's)
        first = time.perf_counter() - start
        profiler = Profiler(model)
    outputs = model.forward(inputs, on_output=profiler.record if profiler else None)
    outputs = {k: to_numpy(v) for k, v in outputs.items()}
    if profiler:
        print(f"{profiler.report()}\n(a second pass; the first took {first * 1e3:.3f} ms with its one-time set-up: "
              f"oneDNN's kernels for these shapes, buffers)", file=sys.stderr)
    if args.output:
        if args.output.endswith(".npz"):
            np.savez(args.output, **outputs)
        elif len(outputs) == 1:
            np.save(args.output, next(iter(outputs.values())))
        else:
            raise CnnGraphError(f"the model has {len(outputs)} outputs; write them to an .npz file")
        print(f"wrote {args.output}")
    for k, v in outputs.items():
        line = f"{k}: shape {tuple(v.shape)} {v.dtype}"
        if v.ndim == 2 and v.shape[1] > 1:   # class scores; one value per sample is a regression
            line += f"; argmax per sample: {v.argmax(axis=1)[:16].tolist()}{' …' if len(v) > 16 else ''}"
        print(line)
    return 0


def _describe_params(op_cls) -> list[dict]:
    rows = []
    for name, f in op_cls.Params.model_fields.items():
        required = f.is_required()
        default = None if required else f.get_default(call_default_factory=True)
        if isinstance(default, tuple):
            default = list(default)
        form = next((m for m in f.metadata if isinstance(m, SpecForm)), None)   # Annotated at the top
        kind = str(form) if form is not None else _type_text(f.annotation)
        rows.append({"name": name, "required": required, "default": default, "type": kind,
                     "constraints": _constraints(f.metadata), "description": f.description})
    return rows


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("multiple_of", "multiple of"),
           ("min_length", "length >="), ("max_length", "length <="), ("pattern", "matching"))


def _constraints(metadata) -> list[str]:
    """A field's bounds as a spec writer reads them: Field(1.0, gt=0) → ['> 0'] (Literal choices are its type)."""
    return [f"{sym} {getattr(m, attr)}" for m in metadata for attr, sym in _BOUNDS
            if getattr(m, attr, None) is not None]


from ..paramtypes import SpecForm   # noqa: E402  (light: pydantic is loaded for any spec command)


def _type_text(ann) -> str:
    """A parameter's type as a spec writer reads it: int, float, a|b (choices), [int, int], x or null."""
    import typing
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:
        form = next((m for m in args[1:] if isinstance(m, SpecForm)), None)
        return str(form) if form is not None else _type_text(args[0])
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [_type_text(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin in (tuple, list):
        variadic = origin is list or Ellipsis in args
        return "[" + ", ".join(_type_text(a) for a in args if a is not Ellipsis) + (", ..." if variadic else "") + "]"
    return getattr(ann, "__name__", str(ann).replace("typing.", ""))


def cmd_ops(args) -> int:
    from ..registry import get_registry, load_plugin_file
    for plugin in args.plugin:
        load_plugin_file(plugin)
    reg = get_registry()
    unknown = [t for t in args.types if t not in reg.ops]
    if unknown:
        from ..registry import did_you_mean
        raise CnnGraphError("; ".join(f"unknown op type '{t}'{did_you_mean(t, reg.ops)}" for t in unknown)
                            + (reg.empty_note() or " (`cnngraph ops` lists them all)"))
    _warn_empty(reg)
    ops = [{"type": t, "plugin": cls.plugin, "inputs": list(cls.arity), "doc": cls.describe(),
            "params": _describe_params(cls)} for t, cls in sorted(reg.ops.items()) if not args.types or t in args.types]
    if args.format == "json":
        print(json.dumps(ops, indent=2, default=str))
        return 0
    for op in ops:
        lo, hi = op["inputs"]
        arity = f"{lo}" if lo == hi else f"{lo}+" if hi is None else f"{lo}-{hi}"
        print(f"{op['type']}  [{op['plugin']}]  inputs: {arity}")
        if op["doc"]:
            print(f"    {op['doc']}")
        for prm in op["params"]:
            val = "required" if prm["required"] else f"default {json.dumps(prm['default'], default=str)}"
            about = f" — {prm['description']}" if prm["description"] else ""
            kind = ", ".join([prm["type"], *prm["constraints"]])
            print(f"    {prm['name']} ({kind}): {val}{about}")
    return 0


def _warn_empty(reg) -> None:
    """A listing command names each loaded plugin that registered nothing (most likely a missing @hookimpl)."""
    for why in reg.empty.values():
        print(f"warning: {why}", file=sys.stderr)


def cmd_plugins(args) -> int:
    from ..registry import get_registry, load_plugin_file
    for plugin in args.plugin:
        load_plugin_file(plugin)
    reg = get_registry()
    for name, origin in reg.plugins.items():
        counts = {}
        for (table, _), owner in reg.owner.items():
            if owner == name:
                counts[table] = counts.get(table, 0) + 1
        what = ", ".join(f"{n} {t if n != 1 else t[:-1]}" for t, n in counts.items()) or "no components"
        print(f"{name}  ({origin}): {what}")
    for name, why in reg.skipped.items():
        print(f"{name}  (installed, not loaded): {why}")
    for table, name in reg.contested:
        print(f"not used: {reg.contested_note(table, name)}")
    _warn_empty(reg)
    return 0
