"""Looking inside a trained network: feature maps, first-layer filters, Grad-CAM and saliency.

Everything runs on the engine: feature maps through ``Model.forward(outputs=[layer])``, Grad-CAM
through ``Model.backward(..., wrt=[layer])`` (the gradient of the class score with respect to the
layer's output) and saliency through the input gradient. Figures are drawn with matplotlib's Agg
backend (no display needed). A model whose input is a sequence (C, L) gets the same views drawn over L:
feature maps as a channels x L heat map, kernels and Grad-CAM and saliency as curves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, CnnGraphError, DataError
from ..train.checkpoint import load_weights as read_weights
from ..train.checkpoint import resolve_checkpoint, trained_from

__all__ = ["Weights", "Preprocess", "resolve_checkpoint", "load_weights", "preprocessing", "load_input",
           "feature_maps", "gradcam", "saliency", "first_conv", "default_cam_layer", "class_output",
           "plot_feature_maps", "plot_filters", "plot_attribution"]


@dataclass
class Weights:
    source: str                      # what was loaded, for titles and messages
    meta: dict = field(default_factory=dict)
    random: bool = False


@dataclass
class Preprocess:
    scale: float = 1.0                # [0, 1] image → raw units
    mean: list | None = None
    std: list | None = None
    classes: list | None = None
    note: str = ""
    pixel_range: list | None = None   # the raw training pixels' (min, max), when the checkpoint tells
    as_is: bool = False               # trained with train.data.pixels: as_is (.npy numbers used as they are)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        x = np.array(raw, dtype=np.float32)
        if self.mean is not None and self.std is not None:
            c = x.shape[1]
            per_channel = (1, -1) + (1,) * (x.ndim - 2)
            m = np.asarray(self.mean, np.float32).reshape(per_channel)
            s = np.asarray(self.std, np.float32).reshape(per_channel)
            if m.shape[1] not in (1, c):
                raise DataError(f"normalisation has {m.shape[1]} values but the input has {c} channels")
            x = (x - m) / s
        return x


# ---------------------------------------------------------------------------------------------
def load_weights(model, checkpoint=None, params=None) -> Weights:
    """Load a checkpoint (any folder :func:`resolve_checkpoint` accepts) or an .npz of parameters into
    ``model``; random weights without either."""
    if checkpoint and params:
        raise CnnGraphError("give --checkpoint or --params, not both")
    if checkpoint or (params and Path(params).is_dir()):
        folder = resolve_checkpoint(checkpoint or params)
        arrays, meta = read_weights(folder)
        from ..train.run_state import check_meta, input_channels
        check_meta(meta or {}, folder, input_channels(model.spec))
        try:
            model.load_params(arrays)
        except CnnGraphError as exc:
            raise CheckpointError(f"checkpoint {folder} does not fit this spec: {exc}{trained_from(meta)}") from None
        return Weights(f"checkpoint {folder}", dict(meta))
    if params:
        arrays, _ = read_weights(params)
        model.load_params(arrays)
        return Weights(f"parameters {Path(params).name}")
    return Weights(f"random weights (seed {model.seed})", random=True)


def _meta_value(meta: dict, key: str):
    if key in meta:
        return meta[key]
    for sub in ("data", "dataset", "normalization", "normalize"):
        if isinstance(meta.get(sub), dict) and key in meta[sub]:
            return meta[sub][key]
    return None


def preprocessing(spec, meta: dict | None = None) -> Preprocess:
    """How an image becomes a model input: the checkpoint's ``pixel_scale``/``mean``/``std`` when it has
    them, else the spec's ``train.data`` section (explicit stats; the bundled digits are loaded to get
    theirs), else none."""
    meta = meta or {}
    mean, std = _meta_value(meta, "mean"), _meta_value(meta, "std")
    scale = _meta_value(meta, "pixel_scale")
    classes = _meta_value(meta, "classes")
    if mean is not None and std is not None:
        pixel_range = _meta_value(meta, "pixel_range")
        return Preprocess(float(scale or 1.0), list(mean), list(std), classes, "normalisation from the checkpoint",
                          list(pixel_range) if isinstance(pixel_range, (list, tuple)) else None,
                          _meta_value(meta, "pixels") == "as_is")
    train = getattr(spec, "train", None)
    data = getattr(train, "data", None) if train is not None else None
    if data is not None:
        norm = data.normalize
        if hasattr(norm, "mean"):
            return Preprocess(float(scale or 1.0), list(norm.mean), list(norm.std), classes,
                              "normalisation from the spec's train.data")
        if norm == "none":
            return Preprocess(float(scale or 1.0), None, None, classes, "no normalisation (train.data.normalize: none)")
        if data.dataset == "digits":
            from ..train.data import load_dataset
            shape = tuple(next(iter(spec.inputs.values())).shape)
            try:
                ds = load_dataset(data, shape, seed=getattr(train, "seed", 0))
                return Preprocess(float(scale or ds.pixel_scale), ds.mean, ds.std, classes or ds.classes,
                                  "normalisation of the bundled digits training split")
            except CnnGraphError:
                pass
    return Preprocess(float(scale or 1.0), None, None, classes,
                      "no normalisation (the checkpoint meta and the spec give none)")


def _single_image_input(spec) -> tuple[str, tuple]:
    if len(spec.inputs) != 1:
        raise CnnGraphError(f"explain works on models with one image input; this one takes {', '.join(spec.inputs)}")
    name, inp = next(iter(spec.inputs.items()))
    if len(inp.shape) not in (2, 3, 4):
        raise CnnGraphError(f"explain needs a (C, H, W) image, (C, L) sequence or (C, D, H, W) volume input; '{name}' "
                            f"has shape {tuple(inp.shape)}")
    return name, tuple(inp.shape)


def load_input(path, spec, prep: Preprocess, invert: bool = False, index: int = 0,
               notes: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an image file or .npy sample as (raw (1, C, H, W) (or (1, C, L)) in raw units, normalised model input).
    ``index`` picks a sample of a batch; a negative one counts from the end, as in Python. ``notes`` (a list)
    gets a note when an image's aspect ratio or colours were changed to fit the input."""
    from ..train.data import npy_eight_bit
    from ..train.images import read_inputs
    _, shape = _single_image_input(spec)
    raw = read_inputs([path], shape, scale=prep.scale, invert=invert,
                      eight_bit=npy_eight_bit(prep.pixel_range, prep.scale), as_is=prep.as_is, notes=notes)
    if not -len(raw) <= index < len(raw):
        raise DataError(f"'{path}' holds {len(raw)} sample(s); --index {index} is out of range "
                        f"({-len(raw)} to {len(raw) - 1})")
    raw = raw[index % len(raw):][:1]
    return raw, prep.apply(raw)


