"""Model: a compiled graph with its parameters, forward, backward and save/load."""
from __future__ import annotations

import warnings

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

from .autodiff import requires_grad, run_backward
from .backend import get_xp, to_device, to_numpy, tune_allocator
from .errors import CheckpointError, CnnGraphError, PluginError, RunError
from .kernels._parallel import blas_held_for
from .runner import batch_of, init_layer_params, read_only_view, run_forward, run_forward_parallel
from .paramtypes import is_whole
from .schedule import Plan, make_plan
from .spec import Spec, load_spec

__all__ = ["Model", "ParamStore", "compile"]

DTYPES = {"float32": np.float32, "float64": np.float64}


class ParamStore(MutableMapping):
    """Live mapping ``"<layer>.<name>"`` → array. Assigning replaces a weight; the new array must
    have the same shape and is cast to the model's dtype and device."""

    def __init__(self, arrays: dict[str, Any], xp, dtype):
        self._data = arrays
        self._xp = xp
        self._dtype = dtype

    def __getitem__(self, name: str):
        if name not in self._data:
            raise self._unknown(name)
        return self._data[name]

    def _unknown(self, name: str) -> KeyError:
        return KeyError(f"no parameter named '{name}'; known: {', '.join(self._data)}")

    def converted(self, name: str, value):
        """``value`` as the new array of parameter ``name`` (same shape, the model's dtype and device);
        ValueError/KeyError naming the parameter otherwise. Assigns nothing."""
        if name not in self._data:
            raise self._unknown(name)
        old = self._data[name]
        if value is None:
            raise ValueError(f"parameter '{name}': expected an array of shape {tuple(old.shape)}, found None")
        value = to_device(value, self._xp)
        if tuple(value.shape) != tuple(old.shape):
            raise ValueError(f"parameter '{name}' has shape {tuple(old.shape)}, the new array has {tuple(value.shape)}")
        if value.dtype.kind not in "biuf":
            raise ValueError(f"parameter '{name}': expected a real numeric array, found dtype {value.dtype}")
        return value.astype(old.dtype, copy=True)

    def __setitem__(self, name: str, value) -> None:
        self._data[name] = self.converted(name, value)

    def update(self, other=(), **kw) -> None:
        """Replace several parameters: every value is checked first, so a bad one changes nothing."""
        items = dict(other, **kw)
        new = {name: self.converted(name, value) for name, value in items.items()}
        self._data.update(new)

    def __delitem__(self, name: str) -> None:
        raise TypeError("parameters cannot be deleted; they belong to the graph")

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def numpy(self) -> dict[str, np.ndarray]:
        """A copy of every parameter and buffer as NumPy arrays."""
        return {k: np.array(to_numpy(v)) for k, v in self._data.items()}


