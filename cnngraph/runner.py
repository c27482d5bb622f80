"""Forward execution over a plan, keeping a tape for backward when asked.

Failures inside an op are wrapped with the layer id, op type, plugin and input shapes; an op that
returns a wrong output shape is reported as a broken op naming its plugin.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import networkx as nx
import numpy as np

from .errors import CnnGraphError, PluginError, RunError
from .blame import defined_at, source_line
from .op import Context
from .registry import DEFAULT_PLUGINS
from .schedule import Plan

_BUILTIN_PLUGINS = frozenset(DEFAULT_PLUGINS)

__all__ = ["Tape", "run_forward", "run_forward_parallel", "describe_call", "batch_of", "LayerParams",
           "MissingParam", "replaced_buffers", "init_params_problem"]


@dataclass
class Tape:
    """What a training forward leaves for backward: one context per executed layer."""

    plan: Plan
    contexts: dict[str, Context] = field(default_factory=dict)
    shapes: dict[str, tuple] = field(default_factory=dict)     # tensor id → full shape
    dtypes: dict[str, Any] = field(default_factory=dict)


def describe_call(g: nx.DiGraph, node: str, shapes: list) -> str:
    attrs = g.nodes[node]
    plugin = attrs.get("plugin") or "?"
    s = ", ".join(str(tuple(x)) for x in shapes)
    return f"while running {node} ({attrs['type']}, plugin '{plugin}') on {s}"


class MissingParam(KeyError):
    """A parameter the op read in forward but its init_params did not return."""


class LayerParams(dict):
    """The arrays passed to an op's forward: reading a name init_params did not return names it."""

    def __missing__(self, key):
        raise MissingParam(key)


def is_builtin(attrs: dict) -> bool:
    """Whether a layer's op comes with cnngraph (plugins/), not from a plugin file or package."""
    return attrs.get("plugin") in _BUILTIN_PLUGINS


def read_only_view(a):
    """``a`` as a read-only view (other objects, such as a loss's NumPy scalar, as they are). A plugin op gets its
    inputs, trainable parameters and incoming gradient so, and a write into one (which other layers read too)
    raises at the write instead of silently corrupting other branches; the arrays themselves stay writable
    (built-in ops are trusted). A grad-mode forward returns its results so, as the tape still holds them."""
    if not isinstance(a, np.ndarray):
        return a
    view = a.view()
    view.flags.writeable = False
    return view


def wrote_in_place(exc: Exception) -> bool:
    return isinstance(exc, ValueError) and "read-only" in str(exc)


def _guarded(g: nx.DiGraph, node: str, ctx: Context, xs: list, params: "LayerParams", op):
    """What a plugin op's forward gets: read-only views of the inputs it may not overwrite and of its trainable
    parameters (buffers stay writable: it updates them in place)."""
    if is_builtin(g.nodes[node]):
        return xs, params
    may = getattr(ctx, "overwritable", None) or ()
    views = [x if i < len(may) and may[i] else read_only_view(x) for i, x in enumerate(xs)]
    return views, LayerParams({k: v if k in op.buffers else read_only_view(v) for k, v in params.items()})


def _call(g: nx.DiGraph, node: str, ctx: Context, xs: list, params: dict):
    """One layer's forward, with failures named by layer, op, plugin and input shapes."""
    op = g.nodes[node]["op"]
    source = getattr(op, "inner", op)   # a fused activation: the line is in the producer op's file
    params = LayerParams(params)
    buffers = {name: params[name] for name in op.buffers if name in params}
    try:
        seen, passed = _guarded(g, node, ctx, xs, params, op)
        y = op.forward(ctx, seen, passed)
        y = next((x for x, v in zip(xs, seen) if y is v and x is not v), y)   # an input passed on: the array itself
    except CnnGraphError:
        raise
    except ValueError as exc:
        if not wrote_in_place(exc):
            raise RunError(f"{describe_call(g, node, [x.shape for x in xs])}{source_line(exc, source)}: "
                           f"{type(exc).__name__}: {exc}") from exc
        raise PluginError(f"{_who(g.nodes[node])} wrote into an input or a parameter in place in forward at layer "
                          f"'{node}'{source_line(exc, source)}; other layers read the same arrays, so compute into a "
                          f"new one (y = x * 2, not x *= 2; ctx.can_overwrite(i) says when an input may be reused)") from None
    except MissingParam as exc:
        raise PluginError(f"{_who(g.nodes[node])} read parameter {exc.args[0]!r} in forward at layer '{node}'"
                          f"{source_line(exc, source)}, but its init_params returned no {exc.args[0]!r} (it returned: "
                          f"{', '.join(map(repr, params)) or 'nothing'})") from None
    except Exception as exc:
        raise RunError(f"{describe_call(g, node, [x.shape for x in xs])}{source_line(exc, source)}: "
                       f"{type(exc).__name__}: {exc}") from exc
    replaced = replaced_buffers(buffers, passed)
    if replaced:
        raise PluginError(f"{_who(g.nodes[node])} at layer '{node}': {replaced}")
    _check_output(g, node, y, xs)
    return y