# ---------------------------------------------------------------------------------------------
def _check_layer(model, layer: str) -> None:
    g = model.graph
    if layer not in g or g.nodes[layer]["kind"] != "layer":
        from ..registry import did_you_mean
        layers = [n for n in g if g.nodes[n]["kind"] == "layer"]
        if layer in model.spec.inputs:   # summary lists it, but it is the image given, not a layer's output
            raise CnnGraphError(f"'{layer}' is the input of {model.spec.name}, not a layer; --layer takes one of "
                                f"its layers: {', '.join(layers)}")
        raise CnnGraphError(f"no layer '{layer}' in {model.spec.name}{did_you_mean(layer, layers)}; "
                            f"layers: {', '.join(layers)}")


def feature_maps(model, x: np.ndarray, layer: str) -> np.ndarray:
    """The output of ``layer`` for one sample (its per-sample shape, NumPy)."""
    from ..backend import to_numpy
    _check_layer(model, layer)
    name = next(iter(model.spec.inputs))
    return np.asarray(to_numpy(model.forward({name: x}, outputs=[layer])[layer]))[0]


def first_conv(model) -> str:
    from ..graph import topological_order
    for n in topological_order(model.graph):
        a = model.graph.nodes[n]
        if a["kind"] == "layer" and f"{n}.weight" in model.params and model.params[f"{n}.weight"].ndim in (3, 4, 5):
            return n
    raise CnnGraphError(f"{model.spec.name} has no convolution layer (no 3-D, 4-D or 5-D weight)")


def class_output(model, values: bool = False) -> str:
    """The output that gives class scores: the first spec output with a flat (K,) shape, else the first
    with per-pixel scores (K, H, W) (segmentation); for a network that ends in softmax or sigmoid, that
    layer's input (the class scores or logits, not their probabilities). With ``values`` (a regression)
    a final sigmoid is kept: its output is the value explained."""
    final = ("softmax",) if values else ("softmax", "sigmoid")
    for rank in (1, 3):
        for o in model.spec.outputs:
            a = model.graph.nodes[o]
            if len(a["out_shape"]) == rank and not a.get("reduces_batch"):
                src = a["inputs"][0] if a["type"] in final and len(a["inputs"]) == 1 else None
                if src is not None and model.graph.nodes[src]["kind"] == "layer":
                    return src
                return o
    shapes = ", ".join(f"{o} {tuple(model.graph.nodes[o]['out_shape'])}" for o in model.spec.outputs)
    raise CnnGraphError(f"no output of {model.spec.name} gives class scores or values of shape (K,), or per-pixel "
                        f"scores (K, H, W), to explain; per-step outputs of sequences (K, L) are not supported; "
                        f"outputs: {shapes}")


