"""Tensors whose batch axis the ONNX graph moves: attention blocks ((N, L, E) -> (L, N, E) -> (L, N*heads, d)).

cnngraph's layers keep the batch axis first. A computed ONNX tensor whose batch axis is elsewhere is held as a
batch-first layer output (its *physical* tensor) plus a *layout*: for each axis of the ONNX (logical) tensor, the
physical axes that make it up, major to minor (0 is the batch axis; an empty group is a unit axis). Physical axes
in no group have size 1. Transpose, Reshape, Squeeze and Unsqueeze only change the layout. Element-wise ops run
on the physical tensor as it is. Ops along axes, MatMul and Gemm first *arrange* it (at most one transpose and one
reshape layer, the batch still first) so that every logical axis they touch is one physical axis. Any other op gets
the tensor back in its ONNX layout, which needs the batch axis first there (:func:`materialize`).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .common import OnnxError
from .folding import BATCH, BATCH_ALT, Dyn

__all__ = ["LAYOUT_HANDLERS", "ELEMENTWISE_FUSIONS", "is_moved", "materialize", "moves_batch", "on_physical",
           "holds_batch_size", "constant_with_batch"]

LAYOUT_HANDLERS: dict = {}
# fused patterns (cnngraph/onnx/patterns.py) that act value by value, so they run on the physical tensor as it is
ELEMENTWISE_FUSIONS = {"gelu", "swish", "hard_swish", "mish", "softplus"}


def _handles(*names):
    def deco(fn):
        for n in names:
            LAYOUT_HANDLERS[n] = fn
        return fn
    return deco


# ---- layouts ---------------------------------------------------------------------------------------
def is_moved(v) -> bool:
    return isinstance(v, Dyn) and v.layout is not None


def _groups(d: Dyn) -> tuple:
    return d.layout if d.layout is not None else tuple((i,) for i in range(len(d.shape) + 1))


def _sizes(d: Dyn, batch: int = BATCH) -> list[int]:
    return [batch, *d.shape]


def _logical_shape(d: Dyn, batch: int = BATCH) -> list[int]:
    s = _sizes(d, batch)
    return [math.prod(s[p] for p in g) for g in _groups(d)]


def _with(d: Dyn, groups) -> Dyn:
    """The physical tensor ``d`` under ``groups`` (no layout when that is the plain batch-first one)."""
    groups = tuple(tuple(int(p) for p in g) for g in groups)
    if groups == tuple((i,) for i in range(len(d.shape) + 1)):
        return Dyn(d.id, d.shape)
    return Dyn(d.id, tuple(d.shape), groups)


def _physical(d: Dyn) -> Dyn:
    return Dyn(d.id, tuple(d.shape))


def _batch_axis(groups) -> int:
    return next(i for i, g in enumerate(groups) if 0 in g)


def _describe(d: Dyn) -> str:
    """The ONNX shape of ``d`` for messages, the batch as N: (5, N, 4), (3N, 20)."""
    return _show(_logical_shape(d))


def _arrange(imp, d: Dyn, runs: list[tuple]) -> tuple[Dyn, dict]:
    """Emit the transpose and reshape layers that make ``d``'s physical tensor (batch, run 1, run 2, ...), each run
    of physical axes merged into one axis (an empty run is a unit axis). Returns the new physical tensor and the
    new physical axis of each physical axis that is a run of its own ({old: new})."""
    s = _sizes(d)
    order = [p for run in runs for p in run]
    spare = [p for p in range(1, len(s)) if p not in order]   # unit axes in no group
    assert all(s[p] == 1 for p in spare) and 0 not in order and len(set(order)) == len(order)
    x = _physical(d)
    perm = [0] + order + spare
    if perm != list(range(len(s))):
        x = imp.emit("transpose", [x], {"perm": perm}, suffix=".arrange")
    shape = [math.prod(s[p] for p in run) for run in runs]
    if list(x.shape) != shape:
        x = imp.emit("reshape", [x], {"shape": shape}, suffix=".arrange")
    return x, {run[0]: i + 1 for i, run in enumerate(runs) if len(run) == 1}


def _batch_at(b: int, rank: int) -> list[tuple]:
    """The layout of a batch-first physical tensor of ``rank`` axes read with its batch as logical axis ``b``
    (each other axis one physical axis, in order)."""
    return [(i + 1,) for i in range(b)] + [(0,)] + [(i,) for i in range(b + 1, rank)]


def _canonical(imp, d: Dyn, what: str) -> Dyn:
    """``d`` arranged so that each logical axis is one physical axis: the batch first, the others in logical
    order. Then logical axis i is physical axis i + 1 before the batch's logical axis b, i after it."""
    groups = _groups(d)
    b = _batch_axis(groups)
    if groups[b] != (0,):
        raise imp.fail(f"{what} a tensor {_describe(d)} whose batch axis an earlier Reshape merged with other "
                       f"axes is not supported")
    x, _ = _arrange(imp, d, [g for i, g in enumerate(groups) if i != b])
    return _with(x, _batch_at(b, len(groups)))


