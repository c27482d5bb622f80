"""What a drawing shows: a small, renderer-independent description of the network.

:func:`from_spec` reads a validated :class:`~cnngraph.spec.Spec`; :func:`from_raw` builds a
best-effort graph from spec data that failed validation (every layer that parses is drawn, with
shapes inferred as far as they go, and the layers named by the problems are marked as failing).
:func:`collapse_blocks` merges block instances (layer ids ``prefix.rest``) into one node each.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

__all__ = ["VNode", "VGraph", "from_spec", "from_raw", "collapse_blocks", "family_of", "FAMILY_COLORS",
           "key_params", "fmt_shape"]

# fill, stroke per op family (colour-blind-friendly hues, light fills so black text stays legible)
FAMILY_COLORS: dict[str, tuple[str, str]] = {
    "input": ("#e8e8e8", "#555555"),
    "conv": ("#cfe2f7", "#2b6cb0"),
    "dense": ("#e3d7f5", "#6b46c1"),
    "activation": ("#fde8c8", "#c05621"),
    "pool": ("#d4f0dc", "#2f855a"),
    "norm": ("#cdeeee", "#2c7a7b"),
    "merge": ("#fbd5e5", "#b83280"),
    "shape": ("#eeeeee", "#718096"),
    "regularization": ("#f5f5dc", "#8d7b37"),
    "loss": ("#f3dfcf", "#7b341e"),
    "resize": ("#e6f4d7", "#4d7c0f"),
    "block": ("#dbe7f0", "#2a4365"),
    "other": ("#ffffff", "#4a5568"),
    "error": ("#fed7d7", "#d10000"),
}
FAMILY_LABELS = {"input": "input", "conv": "convolution", "dense": "dense", "activation": "activation",
                 "pool": "pooling", "norm": "normalisation", "merge": "merge", "shape": "reshape",
                 "regularization": "regularisation", "loss": "loss", "resize": "resampling", "block": "block",
                 "other": "other",
                 "error": "error"}

_ACTIVATIONS = {"relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid", "softmax", "log_softmax", "selu",
                "swish", "silu", "mish", "hardswish", "prelu"}


def family_of(op_type: str, plugin: str | None = None) -> str:
    """The colour family of an op type (by name, then by the plugin module that registered it)."""
    t = op_type.lower()
    if t == "input":
        return "input"
    if "conv" in t:
        return "conv"
    if t in ("dense", "linear") or "dense" in t:
        return "dense"
    if t in _ACTIVATIONS:
        return "activation"
    if "pool" in t:
        return "pool"
    if "norm" in t:
        return "norm"
    if t in ("add", "concat", "mul", "multiply", "sum", "subtract") or "concat" in t:
        return "merge"
    if t in ("flatten", "reshape", "transpose", "squeeze", "permute"):
        return "shape"
    if "dropout" in t:
        return "regularization"
    if "upsample" in t or t in ("pixel_shuffle", "resize", "interpolate"):
        return "resize"
    if "entropy" in t or t in ("mse", "l1", "nll") or t.endswith("_loss"):
        return "loss"
    mod = (plugin or "").rsplit(".", 1)[-1]
    return {"activation": "activation", "connection": "conv", "pooling": "pool", "normalization": "norm",
            "merge": "merge", "shape": "shape", "regularization": "regularization", "loss": "loss",
            "resize": "resize"}.get(mod, "other")


def fmt_shape(shape) -> str:
    if shape is None:
        return "?"
    shape = tuple(shape)
    return "x".join(str(int(d)) for d in shape) if shape else "scalar"


@dataclass
class VNode:
    id: str
    type: str
    family: str
    detail: str = ""                  # key parameters, e.g. "3x3 /2 → 64"
    shape: tuple | None = None        # output shape per sample
    params: int | None = None         # trainable parameter count
    error: str | None = None          # message when the layer fails
    members: list[str] = field(default_factory=list)   # collapsed block: the layer ids inside
    info: dict = field(default_factory=dict)           # everything else, shown on hover in HTML

    @property
    def failing(self) -> bool:
        return self.error is not None

    @property
    def is_output(self) -> bool:
        """One of the spec's outputs (drawn with a second border)."""
        return bool(self.info.get("output"))


