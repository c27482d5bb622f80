"""Per-layer cost table: output shapes, parameters, FLOPs, receptive field and memory.

Everything here is computed from the compiled graph and the scheduler's plan, except the
training memory (:func:`training_memory`), which is measured by running the model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from .errors import PluginError, RunError
from .graph import topological_order
from .op import param_shapes_apply
from .receptive import receptive_fields
from .schedule import make_plan

__all__ = ["LayerRow", "Summary", "TrainingMemory", "summarize", "inference_peak_bytes", "receptive_fields",
           "training_memory", "add_training_memory", "param_counts", "declared_param_shapes", "param_shapes_mismatch",
           "frozen_line", "available_memory_bytes", "measurement_cost", "why_not_measure"]


@dataclass
class LayerRow:
    id: str
    type: str
    inputs: list[str]
    out_shape: tuple
    params: int
    flops: int              # multiply-adds per sample
    act_bytes: int          # output activation bytes for the whole batch
    receptive_field: Any    # (h, w) in input pixels ((l,) for 1-D maps), "global" or None


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
    training_peak_bytes: int | None = None     # measured activation peak of a training forward
    training_memory: dict | None = None        # how it was measured (see TrainingMemory)
    training_memory_skipped: str | None = None  # why the measurement was skipped (see add_training_memory)
    training_estimate_bytes: int | None = None  # static estimate given instead: every layer output at batch_size

    def to_dict(self) -> dict:
        d = asdict(self)
        for r in d["rows"]:
            r["out_shape"] = list(r["out_shape"])
            # the share of the total FLOPs that the table draws as a bar
            r["flops_share"] = r["flops"] / self.total_flops if self.total_flops else 0.0
        return d


CHECK_MAX_VALUES = 1 << 22   # a plugin op's declared parameters up to this size are made once to check them


def declared_param_shapes(g: nx.DiGraph, node: str) -> dict[str, tuple] | None:
    """The op's ``param_shapes`` for layer ``node`` (checked), or None where it does not declare them (or
    they do not apply: see :func:`cnngraph.op.param_shapes_apply`)."""
    attrs = g.nodes[node]
    op = attrs["op"]
    if not param_shapes_apply(type(op)):
        return None
    shapes = op.param_shapes(attrs["in_shapes"])
    if shapes is None:
        return None
    if not (isinstance(shapes, dict) and all(isinstance(v, tuple) and all(isinstance(d, (int, np.integer)) and d >= 0
                                                                         for d in v) for v in shapes.values())):
        raise PluginError(f"param_shapes of op '{attrs['type']}' (plugin '{attrs.get('plugin')}') returned "
                          f"{shapes!r} at layer '{node}'; expected a dict of shape tuples by name, or None")
    return shapes


def param_counts(g: nx.DiGraph, node: str, rng, mismatches: list[str] | None = None) -> tuple[int, int]:
    """(trainable, all) parameter values of layer ``node``: from its op's ``param_shapes`` where it declares
    them (nothing is allocated, so counting a huge network is fast), else from ``init_params`` (checked).
    A plugin op's declared shapes, where small enough to make cheaply, are checked against what its
    init_params makes (built-ins are checked by the test suite): on a mismatch the made shapes count, and
    ``mismatches`` gets a line naming both."""
    op = g.nodes[node]["op"]
    shapes = declared_param_shapes(g, node)
    if shapes is None or (not str(getattr(op, "plugin", "")).startswith("cnngraph.")
                          and sum(math.prod(v) for v in shapes.values()) <= CHECK_MAX_VALUES):
        from .runner import init_layer_params
        made = {k: tuple(a.shape) for k, a in init_layer_params(g, node, rng).items()}
        why = param_shapes_mismatch(g, node, made)
        if why and mismatches is not None:
            mismatches.append(why)
        shapes = made
    trainable = sum(math.prod(v) for k, v in shapes.items() if k not in op.buffers)
    total = sum(math.prod(v) for v in shapes.values())
    return int(trainable), int(total)


def param_shapes_mismatch(g: nx.DiGraph, node: str, made: dict[str, tuple]) -> str | None:
    """One line when the op's ``param_shapes`` disagree with the shapes its ``init_params`` made, else None."""
    declared = declared_param_shapes(g, node)
    if declared is None or {k: tuple(int(d) for d in v) for k, v in declared.items()} == made:
        return None
    attrs = g.nodes[node]
    return (f"op '{attrs['type']}' (plugin '{attrs.get('plugin')}') at layer '{node}': param_shapes returned "
            f"{declared} but init_params made {made}; counting the arrays made (`cnngraph check-op "
            f"{attrs['type']}` checks this)")