class Model:
    """A compiled network. Build with :func:`cnngraph.compile`.

    Attributes
    ----------
    spec : Spec
    graph : networkx.DiGraph
        One node per input and layer with ``op``, ``params``, ``out_shape``.
    params : ParamStore
        Every parameter and buffer by ``<layer id>.<name>``.
    """

    def __init__(self, spec: Spec, device: str = "cpu", seed: int = 0, dtype: str = "float32"):
        if spec.graph is None or any("out_shape" not in spec.graph.nodes[n] for n in spec.graph):
            raise CnnGraphError("the spec has not been shape-checked; load it with cnngraph.load_spec")
        dtype = _dtype_name(dtype)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, found {dtype!r}")
        if not is_whole(seed, 0):
            raise ValueError(f"seed must be a whole number >= 0, found {seed!r}")
        self.spec = spec
        self.graph = spec.graph
        self.device = device
        self.xp = get_xp(device)
        if device == "cpu":
            tune_allocator()
        self.dtype = np.dtype(DTYPES[dtype])
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._names: dict[str, dict[str, str]] = {}   # node → local param name → full name
        self.buffer_names: set[str] = set()
        arrays = self._init_params(np.random.default_rng(seed))
        self.params = ParamStore(arrays, self.xp, self.dtype)
        self._plans: dict[tuple, Plan] = {}
        self._fused_plans: dict[tuple, tuple] = {}    # (outputs, frozen) → what _fused_plan returns
        self._tape = None
        self._tape_graph = self.graph
        self._tape_fused: dict[str, str] = {}        # relu fused away → its conv (last training forward)
        self._tape_moved: frozenset = frozenset()    # layers whose output that forward changed (refused as wrt)
        self._tape_inputs: set[str] = set()
        self._tape_dropped = ""
        self.frozen: frozenset[str] = frozenset()   # layers whose parameters stay fixed (see freeze)
        for problem in spec.warnings:   # valid but likely wrong (an activation applied twice)
            warnings.warn(problem.format(), UserWarning, stacklevel=3)

    # -- parameters ----------------------------------------------------------------------------
    def _init_params(self, rng: np.random.Generator) -> dict[str, Any]:
        from .summary import param_shapes_mismatch
        arrays: dict[str, Any] = {}
        told: set[str] = set()   # op types warned about: once each
        for node in self._layer_order():
            attrs = self.graph.nodes[node]
            op = attrs["op"]
            local = init_layer_params(self.graph, node, rng)
            why = param_shapes_mismatch(self.graph, node, {k: tuple(np.shape(v)) for k, v in local.items()})
            if why and attrs["type"] not in told:   # summary counts from param_shapes: say they are wrong
                told.add(attrs["type"])
                warnings.warn(why, UserWarning, stacklevel=4)
            names = {}
            for name, value in local.items():
                full = f"{node}.{name}"
                names[name] = full
                arrays[full] = to_device(np.asarray(value, dtype=self.dtype), self.xp)
                if name in op.buffers:
                    self.buffer_names.add(full)
            self._names[node] = names
        return arrays

    def _layer_order(self) -> list[str]:
        from .graph import topological_order
        return [n for n in topological_order(self.graph) if self.graph.nodes[n]["kind"] == "layer"]

    def _params_of(self, node: str) -> dict[str, Any]:
        data = self.params._data
        return {local: data[full] for local, full in self._names[node].items()}

    def _op_of(self, param: str) -> str:
        """"op 'x' (plugin 'p')": the op whose layer owns parameter ``param``."""
        attrs = self.graph.nodes[param.rsplit(".", 1)[0]]
        return f"op '{attrs['type']}' (plugin '{attrs.get('plugin')}')"

    def _trainable(self, node: str) -> bool:
        return node not in self.frozen and any(full not in self.buffer_names for full in self._names.get(node, {}).values())

    @property
    def trainable_names(self) -> list[str]:
        """Names of trainable parameters (buffers such as running statistics and frozen layers' parameters excluded)."""
        fixed = {full for node in self.frozen for full in self._names.get(node, {}).values()}
        return [n for n in self.params if n not in self.buffer_names and n not in fixed]

    def freeze(self, layers) -> None:
        """Keep the parameters of ``layers`` (layer ids; an empty list unfreezes all) fixed, as for transfer
        learning: ``backward`` returns no gradients for them and skips the layers that only lead to them, and a
        frozen layer runs in inference mode also in training (batch norm uses and keeps its running statistics,
        as Keras does for a layer with ``trainable = False``)."""
        layers = [layers] if isinstance(layers, str) else list(layers)
        unknown = [n for n in layers if self.graph.nodes.get(n, {}).get("kind") != "layer"]
        if unknown:
            raise ValueError(f"freeze: {', '.join(map(repr, unknown))} {'is not a layer' if len(unknown) == 1 else 'are not layers'} "
                             f"of the network")
        self.frozen = frozenset(layers)

    def _unkept(self, plan, g) -> frozenset:
        """With frozen layers: the layers a backward for parameter gradients never reaches (a frozen backbone and
        what only leads to it). A grad-mode forward keeps nothing for them, so their activations are freed as in
        inference; a backward that asks for input or wrt= gradients through them then says so."""
        if not self.frozen:
            return frozenset()
        need = requires_grad(g, plan.order, self._trainable, set())
        return frozenset(n for n in plan.order if n not in need)

    def param_count(self) -> int:
        """Number of trainable parameter values: every parameter array's size, without buffers (batch norm's
        running statistics) and without the layers :meth:`freeze` keeps fixed (Keras's trainable count).

        >>> cnngraph.compile("specs/lenet5.yaml").param_count()      # doctest: +SKIP
        61706
        """
        return int(sum(self.params[n].size for n in self.trainable_names))

    def summary(self, batch_size: int = 1, format: str = "table", training_memory: bool = False,
                print_fn=print) -> str | None:
        """Print the per-layer table of ``cnngraph summary`` (as Keras's ``model.summary()`` does): output
        shape, parameters, FLOPs, receptive field and activation memory per layer, and the totals.

        ``format`` is "table", "markdown" or "json"; ``training_memory=True`` also measures the activation
        memory of a training step on this model (as the command does by default; slow for a large network).
        Layers that :meth:`freeze` keeps fixed are listed under the totals. ``print_fn=None`` returns the
        text instead of printing it.

        >>> cnngraph.compile("specs/lenet5.yaml").summary()          # doctest: +SKIP
        lenet5 (batch 1)
        layer   type        inputs  output    params  FLOPs ...
        """
        from .commands.summary_format import format_summary
        from .summary import add_training_memory, frozen_line, summarize
        if not is_whole(batch_size, 1):
            raise ValueError(f"batch_size must be a whole number >= 1, found {batch_size!r}")
        if format not in ("table", "markdown", "json"):
            raise ValueError(f"format must be 'table', 'markdown' or 'json', found {format!r}")
        s = summarize(self.graph, self.spec.name, batch_size)
        if frozen_line(s, self.frozen):
            s.extra["frozen by model.freeze"] = frozen_line(s, self.frozen)
        if training_memory:
            add_training_memory(s, self)
        text = format_summary(s, format)
        if print_fn is None:
            return text
        print_fn(text)
        return None

    # -- running -----------------------------------------------------------------------------
    def plan(self, outputs: list[str] | None = None) -> Plan:
        if isinstance(outputs, str):
            raise TypeError(f"outputs takes a list of layer ids, found the string {outputs!r} "
                            f"(write outputs=[{outputs!r}])")
        key = tuple(outputs or ())
        if key not in self._plans:
            missing = [o for o in key if o not in self.graph]
            if missing:
                raise RunError(f"no layer or input named {', '.join(map(repr, missing))}; outputs may name any "
                               f"of: {', '.join(list(self.graph)[:20])}{' …' if len(self.graph) > 20 else ''}")
            self._plans[key] = make_plan(self.graph, outputs)
        return self._plans[key]

    def _prepare_inputs(self, inputs: dict[str, Any], plan: Plan, grad: bool = False) -> dict[str, Any]:
        """Checked arrays for the plan's inputs. With ``grad`` they are copies: the tape keeps them for
        backward, so a caller changing its array in place in between must not change the gradients."""
        if not isinstance(inputs, dict):
            needed = list(plan.inputs) or list(self.spec.inputs)
            if len(needed) == 1:
                inputs = {needed[0]: inputs}
            else:
                raise RunError(f"forward takes a dict of inputs: {', '.join(needed)}")
        unknown = sorted(map(str, set(inputs) - set(self.spec.inputs)))
        missing = [n for n in plan.inputs if n not in inputs]
        if unknown or missing:
            from .registry import did_you_mean
            parts = [f"missing input '{n}'" for n in missing] + [
                f"unknown input '{n}'{did_you_mean(n, self.spec.inputs)}" for n in unknown]
            raise RunError(f"{'; '.join(parts)}; the model takes: {', '.join(self.spec.inputs)}")
        env = {}
        batch = None
        # every given input is checked, also one this plan does not read (a wrong array is a caller's bug)
        for name in list(plan.inputs) + [n for n in inputs if n not in plan.inputs]:
            spec = self.spec.inputs[name]
            if inputs[name] is None:
                raise RunError(f"input '{name}' is None; expected an array of shape (batch, "
                               f"{', '.join(map(str, spec.shape))})")
            x = to_device(inputs[name], self.xp)
            if x.dtype.kind not in "biuf":
                raise RunError(f"input '{name}' must hold real numbers, found dtype {x.dtype}")
            want = tuple(spec.shape)
            if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
                raise RunError(f"input '{name}' must have shape (batch, {', '.join(map(str, want))})"
                               .replace(", )", ")") + f", found {tuple(x.shape)}")
            if batch is not None and x.shape[0] != batch:
                raise RunError(f"inputs disagree on the batch size: {batch} and {x.shape[0]} ('{name}')")
            batch = x.shape[0]
            dtype = np.int64 if spec.dtype == "int64" else self.dtype
            if spec.dtype == "int64" and x.dtype.kind == "f" and not bool((x == self.xp.round(x)).all()):
                raise RunError(f"input '{name}' holds integers (int64; class labels), found values with a fraction")
            if name in plan.inputs:
                env[name] = x.astype(dtype, copy=grad)
        return env

    def forward(self, inputs: dict[str, Any], training: bool = False, grad: bool | None = None,
                outputs: list[str] | None = None, on_output=None, parallel: int = 0,
                fused: bool = False) -> dict[str, Any]:
        """Run the network.

        Parameters
        ----------
        inputs : dict
            Input name → batched array (N, *shape); a bare array when the model has one input.
        training : bool
            Training behaviour (dropout on, batch-norm batch statistics and running-stat updates).
        grad : bool, optional
            Keep what backward needs (default: same as ``training``).
        outputs : list of str, optional
            Layer ids to return (default: the spec's outputs); unneeded layers are not run.
        parallel : int
            In inference without ``grad``, run independent branches on this many threads (0: in order).
        fused : bool
            Run a max_pool2d before the relu that alone feeds it and each other relu inside the conv2d or dense
            layer that alone feeds it, forward and backward (``cnngraph.passes.pool_before_relu`` and
            ``fuse_conv_relu``; what ``cnngraph.train`` does, also to validate): the same outputs and gradients,
            fewer passes over memory. ``on_output`` then sees the layers as run, and ``backward(wrt=...)`` refuses
            a layer they changed. With ``parallel`` the plain graph runs.

        Returns
        -------
        dict
            Output name → array.

        Examples
        --------
        >>> import numpy as np, cnngraph
        >>> m = cnngraph.compile("specs/lenet5.yaml")                    # doctest: +SKIP
        >>> m.forward({"image": np.zeros((2, 1, 28, 28), np.float32)})["logits"].shape  # doctest: +SKIP
        (2, 10)
        """
        grad = training if grad is None else grad
        if isinstance(parallel, bool) or not isinstance(parallel, (int, np.integer)) or parallel < 0:
            raise ValueError(f"parallel must be a whole number of threads >= 0 (0: in order), found {parallel!r}")
        if parallel and (grad or training or on_output is not None):
            raise ValueError("parallel= runs inference only: it cannot be combined with training=True, grad=True "
                             "or on_output")
        # a failed forward must not leave the previous one's tape for backward; an inference forward
        # drops it too (say why, should backward be called next)
        self._tape_dropped = "" if self._tape is None or grad else "an inference forward (grad=False) ran since"
        self._tape = None
        plan = self.plan(outputs)
        env = self._prepare_inputs(inputs, plan, grad)
        self._batch = batch_of(env)
        g, aliases, moved = self.graph, {}, frozenset()
        if fused and not parallel:
            g, plan, aliases, moved = self._fused_plan(plan)
        self._tape_graph = g    # the graph as run (on_output callbacks read their layers' types from it)
        with blas_held_for(self._batch):
            if parallel:
                self._tape_inputs = set(plan.inputs)
                return run_forward_parallel(self.graph, plan, env, self._params_of, self.rng, int(parallel))
            unkept = self._unkept(plan, g) if grad else frozenset()
            result, tape = run_forward(g, plan, env, self._params_of, training, grad, self.rng, on_output,
                                       inference_layers=self.frozen, unkept=unkept)
        self._tape_unkept = unkept
        self._tape, self._tape_fused, self._tape_moved = tape, aliases, moved
        self._tape_inputs = set(plan.inputs)
        if grad and self.xp is np:   # the tape holds these arrays: changing one in place would corrupt backward
            result = {k: read_only_view(v) for k, v in result.items()}
        return result

    __call__ = forward

    def backward(self, grad_outputs: dict[str, Any], input_grads: bool = True,
                 wrt: list[str] | None = None) -> dict[str, Any]:
        """Reverse-mode gradients after a ``forward(..., training=True)`` (or ``grad=True``).

        Parameters
        ----------
        grad_outputs : dict
            Output name → gradient of the objective with respect to that output (same shape).
        input_grads : bool
            Also return gradients for the float model inputs (default True).
        wrt : list of str, optional
            Layer ids whose output gradients to return as well (e.g. for Grad-CAM); each must have
            been computed by the last forward.

        Returns
        -------
        dict
            Every trainable parameter name and every float input name → gradient (zeros where the
            objective does not depend on it), plus each ``wrt`` layer id → gradient of its output.
        """
        if self._tape is None:
            why = f" ({self._tape_dropped} the last training forward)" if getattr(self, "_tape_dropped", "") else ""
            raise RunError("backward needs a forward pass with training=True or grad=True first "
                           f"(each forward keeps the tape of one backward){why}")
        tape = self._tape
        if not hasattr(grad_outputs, "items"):
            raise TypeError(f"backward takes a dict of output name → gradient (outputs: {', '.join(tape.plan.outputs)}), "
                            f"found {type(grad_outputs).__name__}")
        for name, gy in grad_outputs.items():
            if gy is None:
                raise RunError(f"the gradient for '{name}' is None; expected an array of the output's shape")
            if name not in tape.plan.outputs:
                raise RunError(f"'{name}' is not an output of the last forward ({', '.join(tape.plan.outputs)})")
            want = tape.shapes.get(name)
            gy = to_device(gy, self.xp)
            if want is not None and tuple(gy.shape) != tuple(want):
                raise RunError(f"gradient for '{name}' has shape {tuple(gy.shape)}, the output has {tuple(want)}")
        wrt = [wrt] if isinstance(wrt, str) else list(wrt or ())
        fused = self._tape_fused
        for name in wrt:
            if name in self._tape_moved:
                raise RunError(f"wrt: '{name}' ran fused with its relu or swapped with its max_pool2d in the last "
                               f"forward (fused=True), which keeps no gradient of its own output; run that forward "
                               f"without fused=True")
        captured = {name: fused.get(name, name) for name in wrt}   # a fused relu's output is its conv's
        for name in wrt:
            if captured[name] not in tape.shapes or name in self._tape_inputs:
                raise RunError(f"wrt: '{name}' is not a layer computed by the last forward"
                               + (" (model inputs come with input_grads=True)" if name in self._tape_inputs else ""))
            if name in self.params:
                raise RunError(f"wrt: '{name}' is also the name of a parameter; its gradient would be ambiguous")
        grad_outputs = {k: to_device(v, self.xp).astype(self.dtype, copy=False) for k, v in grad_outputs.items()}
        self._tape = None          # checked: this backward consumes the tape (ops free what it holds)
        float_inputs = {n for n in self._tape_inputs if self.spec.inputs[n].dtype != "int64"}
        seeds = (float_inputs if input_grads else set()) | set(wrt)
        need = requires_grad(self._tape_graph, tape.plan.order, self._trainable, {captured.get(s, s) for s in seeds})
        unkept = sorted(need & getattr(self, "_tape_unkept", frozenset()))
        if unkept:
            raise RunError(f"backward through frozen layers ({', '.join(unkept[:4])}{', ...' * (len(unkept) > 4)}) needs "
                           f"their activations, which a forward of a model with frozen layers does not keep: pass "
                           f"input_grads=False for parameter gradients, or model.freeze([]) before the forward")
        with blas_held_for(self._batch):
            tensor_grads, param_grads = run_backward(self._tape_graph, tape, grad_outputs, need,
                                                     lambda n: self._names[n], capture=set(captured.values()))
        result: dict[str, Any] = {}
        for name in self.trainable_names:
            g = param_grads.get(name)
            p = self.params._data[name]
            if g is None:
                g = self.xp.zeros_like(p)
            elif not hasattr(g, "shape") or tuple(g.shape) != tuple(p.shape):
                raise PluginError(f"{self._op_of(name)} returned a gradient of {_shape_text(g)} for parameter "
                                  f"'{name}' of shape {tuple(p.shape)}")
            elif g.dtype != p.dtype:   # as forward: one op must not change the model's precision
                raise PluginError(f"{self._op_of(name)} returned a {g.dtype} gradient for parameter '{name}' from "
                                  f"backward in a {p.dtype} model; compute in the model's dtype")
            result[name] = g
        if input_grads:
            for name in sorted(float_inputs):
                g = tensor_grads.get(name)
                result[name] = g if g is not None else self.xp.zeros(tape.shapes[name], self.dtype)
        for name in wrt:
            g = tensor_grads.get(captured[name])
            result[name] = g if g is not None else self.xp.zeros(tape.shapes[captured[name]], self.dtype)
        return result

    def _fused_plan(self, plan: Plan) -> tuple:
        """(graph, plan, {fused relu: its conv}, layers whose output changed) of a fused training forward for
        ``plan``'s outputs: a copy of the graph in which max_pool2d runs before a relu that alone feeds it
        (passes.pool_before_relu), then each relu left runs inside the conv2d that alone feeds it (fuse_conv_relu)."""
        key = (tuple(plan.outputs), self.frozen)
        if key not in self._fused_plans:
            from .passes import fuse_conv_relu, pool_before_relu, prune
            g = prune(self.graph, list(plan.outputs))   # a copy: node attribute dicts are the copy's own
            aliases = {o: o for o in plan.outputs}
            swapped = pool_before_relu(g, aliases, keep=self.frozen)
            pairs = fuse_conv_relu(g, aliases, keep=self.frozen)
            moved = frozenset(n for pair in swapped for n in pair) | {conv for conv, _ in pairs}
            self._fused_plans[key] = ((g, make_plan(g, list(plan.outputs)), {act: conv for conv, act in pairs}, moved)
                                      if moved else (self.graph, plan, {}, frozenset()))
        return self._fused_plans[key]

    def predict(self, x, batch_size: int = 256, output: str | None = None):
        """Inference in batches; returns the first (or named) output as NumPy. ``x`` is an array when that
        output needs one input (a model whose loss layer also takes labels included), else a dict."""
        if not is_whole(batch_size, 1):
            raise ValueError(f"batch_size must be a whole number >= 1, found {batch_size!r}")
        out_name = output or self.spec.outputs[0]
        n = len(next(iter(x.values()))) if isinstance(x, dict) and x else len(x)
        parts = []
        for i in range(0, n, batch_size):
            part = {k: v[i:i + batch_size] for k, v in x.items()} if isinstance(x, dict) else x[i:i + batch_size]
            parts.append(to_numpy(self.forward(part, outputs=[out_name])[out_name]))
        return np.concatenate(parts) if parts else np.zeros((0,) + self.graph.nodes[out_name]["out_shape"])

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: Union[str, Path], meta: dict | None = None, overwrite: bool = False) -> None:
        """Save spec and parameters to a checkpoint directory (atomic; no pickle). A model loaded from a
        training checkpoint keeps its data preparation (``"dataset"``: mean, std, classes, pixel scale), so
        ``cnngraph predict`` on the saved copy answers as on the original; ``meta`` adds or overrides keys.

        ``path`` must be new, empty, or an earlier ``Model.save`` checkpoint, which is replaced (as saving a
        file again replaces it). A training run or checkpoint, or a folder of other files, raises
        CheckpointError unless ``overwrite=True``; a folder a running training holds is always refused."""
        from .train.checkpoint import plugin_hashes, save_checkpoint
        import json
        path = _save_target(path, overwrite)
        reserved = {"spec", "spec_sha256", "spec_dir", "plugin_sha256", "kind", "dtype"} & set(meta or {})
        if reserved:
            raise ValueError(f"meta may not set {', '.join(sorted(reserved))}: the checkpoint needs them to load")
        from .train.metrics import json_safe
        kept = {k: v for k, v in (getattr(self, "checkpoint_meta", None) or {}).items() if k == "dataset"}
        info = json_safe({"spec": self.spec.to_dict(), "spec_sha256": self.spec.sha256, "spec_dir": self.spec.base_dir,
                          "plugin_sha256": plugin_hashes(self.spec), "kind": "model", "dtype": str(self.dtype),
                          **kept, **(meta or {})})   # NumPy scalars too
        try:
            json.dumps(info)
        except TypeError as exc:
            raise ValueError(f"meta must hold JSON values (numbers, strings, lists, dicts): {exc}") from None
        save_checkpoint(path, self.params.numpy(), info)

    def load_params(self, arrays: dict[str, np.ndarray], strict: bool = True) -> None:
        """Replace parameters from a name → array mapping (shapes must match)."""
        if not hasattr(arrays, "items"):
            raise TypeError(f"load_params takes a mapping of parameter name → array, found {type(arrays).__name__}")
        missing = [n for n in self.params if n not in arrays]
        unexpected = [n for n in arrays if n not in self.params]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing[:8])}{'…' if len(missing) > 8 else ''}")
            if unexpected:
                parts.append(f"unexpected {', '.join(unexpected[:8])}{'…' if len(unexpected) > 8 else ''}")
            raise CnnGraphError("parameters do not match the model (trained from a different network?): "
                                + "; ".join(parts))
        # every value is checked and converted before anything is assigned: a failed load changes nothing
        wrong = [f"{n} {tuple(np.shape(v))} (the model has {tuple(self.params[n].shape)})"
                 for n, v in arrays.items() if n in self.params and tuple(np.shape(v)) != tuple(self.params[n].shape)]
        if wrong:
            raise CnnGraphError(f"parameters do not match the model (trained from a different network?): "
                                f"{', '.join(wrong[:8])}{'…' if len(wrong) > 8 else ''}")
        self.params.update({name: value for name, value in arrays.items() if name in self.params})

    def __repr__(self) -> str:
        return (f"Model({self.spec.name!r}, layers={len(self.spec.layers)}, params={self.param_count():,}, "
                f"device={self.device!r}, dtype={self.dtype.name})")