def materialize(imp, d: Dyn, output: str | None = None) -> Dyn:
    """``d`` in its ONNX layout as a plain batch-first tensor, for ops that take no other and for graph outputs
    (``output``: its name); needs the batch axis first in the ONNX tensor."""
    if not is_moved(d):
        return d
    groups = _groups(d)
    if groups[0] != (0,):
        if output is not None:
            raise imp.fail(f"graph output '{output}' of shape {_describe(d)} does not have the batch axis (N) "
                           f"first, alone; cnngraph's outputs (and inputs) keep the batch axis first")
        raise imp.fail(f"the input {_describe(d)} has its batch axis (N) moved by an earlier Transpose or "
                       f"Reshape; a {imp.current_node.op_type} on it is not supported (cnngraph imports Transpose, "
                       f"Reshape, Squeeze, Unsqueeze, MatMul, Gemm, Softmax, LayerNormalization, the reductions, "
                       f"Gather, Concat, Split, Slice and element-wise ops on such tensors)")
    x = _canonical(imp, d, "")
    return Dyn(x.id, x.shape)


def moves_batch(imp, node, a: dict) -> bool:
    """Whether a Transpose, Reshape or Unsqueeze of plain batch-first inputs moves or merges the batch axis."""
    x = imp.get(node.input[0]) if node.input else None
    if not isinstance(x, Dyn):
        return False
    rank = len(x.shape) + 1
    if node.op_type == "Transpose":
        return int(a.get("perm", list(range(rank))[::-1])[0]) % rank != 0
    if node.op_type == "Unsqueeze":
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = imp.get(node.input[1])
        if not isinstance(axes, (list, np.ndarray)):
            return False
        return 0 in [int(v) % (rank + len(axes)) for v in np.ravel(axes)]
    if node.op_type == "Einsum":   # the letter of a computed operand's batch axis is not the output's first
        from .import_ops import _einsum_terms
        terms, out = _einsum_terms(imp, a["equation"])
        letters = {t[0] for t, name in zip(terms, node.input) if t and isinstance(imp.get(name), Dyn)}
        return len(letters) == 1 and out[:1] not in letters
    if node.op_type == "Reshape":
        target = _reshape_target(imp, node, a, x)
        return target is not None and target[0] != BATCH and (imp.declared_batch is None or
                                                                target[0] != imp.declared_batch)
    return False


# ---- running an op on the physical tensor ---------------------------------------------------------------
def on_physical(imp, node, a: dict, handler, values: dict) -> list:
    """Run the standard ``handler`` on a copy of ``node`` whose inputs named in ``values`` are replaced by those
    values (physical tensors, constants in the physical arrangement) under fresh names."""
    copy = type(node)()
    copy.CopyFrom(node)
    for i, name in enumerate(node.input):
        if name in values:
            v = values[name]
            if isinstance(v, Dyn):
                fresh = f"{name}::{imp.current_node.output[0]}::physical"
                imp.dyn[fresh] = v
            else:
                fresh = _const(imp, name, v)
            imp.consumers[fresh] = imp.consumers[name]
            copy.input[i] = fresh
    return handler(imp, copy, a)


def _const(imp, name: str, value) -> str:
    """The name of constant ``name`` as rearranged ``value``: ``name`` itself when unchanged, else a new name
    (``name.moved``) that is a parameter (and initializer) when ``name`` is one."""
    value = np.asarray(value)
    old = imp.consts.get(name)
    if old is not None and old.shape == value.shape and np.array_equal(old, value):
        return name
    fresh, k = f"{name}.moved", 1
    while fresh in imp.consts and not (imp.consts[fresh].shape == value.shape
                                       and np.array_equal(imp.consts[fresh], value)):
        k += 1
        fresh = f"{name}.moved{k}"
    imp.consts[fresh] = value
    for known in (imp.params, imp.initializers):
        if name in known:
            known.add(fresh)
    return fresh


def _standard(node):
    from .import_ops import HANDLERS
    return HANDLERS[node.op_type]


def _elementwise(imp, node, a):
    """Ops that act value by value (and Identity, Dropout, Cast): on the physical tensor, the layout kept."""
    x = imp.get(node.input[0])
    y = on_physical(imp, node, a, _standard(node), {node.input[0]: _physical(x)})
    return [_with(y[0], _groups(x)) if isinstance(y[0], Dyn) else y[0], *y[1:]]


_handles("Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Gelu", "HardSigmoid", "HardSwish", "Softplus", "Softsign",
         "Selu", "Celu", "Clip", "Dropout", "Identity", "Cast", "Sqrt", "Exp", "Log", "Abs", "Neg", "Reciprocal",
         "Erf", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Not")(_elementwise)


# ---- layout-only ops --------------------------------------------------------------------------------
@_handles("Transpose")
def transpose(imp, node, a):
    x = imp.get(node.input[0])
    groups = _groups(x)
    rank = len(groups)
    perm = [int(p) % rank for p in a.get("perm", list(range(rank))[::-1])]
    return [_with(x, [groups[p] for p in perm])]


def _axes(imp, node, a) -> list[int] | None:
    """The axes of a Squeeze, Unsqueeze or reduction: an attribute, or (newer opsets) the second input."""
    axes = a.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in np.ravel(imp.const(node.input[1], "axes"))]
    return axes