def _tensor_bytes(attrs: dict, batch_size: int, itemsize: int) -> int:
    """Bytes of one node's output for a batch: int64 inputs take 8 bytes per value, and a loss's
    output is one number for the whole batch."""
    if attrs.get("reduces_batch"):
        return itemsize
    if attrs["kind"] == "input" and attrs.get("dtype") == "int64":
        itemsize = 8
    return math.prod(attrs["out_shape"]) * batch_size * itemsize


def inference_peak_bytes(g: nx.DiGraph, batch_size: int = 1, itemsize: int = 4) -> int:
    """Peak bytes of live activations in an inference pass under the scheduler's liveness plan
    (inputs included; each tensor freed after its last consumer)."""
    plan = make_plan(g)
    size = {n: _tensor_bytes(g.nodes[n], batch_size, itemsize) for n in g.nodes}
    live = {n: size[n] for n in plan.inputs}
    peak = sum(live.values())
    for step in plan.steps:
        live[step.node] = size[step.node]
        peak = max(peak, sum(live.values()))
        for dead in step.free_after:
            live.pop(dead, None)
    return int(peak)


@dataclass
class TrainingMemory:
    """Activation memory of a training step, measured (not estimated) at batch 1 and 2.

    ``peak_bytes[b]`` is the largest total, over the steps of ``model.forward(x, training=True, fused=True)``
    (the training step as ``cnngraph.train`` runs it), of
    the distinct arrays held at that moment: the tensors the liveness plan still keeps and what the
    tape has saved for backward so far (arrays deduplicated by their base buffer; parameters and
    buffers excluded), and the same during backward: the tape not yet freed plus the gradients alive
    (counted from the recorded shapes). Larger batches are extrapolated linearly: ``fixed + per_sample * batch``.
    """

    batch_size: int
    peak_bytes: int                # extrapolated to batch_size
    measured: dict                 # {1: bytes, 2: bytes}
    tape_bytes: dict               # {1: bytes, 2: bytes}: held by the tape at the end of the forward
    env_peak_bytes: dict           # {1: bytes, 2: bytes}: peak of the live tensors alone
    per_sample_bytes: int
    fixed_bytes: int

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("measured", "tape_bytes", "env_peak_bytes"):
            d[k] = {str(b): v for b, v in d[k].items()}
        return d