def _class_seed(scores: np.ndarray, class_index: int | None, output: str) -> tuple[int, np.ndarray, int | None]:
    """The class explained and the output gradient that selects it: its score, or for per-pixel scores
    (segmentation) the sum of its scores over the pixels predicted as it (Seg-Grad-CAM, Vinogradova et
    al. 2020; all pixels when none is). Returns (class, seed of shape (1, *scores.shape), pixels or None)."""
    if scores.ndim == 3:
        pred = scores.argmax(axis=0)
        area = np.bincount(pred.ravel(), minlength=scores.shape[0])
        if class_index is None:   # the largest predicted class other than class 0 (background), if any
            k = int(np.argmax(area[1:]) + 1) if area[1:].any() else 0
        else:
            k = int(class_index)
    else:
        k = int(np.argmax(scores)) if class_index is None else int(class_index)
    if not 0 <= k < scores.shape[0]:
        raise CnnGraphError(f"--class {k} is out of range: the output '{output}' has {scores.shape[0]} classes")
    seed = np.zeros((1,) + scores.shape, np.float32)
    if scores.ndim == 3:
        region = pred == k
        seed[0, k] = region if region.any() else 1.0
        return k, seed, int(region.sum())
    seed[0, k] = 1.0
    return k, seed, None


def _binary_seed(logit: np.ndarray, class_index: int | None, output: str) -> tuple[int, np.ndarray, int | None]:
    """One logit per sample (or pixel) is a binary classifier, read as predict reads it: class 1 where
    the logit is > 0 (p > 0.5). Class 1 is explained by the logit, class 0 by its negative (the evidence
    against class 1). Per pixel, the default is class 1 when any pixel is predicted as it."""
    positive = logit[0] > 0
    if class_index is None:
        k = int(positive.any())
    elif class_index in (0, 1):
        k = int(class_index)
    else:
        raise CnnGraphError(f"--class {class_index} is out of range: the output '{output}' has one unit, a "
                            f"binary classifier (class 1 where p > 0.5); use --class 0 or 1")
    sign = 1.0 if k == 1 else -1.0
    seed = np.full((1,) + logit.shape, sign, np.float32)
    if logit.ndim == 1:
        return k, seed, None
    region = positive == bool(k)
    if region.any():
        seed[0, 0] *= region
    return k, seed, int(region.sum())


def default_cam_layer(model, output: str) -> str:
    """The last layer before ``output`` with a spatial (C, H, W) output larger than 1x1 ((C, L) with L > 1
    for a sequence input), pooling layers skipped when another candidate exists (the last convolution
    block, as in the paper). For per-pixel scores, the classifier head is skipped too (see :func:`_score_head`)."""
    import networkx as nx
    from ..graph import topological_order
    ancestors = nx.ancestors(model.graph, output) - _score_head(model, output)
    rank = _input_rank(model)
    best = best_any = None
    for n in topological_order(model.graph):
        a = model.graph.nodes[n]
        if n in ancestors and a["kind"] == "layer" and len(a["out_shape"]) == rank and math.prod(a["out_shape"][1:]) > 1:
            best_any = n
            if "pool" not in a["type"] and "dropout" not in a["type"]:
                best = n
    best = best or best_any
    if best is None:
        raise CnnGraphError(f"no layer with a spatial {_maps(rank)} output feeds the class scores; pass --layer")
    return best


def _input_rank(model) -> int:
    """Per-sample rank of the model's input: 3 for an image (C, H, W), 2 for a sequence (C, L), 4 for a volume."""
    return len(next(iter(model.spec.inputs.values())).shape)


def _maps(rank: int) -> str:
    return {2: "(C, L)", 4: "(C, D, H, W)"}.get(rank, "(C, H, W)")


def _score_head(model, output: str) -> set:
    """The chain of single-input layers ending at a per-pixel ``output`` that carry its K class channels
    (a 1x1 classifier conv, an upsampling of its scores): they hold scores, not features."""
    g = model.graph
    shape = g.nodes[output]["out_shape"]
    head: set = set()
    n = output
    while len(shape) == 3 and g.nodes[n]["kind"] == "layer" and len(g.nodes[n]["inputs"]) == 1:
        n = g.nodes[n]["inputs"][0]
        a = g.nodes[n]
        if a["kind"] != "layer" or len(a["out_shape"]) != 3 or a["out_shape"][0] != shape[0]:
            break
        head.add(n)
    return head


def _resize(m: np.ndarray, hw: tuple) -> np.ndarray:
    from PIL import Image
    if m.shape == tuple(hw):
        return m.astype(np.float32)
    if m.ndim != 2:   # a sequence or a volume: linear along each axis, on sample centres as PIL's bilinear resize
        for axis, n in enumerate(hw):
            at = (np.arange(n) + 0.5) * m.shape[axis] / n - 0.5
            m = np.apply_along_axis(lambda v: np.interp(at, np.arange(len(v)), v), axis, m)
        return m.astype(np.float32)
    im = Image.fromarray(m.astype(np.float32), mode="F").resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32)


