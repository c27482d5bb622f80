"""Receptive fields: how many input pixels (h, w) one output pixel of each layer can see; (l,) for the
(C, L) maps of 1-D layers and (d, h, w) for the (C, D, H, W) volumes of 3-D layers. Every map is followed as a
(C, D, H, W) volume: (C, H, W) as (C, 1, H, W), (C, L) as (C, 1, 1, L) (as the 1-D ops compute them).

Exact for any mix of strided, dilated and transposed (upsampling) windows: each layer's map from
output positions to input positions is followed back to the model input, one axis at a time, and
the field is the widest span over the layer's output pixels. The input counts as unbounded (padding
is image too), so a field may exceed the image, as in the usual definition.
"""
from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np

from .graph import topological_order

__all__ = ["receptive_fields", "declared_field"]

GLOBAL = "global"
AXES = 3   # (D, H, W)


def receptive_fields(g: nx.DiGraph) -> dict[str, Any]:
    """(h, w) per node; "global" from a layer that mixes the whole map (global pooling, an op with
    ``mixes_space``: group_norm, squeeze_excitation) or a flat layer after flatten (dense), whose input's
    field flatten itself keeps; None where an op changes the
    map in a way the field cannot follow (a plugin op without kernel_size that shrinks it by a
    non-integer factor). A plugin op without kernel_size that shrinks the map by a whole factor f
    (space_to_depth) counts as an f x f window with stride f."""
    order = topological_order(g)
    maps: dict[str, Any] = {}
    for node in order:
        maps[node] = _mapping(g, node, maps)
    spatial = [n for n in order if isinstance(maps[n], _Spatial)]
    fields: dict[str, Any] = {n: m for n, m in maps.items() if not isinstance(m, _Spatial)}
    per_axis = [_fields_along(g, spatial, maps, axis) for axis in range(AXES)]
    for n in spatial:   # the map's own axes: the last len(shape) - 1 of (D, H, W), or fewer (see _regroups)
        fields[n] = tuple(field[n] for field in per_axis[AXES - maps[n].reported:])
    for n in order:   # flatten only lays the pixels out in a row: each value sees what it saw before
        src = g.nodes[n].get("inputs") or [None]
        if g.nodes[n].get("type") == "flatten" and isinstance(maps.get(src[0]), _Spatial):
            fields[n] = fields[src[0]]
    return fields


def declared_field(op, in_shapes, out_shape):
    """The receptive field (h, w) ``summary`` gives one layer of ``op`` on (C, H, W) maps, from the geometry the
    op declares (kernel_size/stride, source_positions, a whole shrink factor ...); GLOBAL for an op that mixes
    the whole map, None where the field cannot follow it. ``check-op`` compares it with what forward reads."""
    g = nx.DiGraph()
    names = [f"input{i}" for i in range(len(in_shapes))]
    for name, shape in zip(names, in_shapes):
        g.add_node(name, kind="input", out_shape=tuple(shape), order=len(g))
    g.add_node("op", kind="layer", type=op.type, op=op, params=op.p, inputs=names, order=len(g),
               in_shapes=[tuple(s) for s in in_shapes], out_shape=tuple(out_shape))
    g.add_edges_from((name, "op") for name in names)
    return receptive_fields(g)["op"]


class _Spatial:
    """How a layer's output positions draw on its inputs' positions, per axis: ("input",),
    ("same",), ("window", k, s, d, pad), ("transposed", k, s, d, pad) or ("op", op, axis, n_in, n_out)
    for an op with a ``source_positions`` method; ``reported``: how many of the last axes are the map's own."""

    def __init__(self, axes, reported: int):
        self.axes = axes
        self.reported = reported


def _as_map(shape):
    """(C, D, H, W) as it is, (C, H, W) as (C, 1, H, W), (C, L) as (C, 1, 1, L); None for other shapes (no map)."""
    if not 2 <= len(shape) <= 1 + AXES:
        return None
    return (shape[0],) + (1,) * (1 + AXES - len(shape)) + tuple(shape[1:])


