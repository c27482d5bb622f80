"""import-onnx, export-onnx."""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

from ..errors import CnnGraphError
from .common import add_spec_options, load_spec_args, seed_value

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("import-onnx", help="convert an ONNX model to a spec (.yaml) and its weights (.npz)")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("-o", "--output", required=True, metavar="OUT.yaml",
                   help="spec to write; the weights go next to it as OUT.npz")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,…",
                   help="full shape (batch first) of an input with symbolic dimensions (repeatable)")
    p.add_argument("--check", action="store_true",
                   help="also run the model in ONNX Runtime and cnngraph on random input and compare")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="load a plugin file or module first, for the ONNX ops its importers handle (repeatable)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export-onnx", help="export a spec with trained weights to ONNX")
    p.add_argument("spec", metavar="SPEC")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="DIR", help="run folder, RUN/checkpoint, or a best/last checkpoint")
    src.add_argument("--params", metavar="WEIGHTS.npz", help="parameters as an .npz (e.g. from import-onnx)")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.onnx")
    from ..onnx import DEFAULT_OPSET
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--outputs", nargs="+", metavar="LAYER", help="layers to export as outputs (default: the spec's "
                                                                 "non-loss outputs)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the random weights used without weights")
    p.add_argument("--include-normalization", action="store_true",
                   help="build the training run's input normalisation into the graph, so the model takes raw "
                        "inputs as `cnngraph predict` does (needs a --checkpoint from training)")
    p.add_argument("--check", action="store_true",
                   help="run the exported model in ONNX Runtime and cnngraph on random input (batch 2 and 3) and "
                        "compare (always done when a plugin's exporter wrote part of the model)")
    add_spec_options(p)
    p.set_defaults(func=cmd_export)


