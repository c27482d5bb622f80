"""Execution plan: which layers run, in what order, and when each tensor can be freed.

The plan is pure data computed from the graph once per model: a topological order of the layers
that reach the requested outputs, plus liveness (the step after which each tensor has no consumer).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from .graph import topological_order

__all__ = ["Plan", "Step", "make_plan"]


@dataclass
class Step:
    """One layer invocation: its node id, input tensor ids, and tensors to free after it."""

    node: str
    inputs: list[str]
    free_after: list[str] = field(default_factory=list)


@dataclass
class Plan:
    steps: list[Step]
    outputs: list[str]
    inputs: list[str]                 # model inputs the plan reads
    last_use: dict[str, int]          # tensor id → index of the last step that reads it

    @property
    def order(self) -> list[str]:
        return [s.node for s in self.steps]


def make_plan(g: nx.DiGraph, outputs: list[str] | None = None) -> Plan:
    """Plan the layers needed for ``outputs`` (default: the spec's outputs); layers that reach no
    requested output are dropped."""
    outputs = list(outputs or g.graph["outputs"])
    needed: set[str] = set(outputs)
    for out in outputs:
        needed |= nx.ancestors(g, out)
    order = [n for n in topological_order(g) if n in needed and g.nodes[n]["kind"] == "layer"]
    steps = [Step(n, list(g.nodes[n]["inputs"])) for n in order]
    last_use: dict[str, int] = {}
    for i, step in enumerate(steps):
        for src in step.inputs:
            last_use[src] = i
    keep = set(outputs)
    for tensor, i in last_use.items():
        if tensor not in keep:
            steps[i].free_after.append(tensor)
    model_inputs = [n for n in g.graph["inputs"] if n in needed]
    return Plan(steps, outputs, model_inputs, last_use)