def gradcam(model, x: np.ndarray, layer: str | None = None, class_index: int | None = None,
            output: str | None = None, values: bool = False) -> dict:
    """Grad-CAM (Selvaraju et al. 2017) for one sample.

    Returns a dict with ``cam`` (H, W) at the input resolution in [0, 1], ``raw_cam`` at the layer's
    resolution, ``class_index``, ``scores`` (the class output), ``layer``, and ``saliency`` (H, W):
    the largest absolute input gradient over channels, scaled to [0, 1]. For a sequence input (C, L)
    the layer gives (C, l) and ``cam`` and ``saliency`` are (L,). An output of one unit is a
    binary classifier (``binary``: its ``scores`` are [0, logit], whose softmax is [1 - p, p]) unless
    ``values`` says the model regresses values (``class_index`` then picks the output value).
    """
    from ..backend import to_numpy
    output = output or class_output(model, values)
    layer = layer or default_cam_layer(model, output)
    _check_layer(model, layer)
    a = model.graph.nodes[layer]
    rank = _input_rank(model)
    if len(a["out_shape"]) != rank:
        raise CnnGraphError(f"Grad-CAM needs a layer with a {_maps(rank)} output; '{layer}' gives "
                            f"{tuple(a['out_shape'])}")
    import networkx as nx
    if layer != output and layer not in nx.ancestors(model.graph, output):
        raise CnnGraphError(f"layer '{layer}' does not feed the output '{output}'")
    name = next(iter(model.spec.inputs))
    outs = model.forward({name: x}, training=False, grad=True, outputs=[layer, output])
    scores = np.asarray(to_numpy(outs[output]))[0]
    acts = np.asarray(to_numpy(outs[layer]))[0]
    binary = scores.shape[0] == 1 and not values
    k, seed, pixels = (_binary_seed if binary else _class_seed)(scores, class_index, output)
    grads = model.backward({output: seed}, input_grads=True, wrt=[layer])
    g = np.asarray(to_numpy(grads[layer]))[0]                  # (C, h, w) or (C, l)
    weights = g.mean(axis=tuple(range(1, g.ndim)))             # global-average-pooled gradients
    cam = np.maximum((weights.reshape((-1,) + (1,) * (acts.ndim - 1)) * acts).sum(axis=0), 0.0)
    hw = tuple(x.shape[2:])
    up = _resize(cam, hw)
    up = up / up.max() if up.max() > 0 else up
    gx = np.abs(np.asarray(to_numpy(grads[name]))[0]).max(axis=0)
    sal = gx / gx.max() if gx.max() > 0 else gx
    if pixels is not None:   # per-pixel scores: the headline compares classes by their mean score
        scores = scores.reshape(scores.shape[0], -1).mean(axis=1)
    if binary:   # the two classes' scores: softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]
        scores = np.array([0.0, float(scores.reshape(-1)[0])], np.float32)
    return {"cam": up, "raw_cam": cam, "class_index": k, "scores": scores, "layer": layer, "output": output,
            "saliency": sal.astype(np.float32), "pixels": pixels, "binary": binary}


def depth_slice(volume_maps: np.ndarray, depth: int, depths: int) -> np.ndarray:
    """Maps (C, d, h, w) (or a CAM (d, h, w), its ``lead`` axes first) at the plane that lines up with input depth
    ``depth`` of ``depths``: the same relative position along d, as the maps' depth may be pooled."""
    axis = volume_maps.ndim - 3
    d = volume_maps.shape[axis]
    return np.take(volume_maps, min(d - 1, int((depth + 0.5) * d / depths)), axis=axis)


def slice_attribution(result: dict, depth: int, depths: int) -> dict:
    """A volume's Grad-CAM result cut at input depth ``depth``: cam and saliency at that plane, raw_cam at the
    layer's matching plane; what plot_attribution draws for an image."""
    return {**result, "cam": result["cam"][depth], "saliency": result["saliency"][depth],
            "raw_cam": depth_slice(result["raw_cam"], depth, depths)}


def saliency(model, x: np.ndarray, class_index: int | None = None, output: str | None = None,
             values: bool = False) -> np.ndarray:
    """Plain input-gradient saliency (Simonyan et al. 2014): max over channels of |d score / d input|."""
    from ..backend import to_numpy
    output = output or class_output(model, values)
    name = next(iter(model.spec.inputs))
    scores = np.asarray(to_numpy(model.forward({name: x}, training=False, grad=True, outputs=[output])[output]))[0]
    binary = scores.shape[0] == 1 and not values
    _, seed, _ = (_binary_seed if binary else _class_seed)(scores, class_index, output)
    gx = np.abs(np.asarray(to_numpy(model.backward({output: seed})[name]))[0]).max(axis=0)
    return gx / gx.max() if gx.max() > 0 else gx


# ---------------------------------------------------------------------------------------------
def _plt():
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    return Figure, FigureCanvasAgg


def _display(raw: np.ndarray, scale: float):
    """(image, cmap) for imshow from a raw (C, H, W) sample."""
    img = raw / (scale or 1.0)
    if img.shape[0] == 3:
        return np.clip(np.transpose(img, (1, 2, 0)), 0, 1), None
    return img[0], "gray"


def _plot_signal(ax, raw: np.ndarray, title: str = "input") -> None:
    """A raw (C, L) sample as one curve per channel."""
    for ch, line in enumerate(raw):
        ax.plot(line, lw=1.0, label=f"ch {ch}" if len(raw) > 1 else None)
    if len(raw) > 1:
        ax.legend(fontsize=7, loc="upper right", ncol=min(len(raw), 4))
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, raw.shape[1] - 1)