def _parse_shapes(items: list[str]) -> dict[str, list[int]]:
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.split(",")]
            if any(d < 1 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise CnnGraphError(f"--input-shape expects NAME=D0,D1,… with positive integers, found {item!r}") from None
    return shapes


def cmd_import(args) -> int:
    from ..onnx.importer import onnx_to_spec
    from ..onnx.yamlio import write_spec
    out = Path(args.output)
    if out.suffix not in (".yaml", ".yml", ".json"):
        raise CnnGraphError(f"-o names the spec to write (.yaml, .yml or .json), found {args.output}")
    if Path(args.model).is_file() and Path(args.model).stat().st_size == 0:
        raise CnnGraphError(f"{args.model}: the file is empty; expected an ONNX model")
    from ..registry import load_plugin_file
    for plugin in args.plugin:
        load_plugin_file(plugin)
    with warnings.catch_warnings(record=True) as caught:   # each as one line, not Python's two
        warnings.simplefilter("always")
        result = onnx_to_spec(args.model, _parse_shapes(args.input_shape))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    # the written spec names the plugins, whose ops it needs to load (the check below runs them loaded already)
    spec = _with_plugins(result.spec, args.plugin, out.parent) if args.plugin else result.spec
    weights_path = out.with_suffix(".npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    allow = " --allow-plugins" if args.plugin else ""   # the spec names its plugins, which run code
    header = (f"Imported from {Path(args.model).name} by `cnngraph import-onnx`; weights: {weights_path.name}\n"
              f"run: cnngraph run {out.name} --params {weights_path.name} --input x.npy{allow}\n"
              f"fine-tune: add a train: section, then cnngraph train {out.name} --init {weights_path.name}{allow}")
    renamed = {k: v for k, v in {**result.input_names, **result.output_names}.items() if k != v}
    if renamed:
        header += "\nONNX names changed to valid ids: " + ", ".join(f"{k!r} → {v}" for k, v in renamed.items())
    if out.suffix == ".json":
        import json
        out.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    else:
        write_spec(spec, out, header)
    np.savez(weights_path, **result.weights)
    n = sum(int(v.size) for v in result.weights.values())
    print(f"wrote {out} ({len(result.spec['layers'])} layers) and {weights_path} ({len(result.weights)} arrays, "
          f"{n:,} values)")
    if args.check:
        _check(args.model, result)
    return 0


def _with_plugins(spec: dict, plugins: list[str], spec_dir: Path) -> dict:
    """``spec`` with a ``plugins:`` entry after its description: plugin files relative to the spec's folder
    (as the spec loader reads them), module names as given."""
    import os
    names = [os.path.relpath(p, spec_dir.resolve()) if p.endswith(".py") else p
             for p in (str(Path(p).resolve()) if p.endswith(".py") else p for p in plugins)]
    head = {k: spec[k] for k in ("name", "description") if k in spec}
    return {**head, "plugins": names, **{k: v for k, v in spec.items() if k not in head}}


def _check(model_path, result) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        raise CnnGraphError("--check runs the model in ONNX Runtime, which is not installed: "
                            "pip install 'cnngraph[onnx]' (the spec and weights above were written)") from None
    from ..model import Model
    from ..spec import load_spec
    model = Model(load_spec(result.spec))
    model.load_params(result.weights)
    rng = np.random.default_rng(0)
    feeds = {}
    try:
        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        for i in sess.get_inputs():   # each in the type the model declares: float, double, float16 or integers
            if i.name not in result.input_names:
                continue
            inp = result.spec["inputs"][result.input_names[i.name]]
            batch = i.shape[0] if isinstance(i.shape[0], int) and i.shape[0] > 0 else 2   # fixed, else 2 samples
            shape = (batch, *inp["shape"])
            if "int" in i.type:
                feeds[i.name] = rng.integers(0, 3, shape).astype(np.dtype(i.type[7:-1]))   # tensor(int64)
            else:
                dtype = {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(i.type, np.float32)
                feeds[i.name] = rng.standard_normal(shape).astype(dtype)
        want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    except Exception as exc:  # noqa: BLE001 - ORT's own failure, reported without a traceback
        raise CnnGraphError(f"--check: ONNX Runtime could not run {model_path}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''} (the spec and weights were written)") from None
    got = model.forward({result.input_names[k]: v for k, v in feeds.items()})
    worst, where = _worst_difference({onnx_name: (got[name], want[onnx_name])
                                      for onnx_name, name in result.output_names.items()})
    n = next(iter(feeds.values())).shape[0] if feeds else 0
    print(f"check vs ONNX Runtime (batch {n}, random input): max relative difference {worst:.2e}")
    if worst > 1e-3:
        raise CnnGraphError(f"outputs differ from ONNX Runtime by {worst:.2e} (relative, output '{where}')")


def _worst_difference(pairs: dict) -> tuple[float, str]:
    """Largest relative difference (max |a - b| / max |b|) over output name -> (cnngraph's, ONNX Runtime's), and
    its output; a shape mismatch is an error."""
    worst, where = 0.0, ""
    for name, (ours, theirs) in pairs.items():
        a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
        if a.shape != b.shape:
            raise CnnGraphError(f"output '{name}' has shape {a.shape} in cnngraph and {b.shape} in ONNX Runtime")
        diff = float(np.max(np.abs(a - b), initial=0.0) / (np.max(np.abs(b), initial=0.0) + 1e-12))
        if diff >= worst:
            worst, where = diff, name
    return worst, where


def _check_export(path: str, model, proto, normalization: dict | None, plugins: list[str]) -> None:
    """Run the written model in ONNX Runtime at batch 2 and 3 (its batch axis is dynamic) and compare with
    cnngraph's forward of the same weights; ``normalization`` (mean/std) when the graph takes raw inputs."""
    blame = f" (plugin exporters wrote {', '.join(plugins)}: check them first)" if plugins else ""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CnnGraphError(f"checking {path} runs it in ONNX Runtime, which is not installed: "
                            f"pip install 'cnngraph[onnx]' ({path} was written)") from None
    rng = np.random.default_rng(0)
    outputs = [o.name for o in proto.graph.output]
    worst, where = 0.0, ""
    for batch in (2, 3):
        feeds = {name: (rng.integers(0, 3, (batch, *inp.shape)) if inp.dtype == "int64"
                        else rng.standard_normal((batch, *inp.shape)).astype(np.float32))
                 for name, inp in model.spec.inputs.items() if name in {i.name for i in proto.graph.input}}
        ours = dict(feeds)
        if normalization:   # the graph normalises its first input itself
            first = proto.graph.input[0].name
            shape = (1, -1) + (1,) * (feeds[first].ndim - 2)
            ours[first] = ((feeds[first] - np.reshape(normalization["mean"], shape))
                           / np.reshape(normalization["std"], shape)).astype(np.float32)
        try:
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            theirs = dict(zip(outputs, sess.run(outputs, feeds)))
        except Exception as exc:  # noqa: BLE001 - ORT's own failure, reported without a traceback
            raise CnnGraphError(f"ONNX Runtime could not run {path}{blame}: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        got = model.forward(ours, outputs=outputs)
        diff, name = _worst_difference({o: (got[o], theirs[o]) for o in outputs})
        if diff >= worst:
            worst, where = diff, name
    print(f"check vs ONNX Runtime (batch 2 and 3, random input): max relative difference {worst:.2e}")
    if worst > 1e-4:
        raise CnnGraphError(f"{path} gives other outputs in ONNX Runtime than cnngraph: output '{where}' differs by "
                            f"{worst:.2e} (relative){blame}; the file is kept for inspection: do not deploy it")


def cmd_export(args) -> int:
    from ..onnx.exporter import export_onnx, plugin_exporters_used
    from ..model import Model
    if not args.output.endswith(".onnx"):
        raise CnnGraphError(f"-o {args.output}: expected a file name ending in .onnx")
    spec = load_spec_args(args, args.spec)
    model = Model(spec, seed=args.seed)
    weights = args.checkpoint or args.params
    if weights is None:
        print("warning: no --checkpoint or --params given: exporting seeded random initial weights "
              f"(seed {args.seed})", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = export_onnx(model, args.output, params=weights, opset=args.opset, outputs=args.outputs,
                            include_normalization=args.include_normalization)
    outs = ", ".join(o.name for o in proto.graph.output)
    print(f"wrote {args.output} (opset {args.opset}, {len(proto.graph.node)} nodes, outputs: {outs})")
    meta = {e.key: e.value for e in proto.metadata_props}
    plugins = plugin_exporters_used(spec)
    if args.check or plugins:
        dataset = json.loads(meta.get("cnngraph.dataset", "{}")) if args.include_normalization else None
        _check_export(args.output, model, proto, dataset, plugins)
    if "cnngraph.dataset" in meta and not args.include_normalization:
        ds = json.loads(meta["cnngraph.dataset"])
        print(f"note: the model takes normalised inputs, (x - mean) / std per channel with mean {ds.get('mean')} and "
              f"std {ds.get('std')} (stored in its metadata as cnngraph.dataset"
              f"{', with the class names' if ds.get('classes') else ''}); "
              f"--include-normalization builds this into the graph")
    return 0