@dataclass
class VGraph:
    name: str
    nodes: dict[str, VNode]
    edges: list[tuple[str, str, str]]          # (src, dst, label: tensor shape)
    notes: list[str] = field(default_factory=list)   # problems not tied to a layer
    valid: bool = True

    def digraph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        for s, d, _ in self.edges:
            if s in self.nodes and d in self.nodes and s != d:
                g.add_edge(s, d)
        return g


# ----------------------------------------------------------------------------------------------
def _pair(v) -> tuple | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v)
    try:
        return tuple(v)
    except TypeError:
        return None


def _hw(p) -> str:
    p = _pair(p)
    if p is None:
        return "?"
    return f"{p[0]}x{p[1]}" if len(p) == 2 else "x".join(map(str, p))


def _one_or_both(p: tuple) -> str:
    """``2`` for (2, 2), ``2,1`` for (2, 1): both values where height and width differ."""
    return str(p[0]) if len(set(p)) == 1 else ",".join(map(str, p))


def _stride(s, default=(1, 1)) -> str:
    s = _pair(s)
    if s is None or tuple(s) == tuple(default):
        return ""
    return f" /{_one_or_both(s)}"


def _dilation(d) -> str:
    d = _pair(d)
    return f" dil {_one_or_both(d)}" if d and tuple(d) != (1, 1) else ""


def key_params(op_type: str, p: dict) -> str:
    """The few parameters worth printing in a box, e.g. ``5x5 /2 → 64``."""
    t = op_type
    if "conv" in t and "kernel_size" in p:
        s = f"{_hw(p.get('kernel_size'))}{_stride(p.get('stride'))}"
        pad = p.get("padding")
        if isinstance(pad, str) and pad == "same":
            s += " same"
        s += _dilation(p.get("dilation"))
        if p.get("groups", 1) not in (1, None):
            s += f" g{p['groups']}"
        if "out_channels" in p:
            s += f" → {p['out_channels']}"
        return s
    if t == "dense" or "out_features" in p:
        return f"→ {p.get('out_features', '?')}"
    if "pool" in t and "kernel_size" in p:
        stride = p.get("stride") or p.get("kernel_size")
        return f"{_hw(p.get('kernel_size'))}{_stride(stride, _pair(p.get('kernel_size')))}{_dilation(p.get('dilation'))}"
    if "dropout" in t and "p" in p:
        return f"p={p['p']}"
    if t in ("leaky_relu",) and "negative_slope" in p:
        return f"slope {p['negative_slope']}"
    if t == "concat" and "axis" in p:
        return f"axis {p['axis']}"
    if "upsample" in t and p.get("size") is not None:   # "→ 13x7 nearest"
        return f"→ {_hw(p['size'])} {p.get('mode', 'nearest')}"
    if "upsample" in t and "scale_factor" in p:   # "×2 nearest", "×2,1.5 bilinear"
        factor = _pair(p["scale_factor"]) or (p["scale_factor"],)
        return f"×{_one_or_both(tuple(f'{v:g}' if isinstance(v, float) else v for v in factor))} {p.get('mode', 'nearest')}"
    if t == "pixel_shuffle" and "upscale_factor" in p:
        return f"×{p['upscale_factor']}"
    skip = {"init", "bias", "affine", "eps", "momentum"}
    items = [f"{k}={_printable(v)}" for k, v in p.items() if k not in skip and not isinstance(v, (dict, list))]
    return " ".join(items[:2])


def _printable(v) -> str:
    """``v`` as text on one line: control characters written as escapes (a newline as ``\\n``), which a
    box label cannot show (the font has no glyph for them)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(v))


def _dump_params(params) -> dict:
    """An op's parameters as plain data without defaults (pydantic model or dict)."""
    if params is None:
        return {}
    if isinstance(params, dict):
        return dict(params)
    try:
        full = params.model_dump(mode="json")
        short = params.model_dump(mode="json", exclude_defaults=True)
    except Exception:  # pragma: no cover - foreign params objects
        return {}
    # keep the defaults that matter for the label
    for k in ("stride", "kernel_size", "out_channels", "out_features", "p", "padding", "dilation", "groups",
              "scale_factor", "upscale_factor"):
        if k in full:
            short.setdefault(k, full[k])
    return short