def _mapping(g, node, maps):
    attrs = g.nodes[node]
    own = len(attrs["out_shape"]) - 1
    if attrs["kind"] == "input":
        return _Spatial([("input",)] * AXES, own) if _as_map(attrs["out_shape"]) else GLOBAL
    ins = [maps[s] for s in attrs["inputs"]]
    op = attrs.get("op")
    if GLOBAL in ins or attrs["type"].startswith("global_") or getattr(op, "mixes_space", False) \
            or not _as_map(attrs["out_shape"]):
        return GLOBAL
    shapes = [_as_map(s) for s in attrs.get("in_shapes") or []]
    if None in ins or None in shapes:
        return None
    p = attrs["params"]
    if hasattr(op, "as_2d"):   # a 1-D window op: its 2-D form on (C, 1, L)
        op, p = op.as_2d, op.as_2d.p
    k = getattr(p, "kernel_size", None)
    if hasattr(op, "source_positions"):   # the op maps output to input positions itself (2-D upsampling)
        out = _as_map(attrs["out_shape"])
        return _Spatial([("same",)] + [("op", op, axis, shapes[0][2 + axis], out[2 + axis]) for axis in (0, 1)], own)
    if k is not None:   # a 2-D window (also a 1-D op's 2-D form) keeps the depth axis, a 3-D one has its own
        n = len(_axes(k, 2))
        k = _axes(k, n)
        shrink = _shrink_factor(attrs)
        s = _axes((getattr(p, "stride", None) or k) if hasattr(p, "stride") else (shrink[-n:] if shrink else k), n)
        d = _axes(getattr(p, "dilation", 1), n)
        pads = _leading_pads(op, shapes, n)
        kind = "transposed" if getattr(op, "transposed", False) else "window"
        return _Spatial([("same",)] * (AXES - n) + [(kind, k[i], s[i], d[i], pads[i]) for i in range(n)], own)
    regroup = _regroups(attrs)
    if regroup is not None:
        return regroup or None
    factor = _shrink_factor(attrs)
    if factor is None:
        return None
    reported = min([own] + [m.reported for m in ins if isinstance(m, _Spatial)])
    return _Spatial([("window", f, f, 1, 0) if f != 1 else ("same",) for f in factor], reported)


def _regroups(attrs):
    """For a layer without window geometry that changes the rank or transposes (reshape, transpose, flatten: a
    ShuffleNet channel shuffle (C, H, W) → (g, C/g, H, W) → (C/g, g, H, W) → (C, H, W)): the H and W mapping when
    it keeps them as the last two axes, its other axes regrouped channels whose field starts afresh; False when
    it moves H or W (no field); None for other layers."""
    ins, out = attrs.get("in_shapes") or [], tuple(attrs["out_shape"])
    if not ins or (len(ins[0]) == len(out) and attrs["type"] != "transpose") or min(len(ins[0]), len(out)) < 3:
        return None
    perm = list(getattr(attrs["params"], "perm", None) or range(len(out) + 1))
    if tuple(ins[0][-2:]) != out[-2:] or perm[-2:] != [len(out) - 1, len(out)]:
        return False
    return _Spatial([("input",), ("same",), ("same",)], 2)


def _axes(v, n):
    """A window parameter per axis: an int for all ``n`` axes, or a tuple as it is."""
    return (v,) * n if isinstance(v, int) else tuple(v)


def _leading_pads(op, shapes, n):
    """Padding at the start of each of the ``n`` axes of a window op, (top, left) in 2-D: where its first window
    starts (0 when the op does not say)."""
    try:
        if hasattr(op, "pads"):
            pads = op.pads(shapes[0] if n == 3 else shapes[0][:1] + shapes[0][2:])
        elif hasattr(op, "window"):
            pads = op.window()[2]
        else:
            return (0,) * n
        return tuple(pads[0::2])
    except Exception:  # noqa: BLE001 - a plugin's own geometry helper: alignment only, not worth failing for
        return (0,) * n