def _save(fig, path) -> None:
    from . import make_parent
    path = Path(path)
    make_parent(path)
    try:
        fig.savefig(path, dpi=fig.dpi, facecolor="white", format=path.suffix.lower().lstrip(".") or "png")
    except (OSError, ValueError) as exc:
        raise CnnGraphError(f"cannot write '{path}': {exc}") from None


def _wrap(text: str, width: float, size: float) -> list[str]:
    """``text`` broken into lines at most ``width`` points wide at font ``size``: at its ' · '
    separators first, then at spaces, then (a long path) after a '/' or anywhere."""
    from .scene import text_width
    fits = (lambda t: text_width(t, size) <= width)
    out: list[str] = []
    for line in text.split("\n"):
        cur = ""
        for part in line.split(" · "):
            if fits(f"{cur} · {part}" if cur else part):
                cur = f"{cur} · {part}" if cur else part
                continue
            if cur:
                out.append(cur + " ·")
            cur = ""
            for word in part.split(" "):
                if fits(f"{cur} {word}" if cur else word):
                    cur = f"{cur} {word}" if cur else word
                    continue
                if cur:
                    out.append(cur)
                cur = word
                while not fits(cur) and len(cur) > 1:
                    k = max([i for i in range(1, len(cur)) if fits(cur[:i])] or [1])
                    j = cur.rfind("/", 1, k)
                    k = j + 1 if j > 0 else k
                    out.append(cur[:k])
                    cur = cur[k:]
        out.append(cur)
    return out


def _headline(fig, title: str, subtitle: str = "", size: float = 10.5) -> None:
    """``title`` and ``subtitle`` above the plots, wrapped to the figure's width; call once the layout is
    set. Where the lines need more room than the layout left above the plots (their titles included),
    the figure grows taller, the plots keep their size."""
    w, h = fig.get_size_inches()
    lines = _wrap(title, w * 72 - 24, size) + (_wrap(subtitle, w * 72 - 24, size) if subtitle else [])
    need = (len(lines) * size * 1.22 + 12) / 72                      # inches, with a margin above and below
    renderer = fig.canvas.get_renderer()
    top = max(ax.get_tightbbox(renderer).y1 for ax in fig.axes) / fig.dpi if fig.axes else 0.0
    grow = need - (h - top)
    if grow > 0:
        fig.set_size_inches(w, h + grow)
        for ax in fig.axes:
            x0, y0, aw, ah = ax.get_position(original=True).bounds
            ax.set_position((x0, y0 * h / (h + grow), aw, ah * h / (h + grow)))
    fig.suptitle("\n".join(lines), fontsize=size, y=1 - 4 / 72 / fig.get_figheight(), va="top")


