"""viz (network drawings) and explain (feature maps, filters, Grad-CAM, saliency)."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import CnnGraphError

__all__ = ["register"]


def register(sub) -> None:
    from .common import add_spec_options, seed_value
    p = sub.add_parser("viz", help="draw the network graph (.svg .png .pdf .dot .mmd .html)",
                       description="Draw a spec's graph; the format follows the output's extension. An invalid "
                                   "spec is still drawn as far as it parses, failing layers in red (exit 1).")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="output file: .svg, .png, .pdf, .dot, .mmd (Mermaid) or .html (interactive); a missing "
                        "folder is created")
    p.add_argument("--direction", default="TB", type=str.upper, choices=("TB", "LR"),
                   help="top-to-bottom (default) or left-to-right")
    p.add_argument("--collapse", action="store_true",
                   help="one box per block instance (layer ids 'name.rest' grouped by 'name')")
    p.add_argument("--params", action="store_true", help="show parameter counts")
    p.add_argument("--dpi", type=int, default=150, help="PNG resolution, 20 to 1200 (default 150)")
    add_spec_options(p)
    p.set_defaults(func=cmd_viz)

    p = sub.add_parser("explain", help="feature maps, first-layer filters, Grad-CAM and saliency for an image",
                       description="Look inside a network. Default: a grid of LAYER's feature maps for IMAGE. "
                                   "--filters: the first convolution's kernels. --gradcam: Grad-CAM and input-"
                                   "gradient saliency for the predicted (or --class) class.")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="image to write (.png, .pdf, .svg); a missing folder is created")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--checkpoint", metavar="DIR",
                   help="run folder, DIR/checkpoint, or a best/ or last/ checkpoint folder")
    w.add_argument("--params", metavar="WEIGHTS.npz", help=".npz of parameters")
    p.add_argument("--image", metavar="IMG", help="image (PNG, JPEG, BMP, GIF, TIFF, WebP) or .npy sample (resized and normalised as in training)")
    p.add_argument("--index", type=int,
                   help="sample of a .npy batch to use (default 0; negative counts from the end)")
    p.add_argument("--invert", action="store_true",
                   help="invert the image (dark ink on white → light on dark, as MNIST and the digits)")
    p.add_argument("--layer", help="layer to show (feature maps: default the first convolution; "
                                   "Grad-CAM: default the last spatial layer)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--filters", action="store_true", help="draw the first convolution's kernels")
    mode.add_argument("--gradcam", action="store_true", help="Grad-CAM and saliency for a class")
    p.add_argument("--class", dest="class_index", type=int, help="class for --gradcam (default: the predicted one)")
    p.add_argument("--scale", choices=("shared", "per-map"),
                   help="feature-map colour range: one for all maps (default) or per map")
    p.add_argument("--max-maps", type=int, help="most channels to draw (default 64)")
    p.add_argument("--slice", type=int, dest="depth",
                   help="volume models (C, D, H, W): the input depth to draw, feature maps and Grad-CAM at the "
                        "matching plane (default: the middle one)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the random weights used without weights")
    add_spec_options(p)
    p.set_defaults(func=cmd_explain)


def cmd_viz(args) -> int:
    from ..registry import load_plugin_file
    from ..viz import check_not_an_input, check_not_folder, wrote
    from ..viz.graph import MAX_PNG_PIXELS, MAX_PNG_SIDE, draw_network
    check_not_folder(args.output, "network.svg")
    replaced = check_not_an_input(args.output, [("spec", args.spec)] + [("--plugin", p) for p in args.plugin])
    for plugin in args.plugin:
        load_plugin_file(plugin)
    if args.dpi < 20 or args.dpi > 1200:
        raise CnnGraphError(f"--dpi must be between 20 and 1200, found {args.dpi}")
    res = draw_network(args.spec, args.output, direction=args.direction, collapse=args.collapse,
                       show_params=args.params, allow_plugins=args.allow_plugins, dpi=args.dpi)
    if res.dpi is not None and res.dpi < args.dpi:
        print(f"note: lowered the PNG resolution from {args.dpi} to {res.dpi} dpi to stay within "
              f"{MAX_PNG_SIDE:,} px a side and {MAX_PNG_PIXELS:,} pixels ({res.size[0]}x{res.size[1]} px); for "
              f"more detail use --collapse, or write .svg or .html", file=sys.stderr)
    if args.collapse and not res.collapsed:
        print("note: --collapse found no block instances to group (layer ids 'name.rest'); drawn layer by "
              "layer", file=sys.stderr)
    if res.valid:
        print(wrote(res.path, f"{res.nodes} nodes", replaced=replaced))
        return 0
    n = len(res.problems)
    print(f"{wrote(res.path, replaced=replaced)}, drawn as far as the spec parses: {n} problem{'s' if n != 1 else ''}, "
          f"failing layers in red", file=sys.stderr)
    for prob in res.problems:
        print("  " + prob.format().replace("\n", "\n  "), file=sys.stderr)
    return 1


def cmd_explain(args) -> int:
    from ..model import Model
    from ..viz import explain as ex
    from .common import load_spec_args
    from ..viz import check_not_an_input, require_matplotlib, wrote
    out = _explain_output(args)
    replaced = check_not_an_input(out, _explain_inputs(args))   # before any work: -o must not be an input
    _check_options(args)
    require_matplotlib("explain")   # every picture it draws is a matplotlib figure
    spec = load_spec_args(args, args.spec)
    model = Model(spec, seed=args.seed)
    weights = ex.load_weights(model, args.checkpoint, args.params)
    if weights.random:
        print(f"note: no --checkpoint or --params given: using {weights.source}; the pictures show an "
              f"untrained network", file=sys.stderr)
    if args.filters:
        size = ex.plot_filters(model, out, args.layer, subtitle=f"{spec.name} · {weights.source}")
        print(f"{wrote(out, size=size, replaced=replaced)}: filters of {args.layer or ex.first_conv(model)}")
        return 0
    if not args.image:
        raise CnnGraphError("give --image IMG (an image file or .npy sample); or --filters to draw the kernels")
    prep = ex.preprocessing(spec, weights.meta)
    from ..train.images import image_units_warning, polarity_note
    units = image_units_warning([args.image], prep.pixel_range, prep.scale) \
        if len(next(iter(spec.inputs.values())).shape) == 3 else None
    if units:
        print(units, file=sys.stderr)
    notes: list[str] = []
    raw, x = ex.load_input(args.image, spec, prep, invert=args.invert, index=args.index or 0, notes=notes)
    polarity = None if units or prep.as_is else polarity_note(args.image, raw[0], prep.scale, prep.mean, args.invert)
    for note in [*notes, polarity]:
        if note:
            print(note, file=sys.stderr)
    subtitle = f"{spec.name} · {Path(args.image).name} · {weights.source} · {prep.note}"
    depth = _depth(args, raw)
    image = raw[0] if depth is None else raw[0][:, depth]   # a volume: the plane drawn
    if depth is not None:
        subtitle += f" · depth {depth} of {raw.shape[2]}"
    if args.gradcam:
        regression = ((weights.meta or {}).get("loss") or {}).get("target") == "values"
        res = ex.gradcam(model, x, args.layer, args.class_index, values=regression)
        res["regression"] = regression
        shown = res if depth is None else ex.slice_attribution(res, depth, raw.shape[2])
        size = ex.plot_attribution(image, shown, out, prep.scale, prep.classes, subtitle)
        k = res["class_index"]
        pred = int(res["scores"].reshape(-1).argmax())
        label = (lambda i: prep.classes[i] if prep.classes and i < len(prep.classes) else i)
        written = wrote(out, size=size, replaced=replaced)
        if res["regression"]:   # a regression: the output value explained, not a class
            print(f"{written}: Grad-CAM at {res['layer']} for output value {k} "
                  f"(= {float(res['scores'].reshape(-1)[k]):.4g}; --class picks another)")
            return 0
        if res.get("pixels") is not None:   # segmentation: a class is explained over its predicted pixels
            how = f"over its {res['pixels']} predicted pixels"
        else:
            how = "predicted" if k == pred else f"chosen; the network predicts {label(pred)}"
        print(f"{written}: Grad-CAM at {res['layer']} for class {label(k)} ({how})")
        if not res["raw_cam"].any():
            print(f"note: the Grad-CAM map is zero everywhere: no positive evidence for class {label(k)} at "
                  f"{res['layer']}; try another --layer", file=sys.stderr)
        return 0
    layer = args.layer or ex.first_conv(model)
    maps = ex.feature_maps(model, x, layer)
    if depth is not None and maps.ndim == 4:   # a volume layer (C, d, h, w): the plane at the drawn depth
        maps = ex.depth_slice(maps, depth, raw.shape[2])
    if maps.ndim == 1:
        _refuse_for_bars(args, layer, len(maps))
    max_maps = 64 if args.max_maps is None else args.max_maps
    names = prep.classes if maps.ndim == 1 and layer in _class_layers(model) else None
    size = ex.plot_feature_maps(maps, out, layer, model.graph.nodes[layer]["type"], args.scale or "shared", image,
                                prep.scale, subtitle, max_maps, unit_names=names)
    if maps.ndim == 1:   # a bar chart of every unit
        what = f"{len(maps)} units"
    else:
        shown = min(len(maps), max_maps)
        what = f"{shown} of {len(maps)} maps" if shown < len(maps) else f"{len(maps)} maps"
    print(f"{wrote(out, size=size, replaced=replaced)}: {what} of {layer}")
    return 0


def _explain_output(args) -> Path:
    """-o as a Path, refused when it is a folder or another format (before any work)."""
    from ..viz import check_not_folder
    check_not_folder(args.output, "explain.png")
    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise CnnGraphError(f"cannot write '{out}': use a .png, .pdf or .svg file")
    return out


def _explain_inputs(args) -> list[tuple[str, str]]:
    """(what, path) of every file explain reads: the picture written must not replace one of them."""
    from ..train.checkpoint import resolve_checkpoint
    files = [("spec", args.spec), ("--image", args.image), ("--params", args.params)]
    files += [("--plugin", p) for p in args.plugin]
    for folder in (args.checkpoint, args.params):
        if folder and Path(folder).is_dir():
            try:
                files += [("--checkpoint", str(f)) for f in resolve_checkpoint(folder).iterdir() if f.is_file()]
            except CnnGraphError:   # not a checkpoint: loading it says so
                pass
    return files


_FEATURE_MAP_OPTIONS = (("--scale", "scale"), ("--max-maps", "max_maps"))
_INPUT_OPTIONS = (("--image", "image"), ("--index", "index"), ("--invert", "invert"), ("--slice", "depth"))


def _check_options(args) -> None:
    """Bad values, and options the chosen picture does not use: refused, not silently ignored."""
    given = (lambda pairs: [opt for opt, key in pairs if _given(getattr(args, key))])
    if args.max_maps is not None and args.max_maps < 1:
        raise CnnGraphError(f"--max-maps must be >= 1, found {args.max_maps}")
    if args.class_index is not None and not args.gradcam:
        raise CnnGraphError("--class chooses the class that --gradcam explains; add --gradcam")
    unused = given(_INPUT_OPTIONS + _FEATURE_MAP_OPTIONS) if args.filters else []
    if unused:
        raise CnnGraphError(f"{unused[0]} is not used by --filters, which draws the first convolution's kernels "
                            f"(they do not depend on an input); drop {unused[0]}, or --filters to see feature maps")
    unused = given(_FEATURE_MAP_OPTIONS) if args.gradcam else []
    if unused:
        raise CnnGraphError(f"{unused[0]} sets how feature maps are drawn; --gradcam draws none: drop {unused[0]}")
    if args.invert and args.image and Path(args.image).suffix.lower() == ".npy":
        raise CnnGraphError(f"--invert turns image files dark-on-light to light-on-dark; '{args.image}' is an .npy "
                            f"array, used as it is: drop --invert")


def _given(value) -> bool:
    """An option on the command line: not its default None (or False for a switch); --index 0 counts."""
    return value is not None and value is not False


def _refuse_for_bars(args, layer: str, units: int) -> None:
    """A flat layer is drawn as one bar chart of all its units: --scale and --max-maps would be ignored."""
    unused = [opt for opt, key in _FEATURE_MAP_OPTIONS if getattr(args, key) is not None]
    if unused:
        raise CnnGraphError(f"{unused[0]} sets how feature maps are drawn; layer '{layer}' gives {units} units, "
                            f"drawn as one bar chart: drop {unused[0]}, or choose a --layer with feature maps")


def _depth(args, raw) -> int | None:
    """The input depth a volume (1, C, D, H, W) is drawn at (--slice, default the middle); None for others."""
    if raw.ndim != 5:
        if args.depth is not None:
            raise CnnGraphError("--slice picks a depth of a volume input (C, D, H, W); this model's input has none")
        return None
    depths = raw.shape[2]
    depth = depths // 2 if args.depth is None else args.depth
    if not -depths <= depth < depths:
        raise CnnGraphError(f"--slice {depth} is out of range: the volume has {depths} depths (0 to {depths - 1})")
    return depth % depths


def _class_layers(model) -> set:
    """The layers that give class scores: the class output (a final softmax's input) and the spec's outputs."""
    from ..viz.explain import class_output
    try:
        return {class_output(model), *model.spec.outputs}
    except CnnGraphError:
        return set(model.spec.outputs)