@_handles("Unsqueeze", "Squeeze")
def squeeze(imp, node, a):
    x = imp.get(node.input[0])
    groups = list(_groups(x))
    axes = _axes(imp, node, a)
    shape = _logical_shape(x)
    if node.op_type == "Unsqueeze":
        rank = len(groups) + len(axes)
        for ax in sorted(int(v) % rank for v in axes):
            groups.insert(ax, ())
        return [_with(x, groups)]
    if axes is None and imp.declared_batch == 1:
        raise imp.fail("Squeeze without axes removes the batch axis of this batch-1 model, which cnngraph keeps; "
                       "export with a dynamic batch or squeeze named axes")
    axes = {int(v) % len(groups) for v in axes} if axes is not None else {i for i, n in enumerate(shape) if n == 1}
    if any(shape[i] != 1 for i in axes):
        raise imp.fail(f"cannot squeeze axes {sorted(axes)} of {_describe(x)}")
    return [_with(x, [g for i, g in enumerate(groups) if i not in axes])]


@_handles("Shape")
def shape(imp, node, a):
    x = imp.get(node.input[0])
    start, end = a.get("start", 0), a.get("end")
    imp.alt[node.output[0]] = np.array(_logical_shape(x, BATCH_ALT), dtype=np.int64)[start:end]
    imp.batch_of[node.output[0]] = _physical(x)
    return [np.array(_logical_shape(x), dtype=np.int64)[start:end]]


def _reshape_target(imp, node, a, x: Dyn) -> list[int] | None:
    """The Reshape's logical target with 0 (copy) and -1 resolved, batch multiples as such; None when it is not
    known at import time."""
    t = imp.get(node.input[1]) if len(node.input) > 1 else np.array(a["shape"])
    if not isinstance(t, np.ndarray) or node.input[1:2] and node.input[1] in imp.alt and not _alt_is_batch(imp, node):
        return None
    full = _logical_shape(x)
    t = [full[i] if int(d) == 0 and not a.get("allowzero", 0) and i < len(full) else int(d) for i, d in enumerate(t)]
    if t.count(-1) == 1:
        known = math.prod(d for d in t if d != -1)
        total = math.prod(full)
        if known and total % known == 0:
            t[t.index(-1)] = total // known
    return t