def _save_target(path, overwrite: bool) -> Path:
    """``path`` as the folder Model.save may write into; a CheckpointError naming what it would replace otherwise.
    Replacing a training run's or checkpoint's weights would lose its optimizer state (resume fails) or make
    load_model, evaluate and predict use these weights instead of the trained ones, with no sign of it."""
    from .train.checkpoint import holds_run, read_meta, run_folder
    from .train.runlock import holder
    if not str(path).strip():   # "" would be the current folder
        raise ValueError("Model.save: the path is empty; name the checkpoint folder")
    p = Path(path)
    busy = holder(run_folder(p))
    if busy:
        raise CheckpointError(f"{p}: a training run ({busy}) is writing there; save elsewhere")
    if overwrite or not p.is_dir():
        return p
    meta = read_meta(p)
    if holds_run(p):
        what = "holds a training run: load_model, evaluate and predict would use these weights instead of the run's"
    elif meta is not None:
        if meta.get("kind") == "model":   # an earlier Model.save checkpoint
            return p
        what = ("holds a training checkpoint: its optimizer state and epoch, which resume needs, would be lost"
                if meta.get("kind") == "training" else "holds a checkpoint that Model.save did not write")
    elif any(p.iterdir()):
        from .train.init_weights import listed
        what = f"is not empty and holds no checkpoint ({listed(sorted(c.name for c in p.iterdir()))})"
    else:
        return p
    raise CheckpointError(f"{p}: {what}. Model.save replaces it only with overwrite=True; save to a new or empty "
                          f"folder instead")


def _dtype_name(dtype):
    """'float32' for np.float32 or np.dtype('float32') too (a NumPy user's natural spelling); other values as given."""
    if isinstance(dtype, np.dtype) or (isinstance(dtype, type) and issubclass(dtype, np.generic)):
        return np.dtype(dtype).name
    return dtype


def _shape_text(g) -> str:
    return f"shape {tuple(g.shape)}" if hasattr(g, "shape") else f"type {type(g).__name__} (expected an array)"


def compile(spec: Union[Spec, str, Path, dict], device: str = "cpu", seed: int = 0, dtype: str = "float32",
            allow_plugins: bool = False) -> Model:
    """Compile a spec (or a path/dict, loaded with :func:`load_spec`) into a runnable :class:`Model`.

    Examples
    --------
    >>> import cnngraph
    >>> m = cnngraph.compile({"inputs": {"x": {"shape": [3]}},
    ...                       "layers": [{"id": "fc", "type": "dense", "out_features": 2}],
    ...                       "outputs": ["fc"]}, seed=0)
    >>> sorted(m.params)
    ['fc.bias', 'fc.weight']
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec, allow_plugins=allow_plugins)
    return Model(spec, device=device, seed=seed, dtype=dtype)
