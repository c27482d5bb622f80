"""Layered (Sugiyama-style) layout computed in Python; no Graphviz needed.

1. Ranks by longest path from the sources (the spec order breaks no ties: every edge points down).
2. Edges spanning several ranks get a chain of dummy points so they route around boxes.
3. Order inside each rank: barycentric sweeps down and up, keeping the order with fewest crossings.
4. Positions along each rank: nodes pulled towards the mean position of their neighbours, solved
   exactly under the no-overlap constraint with isotonic regression (pool adjacent violators).

The layout works in abstract (rank, order) space; ``direction`` "TB" maps rank to y, "LR" to x.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

__all__ = ["Layout", "layered_layout", "count_crossings"]


@dataclass
class Layout:
    pos: dict[str, tuple[float, float]]          # node → centre (x, y), y pointing down
    size: dict[str, tuple[float, float]]         # node → (w, h)
    routes: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)  # dummy points
    width: float = 0.0
    height: float = 0.0
    ranks: dict[str, int] = field(default_factory=dict)
    crossings: int = 0
    back_edges: list[tuple[str, str]] = field(default_factory=list)   # edges left out to break cycles


def _break_cycles(g: nx.DiGraph, order_key) -> tuple[nx.DiGraph, list[tuple[str, str]]]:
    """``g`` without the edges that close a cycle (found depth-first in ``order_key`` order), and those
    edges. An invalid spec's layers may form a cycle, and it is still drawn."""
    if nx.is_directed_acyclic_graph(g):
        return g, []
    dag = g.copy()
    back: list[tuple[str, str]] = []
    state: dict = {}   # node -> 1 while on the depth-first stack, 2 when done
    for root in sorted(g.nodes, key=order_key):
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(sorted(g.successors(root), key=order_key)))]
        while stack:
            n, it = stack[-1]
            m = next(it, None)
            if m is None:
                state[n] = 2
                stack.pop()
            elif state.get(m) == 1:
                back.append((n, m))
            elif m not in state:
                state[m] = 1
                stack.append((m, iter(sorted(g.successors(m), key=order_key))))
    dag.remove_edges_from(back)
    return dag, back


def _ranks(g: nx.DiGraph, order_key) -> dict[str, int]:
    rank: dict[str, int] = {}
    for n in nx.lexicographical_topological_sort(g, key=order_key):
        preds = list(g.predecessors(n))
        rank[n] = max((rank[p] + 1 for p in preds), default=0)
    # pull sources down next to their first consumer (an input feeding only a late layer)
    for n in g.nodes:
        if g.in_degree(n) == 0 and g.out_degree(n) > 0:
            rank[n] = min(rank[s] for s in g.successors(n)) - 1
    return rank


def count_crossings(levels: list[list[str]], edges_between) -> int:
    total = 0
    for i in range(len(levels) - 1):
        pos_lo = {n: k for k, n in enumerate(levels[i + 1])}
        pairs = []
        for k, n in enumerate(levels[i]):
            for m in edges_between(n):
                if m in pos_lo:
                    pairs.append((k, pos_lo[m]))
        pairs.sort()
        # inversions of the second coordinate
        seq = [b for _, b in pairs]
        for a in range(len(seq)):
            for b in range(a + 1, len(seq)):
                if seq[a] > seq[b] and pairs[a][0] != pairs[b][0]:
                    total += 1
    return total