def _count_params(g, node: str) -> int | None:
    """The layer's trainable parameter count; None when its op cannot make them (the drawing goes on)."""
    import numpy as np

    from ..errors import CnnGraphError
    from ..summary import param_counts
    try:
        return param_counts(g, node, np.random.default_rng(0))[0]
    except CnnGraphError:
        return None


def from_spec(spec, with_params: bool = False) -> VGraph:
    """The drawing of a validated spec (its compiled graph with inferred shapes)."""
    g = spec.graph
    from ..graph import topological_order
    nodes: dict[str, VNode] = {}
    for n in topological_order(g):
        a = g.nodes[n]
        if a["kind"] == "input":
            nodes[n] = VNode(n, "input", "input", a.get("dtype", "") if a.get("dtype") != "float32" else "",
                             tuple(a["out_shape"]), 0 if with_params else None,
                             info={"kind": "input", "dtype": a.get("dtype")})
            continue
        p = _dump_params(a.get("params"))
        count = _count_params(g, n) if with_params else None
        nodes[n] = VNode(n, a["type"], family_of(a["type"], a.get("plugin")), key_params(a["type"], p),
                         tuple(a["out_shape"]), count,
                         info={"params": p, "inputs": list(a["inputs"]), "plugin": a.get("plugin")})
    edges = []
    for n in nodes:
        a = g.nodes[n]
        for src in a.get("inputs", []) if a["kind"] == "layer" else []:
            if (src, n, "") not in edges:
                shape = g.edges[src, n].get("shape", g.nodes[src].get("out_shape"))
                edges.append((src, n, fmt_shape(shape)))
    outs = g.graph.get("outputs", [])
    for o in outs:
        if o in nodes:
            nodes[o].info["output"] = True
    return VGraph(spec.name, nodes, edges, valid=True)


# ----------------------------------------------------------------------------------------------
_LAYER_PATH = re.compile(r"^layers\[(\d+)\]")


def from_raw(data: Any, problems: list, name_hint: str = "network") -> VGraph:
    """Best-effort drawing of spec data that failed validation.

    Every layer dict is drawn (ids invented as ``layers[i]`` where missing); layers whose
    parameters validate get their label and, where every input has one, an inferred shape. Layers
    named by a problem (``Problem.layer`` or a ``layers[i]`` path) are marked failing with the
    problem's message; other problems become notes.
    """
    from ..blocks import BROKEN_INSTANCE
    from ..registry import get_registry
    registry = get_registry()
    if not isinstance(data, dict):
        data = {}
    name = data.get("name") if isinstance(data.get("name"), str) else name_hint
    raw_inputs = data.get("inputs") if isinstance(data.get("inputs"), dict) else {}
    raw_layers = [l for l in data.get("layers")] if isinstance(data.get("layers"), list) else []
    nodes: dict[str, VNode] = {}
    shapes: dict[str, tuple | None] = {}
    for iname, ispec in raw_inputs.items():
        shape = None
        if isinstance(ispec, dict) and isinstance(ispec.get("shape"), list) and \
                all(isinstance(d, int) and d > 0 for d in ispec["shape"]):
            shape = tuple(ispec["shape"])
        nodes[str(iname)] = VNode(str(iname), "input", "input", "", shape, info={"kind": "input"})
        shapes[str(iname)] = shape
    index_to_id: dict[int, str] = {}
    order: list[tuple[str, list[str], Any]] = []
    prev = None
    for i, raw in enumerate(raw_layers):
        if not isinstance(raw, dict):
            lid = f"layers[{i}]"
            raw = {}
        else:
            lid = raw.get("id") if isinstance(raw.get("id"), str) and raw.get("id") else f"layers[{i}]"
        while lid in nodes:
            lid = lid + "'"
        index_to_id[i] = lid
        op_type = raw.get("type") if isinstance(raw.get("type"), str) else "?"
        ins = raw.get("inputs")
        if ins is None:
            srcs = [prev] if prev is not None else ([next(iter(raw_inputs))] if len(raw_inputs) == 1 else [])
        else:
            srcs = [ins] if isinstance(ins, str) else [s for s in ins if isinstance(s, str)] if isinstance(ins, list) else []
        prev = lid
        op_raw = {k: v for k, v in raw.items() if k not in ("id", "type", "inputs", BROKEN_INSTANCE)}
        op = None
        detail = key_params(op_type, op_raw)
        plugin = None
        if op_type in registry.ops:
            cls = registry.ops[op_type]
            plugin = cls.plugin
            try:
                params = cls.Params.model_validate(op_raw)
                op = cls(params, lid)
                detail = key_params(op_type, _dump_params(params))
            except Exception:
                op = None
        nodes[lid] = VNode(lid, op_type, family_of(op_type, plugin), detail,
                           info={"params": op_raw, "inputs": srcs})
        order.append((lid, srcs, op))
    # shapes, as far as they go
    for lid, srcs, op in order:
        shape = None
        if op is not None and srcs and all(shapes.get(s) is not None for s in srcs):
            try:
                shape = tuple(int(d) for d in op.infer_shape([shapes[s] for s in srcs]))
            except Exception:
                shape = None
        shapes[lid] = shape
        nodes[lid].shape = shape
    edges = []
    for lid, srcs, _ in order:
        for s in srcs:
            if s not in nodes:   # a dangling reference: draw it as a missing node
                nodes[s] = VNode(s, "missing", "error", "", None, error=f"'{s}' is not defined")
            edges.append((s, lid, fmt_shape(shapes.get(s)) if shapes.get(s) is not None else ""))
    notes = []
    for prob in problems:
        target = prob.layer if getattr(prob, "layer", None) in nodes else None
        if target is None:
            m = _LAYER_PATH.match(getattr(prob, "path", "") or "")
            if m and int(m.group(1)) in index_to_id:
                target = index_to_id[int(m.group(1))]
        msg = prob.message
        where = f"line {prob.line}: " if getattr(prob, "line", None) else ""
        if target is not None:
            node = nodes[target]
            node.error = (node.error + "\n" if node.error else "") + where + msg
        else:
            notes.append(where + (f"{prob.path}: " if prob.path else "") + msg)
    outputs = data.get("outputs")
    for o in outputs if isinstance(outputs, list) else [outputs]:
        if isinstance(o, str) and o in nodes:
            nodes[o].info["output"] = True
    return VGraph(name, nodes, edges, notes, valid=False)