def _label_units(ax, names: list[str]) -> None:
    """A tick and label under every bar where the labels fit side by side, or turned upright; else
    matplotlib's own (integer) ticks."""
    from matplotlib.ticker import MaxNLocator
    from .scene import text_width
    fig = ax.get_figure()
    room = fig.get_figwidth() * 72 * 0.85 / len(names)          # points per bar, roughly (before the layout)
    size = 9.0
    if max(text_width(n, size) for n in names) + 4 <= room:
        ax.set_xticks(range(len(names)), names, fontsize=size)
    elif size * 1.25 <= room:
        ax.set_xticks(range(len(names)), names, fontsize=size, rotation=90)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_feature_maps(maps: np.ndarray, path, layer: str, layer_type: str = "", scale: str = "shared",
                      image: np.ndarray | None = None, pixel_scale: float = 1.0, subtitle: str = "",
                      max_maps: int = 64, unit_names=None) -> tuple[int, int]:
    """A grid of a layer's channels (labelled ``ch k``), the input first. ``scale`` "shared" uses one
    colour range for every map (with a colour bar), "per-map" stretches each map on its own. A flat
    layer is a bar chart, its units named by ``unit_names`` (class names) where it has one per unit."""
    if scale not in ("shared", "per-map"):
        raise CnnGraphError(f"--scale must be shared or per-map, found {scale!r}")
    Figure, Canvas = _plt()
    if maps.ndim == 1:      # a flat layer: one bar per unit
        fig = Figure(figsize=(max(6.0, min(16.0, 0.12 * len(maps) + 3)), 3.6), dpi=110)
        Canvas(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.bar(np.arange(len(maps)), maps, color=np.where(maps >= 0, "#2b6cb0", "#c53030"))
        named = unit_names is not None and len(unit_names) == len(maps)
        _label_units(ax, [str(u) for u in unit_names] if named else [str(i) for i in range(len(maps))])
        ax.set_xlabel("class" if named else "unit")
        ax.set_ylabel("activation")
        fig.tight_layout()
        _headline(fig, f"{layer} ({layer_type}): {len(maps)} units", subtitle, 11)
        _save(fig, path)
        return fig.canvas.get_width_height()
    if maps.ndim == 2:      # a sequence layer (C, L): the channels as rows of one heat map, under the input
        shown = maps[:max_maps]
        fig = Figure(figsize=(9.0, 2.2 + min(6.0, 0.18 * len(shown) + 1.2)), dpi=110)
        Canvas(fig)
        top, bottom = fig.add_gridspec(2, 1, height_ratios=[1, 2.2], hspace=0.45).subplots() if image is not None \
            else (None, fig.add_subplot(1, 1, 1))
        if top is not None:
            _plot_signal(top, image / (pixel_scale or 1.0))
        norm = shown if scale == "shared" else (shown - shown.min(1, keepdims=True)) / np.maximum(
            np.ptp(shown, axis=1, keepdims=True), 1e-12)
        im = bottom.imshow(norm, aspect="auto", cmap="viridis", interpolation="nearest")
        bottom.set_ylabel("channel")
        bottom.set_xlabel("position along L")
        fig.colorbar(im, ax=bottom, fraction=0.03, pad=0.01).ax.tick_params(labelsize=8)
        title = f"{layer} ({layer_type}): {len(maps)} channels of length {maps.shape[1]}" + (
            f", first {len(shown)} shown" if len(maps) > len(shown) else "")
        _headline(fig, f"{title} · {'shared' if scale == 'shared' else 'per-map'} colour scale", subtitle, 10)
        _save(fig, path)
        return fig.canvas.get_width_height()
    if maps.ndim != 3:
        raise CnnGraphError(f"layer '{layer}' has a {maps.ndim}-D output per sample; feature maps need (C, H, W) "
                            f"or (C, L)")
    c = maps.shape[0]
    shown = maps[:max_maps]
    n = len(shown) + (1 if image is not None else 0)
    cols = max(1, math.ceil(math.sqrt(n * 1.3)))
    rows = math.ceil(n / cols)
    cell = 1.55
    fig = Figure(figsize=(cols * cell + (0.9 if scale == "shared" else 0.2), rows * cell + 0.95), dpi=110)
    Canvas(fig)
    vmin, vmax = float(shown.min()), float(shown.max())
    if vmax <= vmin:
        vmax = vmin + 1e-6
    k = 0
    im = None
    right = 1 - (0.75 / (cols * cell + 0.9)) if scale == "shared" else 0.99
    gs = fig.add_gridspec(rows, cols, left=0.02, right=right - 0.02, top=1 - 0.8 / (rows * cell + 0.95),
                          bottom=0.02, wspace=0.08, hspace=0.28)
    if image is not None:
        ax = fig.add_subplot(gs[0, 0])
        img, cmap = _display(image, pixel_scale)
        ax.imshow(img, cmap=cmap, interpolation="nearest")
        ax.set_title("input", fontsize=9, fontweight="bold")
        ax.set_xticks([]), ax.set_yticks([])
        k = 1
    for ch, m in enumerate(shown):
        ax = fig.add_subplot(gs[k // cols, k % cols])
        if scale == "shared":
            im = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(f"ch {ch}", fontsize=9)
        else:
            lo, hi = float(m.min()), float(m.max())
            ax.imshow(m, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-6, interpolation="nearest")
            ax.set_title(f"ch {ch}  [{lo:.2g}, {hi:.2g}]", fontsize=7.5)
        ax.set_xticks([]), ax.set_yticks([])
        k += 1
    title = f"{layer} ({layer_type}): {c} channels of {maps.shape[1]}x{maps.shape[2]}"
    if c > len(shown):
        title += f", first {len(shown)} shown"
    title += f" · {'shared' if scale == 'shared' else 'per-map'} colour scale"
    if scale == "shared" and im is not None:
        cax = fig.add_axes((right + 0.005, 0.08, 0.018, 0.75))
        fig.colorbar(im, cax=cax)
        cax.tick_params(labelsize=8)
    _headline(fig, title, subtitle, 10.5)
    _save(fig, path)
    return fig.canvas.get_width_height()


def _first(shown: int, total: int) -> str:
    return f", first {shown} shown" if shown < total else ""


def plot_filters(model, path, layer: str | None = None, subtitle: str = "", max_filters: int = 64) -> tuple[int, int]:
    """The first convolution's kernels as small images: RGB when it reads 3 channels, a diverging
    colour map (blue < 0 < red) for 1 channel, one row per filter and column per input channel else; 3-D kernels
    one row per filter and column per depth plane (of each input channel); 1-D kernels as curves."""
    from ..backend import to_numpy
    layer = layer or first_conv(model)
    _check_layer(model, layer)
    key = f"{layer}.weight"
    if key not in model.params or model.params[key].ndim not in (3, 4, 5):
        raise CnnGraphError(f"layer '{layer}' has no convolution weight (3-D, 4-D or 5-D)")
    w = np.asarray(to_numpy(model.params[key]), dtype=np.float32)
    Figure, Canvas = _plt()
    if w.ndim == 5:   # a 3-D convolution: each kernel's depth planes side by side
        o, cin, kd, kh, kw = w.shape
        channels = list(range(min(cin, max(1, 12 // kd))))
        columns = [(c, d) for c in channels for d in range(kd)][:max(12, kd)]
        labels = [f"d{d}" if cin == 1 else f"in {c} d{d}" for c, d in columns]
        title = f"{layer}: {o} filters of {cin}x{kd}x{kh}x{kw}"
        what = ("depth planes" if cin == 1 else "depth planes of each input channel" if len(channels) == cin
                else f"depth planes of input channels 0-{channels[-1]} of {cin}")
        return _kernel_grid(Figure, Canvas, path, title, subtitle, lambda r, k: w[r, columns[k][0], columns[k][1]],
                            o, labels, what)

    if w.ndim == 3:   # a 1-D convolution: each filter's kernels as curves, one per input channel
        shown = w[:max_filters]
        cols = max(1, min(8, math.ceil(math.sqrt(len(shown) * 2))))
        rows = math.ceil(len(shown) / cols)
        fig = Figure(figsize=(cols * 1.6 + 0.6, rows * 1.3 + 0.9), dpi=110)
        Canvas(fig)
        lim = float(np.abs(shown).max()) or 1.0
        for i, f in enumerate(shown):
            ax = fig.add_subplot(rows, cols, i + 1)
            ax.plot(f.T[:, :12], lw=1.0, marker=".", ms=3)
            ax.axhline(0, color="0.7", lw=0.6)
            ax.set_ylim(-lim * 1.05, lim * 1.05)
            ax.set_title(f"#{i}", fontsize=8.5)
            ax.set_xticks([]), ax.set_yticks([])
        fig.subplots_adjust(left=0.03, right=0.97, top=1 - 0.75 / (rows * 1.3 + 0.9), bottom=0.03, hspace=0.4)
        _headline(fig, f"{layer}: {w.shape[0]} filters of {w.shape[1]}x{w.shape[2]}{_first(len(shown), w.shape[0])}"
                       f" (one curve per input channel{', first 12' if w.shape[1] > 12 else ''}; shared scale)",
                  subtitle, 10)
        _save(fig, path)
        return fig.canvas.get_width_height()
    o, cin, kh, kw = w.shape
    title = f"{layer}: {o} filters of {cin}x{kh}x{kw}"
    if cin in (1, 3):
        shown = w[:max_filters]
        n = len(shown)
        title += _first(n, o)
        cols = max(1, math.ceil(math.sqrt(n * 1.5)))
        rows = math.ceil(n / cols)
        fig = Figure(figsize=(cols * 1.1 + 0.9, rows * 1.2 + 0.9), dpi=110)
        Canvas(fig)
        lim = float(np.abs(shown).max()) or 1.0
        im = None
        for i, f in enumerate(shown):
            ax = fig.add_subplot(rows, cols, i + 1)
            if cin == 3:
                lo, hi = f.min(), f.max()
                ax.imshow(np.transpose((f - lo) / (hi - lo if hi > lo else 1.0), (1, 2, 0)), interpolation="nearest")
            else:
                im = ax.imshow(f[0], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_title(f"#{i}", fontsize=8.5)
            ax.set_xticks([]), ax.set_yticks([])
        title += " (RGB, each stretched to its own range)" if cin == 3 else " (shared scale, blue < 0 < red)"
        fig.subplots_adjust(left=0.03, right=0.86 if im is not None else 0.97, top=1 - 0.75 / (rows * 1.2 + 0.9),
                            bottom=0.03, wspace=0.15, hspace=0.35)
        if im is not None:
            cax = fig.add_axes((0.89, 0.1, 0.025, 0.7))
            fig.colorbar(im, cax=cax)
            cax.tick_params(labelsize=8)
    else:
        ci = min(cin, 12)
        what = f"input channels 0-{ci - 1} of {cin}" if ci < cin else "input channels"
        return _kernel_grid(Figure, Canvas, path, title, subtitle, lambda r, c: w[r, c], o,
                            [f"in {c}" for c in range(ci)], what)
    _headline(fig, title, subtitle, 10)
    _save(fig, path)
    return fig.canvas.get_width_height()


def _kernel_grid(Figure, Canvas, path, title, subtitle, kernel, filters: int, labels: list[str], what: str):
    """One row per filter (the first 16), one column per ``labels`` entry: ``kernel(row, column)`` as a 2-D image,
    all on one diverging scale. Returns the figure's size in pixels."""
    ro, ci = min(filters, 16), len(labels)
    width = ci * 0.9 + 2.0
    fig = Figure(figsize=(width, ro * 0.9 + 1.0), dpi=110)
    Canvas(fig)
    lim = max(float(np.abs(kernel(r, c)).max()) for r in range(ro) for c in range(ci)) or 1.0
    im = None
    for r in range(ro):
        for c in range(ci):
            ax = fig.add_subplot(ro, ci, r * ci + c + 1)
            im = ax.imshow(kernel(r, c), cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"#{r}", fontsize=8, rotation=0, labelpad=12)
            if r == 0:
                ax.set_title(labels[c], fontsize=8)
    rows = f"filters #0-#{ro - 1} of {filters}" if ro < filters else "filters"
    title += f" · rows: {rows}, columns: {what} · shared scale, blue < 0 < red"
    right = 1 - 0.85 / width
    fig.subplots_adjust(left=0.7 / width, right=right, top=1 - 0.8 / (ro * 0.9 + 1.0), bottom=0.03,
                        wspace=0.1, hspace=0.1)
    cax = fig.add_axes((right + 0.15 / width, 0.1, 0.2 / width, 0.7))
    fig.colorbar(im, cax=cax)
    cax.tick_params(labelsize=8)
    _headline(fig, title, subtitle, 10)
    _save(fig, path)
    return fig.canvas.get_width_height()


def attribution_title(scores: np.ndarray, k: int, output: str, classes=None, pixels: int | None = None,
                      binary: bool = False) -> str:
    """Headline of a Grad-CAM figure: the explained class, whether it is the predicted one, and
    the prediction when another class was chosen (``--class``); for a segmentation output, the class
    and the pixels predicted as it (``pixels``)."""
    if pixels is not None:
        name = str(classes[k]) if classes and k < len(classes) else str(k)
        return (f"class {name} over the {pixels} pixels predicted as it ({output})" if pixels else
                f"class {name} over all pixels ({output}; no pixel is predicted as it)")
    scores = np.asarray(scores, np.float64).reshape(-1)
    e = np.exp(scores - scores.max())
    p = e / e.sum()
    pred = int(np.argmax(scores))
    label = (lambda i: str(classes[i]) if classes and i < len(classes) else str(i))
    how = "sigmoid" if binary else "softmax"   # a binary output's scores are [0, logit]: the same p
    if k == pred:
        return f"predicted class {label(k)} ({how} {p[k]:.2f} of {output})"
    return (f"chosen class {label(k)} ({how} {p[k]:.2f} of {output}) · "
            f"the network predicts {label(pred)} ({p[pred]:.2f})")


def plot_attribution(image: np.ndarray, result: dict, path, pixel_scale: float = 1.0, classes=None,
                     subtitle: str = "") -> tuple[int, int]:
    """Input, Grad-CAM heat map over the input, and input-gradient saliency, side by side; for a sequence
    (C, L), one above the other as curves over L."""
    Figure, Canvas = _plt()
    k = result["class_index"]
    scores = result["scores"]
    title = (f"output value {k} = {float(np.asarray(scores).reshape(-1)[k]):.4g} ({result['output']})"
             if result.get("regression") else attribution_title(scores, k, result["output"], classes, result.get("pixels"),
                                                      result.get("binary", False)))
    if image.ndim == 2:
        fig = Figure(figsize=(9.0, 6.4), dpi=110)
        Canvas(fig)
        axes = fig.add_gridspec(3, 1, hspace=0.55).subplots(sharex=True)
        _plot_signal(axes[0], image / (pixel_scale or 1.0))
        for ax, key, what, colour in ((axes[1], "cam", f"Grad-CAM at {result['layer']}", "tab:red"),
                                      (axes[2], "saliency", "saliency |d score / d input|", "tab:purple")):
            ax.fill_between(np.arange(len(result[key])), result[key], color=colour, alpha=0.35, lw=0)
            ax.plot(result[key], color=colour, lw=1.2)
            ax.set_ylim(0, 1.05)
            ax.set_title(what, fontsize=10)
        axes[2].set_xlabel("position along L")
        fig.subplots_adjust(left=0.07, right=0.97, top=0.86, bottom=0.08)
        _headline(fig, title, subtitle, 11)
        _save(fig, path)
        return fig.canvas.get_width_height()
    fig = Figure(figsize=(11.0, 4.3), dpi=110)
    Canvas(fig)
    img, cmap = _display(image, pixel_scale)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    axes[0].imshow(img, cmap=cmap, interpolation="nearest")
    axes[0].set_title("input", fontsize=11)
    axes[1].imshow(img, cmap=cmap, interpolation="nearest")
    hm = axes[1].imshow(result["cam"], cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title(f"Grad-CAM at {result['layer']}", fontsize=11)
    sm = axes[2].imshow(result["saliency"], cmap="hot", vmin=0, vmax=1, interpolation="nearest")
    axes[2].set_title("saliency |d score / d input|", fontsize=11)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(hm, ax=axes[1], fraction=0.046, pad=0.03).ax.tick_params(labelsize=8)
    fig.colorbar(sm, ax=axes[2], fraction=0.046, pad=0.03).ax.tick_params(labelsize=8)
    fig.subplots_adjust(left=0.02, right=0.96, top=0.82, bottom=0.04, wspace=0.25)
    _headline(fig, title, subtitle, 11)
    _save(fig, path)
    return fig.canvas.get_width_height()