def _isotonic(targets: list[float], weights: list[float]) -> list[float]:
    """Non-decreasing fit minimising sum w (y - t)^2 (pool adjacent violators)."""
    blocks: list[list[float]] = []   # [value, weight, count]
    for t, w in zip(targets, weights):
        blocks.append([t, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    out = []
    for v, _, c in blocks:
        out += [v] * c
    return out


def layered_layout(g: nx.DiGraph, sizes: dict[str, tuple[float, float]], direction: str = "TB",
                   order_key=None, node_gap: float = 28.0, rank_gap: float = 46.0, sweeps: int = 12,
                   margin: float = 20.0) -> Layout:
    """Lay ``g`` out. ``sizes`` gives each node's (width, height) in drawing units."""
    if direction not in ("TB", "LR"):
        raise ValueError(f"direction must be TB or LR, found {direction!r}")
    order_key = order_key or (lambda n: 0)
    g, back = _break_cycles(g, order_key)   # back edges are drawn, but take no part in the layout
    rank = _ranks(g, order_key)
    # dummy chains for long edges
    ext = nx.DiGraph()
    ext.add_nodes_from(g.nodes)
    chains: dict[tuple[str, str], list[str]] = {}
    for u, v in g.edges:
        if rank[v] - rank[u] <= 1:
            ext.add_edge(u, v)
            continue
        prev = u
        chain = []
        for r in range(rank[u] + 1, rank[v]):
            d = ("__dummy", u, v, r)
            rank[d] = r
            ext.add_edge(prev, d)
            chain.append(d)
            prev = d
        ext.add_edge(prev, v)
        chains[(u, v)] = chain
    nlev = max(rank.values(), default=-1) + 1
    levels: list[list] = [[] for _ in range(nlev)]
    topo = list(nx.lexicographical_topological_sort(g, key=order_key))
    seen = set()
    # initial order: depth-first from the spec order keeps chains together
    for n in topo:
        if n not in seen:
            levels[rank[n]].append(n)
            seen.add(n)
    for (u, v), chain in chains.items():
        for d in chain:
            levels[rank[d]].append(d)
    # dummies start next to their source's position
    for lev in levels:
        pos0 = {n: i for i, n in enumerate(lev)}
        lev.sort(key=lambda n: pos0[n] if not isinstance(n, tuple) else pos0[n] + 0.5)

    def succ(n):
        return list(ext.successors(n))

    best = [list(l) for l in levels]
    best_c = count_crossings(levels, succ)
    for it in range(sweeps):
        if best_c == 0:
            break
        down = it % 2 == 0
        rng = range(1, nlev) if down else range(nlev - 2, -1, -1)
        for i in rng:
            ref = levels[i - 1] if down else levels[i + 1]
            rpos = {n: k for k, n in enumerate(ref)}
            cur = {n: k for k, n in enumerate(levels[i])}

            def bary(n):
                nb = ext.predecessors(n) if down else ext.successors(n)
                ps = [rpos[m] for m in nb if m in rpos]
                return sum(ps) / len(ps) if ps else cur[n]
            levels[i].sort(key=lambda n: (bary(n), cur[n]))
        c = count_crossings(levels, succ)
        if c < best_c:
            best_c, best = c, [list(l) for l in levels]
    levels = best

    def extent(n):   # (along the order axis, along the rank axis)
        if isinstance(n, tuple):
            return (6.0, 0.0)
        w, h = sizes[n]
        return (w, h) if direction == "TB" else (h, w)

    # coordinates along the order axis
    coord: dict = {}
    for lev in levels:
        x = 0.0
        for n in lev:
            e = extent(n)[0]
            coord[n] = x + e / 2
            x += e + node_gap
    for it in range(8):
        down = it % 2 == 0
        rng = range(1, nlev) if down else range(nlev - 2, -1, -1)
        for i in (rng if it < 7 else range(nlev)):
            lev = levels[i]
            targets, weights = [], []
            for n in lev:
                nb = list(ext.predecessors(n)) if down else list(ext.successors(n))
                if it == 7:
                    nb = list(ext.predecessors(n)) + list(ext.successors(n))
                if nb:
                    targets.append(sum(coord[m] for m in nb) / len(nb))
                    weights.append(1.0 if not isinstance(n, tuple) else 2.0)
                else:
                    targets.append(coord[n])
                    weights.append(0.5)
            # offsets make the separation constraints a monotonicity constraint
            offs, acc = [], 0.0
            for k, n in enumerate(lev):
                if k:
                    acc += (extent(lev[k - 1])[0] + extent(n)[0]) / 2 + node_gap
                offs.append(acc)
            fit = _isotonic([t - o for t, o in zip(targets, offs)], weights)
            for n, y, o in zip(lev, fit, offs):
                coord[n] = y + o
    # rank axis
    rank_pos = []
    acc = 0.0
    for lev in levels:
        depth = max((extent(n)[1] for n in lev), default=0.0)
        rank_pos.append((acc, depth))
        acc += depth + rank_gap
    lo = min((coord[n] - extent(n)[0] / 2 for n in coord), default=0.0)
    hi = max((coord[n] + extent(n)[0] / 2 for n in coord), default=0.0)
    pos_abs = {}
    for i, lev in enumerate(levels):
        start, depth = rank_pos[i]
        for n in lev:
            a = coord[n] - lo + margin
            b = start + depth / 2 + margin
            pos_abs[n] = (a, b) if direction == "TB" else (b, a)
    total_rank = (acc - rank_gap if levels else 0.0) + 2 * margin
    total_order = hi - lo + 2 * margin
    width, height = (total_order, total_rank) if direction == "TB" else (total_rank, total_order)
    routes = {e: [pos_abs[d] for d in chain] for e, chain in chains.items()}
    return Layout({n: p for n, p in pos_abs.items() if not isinstance(n, tuple)}, dict(sizes), routes,
                  width, height, {n: r for n, r in rank.items() if not isinstance(n, tuple)}, best_c, back)
