"""Spec → networkx.DiGraph: structural checks and shape inference.

Nodes are model inputs (``kind="input"``) and layers (``kind="layer"``) keyed by id. A layer node
carries ``op`` (the op instance), ``type``, ``params``, ``inputs`` (ordered source ids),
``in_shapes`` and ``out_shape`` (per sample). An edge is a tensor, with ``ports`` (the input
positions it feeds) and ``shape``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx

from .errors import Problem, ShapeError
from .registry import Registry, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from .spec import Spec

__all__ = ["build_graph", "topological_order", "infer_shapes"]


_BROKEN = object()   # stands for a previous layer whose definition failed


def _resolve_inputs(spec: "Spec", problems: list[Problem]) -> dict[str, list[str]]:
    """Ordered input ids of each valid layer; a layer without ``inputs`` takes the previous layer.

    Layers that name an unknown input, or depend on a layer whose definition failed, are left out:
    their own problem is reported once, and nothing downstream of them echoes it."""
    valid = {layer.index: layer for layer in spec.layers}
    known = set(spec.inputs) | {layer.id for layer in spec.layers} | spec.broken_layers
    resolved: dict[str, list[str]] = {}
    prev = None
    for index in range(len(spec.data.get("layers", []))):
        layer = valid.get(index)
        if layer is None:
            prev = _BROKEN
            continue
        if layer.explicit_inputs:
            srcs = layer.inputs
        elif prev is _BROKEN:
            prev = layer.id
            continue
        elif prev is not None:
            srcs = [prev]
        elif len(spec.inputs) == 1:
            srcs = [next(iter(spec.inputs))]
        else:
            problems.append(spec.problem(
                f"the first layer has no `inputs` and the model has {len(spec.inputs)} inputs "
                f"({', '.join(spec.inputs)}); name the one it takes", ("layers", layer.index), layer.id))
            srcs = []
        listed = isinstance(spec.data["layers"][layer.index].get("inputs"), list)
        for j, src in enumerate(srcs):
            if src not in known:
                problems.append(spec.problem(
                    f"input '{src}' is neither a layer id nor a model input{did_you_mean(src, known)}",
                    ("layers", layer.index, "inputs") + ((j,) if listed else ()), layer.id))
        if all(s in known for s in srcs) and (srcs or layer.explicit_inputs):
            resolved[layer.id] = list(srcs)
        prev = layer.id
    # drop layers fed (directly or not) by a layer that is missing from the graph
    while True:
        missing = [lid for lid, srcs in resolved.items()
                   if any(s not in resolved and s not in spec.inputs for s in srcs)]
        if not missing:
            return resolved
        for lid in missing:
            del resolved[lid]


def build_graph(spec: "Spec", registry: Registry, check_shapes: bool = True) -> tuple[nx.DiGraph, list[Problem]]:
    """Compile a validated spec into a DiGraph and infer shapes; returns (graph, problems).

    Layers whose definition failed (``spec.broken_layers``) and their dependents are left out, so the
    remaining layers are still checked."""
    problems: list[Problem] = []
    g = nx.DiGraph(name=spec.name)
    for order, (name, inp) in enumerate(spec.inputs.items()):
        g.add_node(name, kind="input", type="input", out_shape=tuple(inp.shape), dtype=inp.dtype,
                   order=-len(spec.inputs) + order)
    resolved = _resolve_inputs(spec, problems)
    layers = [layer for layer in spec.layers if layer.id in resolved]
    for layer in layers:
        op_cls = registry.ops[layer.type]
        g.add_node(layer.id, kind="layer", type=layer.type, op=op_cls(layer.params, layer.id), params=layer.params,
                   inputs=resolved[layer.id], order=layer.index, plugin=op_cls.plugin)
    bad_arity: set[str] = set()
    for layer in layers:
        op_cls = registry.ops[layer.type]
        for port, src in enumerate(resolved[layer.id]):
            if (g.nodes[src].get("dtype") == "int64" and port not in op_cls.int_inputs
                    and not (op_cls.reduces_batch and port > 0)):
                problems.append(spec.problem(f"input '{src}' is int64 (class labels), but '{layer.type}' takes "
                                             f"floats there; only a loss's target or an embedding's indices may be "
                                             f"int64 (declare the input float32 for image data)",
                                             ("layers", layer.index), layer.id))
            if g.has_edge(src, layer.id):
                g.edges[src, layer.id]["ports"].append(port)
            else:
                g.add_edge(src, layer.id, ports=[port])
        lo, hi = registry.ops[layer.type].arity
        n = len(resolved[layer.id])
        if n < lo or (hi is not None and n > hi):
            bad_arity.add(layer.id)
            want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            problems.append(spec.problem(f"'{layer.type}' takes {want} input{'s' if want != '1' else ''}, "
                                         f"found {n}", ("layers", layer.index), layer.id))
    known = set(g.nodes) | {layer.id for layer in spec.layers} | spec.broken_layers
    for j, out in enumerate(spec.outputs):
        if out not in known:
            problems.append(spec.problem(f"output '{out}' is not a layer id or input{did_you_mean(out, known)}",
                                         ("outputs", j) if isinstance(spec.data.get("outputs"), list) else ("outputs",)))
    try:
        cycle = nx.find_cycle(g)
        names = [u for u, _ in cycle] + [cycle[0][0]]
        first = min((g.nodes[u]["order"], u) for u, _ in cycle)[1]
        problems.append(spec.problem(f"the layers form a cycle: {' -> '.join(names)}",
                                     ("layers", g.nodes[first]["order"]), first))
        return g, problems
    except nx.NetworkXNoCycle:
        pass
    g.graph["outputs"] = list(spec.outputs)
    g.graph["inputs"] = list(spec.inputs)
    if check_shapes:
        problems += infer_shapes(g, spec, skip=bad_arity)
    return g, problems


def topological_order(g: nx.DiGraph) -> list[str]:
    """Topological order that keeps the spec's layer order where the graph allows."""
    return list(nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n]["order"]))


