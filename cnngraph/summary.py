"""Per-layer cost table: output shapes, parameters, FLOPs, receptive field and memory.

Everything here is computed from the compiled graph and the scheduler's plan; nothing is run.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx

from .graph import topological_order
from .schedule import make_plan

__all__ = ["LayerRow", "Summary", "summarize", "inference_peak_bytes", "receptive_fields"]


@dataclass
class LayerRow:
    id: str
    type: str
    inputs: list[str]
    out_shape: tuple
    params: int
    flops: int              # multiply-adds per sample
    act_bytes: int          # output activation bytes for the whole batch
    receptive_field: Any    # (h, w) in input pixels, "global" or None


@dataclass
class Summary:
    name: str
    batch_size: int
    rows: list[LayerRow]
    total_params: int
    param_bytes: int
    total_flops: int
    inference_peak_bytes: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        for r in d["rows"]:
            r["out_shape"] = list(r["out_shape"])
        return d


def _param_counts(g: nx.DiGraph, node: str, rng) -> tuple[int, int]:
    attrs = g.nodes[node]
    op = attrs["op"]
    arrays = op.init_params(attrs["in_shapes"], rng)
    trainable = sum(a.size for k, a in arrays.items() if k not in op.buffers)
    total = sum(a.size for a in arrays.values())
    return int(trainable), int(total)


def receptive_fields(g: nx.DiGraph) -> dict[str, Any]:
    """Receptive field (h, w) of each layer's output in input pixels, propagated through
    kernel_size/stride/dilation; 'global' after global pooling, flatten or dense."""
    rf: dict[str, Any] = {}
    jump: dict[str, tuple] = {}
    for node in topological_order(g):
        attrs = g.nodes[node]
        if attrs["kind"] == "input":
            rf[node], jump[node] = (1, 1), (1, 1)
            continue
        srcs = attrs["inputs"]
        ins = [rf.get(s) for s in srcs]
        if any(r == "global" for r in ins) or attrs["type"].startswith("global_") or len(attrs["out_shape"]) != 3:
            rf[node], jump[node] = "global", (1, 1)
            continue
        ins = [r for r in ins if r is not None] or [(1, 1)]
        base = (max(r[0] for r in ins), max(r[1] for r in ins))
        j = max((jump.get(s, (1, 1)) for s in srcs), default=(1, 1))
        p = attrs["params"]
        k = getattr(p, "kernel_size", None)
        if k is not None:
            k = (k, k) if isinstance(k, int) else tuple(k)
            s = getattr(p, "stride", None) or k
            s = (s, s) if isinstance(s, int) else tuple(s)
            d = getattr(p, "dilation", (1, 1))
            d = (d, d) if isinstance(d, int) else tuple(d)
            base = tuple(base[i] + (k[i] - 1) * d[i] * j[i] for i in range(2))
            j = (j[0] * s[0], j[1] * s[1])
        rf[node], jump[node] = base, j
    return rf


def inference_peak_bytes(g: nx.DiGraph, batch_size: int = 1, itemsize: int = 4) -> int:
    """Peak bytes of live activations in an inference pass under the scheduler's liveness plan
    (inputs included; each tensor freed after its last consumer)."""
    plan = make_plan(g)
    size = {n: math.prod(g.nodes[n]["out_shape"]) * batch_size * itemsize for n in g.nodes}
    live = {n: size[n] for n in plan.inputs}
    peak = sum(live.values())
    for step in plan.steps:
        live[step.node] = size[step.node]
        peak = max(peak, sum(live.values()))
        for dead in step.free_after:
            live.pop(dead, None)
    return int(peak)


def summarize(graph: nx.DiGraph, name: str = "network", batch_size: int = 1, itemsize: int = 4) -> Summary:
    """Build the summary of a compiled graph (``spec.graph`` or ``model.graph``)."""
    import numpy as np
    rng = np.random.default_rng(0)
    rfs = receptive_fields(graph)
    rows = []
    total_params = total_all = total_flops = 0
    for node in topological_order(graph):
        attrs = graph.nodes[node]
        if attrs["kind"] == "input":
            rows.append(LayerRow(node, "input", [], tuple(attrs["out_shape"]), 0, 0,
                                 math.prod(attrs["out_shape"]) * batch_size * itemsize, (1, 1)))
            continue
        trainable, allp = _param_counts(graph, node, rng)
        flops = int(attrs["op"].flops(attrs["in_shapes"], attrs["out_shape"]))
        rows.append(LayerRow(node, attrs["type"], list(attrs["inputs"]), tuple(attrs["out_shape"]), trainable, flops,
                             math.prod(attrs["out_shape"]) * batch_size * itemsize, rfs.get(node)))
        total_params += trainable
        total_all += allp
        total_flops += flops
    return Summary(name, batch_size, rows, total_params, total_all * itemsize, total_flops,
                   inference_peak_bytes(graph, batch_size, itemsize))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))