def _shrink_factor(attrs: dict):
    """(fd, fh, fw) when the layer's first input map is exactly f times its output map per axis ((1, 1, 1) when
    the map is kept or grows, since padding adds no field, or the input is not a map); None for another shrink."""
    shapes = attrs.get("in_shapes") or []
    if not shapes or not _as_map(shapes[0]) or not _as_map(attrs["out_shape"]):
        return (1,) * AXES
    sizes, outs = _as_map(shapes[0])[1:], _as_map(attrs["out_shape"])[1:]
    if all(o >= i for i, o in zip(sizes, outs)):
        return (1,) * AXES
    if any(o <= 0 or i % o for i, o in zip(sizes, outs)):
        return None
    return tuple(i // o for i, o in zip(sizes, outs))


def _input_range(rule, a, b):
    """Input positions [lo, hi) that output positions [a, b) read under ``rule``."""
    kind = rule[0]
    if kind == "window":
        _, k, s, d, pad = rule
        return a * s - pad, (b - 1) * s - pad + d * (k - 1) + 1
    if kind == "transposed":   # output o = i * s - pad + d * j
        _, k, s, d, pad = rule
        return -(-(a + pad - d * (k - 1)) // s), (b - 1 + pad) // s + 1
    if kind == "op":           # monotone maps: the first and last output's taps bound the rest
        taps = _taps(rule, np.array([a, b - 1]))
        return int(min(t[0].min() for t in taps)), int(max(t[0].max() for t in taps)) + 1
    return a, b


def _fields_along(g, nodes, maps, axis):
    """Field along one axis for each spatial node."""
    size = {n: _as_map(g.nodes[n]["out_shape"])[1 + axis] for n in nodes}
    need = {n: (0, size[n]) for n in nodes}                    # output positions each node must cover
    for n in reversed(nodes):
        rule = maps[n].axes[axis]
        a, b = _input_range(rule, *need[n])
        for src in g.nodes[n].get("inputs", ()):
            lo, hi = need[src]
            need[src] = (min(lo, a), max(hi, b))
    spans: dict[str, tuple] = {}                               # node → (first position, lo array, hi array)
    out = {}
    for n in nodes:
        first, last = need[n]
        pos = np.arange(first, last)
        rule = maps[n].axes[axis]
        if rule[0] == "input":
            lo, hi = pos.astype(float), pos.astype(float)
        else:
            lo, hi = np.full(len(pos), np.inf), np.full(len(pos), -np.inf)
            for src in g.nodes[n]["inputs"]:
                s_first, s_lo, s_hi = spans[src]
                for at, exists in _taps(rule, pos):
                    i = np.where(exists, at - s_first, 0)
                    lo = np.where(exists, np.minimum(lo, s_lo[i]), lo)
                    hi = np.where(exists, np.maximum(hi, s_hi[i]), hi)
        spans[n] = (first, lo, hi)
        own = slice(-first, -first + size[n])
        width = hi[own] - lo[own] + 1
        out[n] = int(width[np.isfinite(width)].max(initial=1))
    return out


def _taps(rule, pos):
    """For each kernel tap: (input position per output position, whether that tap exists there)."""
    kind = rule[0]
    if kind == "window":
        _, k, s, d, pad = rule
        return [(pos * s - pad + d * j, np.ones(len(pos), bool)) for j in range(k)]
    if kind == "transposed":
        _, k, s, d, pad = rule
        num = [pos + pad - d * j for j in range(k)]
        return [(v // s, v % s == 0) for v in num]
    if kind == "op":
        _, op, axis, n_in, n_out = rule
        return op.source_positions(axis, pos, n_in, n_out)
    return [(pos, np.ones(len(pos), bool))]