def _arrays_in(obj, out: list, depth: int = 0) -> None:
    """Every array reachable from a saved context value (dicts, sequences, dataclasses, objects)."""
    if depth > 6 or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return
    if hasattr(obj, "__array_interface__") or hasattr(obj, "__cuda_array_interface__"):
        if hasattr(obj, "nbytes") and hasattr(obj, "shape"):
            out.append(obj)
        return
    if isinstance(obj, dict):
        for v in obj.values():
            _arrays_in(v, out, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _arrays_in(v, out, depth + 1)
    elif hasattr(obj, "__dict__"):
        for v in vars(obj).values():
            _arrays_in(v, out, depth + 1)
    elif hasattr(obj, "__slots__"):
        for k in obj.__slots__:
            _arrays_in(getattr(obj, k, None), out, depth + 1)


def _base(a):
    while getattr(a, "base", None) is not None and hasattr(a.base, "nbytes") and hasattr(a.base, "shape"):
        a = a.base
    return a


def _measure(model, batch: int, seed: int = 0) -> tuple[int, int, int]:
    """(peak of live tensors + tape, tape bytes at the end, peak of live tensors) for one training forward."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, inp in model.spec.inputs.items():
        if inp.dtype == "int64":
            inputs[name] = np.zeros((batch, *inp.shape), np.int64)
        else:
            inputs[name] = rng.standard_normal((batch, *inp.shape)).astype(model.dtype)
    plan = model._fused_plan(model.plan())[1]   # the step as cnngraph.train runs it (fused=True)
    outputs: dict[str, Any] = {}
    model.forward(inputs, training=True, on_output=lambda node, y: outputs.__setitem__(node, y), fused=True)
    tape = model._tape
    params = {id(_base(a)) for a in model.params._data.values()}
    saved_by_step = []
    for step in plan.steps:
        ctx = tape.contexts.get(step.node) if tape is not None else None
        arrs: list = []
        if ctx is not None:
            _arrays_in(ctx.saved, arrs)
        saved_by_step.append([_base(a) for a in arrs])
    live = {n: inputs[n] for n in plan.inputs}
    held: dict[int, int] = {}
    peak = env_peak = 0
    for i, step in enumerate(plan.steps):
        live[step.node] = outputs[step.node]
        for b in saved_by_step[i]:
            if id(b) not in params:
                held[id(b)] = int(b.nbytes)
        now = dict(held)
        for a in live.values():
            b = _base(a)
            if id(b) not in params:
                now[id(b)] = int(b.nbytes)
        peak = max(peak, sum(now.values()))
        env_peak = max(env_peak, sum(int(_base(a).nbytes) for a in live.values()))
        for dead in step.free_after:
            live.pop(dead, None)
    tape_bytes = sum(held.values())
    if tape is not None:
        peak = max(peak, _backward_peak(model, plan, tape, saved_by_step, params))
    model._tape = None
    return int(peak), int(tape_bytes), int(env_peak)


def _backward_peak(model, plan, tape, saved_by_step, params) -> int:
    """Largest total during backward, walking the steps in reverse: what the tape saved for the steps not
    yet differentiated (a buffer goes with the earliest step that saved it), the gradients alive (a
    tensor's, from its consumer's backward to its producer's) and the input gradients a step returns."""
    from .autodiff import requires_grad
    first_step: dict[int, tuple[int, int]] = {}
    for i, bases in enumerate(saved_by_step):
        for b in bases:
            if id(b) not in params and id(b) not in first_step:
                first_step[id(b)] = (int(b.nbytes), i)
    need = requires_grad(model._tape_graph, plan.order, model._trainable, set())
    size = {t: math.prod(shape) * model.dtype.itemsize for t, shape in tape.shapes.items()}
    grads = {o: size[o] for o in plan.outputs if o in size}
    peak = 0
    for j in range(len(plan.steps) - 1, -1, -1):
        step = plan.steps[j]
        tape_held = sum(n for n, first in first_step.values() if first <= j)
        made = {s: size[s] for s in step.inputs if s in need and s in size}
        peak = max(peak, tape_held + sum(grads.values()) + sum(made.values()))
        grads.pop(step.node, None)
        grads.update(made)
    return peak


def training_memory(spec_or_model, batch_size: int = 1, seed: int = 0) -> TrainingMemory:
    """Measure the activation memory of a training forward at batch 1 and 2 and extrapolate to
    ``batch_size`` (see :class:`TrainingMemory`). Accepts a Spec (compiled here, on the CPU, with
    seeded random weights) or a Model."""
    from .model import Model
    try:
        model = spec_or_model if isinstance(spec_or_model, Model) else Model(spec_or_model, seed=seed)
    except RunError as exc:   # parameters too large for memory: the caller skips the measurement
        if isinstance(exc.__cause__, MemoryError):
            raise MemoryError(str(exc)) from exc
        raise
    patterns = getattr(getattr(model.spec, "train", None), "freeze", None)
    if patterns and not isinstance(spec_or_model, Model):   # as training will: frozen layers keep no activations
        from .train.freeze import matching_layers
        model.freeze(matching_layers(patterns, [lid for lid, names in model._names.items() if names]))
    snapshot = {n: model.params[n].copy() for n in model.buffer_names}   # running stats change in training
    rng_state = model.rng.bit_generator.state
    try:
        results = {b: _measure(model, b, seed) for b in (1, 2)}
    except RunError as exc:
        # the runner names the failing layer; out of memory is still out of memory for the caller
        if isinstance(exc.__cause__, MemoryError):
            raise MemoryError(str(exc)) from exc
        raise
    finally:
        for n, v in snapshot.items():
            model.params._data[n] = v
        model.rng.bit_generator.state = rng_state
    p1, p2 = results[1][0], results[2][0]
    per = max(p2 - p1, 0)
    fixed = p1 - per
    return TrainingMemory(batch_size, int(fixed + per * batch_size), {1: p1, 2: p2},
                          {b: r[1] for b, r in results.items()}, {b: r[2] for b, r in results.items()},
                          int(per), int(fixed))


# When to skip the measurement: it runs a real training step at batch 1 and 2, which on a big input
# can take minutes or get the process killed for memory before anything is printed.
MEASURE_SAFETY = 3            # tape + gradients + kernel workspace, relative to the layer outputs alone
MEASURE_MEMORY_SHARE = 0.5    # of the memory available now
MEASURE_MAX_SECONDS = 30.0
MACS_PER_SECOND = 20e9        # a training step of NumPy kernels on a couple of CPU cores (rough)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def measurement_cost(s: Summary) -> tuple[int, float]:
    """(bytes, seconds) that :func:`training_memory` is expected to need, from the static table: the
    layer outputs at batch 2 times a safety factor plus the parameters and their gradients (the model it
    builds makes them), and batch 1 + 2 of forward + backward (~3 forwards)."""
    per_sample = sum(r.act_bytes for r in s.rows) / s.batch_size
    return int(per_sample * 2 * MEASURE_SAFETY + 2 * s.param_bytes), 3 * 3 * s.total_flops / MACS_PER_SECOND


def why_not_measure(s: Summary, available: int | None) -> str | None:
    """Why measuring the training memory should be skipped on this machine, or None to measure."""
    need, seconds = measurement_cost(s)
    if available is not None and need > available * MEASURE_MEMORY_SHARE:
        return (f"measuring needs about {human_bytes(need)}, more than {MEASURE_MEMORY_SHARE:.0%} of the "
                f"{human_bytes(available)} of memory available")
    if seconds > MEASURE_MAX_SECONDS:
        return f"measuring would take about {seconds:.0f} s (a training step at batch 1 and 2)"
    return None


def add_training_memory(s: Summary, spec_or_model, available: int | None = None) -> Summary:
    """Measure the training memory into ``s`` (see :func:`training_memory`), or, when
    :func:`why_not_measure` says so or memory runs out, record why not and a static estimate.
    ``available`` defaults to :func:`available_memory_bytes`."""
    why = why_not_measure(s, available_memory_bytes() if available is None else available)
    if why is None:
        try:
            tm = training_memory(spec_or_model, s.batch_size)
        except MemoryError:
            why = "measuring ran out of memory (a training step at batch 1 and 2)"
        else:
            s.training_peak_bytes, s.training_memory = tm.peak_bytes, tm.to_dict()
            return s
    s.training_memory_skipped = why
    s.training_estimate_bytes = sum(r.act_bytes for r in s.rows)
    return s


def summarize(graph: nx.DiGraph, name: str = "network", batch_size: int = 1, itemsize: int = 4,
              training: TrainingMemory | None = None) -> Summary:
    """Build the summary of a compiled graph (``spec.graph`` or ``model.graph``); pass the result of
    :func:`training_memory` as ``training`` to include the measured training peak."""
    rng = np.random.default_rng(0)
    rfs = receptive_fields(graph)
    rows = []
    total_params = total_all = total_flops = 0
    mismatches: list[str] = []
    for node in topological_order(graph):
        attrs = graph.nodes[node]
        if attrs["kind"] == "input":
            rows.append(LayerRow(node, "input", [], tuple(attrs["out_shape"]), 0, 0,
                                 _tensor_bytes(attrs, batch_size, itemsize),
                                 rfs[node] if isinstance(rfs[node], tuple) else None))
            continue
        trainable, allp = param_counts(graph, node, rng, mismatches)
        flops = attrs["op"].flops(attrs["in_shapes"], attrs["out_shape"])
        if not isinstance(flops, (int, float, np.integer, np.floating)) or not flops >= 0:
            raise PluginError(f"flops of op '{attrs['type']}' (plugin '{attrs.get('plugin')}') returned {flops!r} "
                              f"at layer '{node}'; expected a count of multiply-adds >= 0")
        flops = int(flops)
        rows.append(LayerRow(node, attrs["type"], list(attrs["inputs"]), tuple(attrs["out_shape"]), trainable, flops,
                             _tensor_bytes(attrs, batch_size, itemsize), rfs.get(node)))
        total_params += trainable
        total_all += allp
        total_flops += flops
    s = Summary(name, batch_size, rows, total_params, total_all * itemsize, total_flops,
                inference_peak_bytes(graph, batch_size, itemsize),
                training_peak_bytes=training.peak_bytes if training is not None else None,
                training_memory=training.to_dict() if training is not None else None)
    if mismatches:
        s.extra["warning"] = "; ".join(mismatches)
    return s


def frozen_line(s: Summary, frozen) -> str:
    """The layers of ``frozen`` that hold parameters, as Keras's non-trainable count: "conv1, bn1 (464 params;
    650 trained)"; '' when none."""
    rows = [r for r in s.rows if r.params and r.id in set(frozen)]
    if not rows:
        return ""
    fixed = sum(r.params for r in rows)
    return f"{', '.join(r.id for r in rows)} ({fixed:,} params; {s.total_params - fixed:,} trained)"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"


def human_count(n: float) -> str:
    for unit, div in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))