def _alt_is_batch(imp, node) -> bool:
    """Whether the batch-dependent target only depends on the batch through its stand-in (N or a multiple)."""
    alt = imp.alt[node.input[1]]
    t = imp.get(node.input[1])
    return all(v == w or (v % BATCH == 0 and w % BATCH_ALT == 0 and v // BATCH == w // BATCH_ALT)
               for v, w in zip(np.ravel(t), np.ravel(alt)))


@_handles("Reshape")
def reshape(imp, node, a):
    x = imp.get(node.input[0])
    target = _reshape_target(imp, node, a, x)
    if target is None or -1 in target:
        raise imp.fail(f"reshape of {_describe(x)}: the target shape is not known at import time")
    return [_regroup(imp, x, target)]


@_handles("Flatten")
def flatten(imp, node, a):
    x = imp.get(node.input[0])
    shape = _logical_shape(x)
    axis = int(a.get("axis", 1)) % (len(shape) + 1)
    return [_regroup(imp, x, [math.prod(shape[:axis]), math.prod(shape[axis:])])]


def _regroup(imp, x: Dyn, target: list[int], merged: bool = False) -> Dyn:
    """Reshape as a new grouping of the physical axes, in logical (row-major) order; a physical axis is split
    (one reshape layer) where a target axis takes only part of it. The batch axis is never split. Sizes that do
    not divide each other ((6, 10) -> (4, 15)) are regrouped after merging the axes before and after the batch's
    (``merged``: done)."""
    try:
        return _regroup_atoms(imp, x, target)
    except OnnxError:
        if merged:
            raise
    s = _sizes(x)
    order = [p for g in _groups(x) for p in g if p == 0 or s[p] != 1]
    cut = order.index(0)
    runs = [tuple(order[:cut]), tuple(order[cut + 1:])]
    xa, _ = _arrange(imp, x, [r for r in runs if r])
    flat = [(1,)] * bool(runs[0]) + [(0,)] + [(1 + bool(runs[0]),)] * bool(runs[1])
    return _regroup(imp, Dyn(xa.id, xa.shape, tuple(flat)), target, merged=True)


def _regroup_atoms(imp, x: Dyn, target: list[int]) -> Dyn:
    s = _sizes(x)
    atoms = [p for g in _groups(x) for p in g if p == 0 or s[p] != 1]
    queue = [[p, s[p]] for p in atoms]
    pieces: dict[int, list[int]] = {p: [] for p in atoms}
    new_groups = []
    for t in target:
        need, group = int(t), []
        while need != 1:
            if not queue:
                raise imp.fail(f"cannot reshape {_describe(x)} to {_show(target)}")
            p, rem = queue[0]
            if p == 0:
                if need % BATCH:
                    why = (f"the model was exported with a fixed batch size ({imp.declared_batch}): export it with "
                           f"a dynamic batch axis (torch.onnx.export(..., dynamic_axes={{'x': {{0: 'N'}}}}))"
                           if imp.declared_batch is not None else
                           "a fixed number where the batch size belongs is often a size torch traced at export, as "
                           "timm's int(windows.shape[0] / ...): compute it with // or pass -1")
                    raise imp.fail(f"reshape of {_describe(x)} to {_show(target)} splits the batch axis; not "
                                   f"supported ({why})")
                need //= BATCH
            elif need % rem == 0:
                need //= rem
            elif rem % need == 0 and need % BATCH:
                pieces[p].append(need)
                group.append((p, len(pieces[p]) - 1))
                queue[0][1] = rem // need
                need = 1
                continue
            else:
                raise imp.fail(f"reshape of {_describe(x)} to {_show(target)} mixes parts of the batch axis "
                               f"with other axes; not supported")
            if p:
                pieces[p].append(rem)
            group.append((p, len(pieces[p]) - 1 if p else 0))
            queue.pop(0)
        new_groups.append(group)
    if queue:
        raise imp.fail(f"cannot reshape {_describe(x)} to {_show(target)}")
    index, shape = {(0, 0): 0}, []
    for p in range(1, len(s)):
        for k, size in enumerate(pieces.get(p) or [s[p]]):
            shape.append(size)
            index[(p, k)] = len(shape)
    y = _physical(x)
    if tuple(shape) != tuple(x.shape):
        y = imp.emit("reshape", [y], {"shape": shape}, suffix=".split")
    return _with(y, [[index[piece] for piece in g] for g in new_groups])


def _show(target) -> str:
    """A shape with the batch stand-in (and its multiples) written as N."""
    return "(" + ", ".join("N" if v == BATCH else f"{v // BATCH}N" if v % BATCH == 0 else str(v)
                           for v in target) + ")"


# ---- ops along axes: arranged, axes mapped, then the standard import -----------------------------------------
def _arranged_for(imp, node, axes: list[int], trailing: bool = False, x: Dyn | None = None) -> tuple[Dyn, list, dict]:
    """The node's first input (or ``x``) arranged so that each logical axis in ``axes`` is one physical axis (the
    other axes keep their physical axes; ``trailing``: the ``axes`` last, in order). Returns the physical tensor,
    the logical groups on it and {logical axis: its physical axis}. An op along the batch axis is refused."""
    x = imp.get(node.input[0]) if x is None else x
    groups, s = _groups(x), _sizes(x)
    axes = sorted(set(axes))
    if any(0 in groups[i] for i in axes):
        raise imp.fail(f"{node.op_type} along the (moved) batch axis of {_describe(x)} is not supported")
    kept = {i: [p for p in g if p == 0 or s[p] != 1] for i, g in enumerate(groups)}
    tagged = []   # (tag, run of physical axes) in the new physical order
    for i, g in enumerate(groups):
        if i not in axes:
            tagged += [(("atom", p), (p,)) for p in kept[i] if p != 0]
        elif not trailing:
            tagged.append((("axis", i), g))
    if trailing:
        tagged += [(("axis", i), groups[i]) for i in axes]
    xa, _ = _arrange(imp, x, [run for _, run in tagged])
    index = {tag: k + 1 for k, (tag, _) in enumerate(tagged)}
    new = [(index[("axis", i)],) if i in axes else tuple(0 if p == 0 else index[("atom", p)] for p in kept[i])
           for i in range(len(groups))]
    return xa, new, {i: index[("axis", i)] for i in axes}


def _without(groups: list, removed: dict) -> list:
    """``groups`` once the logical axes in ``removed`` ({logical: physical}) are gone from both tensors."""
    gone = sorted(removed.values())
    return [tuple(p - sum(q < p for q in gone) for p in g) for i, g in enumerate(groups) if i not in removed]


@_handles("Softmax", "LogSoftmax")
def softmax(imp, node, a):
    x = imp.get(node.input[0])
    rank = len(_groups(x))
    axis = int(a.get("axis", -1 if imp.opset >= 13 else 1)) % rank
    if imp.opset >= 13:
        xa, groups, phys = _arranged_for(imp, node, [axis])
        y = on_physical(imp, node, {**a, "axis": phys[axis]}, _standard(node), {node.input[0]: xa})
        return [_with(y[0], groups)]
    # before opset 13: over the axes from ``axis`` on, flattened: those last, then the same from their first
    xa, groups, _ = _arranged_for(imp, node, list(range(axis, rank)), trailing=True)
    y = on_physical(imp, node, {**a, "axis": len(xa.shape) + 1 - (rank - axis)}, _standard(node), {node.input[0]: xa})
    return [_with(y[0], groups)]


@_handles("LayerNormalization")
def layer_norm(imp, node, a):
    x = imp.get(node.input[0])
    rank = len(_groups(x))
    axis = int(a.get("axis", -1)) % rank
    xa, groups, _ = _arranged_for(imp, node, list(range(axis, rank)), trailing=True)
    y = on_physical(imp, node, {**a, "axis": axis - rank}, _standard(node), {node.input[0]: xa})
    return [_with(y[0], groups), *y[1:]]


@_handles("ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")
def reduce(imp, node, a):
    x = imp.get(node.input[0])
    rank = len(_groups(x))
    axes = _axes(imp, node, a)
    if not axes:
        raise imp.fail(f"{node.op_type} over every axis of {_describe(x)} (batch included) is not supported")
    axes = sorted({int(v) % rank for v in axes})
    xa, groups, phys = _arranged_for(imp, node, axes)
    values = {node.input[0]: xa}
    if len(node.input) > 1 and node.input[1]:
        values[node.input[1]] = np.array([phys[ax] for ax in axes], dtype=np.int64)
    else:
        a = {**a, "axes": [phys[ax] for ax in axes]}
    y = on_physical(imp, node, a, _standard(node), values)
    return [_with(y[0], groups if a.get("keepdims", 1) else _without(groups, phys))]


@_handles("Gather")
def gather(imp, node, a):
    x = imp.get(node.input[0])
    idx = imp.get(node.input[1])
    if not isinstance(idx, np.ndarray) or idx.ndim > 1:
        raise imp.fail(f"Gather on {_describe(x)} whose batch axis was moved takes a constant scalar or 1-D "
                       f"list of indices only")
    axis = int(a.get("axis", 0)) % len(_groups(x))
    xa, groups, phys = _arranged_for(imp, node, [axis])
    y = on_physical(imp, node, {**a, "axis": phys[axis]}, _standard(node), {node.input[0]: xa})
    return [_with(y[0], groups if idx.ndim == 1 else _without(groups, phys))]


@_handles("Split")
def split(imp, node, a):
    x = imp.get(node.input[0])
    axis = int(a.get("axis", 0)) % len(_groups(x))
    xa, groups, phys = _arranged_for(imp, node, [axis])
    ys = on_physical(imp, node, {**a, "axis": phys[axis]}, _standard(node), {node.input[0]: xa})
    return [_with(y, groups) for y in ys]


@_handles("Slice")
def slice_(imp, node, a):
    x = imp.get(node.input[0])
    rank = len(_groups(x))
    if imp.opset < 10:
        axes = [int(v) for v in a.get("axes", range(len(a["starts"])))]
    else:
        n = len(np.ravel(imp.const(node.input[1], "starts")))
        axes = ([int(v) for v in np.ravel(imp.const(node.input[3], "axes"))] if len(node.input) > 3 and node.input[3]
                else list(range(n)))
    axes = [ax % rank for ax in axes]
    b = _batch_axis(_groups(x))   # (a whole-batch Slice along it is a no-op the standard import skips)
    xa, groups, where = _arranged_for(imp, node, [ax for ax in axes if ax != b])
    phys = [0 if ax == b else where[ax] for ax in axes]
    values = {node.input[0]: xa}
    if imp.opset < 10:
        a = {**a, "axes": phys}
    elif len(node.input) > 3 and node.input[3]:
        values[node.input[3]] = np.array(phys, dtype=np.int64)
    else:   # the axes input is absent: give it, mapped
        node = _with_input(node, 3, f"{node.output[0]}::axes")
        imp.consts[node.input[3]] = np.array(phys, dtype=np.int64)
    y = on_physical(imp, node, a, _standard(node), values)
    return [_with(y[0], groups)]


def _with_input(node, i: int, name: str):
    copy = type(node)()
    copy.CopyFrom(node)
    while len(copy.input) <= i:
        copy.input.append("")
    copy.input[i] = name
    return copy


@_handles("Concat")
def concat(imp, node, a):
    vals = [imp.get(n) for n in node.input]
    if not all(isinstance(v, Dyn) for v in vals):
        raise imp.fail("concatenating computed tensors with constants is not supported")
    rank = len(_groups(vals[0]))
    axis = int(a["axis"]) % rank
    arranged = [_canonical(imp, v, "Concat of") for v in vals]
    groups = _groups(arranged[0])
    if any(_groups(v) != groups for v in arranged) or _batch_axis(groups) == axis:
        raise imp.fail("Concat of tensors whose batch axes are in different places, or along the batch axis, "
                       "is not supported")
    y = on_physical(imp, node, {**a, "axis": _groups(arranged[0])[axis][0]}, _standard(node),
                    {n: _physical(v) for n, v in zip(node.input, arranged)})
    return [_with(y[0], groups)]


# ---- arithmetic ---------------------------------------------------------------------------------------
def _const_to_physical(imp, x: Dyn, value, what: str) -> np.ndarray:
    """A constant that broadcasts against logical ``x``, rearranged to broadcast against its physical tensor
    (batch axis included, of size 1)."""
    groups, s = _groups(x), _sizes(x)
    arr = np.asarray(value)
    given = arr.shape   # (for messages: the ONNX shape)
    if arr.size == 1:   # broadcasts alike in any arrangement
        return arr.reshape(())
    if arr.ndim > len(groups):
        raise imp.fail(f"{what} of shape {given} has more axes than {_describe(x)}")
    arr = arr.reshape((1,) * (len(groups) - arr.ndim) + arr.shape)
    dims, atoms = [], []
    for c, g in zip(arr.shape, groups):
        if c == 1:
            dims += [1] * len(g)
        elif len(g) == 1 and s[g[0]] == 1:   # a unit axis of x that the constant widens
            dims.append(c)
        elif 0 in g:
            raise imp.fail(f"{what} of shape {given} varies along the (moved) batch axis of {_describe(x)}")
        elif c == math.prod(s[p] for p in g):
            dims += [s[p] for p in g]
        else:
            raise imp.fail(f"{what} of shape {given} does not broadcast against {_describe(x)}")
        atoms += list(g)
    arr = arr.reshape(dims)
    arr = arr.transpose(np.argsort(atoms)) if atoms else arr
    full = [1] * len(s)
    for p, n in zip(sorted(atoms), arr.shape):
        full[p] = n
    return arr.reshape(full)


@_handles("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Where", "Greater", "Less", "Equal",
          "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "PRelu")
def elementwise_n(imp, node, a):
    """Element-wise ops of several inputs: computed tensors brought to one arrangement (unless they share
    their layout), constants rearranged to it."""
    vals = {n: imp.get(n) for n in node.input if n}
    computed = [v for v in vals.values() if isinstance(v, Dyn)]
    if len({len(_groups(v)) for v in computed}) > 1:
        raise imp.fail("computed tensors of different ranks broadcast against each other; not supported")
    first = computed[0]
    if any(_groups(v) != _groups(first) or v.shape != first.shape for v in computed):
        vals = {n: _alike(imp, v) if isinstance(v, Dyn) else v for n, v in vals.items()}
        computed = [v for v in vals.values() if isinstance(v, Dyn)]
        if len({_groups(v) for v in computed}) > 1:
            raise imp.fail(f"computed tensors {', '.join(_describe(v) for v in computed)} have their batch "
                           f"axes in different places; combining them is not supported")
        try:
            shape = np.broadcast_shapes(*(v.shape for v in computed))
        except ValueError:
            raise imp.fail(f"computed tensors {', '.join(_describe(v) for v in computed)} do not broadcast "
                           f"against each other") from None
        first = Dyn(computed[0].id, tuple(shape), _groups(computed[0]))
    widened = _widened_axes(first, [v for v in vals.values() if not isinstance(v, Dyn)])
    if widened:   # a constant widens the tensors along axes where they have size 1: give those an axis each
        for n, v in vals.items():
            if isinstance(v, Dyn):
                xa, groups, _ = _arranged_for(imp, node, widened, x=v)
                vals[n] = Dyn(xa.id, xa.shape, tuple(groups))
        first = next(v for v in vals.values() if isinstance(v, Dyn))
    values = {n: _physical(v) if isinstance(v, Dyn) else _const_to_physical(imp, first, v, f"constant '{n}'")
              for n, v in vals.items()}
    y = on_physical(imp, node, a, _standard(node), values)
    return [_with(y[0], _groups(first))]


def _widened_axes(x: Dyn, consts: list) -> list[int]:
    """Logical axes along which ``x`` has size 1 and a constant more (the result is wider than x there)."""
    shape = _logical_shape(x)
    out = set()
    for c in consts:
        c = np.shape(c)
        out |= {len(shape) - len(c) + i for i, n in enumerate(c) if n > 1 and shape[len(shape) - len(c) + i] == 1}
    return sorted(out)


def _alike(imp, d: Dyn) -> Dyn:
    """``d`` arranged as the other operands of an element-wise op will be: the batch, the other physical axes of
    the batch's logical axis, then each other logical axis as one physical axis, in logical order."""
    groups, s = _groups(d), _sizes(d)
    b = _batch_axis(groups)
    with_batch = [p for p in groups[b] if p and s[p] != 1]
    x, _ = _arrange(imp, d, [(p,) for p in with_batch] + [g for i, g in enumerate(groups) if i != b])
    batch_group = tuple(0 if p == 0 else 1 + with_batch.index(p) for p in groups[b] if p == 0 or s[p] != 1)
    others = iter(range(len(with_batch) + 1, len(x.shape) + 1))
    return _with(x, [batch_group if i == b else (next(others),) for i in range(len(groups))])


@_handles("MatMul")
def matmul(imp, node, a):
    av, bv = imp.get(node.input[0]), imp.get(node.input[1])
    if isinstance(bv, np.ndarray) and isinstance(av, Dyn):
        return [_matmul_weight(imp, node, av, bv, node.input[1])]
    if not (isinstance(av, Dyn) and isinstance(bv, Dyn)):
        raise imp.fail("a constant times a tensor whose batch axis was moved is not supported (only tensor x weight)")
    ga, gb = _groups(av), _groups(bv)
    sa, sb = _sizes(av), _sizes(bv)
    if len(ga) != len(gb) or len(ga) < 3:
        raise imp.fail(f"MatMul of {_describe(av)} and {_describe(bv)} (moved batch axes) needs operands "
                       f"of one rank with the batch among the leading axes")
    lead_a = [p for g in ga[:-2] for p in g if p == 0 or sa[p] != 1]
    lead_b = [p for g in gb[:-2] for p in g if p == 0 or sb[p] != 1]
    same = (len(lead_a) == len(lead_b) and all((p == 0) == (q == 0) and sa[p] == sb[q] for p, q in zip(lead_a, lead_b))
            and [len([p for p in g if p == 0 or sa[p] != 1]) for g in ga[:-2]]
            == [len([q for q in g if q == 0 or sb[q] != 1]) for g in gb[:-2]])
    if not same or 0 not in lead_a:
        raise imp.fail(f"MatMul of {_describe(av)} and {_describe(bv)}: the batch axis must be among "
                       f"the leading axes, made up alike in both; not supported")
    xa, wa = _arrange(imp, av, [(p,) for p in lead_a if p] + [ga[-2], ga[-1]])
    xb, _ = _arrange(imp, bv, [(q,) for q in lead_b if q] + [gb[-2], gb[-1]])
    y = on_physical(imp, node, {}, _standard(node), {node.input[0]: xa, node.input[1]: xb})[0]
    lead_groups = [tuple(0 if p == 0 else wa[p] for p in g if p == 0 or sa[p] != 1) for g in ga[:-2]]
    m = len(y.shape) - 1
    return [_with(y, lead_groups + [(m,), (m + 1,)])]


def _matmul_weight(imp, node, x: Dyn, w: np.ndarray, name: str) -> Dyn:
    """x (..., K) @ w (K, P), x's batch axis anywhere but in K: x arranged (batch, other axes, K), one matmul."""
    groups, s = _groups(x), _sizes(x)
    if w.ndim != 2:
        raise imp.fail(f"MatMul of {_describe(x)} (moved batch axis) by a constant of shape {w.shape}: only "
                       f"2-D weights are supported")
    if 0 in groups[-1]:
        raise imp.fail(f"MatMul over the (moved) batch axis of {_describe(x)} is not supported")
    others = [p for g in groups[:-1] for p in g if p != 0 and s[p] != 1]
    xa, where = _arrange(imp, x, [(p,) for p in others] + [groups[-1]])
    fresh = _const(imp, name, w)
    imp.params.add(fresh)   # a constant multiplied into a computed tensor is a weight (as the standard import)
    imp.consumers[fresh] = max(imp.consumers[fresh], 1)
    copy = _with_input(node, 1, fresh)
    del copy.input[2:]   # a Gemm's C: added by the caller
    from .import_ops import HANDLERS
    y = on_physical(imp, copy, {}, HANDLERS["MatMul"], {node.input[0]: xa})[0]
    last = len(y.shape)
    return _with(y, [tuple(0 if p == 0 else where[p] for p in g if p == 0 or s[p] != 1) for g in groups[:-1]]
                 + [(last,)])


@_handles("Gemm")
def gemm(imp, node, a):
    """A (M, K) whose M merges the batch with other axes (attention's output projection on (L*N, E)):
    alpha * A @ B' + beta * C as a matmul by a weight and a broadcast add."""
    x = imp.get(node.input[0])
    if a.get("transA", 0):
        raise imp.fail(f"Gemm with transA=1 on {_describe(x)} (moved batch axis) is not supported")
    b = imp.const(node.input[1], "B")
    w = (b.T if a.get("transB", 0) else b) * np.float32(a.get("alpha", 1.0))
    y = _matmul_weight(imp, node, x, np.ascontiguousarray(w, dtype=np.float32), node.input[1])
    c = imp.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    beta = float(a.get("beta", 1.0))
    if c is None or beta == 0:
        return [y]
    if not isinstance(c, np.ndarray):
        raise imp.fail("a computed C is not supported here")
    fresh = _const(imp, node.input[2], _const_to_physical(imp, y, np.asarray(c, np.float32) * np.float32(beta), "C"))
    out = imp.emit("broadcast_add", [_physical(y), imp.dyn_of(fresh, len(y.shape) + 1, _physical(y))], suffix=".bias")
    return [_with(out, _groups(y))]


@_handles("Einsum")
def einsum(imp, node, a):
    """Each computed operand arranged batch first (its letters reordered alike); the output computed batch first
    and given the layout that puts its batch letter back where the equation has it."""
    from .import_ops import _einsum_terms
    terms, out = _einsum_terms(imp, a["equation"])
    values, batched, letter = {}, [], None
    for name, term in zip(node.input, terms):
        v = imp.get(name)
        if not isinstance(v, Dyn):
            batched.append(term)
            continue
        b = _batch_axis(_groups(v))
        if len(term) != len(_groups(v)) or letter not in (None, term[b]):
            raise imp.fail(f"equation {a['equation']!r}: the computed operands' batch axes need one letter")
        letter = term[b]
        if name not in values:   # (one tensor in two operands: arranged once)
            values[name] = _physical(_canonical(imp, v, "Einsum on"))
        batched.append(letter + term[:b] + term[b + 1:])
    if letter not in out:
        raise imp.fail(f"equation {a['equation']!r} sums over the batch axis ('{letter}'); not supported")
    ob = out.index(letter)
    y = on_physical(imp, node, {**a, "equation": f"{','.join(batched)}->{letter}{out[:ob]}{out[ob + 1:]}"},
                    _standard(node), values)[0]
    return [_with(y, _batch_at(ob, len(out)))]


# ---- constants whose shape holds the batch size ---------------------------------------------------------------
def holds_batch_size(imp, node) -> bool:
    """Whether an Expand, Tile or ConstantOfShape of constants makes a tensor whose shape holds the batch size
    (computed from Shape(x)): folding it would build an array of the batch stand-in's size (a million rows)."""
    at = {"Expand": 1, "Tile": 1, "ConstantOfShape": 0}.get(node.op_type)
    return at is not None and len(node.input) > at and node.input[at] in imp.alt


def constant_with_batch(imp, node, a) -> Dyn:
    """Such a tensor as a ``constant`` layer that x lends its batch size to, the batch axis where the ONNX shape has
    it: a class token expanded to (1, N, E) for a sequence-first transformer, DETR's queries repeated to (Q, N, E)
    and zeros_like of them, an attention mask tiled to (N*W, H, H). The per-sample value is the node evaluated at
    batch size 1; it stays a parameter where it holds a parameter's values as they are."""
    from .folding import evaluate
    at = 0 if node.op_type == "ConstantOfShape" else 1
    shape_name = node.input[at]
    sizes, sizes_alt = np.asarray(imp.consts[shape_name]), np.asarray(imp.alt[shape_name])
    at_one = np.where(sizes % BATCH == 0, sizes // BATCH, sizes)   # the sizes at batch 1 (N -> 1, 6N -> 6)
    if not np.array_equal(at_one, np.where(sizes_alt % BATCH_ALT == 0, sizes_alt // BATCH_ALT, sizes_alt)):
        raise imp.fail(f"the shape {_show(np.ravel(sizes).tolist())} depends on the batch size other than as N or a "
                       f"multiple of it; not supported")
    feeds = {n: (at_one.astype(np.int64) if i == at else imp.consts[n]) for i, n in enumerate(node.input) if n}
    try:
        (value,) = evaluate([node], feeds, [node.output[0]], imp.opset)
    except Exception as exc:  # noqa: BLE001 - the onnx evaluator's own message
        raise imp.fail(f"could not build this constant at batch size 1: {type(exc).__name__}: {exc}") from None
    value = np.asarray(value)
    full = _full_shape(imp, node, at, sizes)
    axes = [j for j, d in enumerate(full) if d % BATCH == 0]
    if len(axes) != 1 or value.ndim != len(full):
        raise imp.fail(f"the shape {_show(full)} holds the batch size in {len(axes)} axes; only one is supported")
    j = axes[0]
    if node.op_type == "Expand" and j == 0 and value.shape[0] == 1:   # batch first: as before (a ViT class token)
        from .import_ops import expand_constant_to_batch
        return expand_constant_to_batch(imp, node, imp.consts[node.input[0]], [int(v) for v in np.ravel(sizes)])
    source = node.input[0] if at == 1 else ""
    trainable = source in imp.params and value.size == np.size(imp.consts[source])   # the values as they are
    if source in imp.params and not trainable:
        warnings.warn(f"ONNX node '{node.name or node.output[0]}' repeats parameter '{source}' for every sample; "
                      f"the copies import as a fixed constant, which fine-tuning does not update", stacklevel=2)
    like = imp.batch_of.get(shape_name) or next(iter(imp.dyn.values()))
    if value.shape[j] == 1:   # the batch axis alone: no physical axis for it
        y = imp.const_layer(source or node.output[0], np.squeeze(value, j).astype(np.float32), like, trainable)
        return _with(y, _batch_at(j, len(full)))
    y = imp.const_layer(source or node.output[0], value.astype(np.float32), like, trainable)
    return _with(y, [(i + 1,) for i in range(j)] + [(0, j + 1)] + [(i + 1,) for i in range(j + 1, len(full))])


def _full_shape(imp, node, at: int, sizes) -> list[int]:
    """The node's output shape with the batch stand-in in it."""
    sizes = [int(v) for v in np.ravel(sizes)]
    if node.op_type == "ConstantOfShape":
        return sizes
    x = np.asarray(imp.consts[node.input[0]])
    if node.op_type == "Tile":
        return [d * r for d, r in zip(x.shape, sizes)]
    rank = max(x.ndim, len(sizes))
    xs, ts = (1,) * (rank - x.ndim) + x.shape, [1] * (rank - len(sizes)) + sizes
    return [t if d == 1 else d for d, t in zip(xs, ts)]
