"""Multi-node patterns of the ONNX graph that become one cnngraph layer, and the reachability walk.

Exporters spell some layers as chains of primitive nodes: exact GELU as Div/Erf/Add/Mul/Mul, and
PyTorch's LocalResponseNorm as Mul/Reshape/Pad/AveragePool/Reshape/Mul/Add/Pow/Div. The finders
here map node indices of the graph to what the importer's walk should do with each node:

* ``None``: the node lies inside a fused pattern and is skipped;
* a tensor name: the node's output is ``gelu`` of that tensor;
* ``(tensor name, layer type, params)``: the node's output is that layer applied to the tensor.
"""
from __future__ import annotations

import math

import numpy as np

from .common import OnnxError
from .folding import evaluate, f32

__all__ = ["find_patterns", "find_gelu", "find_torch_lrn", "dead_nodes", "refs"]


def find_patterns(imp) -> dict:
    """Every fused pattern of ``imp``'s graph, as the map described in the module docstring."""
    fused = find_gelu(imp)
    fused.update(find_torch_lrn(imp, fused))
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
                needed.add(src if isinstance(src, str) else src[0])
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
