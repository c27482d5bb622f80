"""Reverse-mode autodiff over a recorded tape.

Walks the executed layers backwards, calls each op's backward with the gradient of its output,
accumulates gradients where a tensor feeds several layers, and frees each layer's saved context as
soon as its backward has run.
"""
from __future__ import annotations

from typing import Any, Callable

import networkx as nx

from .blame import source_line
from .errors import CnnGraphError, PluginError, RunError
from .runner import Tape, describe_call, is_builtin, read_only_view, wrote_in_place

__all__ = ["run_backward", "requires_grad"]


def requires_grad(g: nx.DiGraph, order: list[str], trainable: Callable[[str], bool],
                  input_grads: set[str]) -> set[str]:
    """Tensor ids whose gradient is needed: those downstream of a trainable parameter or of an
    input whose gradient was asked for."""
    need = set(input_grads)
    for node in order:
        op = g.nodes[node]["op"]
        srcs = g.nodes[node]["inputs"]
        grad_ports = op.grad_inputs if op.grad_inputs is not None else range(len(srcs))
        if trainable(node) or any(srcs[i] in need for i in grad_ports if i < len(srcs)):
            need.add(node)
    return need


def run_backward(g: nx.DiGraph, tape: Tape, grad_outputs: dict[str, Any], need: set[str],
                 param_names: Callable[[str], dict[str, str]],
                 capture: set[str] | frozenset = frozenset()) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (gradients by tensor id for model inputs and the layer outputs named in ``capture``,
    gradients by full parameter name)."""
    captured: dict[str, Any] = {}
    grads: dict[str, Any] = {}
    for name, gy in grad_outputs.items():
        grads[name] = gy
    param_grads: dict[str, Any] = {}
    for step in reversed(tape.plan.steps):
        node = step.node
        gy = grads.pop(node, None)
        ctx = tape.contexts.pop(node, None)
        if node in capture and gy is not None:
            captured[node] = gy.copy()   # complete here: every consumer ran before; ops may reuse gy
        if gy is None or node not in need:
            continue
        attrs = g.nodes[node]
        op = attrs["op"]
        grad_ports = set(op.grad_inputs if op.grad_inputs is not None else range(len(step.inputs)))
        ctx.needs_input_grad = tuple(i in grad_ports and s in need for i, s in enumerate(step.inputs))
        try:
            seen = gy if is_builtin(attrs) else read_only_view(gy)
            returned = op.backward(ctx, seen)
            if seen is not gy and isinstance(returned, (list, tuple)) and len(returned) == 2 \
                    and isinstance(returned[0], (list, tuple)):   # gy passed on as an input gradient: the array itself
                returned = ([gy if g is seen else g for g in returned[0]], returned[1])
        except CnnGraphError:
            raise
        except Exception as exc:
            if wrote_in_place(exc) and not is_builtin(attrs):
                raise PluginError(f"op '{attrs['type']}' (plugin '{attrs.get('plugin')}') wrote into its incoming "
                                  f"gradient gy in place in backward at layer '{node}'{source_line(exc, op)}; gy may "
                                  f"be shared with other layers: compute into a new array (gx = gy * 2)") from None
            shapes = [tape.shapes.get(s, "?") for s in step.inputs]
            raise RunError(f"{describe_call(g, node, shapes).replace('while running', 'while differentiating')}"
                           f"{source_line(exc, op)}: {type(exc).__name__}: {exc}") from exc
        in_grads, p_grads = returned if isinstance(returned, (list, tuple)) and len(returned) == 2 else (returned, None)
        if not isinstance(in_grads, (list, tuple)) or not isinstance(p_grads, dict):
            got = (f"({type(in_grads).__name__}, {type(p_grads).__name__})" if p_grads is not None else
                   f"a {type(returned).__name__}" + (f" of {len(returned)}" if isinstance(returned, (list, tuple)) else ""))
            raise PluginError(f"op '{attrs['type']}' (plugin '{attrs.get('plugin')}') returned {got} from backward at "
                              f"layer '{node}'; expected the pair (a list with one gradient or None per input, a dict "
                              f"of parameter gradients)")
        if len(in_grads) != len(step.inputs):
            raise PluginError(f"op '{attrs['type']}' (plugin '{attrs.get('plugin')}') returned {len(in_grads)} input "
                              f"gradients from backward at layer '{node}', expected {len(step.inputs)}")
        names = param_names(node)
        trainable = [local for local in names if local not in op.buffers]
        unknown = [local for local in p_grads if local not in trainable]
        missing = [local for local in trainable if local not in p_grads]
        if unknown or missing:
            hint = (f" (if {', '.join(map(repr, missing))} {'is' if len(missing) == 1 else 'are'} state, not trainable, "
                    f"list {'it' if len(missing) == 1 else 'them'} in the op's class attribute `buffers`)"
                    if missing else "")
            raise PluginError(f"op '{attrs['type']}' (plugin '{attrs.get('plugin')}') returned parameter gradients "
                              f"{sorted(p_grads)} from backward at layer '{node}', expected exactly {trainable}{hint}")
        for local, pg in p_grads.items():
            param_grads[names[local]] = pg
        for i, (src, dx) in enumerate(zip(step.inputs, in_grads)):
            if dx is None and ctx.needs_input_grad[i]:   # a silent zero would stop everything upstream learning
                raise PluginError(f"op '{attrs['type']}' (plugin '{attrs.get('plugin')}') returned no gradient (None) "
                                  f"for input {i} ('{src}') from backward at layer '{node}', but that input needs one "
                                  f"(ctx.need_grad({i}) is True); return the gradient, or declare the input "
                                  f"non-differentiable with the class attribute grad_inputs")
            if dx is None or not ctx.needs_input_grad[i]:
                continue
            want = tape.shapes.get(src)
            if want is not None and tuple(dx.shape) != tuple(want):
                raise PluginError(f"op '{attrs['type']}' (plugin '{attrs.get('plugin')}') returned a gradient of shape "
                                  f"{tuple(dx.shape)} for input {i} ('{src}') at layer '{node}', expected {tuple(want)}")
            given = tape.dtypes.get(src)
            if given is not None and dx.dtype != given:   # as forward: one op must not change the model's precision
                raise PluginError(f"op '{attrs['type']}' (plugin '{attrs.get('plugin')}') returned a {dx.dtype} gradient "
                                  f"for input {i} ('{src}') from backward at layer '{node}' on {given} inputs; compute "
                                  f"in the inputs' dtype (the model's)")
            if src in grads:
                grads[src] = grads[src] + dx
            else:
                grads[src] = dx
    grads.update(captured)
    return grads, param_grads