def init_layer_params(g: nx.DiGraph, node: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The op's ``init_params`` for layer ``node``, checked: parameters too large for memory are a RunError
    naming the layer, any other failure, or a result that is not a dict of arrays, a PluginError."""
    attrs = g.nodes[node]
    op = attrs["op"]
    try:
        local = op.init_params(attrs["in_shapes"], rng)
    except MemoryError as exc:
        raise RunError(f"layer '{node}' ({attrs['type']}): its parameters do not fit in memory ({exc})") from exc
    except Exception as exc:
        raise PluginError(f"{_who(attrs)} failed to initialise parameters of layer '{node}'{source_line(exc, op)}: "
                          f"{type(exc).__name__}: {exc}") from exc
    problem = init_params_problem(local)
    if problem:
        at = defined_at(type(op).init_params)
        raise PluginError(f"{_who(attrs)} at layer '{node}'{' (' + at + ')' if at else ''}: {problem}")
    return local


def init_params_problem(local: Any) -> str:
    """Why what an op's init_params returned is not a dict of NumPy arrays ('' when it is): a Python scalar
    or list would become an array of a shape the op never meant, found only later, by backward."""
    if not isinstance(local, dict):
        return f"init_params returned {type(local).__name__}; expected a dict of NumPy arrays by name"
    bad = [f"a {type(v).__name__} for {k!r}" for k, v in local.items() if not isinstance(v, np.ndarray)]
    return (f"init_params returned {', '.join(bad)}; expected NumPy arrays (np.full(shape, value, np.float32))"
            if bad else "")


def replaced_buffers(before: dict, after: dict) -> str:
    """Why forward broke the buffer contract: it assigned a new array to a buffer's entry of its params
    (lost: the model keeps the old array), instead of writing into it. '' when it did not."""
    names = [name for name, array in before.items() if after.get(name) is not array]
    if not names:
        return ""
    name = names[0]
    return (f"forward replaced buffer {', '.join(map(repr, names))} (params[{name!r}] = new array), which is "
            f"lost: the model keeps the old array; update it in place: params[{name!r}][...] = value")


def run_forward(g: nx.DiGraph, plan: Plan, env: dict[str, Any], params_of: Callable[[str], dict],
                training: bool, grad: bool, rng, on_output: Callable | None = None,
                inference_layers: frozenset = frozenset(), unkept: frozenset = frozenset()) -> tuple[dict, Tape | None]:
    """Run the plan on ``env`` (model inputs by name); ``inference_layers`` (frozen ones) run with training off, and
    ``unkept`` layers keep nothing for backward (no gradient will pass them). Returns (outputs, tape or None)."""
    tape = Tape(plan) if grad else None
    protected = set(plan.inputs) | set(plan.outputs)   # the caller's arrays and the results
    callers = tuple(env[n] for n in plan.inputs if n in env)
    for i, step in enumerate(plan.steps):
        node = step.node
        xs = [env[s] for s in step.inputs]
        ctx = Context(training=training and node not in inference_layers, grad=grad and node not in unkept, rng=rng)
        if not grad:
            ctx.overwritable = tuple(plan.last_use[s] == i and s not in protected and step.inputs.count(s) == 1
                                     and _sole_owner(env, s, callers) for s in step.inputs)
        y = env[node] = _call(g, node, ctx, xs, params_of(node))
        if on_output is not None:
            on_output(node, y)
        if tape is not None:
            tape.contexts[node] = ctx
            tape.shapes[node] = y.shape
            for s, x in zip(step.inputs, xs):
                tape.shapes.setdefault(s, x.shape)
                tape.dtypes.setdefault(s, x.dtype)
        for dead in step.free_after:
            env.pop(dead, None)
    return {name: env[name] for name in plan.outputs}, tape


def run_forward_parallel(g: nx.DiGraph, plan: Plan, env: dict[str, Any], params_of: Callable[[str], dict],
                         rng, workers: int = 2) -> dict:
    """Inference with independent branches on ``workers`` threads (NumPy releases the GIL in its
    kernels): each layer starts as soon as its inputs exist; tensors are freed after their last
    consumer finishes. Results equal ``run_forward``'s to float rounding (kernels may block differently)."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
    consumers: dict[str, int] = {}
    for step in plan.steps:
        for src in set(step.inputs):
            consumers[src] = consumers.get(src, 0) + 1
    protected = set(plan.inputs) | set(plan.outputs)
    callers = tuple(env[n] for n in plan.inputs if n in env)
    waiting = {step.node: step for step in plan.steps}
    pending: dict = {}

    def start(pool, step):
        ctx = Context(rng=rng)
        ctx.overwritable = tuple(consumers[s] == 1 and s not in protected and step.inputs.count(s) == 1
                                 and _sole_owner(env, s, callers) for s in step.inputs)
        return pool.submit(_call, g, step.node, ctx, [env[s] for s in step.inputs], params_of(step.node))

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cnngraph-branch") as pool:
        while waiting or pending:
            for node, step in list(waiting.items()):
                if all(s in env for s in step.inputs):
                    pending[start(pool, step)] = step
                    del waiting[node]
            if not pending:
                raise RunError("the plan cannot progress: a layer waits for an input nothing produces")
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                step = pending.pop(future)
                env[step.node] = future.result()
                for src in set(step.inputs):
                    consumers[src] -= 1
                    if consumers[src] == 0 and src not in protected:
                        env.pop(src, None)
    return {name: env[name] for name in plan.outputs}


def _sole_owner(env: dict[str, Any], name: str, callers: tuple = ()) -> bool:
    """True when tensor ``name`` owns its memory, is none of the caller's input arrays (``callers``:
    an identity layer passes one on, and it stays the caller's after the input itself is freed), and
    no other live tensor is it or a view of it (identity and reshape layers pass arrays on: writing
    into one would change the others)."""
    x = env[name]
    if getattr(x, "base", None) is not None:
        return False
    if any(c is x or getattr(c, "base", None) is x for c in callers):
        return False
    return not any(v is x or getattr(v, "base", None) is x for k, v in env.items() if k != name)


def _who(attrs: dict) -> str:
    return f"op '{attrs['type']}' (plugin '{attrs.get('plugin')}')"


def _check_output(g: nx.DiGraph, node: str, y, xs) -> None:
    attrs = g.nodes[node]
    if not attrs.get("reduces_batch"):
        if not hasattr(y, "shape") or not hasattr(y, "dtype"):
            raise PluginError(f"{_who(attrs)} returned a {type(y).__name__} from forward at layer '{node}'; "
                              f"expected one array")
        if y.dtype.kind == "f":
            given = next((x.dtype for x in xs if getattr(x, "dtype", None) is not None and x.dtype.kind == "f"), None)
            if given is not None and y.dtype != given:
                raise PluginError(f"{_who(attrs)} returned {y.dtype} from forward at layer '{node}' on {given} "
                                  f"inputs; compute in the inputs' dtype (the model's)")
    want = () if attrs.get("reduces_batch") else (xs[0].shape[0], *attrs["out_shape"]) if xs else None
    shape = getattr(y, "shape", None)
    if want is not None and tuple(shape or ()) != tuple(want):
        raise PluginError(f"{_who(attrs)} returned shape {shape} from forward at layer '{node}', but its shape "
                          f"inference promised {tuple(want)}")


def batch_of(env: dict) -> int:
    """The batch size of a pass: the leading dimension of its first batched input (1 if none)."""
    for a in env.values():
        if getattr(a, "ndim", 0) >= 1:
            return int(a.shape[0])
    return 1
