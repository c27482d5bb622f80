"""Per-layer time and memory of a forward pass (``cnngraph run --profile``)."""
from __future__ import annotations

import time

from .summary import human_bytes

__all__ = ["Profiler"]


class Profiler:
    """Pass ``record`` as ``on_output`` to ``Model.forward``; each call closes one layer's timing."""

    def __init__(self, model):
        self.model = model
        self.rows: list[tuple[str, str, float, int]] = []
        self._last = time.perf_counter()

    def start(self) -> None:
        self._last = time.perf_counter()

    def record(self, node: str, y) -> None:
        now = time.perf_counter()
        self.rows.append((node, self.model.graph.nodes[node]["type"], now - self._last, int(y.nbytes)))
        self._last = time.perf_counter()

    def report(self) -> str:
        total = sum(r[2] for r in self.rows) or 1e-12
        width = max([len(r[0]) for r in self.rows] + [5])
        lines = [f"{'layer'.ljust(width)}  {'type':<18} {'ms':>9} {'share':>6}  output memory"]
        for node, typ, dt, nbytes in self.rows:
            lines.append(f"{node.ljust(width)}  {typ:<18} {dt * 1e3:9.3f} {dt / total * 100:5.1f}%  {human_bytes(nbytes)}")
        lines.append(f"{'total'.ljust(width)}  {'':<18} {total * 1e3:9.3f}")
        return "\n".join(lines)
