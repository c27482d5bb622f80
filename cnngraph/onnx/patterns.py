"""Multi-node patterns of the ONNX graph that become one cnngraph layer, and the reachability walk.

Exporters spell some layers as chains of primitive nodes: exact GELU as Div/Erf/Add/Mul/Mul, and
PyTorch's LocalResponseNorm as Mul/Reshape/Pad/AveragePool/Reshape/Mul/Add/Pow/Div. The finders
here map node indices of the graph to what the importer's walk should do with each node:

* ``None``: the node lies inside a fused pattern and is skipped;
* a tensor name: the node's output is ``gelu`` of that tensor;
* ``(tensor name, layer type, params)``: the node's output is that layer applied to the tensor;
* a :class:`Fusion`: the same with weights, and a pattern the walk still confirms (or drops, importing its
  nodes one by one) at its first node, once the input's shape is known.

A pattern fuses only when every constant has the exact value the layer implies and no tensor inside it
has another reader or is a graph output: then the one layer computes exactly what the nodes compute.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .common import OnnxError
from .folding import evaluate, f32

__all__ = ["find_patterns", "find_gelu", "find_torch_lrn", "dead_nodes", "refs", "Fusion"]


def find_patterns(imp) -> dict:
    """Every fused pattern of ``imp``'s graph, as the map described in the module docstring."""
    fused = find_gelu(imp)
    fused.update(find_torch_lrn(imp, fused))
    view = _View(imp, set(fused))
    for finder in (find_squeeze_excitation, find_group_norm, find_gelu_tanh, find_softplus, find_mish,
                   find_swish, find_hard_swish):
        fused.update(finder(view))
    return fused


def find_gelu(imp) -> dict:
    """The exact-GELU subgraph x · 0.5 · (1 + erf(x / √2)) as PyTorch and cnngraph write it:
    Div(x, √2) → Erf → Add(·, 1) → Mul(x, ·) → Mul(·, 0.5), or the Muls the other way round. Returns index of each inner node → None,
    index of the last Mul → x's name."""
    nodes = list(imp.graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    users: dict[str, list] = {}
    for k, n in enumerate(nodes):
        for i in n.input:
            users.setdefault(i, []).append(k)
    graph_outputs = {o.name for o in imp.graph.output}

    def scalar(name, value):
        v = imp.consts.get(name)
        if v is None and name in producer and nodes[producer[name]].op_type == "Constant":
            try:
                imp.current_node = nodes[producer[name]]
                v = imp.fold(nodes[producer[name]])[0]
            except Exception:
                return False
        return v is not None and np.size(v) == 1 and abs(float(np.asarray(v).reshape(())) - value) < 1e-5

    def only_user(name):
        u = users.get(name, [])
        return u[0] if len(u) == 1 and name not in graph_outputs else None

    def node_of(k, op):
        return nodes[k] if k is not None and nodes[k].op_type == op else None

    out = {}
    for ke, erf in enumerate(nodes):
        if erf.op_type != "Erf":
            continue
        kd = producer.get(erf.input[0])
        div = node_of(kd, "Div")
        if div is None or not scalar(div.input[1], math.sqrt(2)) or only_user(div.output[0]) != ke:
            continue
        x = div.input[0]
        ka = only_user(erf.output[0])
        add = node_of(ka, "Add")
        if add is None or not scalar(add.input[1] if add.input[0] == erf.output[0] else add.input[0], 1.0):
            continue
        # then two Muls by x and by 0.5, in either order (TorchScript: x first; dynamo: 0.5 first)
        km = only_user(add.output[0])
        mul1 = node_of(km, "Mul")
        first = None if mul1 is None else (mul1.input[1] if mul1.input[0] == add.output[0] else mul1.input[0])
        if first is None or not (first == x or scalar(first, 0.5)):
            continue
        kh = only_user(mul1.output[0])
        mul2 = node_of(kh, "Mul")
        second = None if mul2 is None else (mul2.input[1] if mul2.input[0] == mul1.output[0] else mul2.input[0])
        if second is None or not (second == x if first != x else scalar(second, 0.5)):
            continue
        out.update({kd: None, ke: None, ka: None, km: None, kh: x})
    return out


def refs(node) -> list[str]:
    """Every tensor ``node`` reads: its inputs plus the outer-scope names its subgraphs (If, Loop) use."""
    names = list(node.input)
    from onnx import AttributeProto
    for a in node.attribute:
        graphs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs) if a.type == AttributeProto.GRAPHS else []
        for g in graphs:
            inner = {i.name for i in g.input} | {i.name for i in g.initializer}
            for n in g.node:
                names += [i for i in refs(n) if i not in inner]
                inner.update(n.output)
            names += [o.name for o in g.output if o.name not in inner]
    return [n for n in names if n]