# ----------------------------------------------------------------------------------------------
def collapse_blocks(vg: VGraph) -> VGraph:
    """Merge layers whose ids share a first dotted prefix (``stage1.0.conv`` → ``stage1``) into one node."""
    def group(n: str) -> str:
        node = vg.nodes[n]
        if node.type == "input" or "." not in n:
            return n
        return n.split(".", 1)[0]
    groups: dict[str, list[str]] = {}
    for n in vg.nodes:
        groups.setdefault(group(n), []).append(n)
    nodes: dict[str, VNode] = {}
    for gid, members in groups.items():
        if len(members) == 1 and members[0] == gid:
            nodes[gid] = vg.nodes[gid]
            continue
        inside = set(members)
        sub = [vg.nodes[m] for m in members]
        # the block's output: the member feeding something outside (else the last member)
        outs = [m for m in members if any(s == m and d not in inside for s, d, _ in vg.edges)]
        last = vg.nodes[outs[-1] if outs else members[-1]]
        counts: dict[str, int] = {}
        for m in sub:
            counts[m.type] = counts.get(m.type, 0) + 1
        detail = ", ".join(f"{t}×{c}" if c > 1 else t for t, c in counts.items())
        params = None if any(m.params is None for m in sub) else sum(m.params for m in sub)
        errors = [f"{m.id}: {m.error}" for m in sub if m.error]
        if gid in nodes or gid in vg.nodes and gid not in members:
            gid = gid + " (block)"
        nodes[gid] = VNode(gid, f"block · {len(members)} layers", "error" if errors else "block", detail,
                           last.shape, params, "\n".join(errors) or None, members=list(members),
                           info={"layers": list(members), "output": any(m.is_output for m in sub)})
    where = {m: gid for gid, node in nodes.items() for m in (node.members or [gid])}
    edges = []
    seen = set()
    for s, d, label in vg.edges:
        a, b = where.get(s, s), where.get(d, d)
        if a == b or (a, b) in seen:
            continue
        seen.add((a, b))
        edges.append((a, b, label))
    return VGraph(vg.name, nodes, edges, list(vg.notes), vg.valid)


def total_params(vg: VGraph) -> int | None:
    counts = [n.params for n in vg.nodes.values() if n.type != "input"]
    return None if any(c is None for c in counts) else int(math.fsum(counts))