def infer_shapes(g: nx.DiGraph, spec: "Spec | None" = None, skip: set[str] = frozenset()) -> list[Problem]:
    """Fill ``in_shapes``/``out_shape`` per layer; a failing (or skipped) layer's descendants are skipped."""
    problems: list[Problem] = []
    failed: set[str] = set(skip)
    for node in topological_order(g):
        attrs = g.nodes[node]
        if attrs["kind"] == "input":
            continue
        srcs = attrs["inputs"]
        if node in failed or any(s in failed for s in srcs):
            failed.add(node)
            continue
        op = attrs["op"]
        for s in srcs:
            if g.nodes[s].get("reduces_batch"):
                problems.append(_problem(spec, f"'{s}' is a loss (a scalar for the whole batch) and cannot feed "
                                               f"another layer", attrs, node))
                failed.add(node)
        if node in failed:
            continue
        in_shapes = [tuple(g.nodes[s]["out_shape"]) for s in srcs]
        try:
            out = tuple(int(d) for d in op.infer_shape(in_shapes))
            if any(d < 1 for d in out):
                raise ShapeError(f"output shape {out} has a dimension < 1")
        except ShapeError as exc:
            problems.append(_problem(spec, _shape_message(exc, srcs, in_shapes), attrs, node))
            failed.add(node)
            continue
        attrs["in_shapes"] = in_shapes
        attrs["out_shape"] = out
        attrs["reduces_batch"] = op.reduces_batch
        attrs["dtype"] = "float32"
        for s in srcs:
            g.edges[s, node]["shape"] = tuple(g.nodes[s]["out_shape"])
    return problems


def _shape_message(exc: ShapeError, srcs: list[str], in_shapes: list[tuple]) -> str:
    """The op's message with the input shapes, each named by the layer (or model input) that gives it."""
    given = ", ".join(f"{s} gives {shape}" for s, shape in zip(srcs, in_shapes))
    if getattr(exc, "shapes", None) is not None and len(srcs) > 1:   # the shapes are the problem: name them
        return f"{exc.brief}: {given}"
    if len(srcs) > 1:
        return f"{exc} (inputs: {given})"
    return f"{exc} (input shape: {in_shapes[0]})" if in_shapes else str(exc)


def _problem(spec, message, attrs, node) -> Problem:
    if spec is None:
        return Problem(message, layer=node)
    return spec.problem(message, ("layers", attrs["order"]), node)