def dead_nodes(graph, fused: dict) -> set[int]:
    """Nodes whose outputs reach no graph output once fused patterns read only their input."""
    nodes = list(graph.node)
    needed = {o.name for o in graph.output}
    dead = set()
    for k in range(len(nodes) - 1, -1, -1):
        node = nodes[k]
        if not any(o in needed for o in node.output):
            dead.add(k)
            continue
        if k in fused:
            src = fused[k]
            if src is not None:
                needed.add(src if isinstance(src, str) else src.src if isinstance(src, Fusion) else src[0])
            continue
        needed.update(refs(node))
    return dead


def find_torch_lrn(imp, taken: dict) -> dict:
    """torch.nn.LocalResponseNorm as torch.onnx.export writes it (no LRN node):
    x / (k + alpha · AvgPool3d_(size,1,1)(Pad(Reshape(x·x, (N,1,C,H,W)))) reshaped back)^beta.
    Returns index of the Div → (x, "local_response_norm", params), index of each inner node → None."""
    nodes = list(imp.graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    graph_outputs = {o.name for o in imp.graph.output}

    def const_value(name):
        if name in imp.consts:
            return imp.consts[name]
        k = producer.get(name)
        if k is None or nodes[k].op_type != "Constant":
            return None
        try:
            imp.current_node = nodes[k]
            return imp.fold(nodes[k])[0]
        except OnnxError:
            return None

    def scalar(name):
        v = const_value(name)
        return None if v is None or np.size(v) != 1 else float(np.asarray(v).reshape(()))

    def split(node):   # (the computed operand, the scalar constant) of a binary node
        for i, j in ((0, 1), (1, 0)):
            c = scalar(node.input[j])
            if c is not None and node.input[i] in producer and const_value(node.input[i]) is None:
                return node.input[i], c
        return None, None

    def prod(name, op):
        k = producer.get(name)
        return (k, nodes[k]) if k is not None and nodes[k].op_type == op and k not in taken else (None, None)

    def attr(node, name, default=None):
        from onnx import helper
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)

    def fold_pads(name):
        """The pads tensor, when it is computed from constants only (as torch writes it)."""
        if name in imp.consts:
            return [int(v) for v in np.asarray(imp.consts[name]).reshape(-1)]
        sub, todo, seen = [], [name], set()
        while todo:
            t = todo.pop()
            if t in seen or t in imp.consts:
                continue
            seen.add(t)
            k = producer.get(t)
            if k is None:
                return None   # a graph input
            if nodes[k].op_type == "Shape":
                return None
            sub.append(k)
            todo += refs(nodes[k])
        try:
            feeds = {t: imp.consts[t] for k in sub for t in refs(nodes[k]) if t in imp.consts}
            pads = evaluate([nodes[k] for k in sorted(set(sub))], feeds, [name], imp.opset)[0]
            return [int(v) for v in np.asarray(pads).reshape(-1)]
        except Exception:
            return None

    out = {}
    for kd, div in enumerate(nodes):
        if div.op_type != "Div" or kd in taken:
            continue
        x = div.input[0]
        kp, pw = prod(div.input[1], "Pow")
        if pw is None or (beta := scalar(pw.input[1])) is None:
            continue
        ka, add = prod(pw.input[0], "Add")
        if add is None:
            continue
        r, k = split(add)
        km, mul = prod(r, "Mul")
        if mul is None:
            continue
        r, alpha = split(mul)
        inner = [kp, ka, km]
        # back through the Reshape / Squeeze / If(squeeze) that drop the pooling's extra axis
        pool = None
        for _ in range(4):
            kr = producer.get(r)
            if kr is None or kr in taken:
                break
            n = nodes[kr]
            if n.op_type == "AveragePool":
                pool = kr
                break
            if n.op_type not in ("Reshape", "Squeeze", "If", "Identity"):
                break
            inner.append(kr)
            if n.op_type == "If":   # both branches squeeze (or not) the pooled tensor
                outer = [t for t in refs(n)[1:] if t in producer]
                if len(set(outer)) != 1:
                    break
                r = outer[0]
            else:
                r = n.input[0]
        if pool is None:
            continue
        ap = nodes[pool]
        kernel = list(attr(ap, "kernel_shape", []))
        if (len(kernel) != 3 or kernel[1:] != [1, 1] or any(v != 1 for v in attr(ap, "strides", [1, 1, 1]))
                or any(attr(ap, "pads", [0] * 6)) or not attr(ap, "count_include_pad", 0)
                or attr(ap, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"", "")):
            continue
        size = int(kernel[0])
        kpad, padn = prod(ap.input[0], "Pad")
        if padn is None or (attr(padn, "mode", b"constant") not in (b"constant", "constant")):
            continue
        pads = fold_pads(padn.input[1]) if len(padn.input) > 1 else list(attr(padn, "pads", []))
        window = "torch"
        if pads is not None and pads != [0, 0, size // 2, 0, 0, 0, 0, (size - 1) // 2, 0, 0]:
            if pads != [0, 0, (size - 1) // 2, 0, 0, 0, 0, size // 2, 0, 0]:
                continue
            window = "onnx"   # cnngraph's export of an even ONNX-window LRN
        if len(padn.input) > 2 and padn.input[2] and scalar(padn.input[2]) not in (None, 0.0):
            continue
        kr, rs = prod(padn.input[0], "Reshape")
        if rs is None:
            continue
        ksq, sq = prod(rs.input[0], "Mul")
        if sq is None or list(sq.input) != [x, x]:
            continue
        inner += [pool, kpad, kr, ksq]
        if any(o in graph_outputs for j in inner for o in nodes[j].output):
            continue
        params = {"size": size, "alpha": f32(alpha), "beta": f32(beta), "k": f32(k)}
        if window == "onnx" and size % 2 == 0:
            params["window"] = "onnx"
        out.update({j: None for j in inner})
        out[kd] = (x, "local_response_norm", params)
    # an inner node whose output something else still needs (beyond dead shape arithmetic) stays unfused
    dead = dead_nodes(imp.graph, {**taken, **out})
    users: dict[str, list[int]] = {}
    for j, n in enumerate(nodes):
        if j not in dead:
            for t in refs(n):
                users.setdefault(t, []).append(j)
    bad = {j for j, v in out.items() if v is None
           and any(u not in out and u not in taken for o in nodes[j].output for u in users.get(o, []))}
    if bad:
        return {}
    return out


# ---- patterns confirmed at the walk: activations, group norm, squeeze-and-excitation ---------------------

@dataclass
class Fusion:
    """The last node of a fused pattern: its output is layer ``type`` applied to tensor ``src``. ``nodes`` are
    all the pattern's node indices. ``finish``, given ``src``'s per-sample shape at the walk, returns the final
    (params, weights), or None when the shape rules the pattern out (its nodes then import one by one)."""

    src: str
    type: str
    nodes: tuple
    params: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    finish: Callable | None = None


class _View:
    """Who writes and who reads each tensor, and the constants, for the finders below."""

    def __init__(self, imp, taken: set):
        self.imp = imp
        self.nodes = list(imp.graph.node)
        self.producer = {o: k for k, n in enumerate(self.nodes) for o in n.output if o}
        self.users: dict[str, list[int]] = {}
        for k, n in enumerate(self.nodes):
            for t in refs(n):
                self.users.setdefault(t, []).append(k)
        self.outputs = {o.name for o in imp.graph.output}
        self.taken = set(taken)   # node indices already in a pattern
        self.ops = imp.registry.ops
        self.folded: dict[str, np.ndarray | None] = {}

    def const(self, name):
        """The value of an initializer or of a Constant node's output, else None."""
        if name in self.imp.consts:
            return np.asarray(self.imp.consts[name])
        k = self.producer.get(name)
        if k is None or self.nodes[k].op_type != "Constant":
            return None
        if name not in self.folded:   # (folding runs the reference evaluator: once per Constant)
            try:
                self.imp.current_node = self.nodes[k]
                self.folded[name] = np.asarray(self.imp.fold(self.nodes[k])[0])
            except OnnxError:
                self.folded[name] = None
        return self.folded[name]

    def scalar(self, name, value=None):
        """A constant of one element (shape () or (1,): no broadcast to a higher rank) as float32, or None;
        with ``value``, whether it is exactly float32 ``value``."""
        v = self.const(name) if name else None
        one = v is not None and v.size == 1 and v.ndim <= 1 and v.dtype.kind in "fiu"
        s = np.float32(v.reshape(())) if one else None
        return s if value is None else bool(s is not None and s == np.float32(value))

    def times(self, node, value=None):
        """The computed operand of binary ``node`` (a Mul) when the other one is a scalar constant (of exactly
        ``value`` when given); else None."""
        for i in (node.input if node is not None else []):
            c = self.scalar(self.other(node, i))
            if c is not None and (value is None or c == np.float32(value)):
                return i
        return None

    def computed(self, name) -> bool:
        return bool(name) and self.const(name) is None

    def attr(self, node, name, default=None):
        from onnx import helper
        v = next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)
        return v.decode() if isinstance(v, bytes) else v

    def node(self, k, op):
        """Node ``k`` when it has type ``op`` (default domain) and is in no other pattern, else None."""
        n = self.nodes[k] if k is not None else None
        return n if n is not None and n.op_type == op and n.domain in ("", "ai.onnx") and k not in self.taken else None

    def made_by(self, name, op):
        """(index, node) of ``name``'s producer when it is an ``op`` node that nothing else reads from."""
        k = self.producer.get(name)
        return (k, self.node(k, op)) if self.inner(name) else (None, None)

    def sole_user(self, name, op):
        """(index, node) of the only reader of ``name`` when it is an ``op`` node and ``name`` is no graph output."""
        u = self.users.get(name, [])
        return (u[0], self.node(u[0], op)) if self.inner(name) else (None, None)

    def inner(self, name) -> bool:
        """Whether ``name`` can lie inside a pattern: one reader, not a graph output."""
        return len(self.users.get(name, [])) == 1 and name not in self.outputs

    @staticmethod
    def other(node, name):
        """The other operand of a binary node that reads ``name`` once, else None."""
        ins = list(node.input) if node is not None else []
        if len(ins) != 2 or ins.count(name) != 1:
            return None
        return ins[1] if ins[0] == name else ins[0]


def _claim(view, fusion: Fusion) -> dict:
    """The map entries of a found pattern (its nodes become taken)."""
    view.taken.update(fusion.nodes)
    last = max(fusion.nodes)
    return {**{k: None for k in fusion.nodes if k != last}, last: fusion}


def _gated(view, x, gate_name, nodes, type_, params=None, **more) -> dict:
    """x · gate: the only reader of ``gate_name`` multiplies it by x; then one ``type_`` layer."""
    km, mul = view.sole_user(gate_name, "Mul")
    if mul is None or view.other(mul, gate_name) != x or not view.computed(x):
        return {}
    return _claim(view, Fusion(x, type_, (*nodes, km), params or {}, **more))


def find_swish(view) -> dict:
    """x · Sigmoid(x) (SiLU, as cnngraph and torch write it), or x · Sigmoid(Mul(x, β)) with a scalar β."""
    if "swish" not in view.ops:
        return {}
    out = {}
    for ks, sig in enumerate(view.nodes):
        if view.node(ks, "Sigmoid") is None:
            continue
        kb, mul = view.made_by(sig.input[0], "Mul")
        x = view.times(mul)
        beta = view.scalar(view.other(mul, x)) if x else None
        found = _gated(view, x, sig.output[0], (kb, ks), "swish", {} if beta == 1 else {"beta": f32(beta)}) \
            if x and view.computed(x) else {}
        out.update(found or _gated(view, sig.input[0], sig.output[0], (ks,), "swish"))
    return out


def find_hard_swish(view) -> dict:
    """x · HardSigmoid(x) with alpha 1/6 and beta 1/2: ONNX HardSwish's definition, as torch writes it below
    opset 14."""
    if "hard_swish" not in view.ops:
        return {}
    out = {}
    for k, hs in enumerate(view.nodes):
        if (view.node(k, "HardSigmoid") is not None and np.float32(view.attr(hs, "alpha", 0.2)) == np.float32(1 / 6)
                and np.float32(view.attr(hs, "beta", 0.5)) == np.float32(0.5)):
            out.update(_gated(view, hs.input[0], hs.output[0], (k,), "hard_swish"))
    return out


def find_mish(view) -> dict:
    """x · Tanh(Softplus(x)): Mish below opset 18, as cnngraph and torch write it."""
    if "mish" not in view.ops:
        return {}
    out = {}
    for k, sp in enumerate(view.nodes):
        if view.node(k, "Softplus") is not None:
            kt, tanh = view.sole_user(sp.output[0], "Tanh")
            if tanh is not None:
                out.update(_gated(view, sp.input[0], tanh.output[0], (k, kt), "mish"))
    return out


def _cube_of(view, name):
    """(x, node indices) when ``name`` is x³ written as Mul(Mul(x, x), x) (either order) or Pow(x, 3)."""
    kp, pw = view.made_by(name, "Pow")
    if pw is not None and view.scalar(pw.input[1], 3.0):
        return pw.input[0], (kp,)
    k3, m3 = view.made_by(name, "Mul")
    for sq_name in (m3.input if m3 is not None else []):
        k2, m2 = view.made_by(sq_name, "Mul")
        x = view.other(m3, sq_name)
        if m2 is not None and list(m2.input) == [x, x]:
            return x, (k2, k3)
    return None, ()


def find_gelu_tanh(view) -> dict:
    """0.5 · x · (1 + Tanh(√(2/π) · (x + 0.044715 · x³))): GELU's tanh approximation below opset 20, as cnngraph
    and torch write it (x³ as two Muls or a Pow; the last two Muls by x and by 0.5 in either order)."""
    out = {}
    for kt, tanh in enumerate(view.nodes):
        if view.node(kt, "Tanh") is None:
            continue
        kb, mb = view.made_by(tanh.input[0], "Mul")
        b = view.times(mb, math.sqrt(2 / math.pi))
        ka, add = view.made_by(b, "Add") if b else (None, None)
        for a in (add.input if add is not None else []):
            kk, mk = view.made_by(a, "Mul")
            cube = view.times(mk, 0.044715)
            x, knodes = _cube_of(view, cube) if cube else (None, ())
            if x is not None and view.other(add, a) == x:
                tail = _gelu_tail(view, tanh.output[0], x)
                if tail:
                    out.update(_claim(view, Fusion(x, "gelu", (*knodes, kk, ka, kb, kt, *tail),
                                                   {"approximate": "tanh"})))
                break
    return out


def _gelu_tail(view, t, x):
    """The node indices of (1 + t) · x · 0.5, the Muls in either order, or None."""
    k1, add = view.sole_user(t, "Add")
    if add is None or not view.scalar(view.other(add, t), 1.0):
        return None
    km, mul = view.sole_user(add.output[0], "Mul")
    first = view.other(mul, add.output[0])
    if first is None or not (first == x or view.scalar(first, 0.5)):
        return None
    kh, mul2 = view.sole_user(mul.output[0], "Mul")
    second = view.other(mul2, mul.output[0])
    if second is None or not (second == x if first != x else view.scalar(second, 0.5)):
        return None
    return k1, km, kh


def find_softplus(view) -> dict:
    """log(1 + exp(β x)) / β as Mul(x, β) → Softplus → Div(·, β) (torch's nn.Softplus(beta)), and cnngraph's
    thresholded form: then Where(Greater(β x, threshold), x, ·). β = 1 writes no Mul and no Div."""
    out = {}
    for ks, sp in enumerate(view.nodes):
        if view.node(ks, "Softplus") is None:
            continue
        bx = sp.input[0]
        x, nodes, params = _softplus_beta(view, ks, sp) or (bx, [ks], {})
        y = view.nodes[nodes[-1]].output[0]
        found = _threshold(view, x, bx, y)
        if found is not None:
            nodes += found[0]
            params["threshold"] = found[1]
        elif len(nodes) == 1 or len(view.users.get(bx, [])) != 1:
            continue   # a lone Softplus imports as softplus already
        if view.computed(x):
            out.update(_claim(view, Fusion(x, "softplus", tuple(nodes), params)))
    return out


def _softplus_beta(view, ks, sp):
    """(x, node indices, params) when Softplus ``sp`` reads Mul(x, β) and only Div(·, β) reads it, else None."""
    bx = sp.input[0]
    km = view.producer.get(bx)
    mul = view.node(km, "Mul") if km is not None else None
    if mul is None or len(view.users.get(bx, [])) > 2 or bx in view.outputs:   # (the second: Greater, see below)
        return None
    x = view.times(mul)
    beta = view.scalar(view.other(mul, x)) if x is not None else None
    kd, div = view.sole_user(sp.output[0], "Div")
    if beta is None or not beta > 0 or div is None or div.input[0] != sp.output[0] or view.scalar(div.input[1]) != beta:
        return None
    return x, [km, ks, kd], {"beta": f32(beta)}


def _threshold(view, x, bx, y):
    """((Greater, Where) indices, threshold) when y's only reader is Where(Greater(bx, threshold), x, y)."""
    kw, where = view.sole_user(y, "Where")
    if where is None or list(where.input[1:]) != [x, y]:
        return None
    kg, gt = view.made_by(where.input[0], "Greater")
    thr = view.scalar(gt.input[1]) if gt is not None and gt.input[0] == bx else None
    return None if thr is None else ((kg, kw), f32(thr))


def find_group_norm(view) -> dict:
    """torch's GroupNorm below opset 21, as cnngraph writes it too: Reshape(x, [0, G, -1]) → InstanceNormalization
    (scale 1, bias 0) → Reshape back (to [0, *shape] or Shape(x)), then optionally Mul by the per-channel weight
    and Add the bias (C, 1, ..., 1). Shapes are checked at the walk (see Fusion.finish)."""
    if "group_norm" not in view.ops:
        return {}
    out = {}
    for kn, norm in enumerate(view.nodes):
        if view.node(kn, "InstanceNormalization") is None or len(norm.input) != 3:
            continue
        k1, r1 = view.made_by(norm.input[0], "Reshape")
        shape1 = view.const(r1.input[1]) if r1 is not None else None
        if (shape1 is None or shape1.dtype.kind != "i" or shape1.shape != (3,) or shape1[0] != 0 or shape1[2] != -1
                or shape1[1] < 1 or view.attr(r1, "allowzero", 0)):
            continue
        groups = int(shape1[1])
        scale, bias = view.const(norm.input[1]), view.const(norm.input[2])
        if not (_exactly(scale, np.ones(groups)) and _exactly(bias, np.zeros(groups))):
            continue
        k2, r2 = view.sole_user(norm.output[0], "Reshape")
        if r2 is None or r2.input[0] != norm.output[0] or view.attr(r2, "allowzero", 0):
            continue
        x, nodes = r1.input[0], (k1, kn, k2)
        back = _reshape_back(view, r2.input[1], x)
        if back is None:
            continue
        w = b = None
        km, mul, w_name = _affine_step(view, r2.output[0], "Mul")
        if mul is not None:
            ka, add, b_name = _affine_step(view, mul.output[0], "Add")
            if add is not None:
                w, b, nodes = view.const(w_name), view.const(b_name), (*nodes, km, ka)
        eps = f32(view.attr(norm, "epsilon", 1e-5))
        params = {"num_groups": groups} | ({"eps": eps} if abs(eps - 1e-5) > 1e-12 else {})
        finish = (lambda shape, g=groups, back=back, w=w, b=b, p=params: _group_norm_finish(shape, g, back, w, b, p))
        if view.computed(x):
            out.update(_claim(view, Fusion(x, "group_norm", nodes, params, finish=finish)))
    return out


def _exactly(v, want) -> bool:
    return v is not None and v.shape == want.shape and v.dtype == np.float32 and np.array_equal(v, want)


def _reshape_back(view, name, x):
    """The target of the Reshape back: "shape" for Shape(x), else the constant (checked at the walk), or None."""
    k = view.producer.get(name)
    node = view.node(k, "Shape") if k is not None else None
    if node is not None and node.input[0] == x and not node.attribute:
        return "shape"
    v = view.const(name)
    return v if v is not None and v.dtype.kind == "i" and v.ndim == 1 and v.size >= 2 and v[0] == 0 else None


def _affine_step(view, name, op):
    """(index, node, constant operand name) when the only reader of ``name`` is ``op`` by a float constant."""
    k, node = view.sole_user(name, op)
    other = view.other(node, name)
    v = view.const(other) if other is not None else None
    return (k, node, other) if v is not None and v.dtype == np.float32 else (None, None, None)


def _group_norm_finish(shape, groups, back, w, b, params):
    """(params, weights) once x's per-sample shape is known, or None when it is no group norm of x."""
    rank = len(shape)
    if rank < 1 or shape[0] % groups or (not isinstance(back, str) and back.tolist() != [0, *shape]):
        return None
    if w is None:
        return params | {"affine": False}, {}
    ch = shape[0]
    per_channel = (ch,) + (1,) * (rank - 1)
    if w.shape == per_channel and b.shape == per_channel:
        return params, {"weight": w.reshape(ch), "bias": b.reshape(ch)}
    if not all(v.size == 1 and v.ndim <= rank for v in (w, b)):
        return None   # (a weight of another shape would broadcast along other axes, or widen the output)
    if w.reshape(()) == 1 and b.reshape(()) == 0:   # torch's GroupNorm(affine=False) multiplies by 1, adds 0
        return params | {"affine": False}, {}
    return params, {"weight": np.full(ch, w.reshape(())), "bias": np.full(ch, b.reshape(()))}


def find_squeeze_excitation(view) -> dict:
    """The contrib squeeze_excitation as its exporter and torch write it: GlobalAveragePool(x) → 1×1 Conv →
    Relu → 1×1 Conv → Sigmoid → Mul by x. The convolutions' (out, in, 1, 1) weights become its dense w1 (C/r, C)
    and w2 (C, C/r), the same values."""
    if "squeeze_excitation" not in view.ops:
        return {}
    out = {}
    for kp, pool in enumerate(view.nodes):
        if view.node(kp, "GlobalAveragePool") is None:
            continue
        x = pool.input[0]
        k1, c1, w1, b1 = _dense_conv(view, pool.output[0])
        kr, relu = view.sole_user(c1.output[0], "Relu") if c1 is not None else (None, None)
        k2, c2, w2, b2 = _dense_conv(view, relu.output[0]) if relu is not None else (None,) * 4
        ks, sig = view.sole_user(c2.output[0], "Sigmoid") if c2 is not None else (None, None)
        if sig is None or w2.shape != w1.shape[::-1]:
            continue
        hidden, ch = w1.shape
        reduction = 4 if max(1, ch // 4) == hidden else ch // hidden   # the default when it fits
        if reduction < 1 or max(1, ch // reduction) != hidden:
            continue
        params = {} if reduction == 4 else {"reduction": reduction}
        weights = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
        finish = (lambda shape, p=params, w=weights, c=ch: (p, w) if len(shape) == 3 and shape[0] == c else None)
        out.update(_gated(view, x, sig.output[0], (kp, k1, kr, k2, ks), "squeeze_excitation", params,
                          weights=weights, finish=finish))
    return out


def _dense_conv(view, name):
    """(index, node, weight (out, in), bias (out,)) when the only reader of ``name`` is a 1×1 Conv with constant
    weights (no stride, padding, dilation or groups) that acts as a dense layer on (N, C, 1, 1)."""
    k, conv = view.sole_user(name, "Conv")
    if conv is None or conv.input[0] != name:
        return None, None, None, None
    w = view.const(conv.input[1])
    b = view.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    if w is None or w.dtype != np.float32 or w.ndim != 4 or w.shape[2:] != (1, 1):
        return None, None, None, None
    b = np.zeros(w.shape[0], np.float32) if b is None else b
    plain = (view.attr(conv, "group", 1) == 1 and view.attr(conv, "auto_pad", "NOTSET") in ("NOTSET", "VALID")
             and all(v == 1 for v in view.attr(conv, "strides", [1]) + view.attr(conv, "dilations", [1]))
             and not any(view.attr(conv, "pads", [0])) and list(view.attr(conv, "kernel_shape", [1, 1])) == [1, 1])
    if not plain or b.dtype != np.float32 or b.shape != w.shape[:1]:
        return None, None, None, None
    return k, conv, w.reshape(w.shape[:2]), b
