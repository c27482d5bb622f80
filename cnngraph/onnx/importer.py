"""ONNX → cnngraph spec: the graph walk, layer emission and naming, and the public entry points.

The walk visits the ONNX nodes in order. Nodes whose inputs are all constants are folded
(``folding.py``), multi-node patterns such as exact GELU become one layer (``patterns.py``), and op
handlers (``import_ops.py``) map the remaining nodes to cnngraph layers through the helpers of
:class:`Importer` (``get``, ``const``, ``dyn_of``, ``emit``, ``fail``). Graph inputs are read by
``inputs.py``. Every unsupported node is reported at once.
"""
from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CnnGraphError, RunError, ShapeError
from ..model import Model
from .common import OnnxError, UniqueNames, node_base_name, require_onnx, sanitize, torch_scope
from .folding import BATCH, Dyn, evaluate, f32
from .layouts import (ELEMENTWISE_FUSIONS, LAYOUT_HANDLERS, constant_with_batch, holds_batch_size, is_moved,
                      materialize, moves_batch)
from .inputs import read_inputs
from .patterns import Fusion, dead_nodes, find_patterns

__all__ = ["BATCH", "Dyn", "f32", "onnx_to_spec", "import_onnx", "OnnxModel", "ImportResult"]


@dataclass
class ImportResult:
    """What :func:`onnx_to_spec` returns: the spec as plain data, its weights, and the name maps."""

    spec: dict
    weights: dict[str, np.ndarray]
    input_names: dict[str, str]    # ONNX graph input name → spec input name
    output_names: dict[str, str]   # ONNX graph output name → spec output (layer id)


_GENERATED = re.compile(r"_?val_\d+|.*_output_\d+")


def is_parameter_name(name: str) -> bool:
    """Whether an initializer holds a trainable parameter, judged by its name: PyTorch names parameters (and
    buffers, which thus import as trainable too) by their module path (``fc.weight``, ``cls_token``), and the
    values it makes up ``onnx::Mul_12``, ``/Constant_output_0``, ``val_3``. Constant nodes and values folded
    from them are never parameters; MatMul weights always are (see the MatMul import)."""
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", name)) and not _GENERATED.fullmatch(name)


class _Skip(Exception):
    """A node cannot be imported because an input of it could not be (already reported)."""


class Importer:
    def __init__(self, model, input_shapes: dict[str, Any] | None = None):
        onnx = require_onnx()
        self.onnx = onnx
        self.model = model
        self.graph = model.graph
        self.opset = _default_opset(model)
        self.input_shapes = dict(input_shapes or {})
        self.consts: dict[str, np.ndarray] = {}
        self.alt: dict[str, np.ndarray] = {}     # batch-dependent constants, as folded with BATCH_ALT
        self.batch_of: dict[str, Dyn] = {}       # for those: the computed tensor whose batch size they hold
        self.spec_inputs: dict[str, dict] = {}
        self.dyn: dict[str, Dyn] = {}
        self.failed: set[str] = set()
        self.layers: list[dict] = []
        self.by_id: dict[str, dict] = {}
        self.shapes: dict[str, tuple] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.unsupported: dict[str, list[str]] = {}
        self.problems: list[str] = []
        self.const_layers: dict[tuple, str] = {}
        self.unsqueezed: dict[str, tuple[Dyn, tuple[int, ...]]] = {}   # reshape layer of an Unsqueeze → input, axes
        self.consumers: Counter = Counter()
        self.declared_batch: int | None = None
        self.input_names: dict[str, str] = {}
        self.output_names: dict[str, str] = {}
        self.current_node = None
        self.current_layers: list[str] = []
        self.names = UniqueNames()
        self.initializers = {t.name for t in self.graph.initializer}
        self.params = {t.name for t in self.graph.initializer if is_parameter_name(t.name)}
        from ..registry import get_registry
        self.registry = get_registry()

    # -- helpers for op handlers -------------------------------------------------------------
    def get(self, name: str):
        if not name:
            return None
        if name in self.failed:
            raise _Skip()
        if name in self.consts:
            return self.consts[name]
        if name in self.dyn:
            return self.dyn[name]
        raise OnnxError(f"tensor '{name}' is used before it is produced (the graph is not topologically sorted)")

    def const(self, name: str, what: str = "input"):
        """A constant input's value (None when the input is absent); OnnxError when dynamic."""
        v = self.get(name)
        if v is None or isinstance(v, np.ndarray):
            return v
        raise self.fail(f"{what} '{name}' must be a constant (an initializer or computable at import time)")

    def fail(self, message: str) -> OnnxError:
        n = self.current_node
        for k in range(8, 0, -1):   # the batch stand-in means nothing to the user: say N (2N, ...)
            message = message.replace(str(k * BATCH), f"{k if k > 1 else ''}N")
        return OnnxError(f"{n.op_type} node '{n.name or n.output[0]}': {message}")

    def dyn_of(self, name: str, rank: int | None = None, like: Dyn | None = None, trainable: bool | None = None) -> Dyn:
        """A tensor as a layer output; constants become ``constant`` layers broadcasting against a
        tensor of ``rank`` dimensions (batch included), taking their batch size from ``like``. They are
        trainable when they hold a parameter (see :func:`is_parameter_name`), unless ``trainable`` says."""
        v = self.get(name)
        if isinstance(v, Dyn):
            return v
        if name in self.alt:
            raise self.fail(f"'{name}' is computed from the batch size (Shape of a tensor, then arithmetic), which "
                            f"is known only at run time; cnngraph cannot use it as a value. Export with a fixed "
                            f"batch size or without that arithmetic")
        arr = np.asarray(v)
        if rank is not None and arr.ndim >= rank:
            if arr.ndim > rank or arr.shape[0] != 1:
                raise self.fail(f"constant '{name}' of shape {arr.shape} varies along the batch axis")
            arr = arr[0]
        elif rank is not None and arr.ndim >= 1 and arr.shape[0] == 1:
            arr = arr[0]   # a leading unit axis broadcasts either way; drop it (as the exporter adds one)
        trainable = name in self.params if trainable is None else trainable
        return self.const_layer(name, arr, like, trainable)

    def const_layer(self, name: str, arr: np.ndarray, like: Dyn | None, trainable: bool) -> Dyn:
        """A ``constant`` layer holding the per-sample value ``arr`` (made once per name, shape, ``like``
        and trainability), repeated to ``like``'s batch size when given."""
        key = (name, arr.shape, like.id if like is not None else None, trainable)
        if key in self.const_layers:
            return Dyn(self.const_layers[key], arr.shape)
        lid = self.names.take(name, "const")
        self.add_layer({"id": lid, "type": "constant", "inputs": [like.id] if like is not None else [],
                        "shape": list(arr.shape)} | ({} if trainable else {"trainable": False}), arr.shape,
                       {"value": arr.astype(np.float32)})
        self.const_layers[key] = lid
        return Dyn(lid, arr.shape)

    def add_layer(self, layer: dict, shape: tuple, weights: dict | None = None) -> None:
        self.layers.append(layer)
        self.by_id[layer["id"]] = layer
        self.shapes[layer["id"]] = tuple(shape)
        for k, v in (weights or {}).items():
            self.weights[f"{layer['id']}.{k}"] = np.array(v, dtype=np.float32, order="C")
        self.current_layers.append(layer["id"])

    def emit(self, type_: str, inputs: list, params: dict | None = None, weights: dict | None = None,
             suffix: str = "") -> Dyn:
        """Add a layer of ``type_`` fed by ``inputs`` (Dyn or tensor names); returns its output."""
        node = self.current_node
        srcs = [x if isinstance(x, Dyn) else self.dyn_of(x) for x in inputs]
        assert not any(is_moved(x) for x in srcs), "layers take batch-first tensors (see layouts.materialize)"
        params = {k: v for k, v in (params or {}).items()}
        op_cls = self.registry.ops[type_]
        try:
            op = op_cls(op_cls.Params.model_validate(params))
            shape = tuple(int(d) for d in op.infer_shape([s.shape for s in srcs]))
        except ShapeError as exc:
            raise self.fail(f"{exc} (input shapes: {', '.join(str(s.shape) for s in srcs)})") from None
        except Exception as exc:   # pydantic validation
            raise self.fail(f"cannot express as a '{type_}' layer: {exc}") from None
        base = torch_scope(node) or (node_base_name(node.name, node.op_type) if node.name else node.op_type.lower())
        lid = self.names.take(base + suffix, node.op_type.lower())
        layer = {"id": lid, "type": type_, "inputs": [s.id for s in srcs], **params}
        self.add_layer(layer, shape, weights)
        return Dyn(lid, shape)

    def attrs(self, node) -> dict:
        from onnx import helper
        out = {}
        for a in node.attribute:
            v = helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            elif isinstance(v, float):
                v = f32(v)
            elif isinstance(v, list) and v and isinstance(v[0], float):
                v = [f32(x) for x in v]
            out[a.name] = v
        return out

    # -- folding -------------------------------------------------------------------------------
    def fold(self, node) -> list[np.ndarray]:
        """The values of ``node``'s outputs (None for absent ones); every input must be a constant."""
        feeds = {n: self.consts[n] for n in node.input if n}
        try:
            results = evaluate([node], feeds, [o for o in node.output if o], self.opset)
            it = iter(results)
            return [next(it) if o else None for o in node.output]
        except Exception as exc:
            raise self.fail(f"could not fold this constant computation: {type(exc).__name__}: {exc}") from None

    def _fold_alt(self, node, results) -> None:
        """Fold ``node`` again with the other batch stand-in: outputs that change depend on the batch size."""
        if not any(n in self.alt for n in node.input if n):
            return
        feeds = {n: self.alt.get(n, self.consts[n]) for n in node.input if n}
        try:
            alt = evaluate([node], feeds, [o for o in node.output if o], self.opset)
        except Exception:  # noqa: BLE001 - then treat every output as batch-dependent
            alt = [None] * len(results)
        for name, r, ra in zip([o for o in node.output if o], [r for r, o in zip(results, node.output) if o], alt):
            if ra is None or not np.array_equal(np.asarray(r), np.asarray(ra)):
                self.alt[name] = np.asarray(ra) if ra is not None else np.asarray(r)
                src = next((self.batch_of[n] for n in node.input if n in self.batch_of), None)
                if src is not None:
                    self.batch_of[name] = src

    def _track_params(self, node, results) -> None:
        """A folded copy of a parameter (reshaped, transposed, unsqueezed: as many float values) is one too:
        PyTorch exports ``gamma[:, None, None]`` and ``x @ W.T`` so; so is a Slice or Split of one (a ViT's
        ``pos_embed[:, :L]``, cross-attention's q/k/v parts of ``in_proj_weight``: disjoint parts, each trained).
        Any other float value computed from a parameter (a Gather that repeats its entries, as Swin's relative
        position bias, or a Tile) imports fixed: warned."""
        if node.op_type == "Identity" and node.input[0] in self.initializers:   # torch's copy of a deduplicated
            self.initializers.add(node.output[0])   # initializer (two layers that start equal) is a weight too
        sources = [n for n in node.input if n in self.params and np.asarray(self.consts[n]).dtype.kind == "f"]
        sizes = {np.size(self.consts[n]) for n in sources}
        for name, r in zip(node.output, results):
            if not name or r is None or np.asarray(r).dtype.kind != "f" or not sources:
                continue
            if np.size(r) in sizes or (node.op_type in ("Slice", "Split") and node.input[0] in sources):
                self.params.add(name)
            else:
                warnings.warn(f"ONNX node '{node.name or name}' ({node.op_type}) computes a constant from parameter "
                              f"'{sources[0]}'; it imports as a fixed value, which fine-tuning does not update",
                              stacklevel=2)

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> ImportResult:
        from .import_ops import FOLD_NEVER, HANDLERS, unknown_attributes
        spec_inputs = self.spec_inputs = read_inputs(self)
        outputs = [o.name for o in self.graph.output]
        reserved = {}
        for o in outputs:
            if o in self.input_names:
                continue
            reserved[o] = self.names.take(o, "output")
        for node in self.graph.node:
            for i in node.input:
                self.consumers[i] += 1
        fused = find_patterns(self)
        # a Fusion may still be dropped at the walk, so the nodes feeding it (Constants, Shape) stay live
        droppable = {j for f in fused.values() if isinstance(f, Fusion) for j in f.nodes}
        dead = dead_nodes(self.graph, {k: v for k, v in fused.items() if k not in droppable})
        starts = {min(f.nodes): f for f in fused.values() if isinstance(f, Fusion)}
        for k, node in enumerate(self.graph.node):
            self.current_node = node
            self.current_layers = []
            if k in dead:
                continue   # reaches no graph output (or only feeds a fused pattern)
            if k in starts:
                self._confirm(starts[k], fused)
            if k in fused:
                src = fused[k]
                if src is None:
                    continue   # inside a fused pattern
                weights = src.weights if isinstance(src, Fusion) else None
                src, type_, params = ((src, "gelu", {}) if isinstance(src, str) else
                                      (src.src, src.type, src.params) if isinstance(src, Fusion) else src)
                try:
                    x = self.get(src)
                    if isinstance(x, np.ndarray):
                        raise OnnxError(f"constant {type_} input")
                    if is_moved(x) and type_ in ELEMENTWISE_FUSIONS:   # value by value: the layout stays
                        y = self.emit(type_, [Dyn(x.id, x.shape)], params, weights)
                        self.dyn[node.output[0]] = Dyn(y.id, y.shape, x.layout)
                    else:
                        self.dyn[node.output[0]] = self.emit(type_, [materialize(self, x)], params, weights)
                except (_Skip, OnnxError):
                    self.failed.update(node.output)
                if node.output[0] in reserved:
                    self._claim_output(node.output[0], reserved[node.output[0]])
                continue
            if node.domain not in ("", "ai.onnx"):
                self.unsupported.setdefault(f"{node.domain}.{node.op_type}", []).append(node.name or node.output[0])
                self.failed.update(node.output)
                continue
            try:
                ins = [self.get(n) for n in node.input]
                handler = HANDLERS.get(node.op_type)
                constant = all(v is None or isinstance(v, np.ndarray) for v in ins)
                if constant and holds_batch_size(self, node):   # (folding would build it at the stand-in's size)
                    results = [constant_with_batch(self, node, self.attrs(node))]
                elif constant and node.op_type not in FOLD_NEVER:
                    results = self.fold(node)
                    self._fold_alt(node, results)
                    self._track_params(node, results)
                elif handler is None:
                    self.unsupported.setdefault(node.op_type, []).append(node.name or node.output[0])
                    self.failed.update(node.output)
                    continue
                else:
                    attrs = self.attrs(node)
                    unknown = unknown_attributes(node, attrs)
                    if unknown:
                        raise self.fail(f"attribute{'s' * (len(unknown) > 1)} {', '.join(unknown)} not supported")
                    results = self._handle(node, attrs, handler)
            except _Skip:
                if node.op_type not in HANDLERS:   # still worth listing: every unsupported node at once
                    self.unsupported.setdefault(node.op_type, []).append(node.name or node.output[0])
                self.failed.update(node.output)
                continue
            except OnnxError as exc:
                self.problems.append(str(exc))
                self.failed.update(node.output)
                continue
            for name, r in zip(node.output, results):
                if not name:
                    continue
                if r is None:
                    if self.consumers[name] or name in reserved:
                        self.problems.append(f"{node.op_type} node '{node.name or node.output[0]}': output "
                                             f"'{name}' is not supported (only the first output is)")
                        self.failed.add(name)
                    continue
                if isinstance(r, Dyn):
                    self.dyn[name] = r
                else:
                    self.consts[name] = np.asarray(r)
                if name in reserved:
                    if name in self.dyn:   # a graph output has the batch axis first, alone
                        try:
                            self.dyn[name] = materialize(self, self.dyn[name], name)
                        except OnnxError as exc:
                            self.problems.append(str(exc))
                            self.failed.add(name)
                            continue
                    self._claim_output(name, reserved[name])
        self._report()
        self._drop_unused_unsqueezes()
        spec_outputs = []
        for o in outputs:
            if o in self.input_names:
                self.current_node = type("N", (), {"op_type": "Output", "name": o, "output": [o]})()
                self.current_layers = []
                lid = reserved.get(o) or self.names.take(o + "_out")
                src = self.dyn[o]
                self.add_layer({"id": lid, "type": "identity", "inputs": [src.id]}, src.shape)
                self.output_names[o] = lid
            if o in self.consts and not self._constant_output(o, reserved.get(o)):
                raise OnnxError(f"graph output '{o}' is a constant (an initializer, or computed at import time such "
                                f"as a Shape), not computed from the inputs; cnngraph outputs are per-sample "
                                f"tensors (or a constant's batch of 1), so such an output is not supported")
            if o not in self.output_names:
                raise OnnxError(f"graph output '{o}' is produced by no node, initializer or input of the model")
            spec_outputs.append(self.output_names[o])
        spec = {"name": sanitize(self.graph.name or "onnx_model", "onnx_model"),
                "description": self._description(),
                "inputs": spec_inputs, "layers": self._compact(self.layers), "outputs": spec_outputs}
        return ImportResult(spec, self.weights, dict(self.input_names), dict(self.output_names))

    def _confirm(self, f: Fusion, fused: dict) -> None:
        """At the first node of pattern ``f``: its input is known now. Keep the pattern with its final params and
        weights, or drop it from ``fused`` (its nodes then import one by one) when the input is no computed tensor
        or its shape rules the pattern out."""
        x = self.dyn.get(f.src)
        final = None if x is None else (f.params, f.weights) if f.finish is None else f.finish(x.shape)
        if final is None:
            for j in f.nodes:
                fused.pop(j, None)
        else:
            f.params, f.weights = final

    def _handle(self, node, attrs: dict, handler) -> list:
        """The node's import: on tensors whose batch axis the graph moved (or for a Transpose, Reshape or
        Unsqueeze that moves it) by the layout-aware handler when there is one; any other handler gets its inputs
        back in their ONNX layout (see layouts.py)."""
        moved = [n for n in node.input if is_moved(self.dyn.get(n))]
        aware = LAYOUT_HANDLERS.get(node.op_type)
        if aware is not None and (moved or moves_batch(self, node, attrs)):
            return aware(self, node, attrs)
        for n in moved:
            self.dyn[n] = materialize(self, self.dyn[n])
        return handler(self, node, attrs)

    def _claim_output(self, name: str, lid: str) -> None:
        """Give the layer computing graph output ``name`` the id ``lid`` (the sanitised output name)."""
        r = self.get(name)
        if isinstance(r, Dyn) and r.id not in self.input_names.values() and (
                (self.current_layers and r.id == self.current_layers[-1])
                or (r.id in self.by_id and r.id not in self.output_names.values())):
            # the node's own layer, or a no-op node (a Cast to float, an Identity) passing on an earlier
            # layer that is no output yet: that layer takes the output's name, no identity layer needed
            self._rename(r.id, lid)
            self.dyn[name] = Dyn(lid, r.shape)
        elif isinstance(r, Dyn):
            self.add_layer({"id": lid, "type": "identity", "inputs": [r.id]}, r.shape)
            self.dyn[name] = Dyn(lid, r.shape)
        else:   # a constant: refused at the end (see run), unless it fails before
            return
        self.output_names[name] = lid

    def _constant_output(self, name: str, lid: str | None) -> bool:
        """A float constant graph output of batch size 1 is what a cnngraph ``constant`` layer without inputs gives
        (cnngraph's export of one): make it that layer, named ``lid``. False for any other constant."""
        value = np.asarray(self.consts[name])
        if lid is None or value.dtype.kind != "f" or value.ndim < 2 or value.shape[0] != 1 or name in self.alt:
            return False
        self.current_node = type("N", (), {"op_type": "Output", "name": name, "output": [name]})()
        self.current_layers = []
        y = self.const_layer(name, value[0], None, name in self.params)
        if y.id in self.output_names.values():   # the same value as another output: its own layer id
            self.add_layer({"id": lid, "type": "identity", "inputs": [y.id]}, y.shape)
        else:
            self._rename(y.id, lid)
        self.output_names[name] = lid
        return True

    def _drop_unused_unsqueezes(self) -> None:
        """Remove the reshape layers of Unsqueeze nodes that every consumer bypassed (see ``_drop_alignment`` in
        import_ops.py): nothing reads them any more."""
        used = {s for lay in self.layers for s in lay["inputs"]} | set(self.output_names.values())
        self.layers = [lay for lay in self.layers if lay["id"] in used or lay["id"] not in self.unsqueezed]

    def _rename(self, old: str, new: str) -> None:
        self.unsqueezed.pop(old, None)   # (a renamed layer is an output: never dropped)
        layer = self.by_id.pop(old)
        layer["id"] = new
        self.by_id[new] = layer
        self.shapes[new] = self.shapes.pop(old)
        for k in [k for k in self.weights if k.startswith(old + ".") and k[len(old) + 1:].count(".") == 0]:
            self.weights[new + k[len(old):]] = self.weights.pop(k)
        for lay in self.layers:
            lay["inputs"] = [new if s == old else s for s in lay["inputs"]]
        for t, d in self.dyn.items():
            if d.id == old:
                self.dyn[t] = Dyn(new, d.shape)
        self.names.taken.discard(old)

    def _report(self) -> None:
        if not self.unsupported and not self.problems:
            return
        lines = []
        if self.unsupported:
            total = sum(len(v) for v in self.unsupported.values())
            lines.append(f"{total} node{'s' if total != 1 else ''} of {len(self.unsupported)} unsupported op "
                         f"type{'s' if len(self.unsupported) != 1 else ''}:")
            for op, nodes in sorted(self.unsupported.items()):
                shown = ", ".join(nodes[:6]) + (f", … ({len(nodes) - 6} more)" if len(nodes) > 6 else "")
                lines.append(f"  {op} ×{len(nodes)}: {shown}")
        if self.problems:
            lines.append(f"{len(self.problems)} node{'s' if len(self.problems) != 1 else ''} could not be converted:")
            lines += ["  " + p for p in self.problems]
        raise OnnxError("cannot import the ONNX model:\n" + "\n".join(lines))

    def _description(self) -> str:
        prod = self.model.producer_name or "unknown producer"
        ver = f" {self.model.producer_version}" if self.model.producer_version else ""
        return f"imported from ONNX (opset {self.opset}, {prod}{ver})"

    @staticmethod
    def _compact(layers: list[dict]) -> list[dict]:
        """Drop ``inputs`` where it is just the previous layer (the spec default)."""
        out, prev = [], None
        for lay in layers:
            lay = dict(lay)
            if prev is not None and lay["inputs"] == [prev]:
                del lay["inputs"]
            elif len(lay["inputs"]) == 1:
                lay["inputs"] = lay["inputs"][0]
            out.append(lay)
            prev = lay["id"]
        # keep key order: id, type, inputs, params
        return [{k: lay[k] for k in ("id", "type", "inputs") if k in lay} |
                {k: v for k, v in lay.items() if k not in ("id", "type", "inputs")} for lay in out]


def _default_opset(model) -> int:
    """The model's opset of the default domain. None declared is an error (the ops' meaning depends on it); one
    newer than the onnx package knows is read as the newest it knows, with a warning."""
    import warnings
    from onnx.defs import onnx_opset_version
    declared = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not declared:
        if any(n.domain in ("", "ai.onnx") for n in model.graph.node):
            raise OnnxError("the model declares no opset for the default ONNX domain (opset_import), so the "
                            "meaning of its ops is unknown; export it again, or add the opset it was written for")
        return onnx_opset_version()
    newest = onnx_opset_version()
    if declared[0] > newest:
        warnings.warn(f"the model's opset {declared[0]} is newer than the installed onnx package knows ({newest}); "
                      f"its ops are read with opset {newest}'s semantics", UserWarning, stacklevel=4)
        return newest
    return declared[0]


def _load(source):
    onnx = require_onnx()
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            raise OnnxError(f"{source}: is a folder; expected an .onnx file")
        if not p.is_file():
            raise OnnxError(f"{source}: file not found")
        if p.stat().st_size == 0:
            raise OnnxError(f"{source}: the file is empty; expected an ONNX model")
        try:
            model = onnx.load(str(p))
        except Exception as exc:
            raise OnnxError(f"{source}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    elif isinstance(source, onnx.ModelProto):
        model = source
    else:
        raise TypeError(f"expected the path of an .onnx file or an onnx.ModelProto, found {type(source).__name__}")
    return model


def onnx_to_spec(source, input_shapes: dict[str, Any] | None = None) -> ImportResult:
    """Convert an ONNX model (path or ModelProto) to a cnngraph spec dict plus weights.

    ``input_shapes`` maps ONNX input names to full shapes (batch first) for inputs with symbolic
    dimensions other than the batch. Raises OnnxError listing every unsupported node at once.
    """
    model = _load(source)
    result = Importer(model, input_shapes).run()
    from ..spec import load_spec
    try:
        load_spec(result.spec)
    except CnnGraphError as exc:   # a bug in a handler rather than in the model; say so
        raise OnnxError(f"the converted spec does not validate (please report): {exc}") from None
    return result


class OnnxModel(Model):
    """A Model imported from ONNX: ``forward``/``backward`` take and return ONNX tensor names (the
    spec's own names work too); ``onnx_inputs``/``onnx_outputs`` map ONNX names to spec names."""

    onnx_inputs: dict = {}
    onnx_outputs: dict = {}

    def forward(self, inputs, training=False, grad=None, outputs=None, on_output=None, parallel: int = 0,
                fused: bool = False):
        if isinstance(inputs, dict):
            inputs = _to_spec_names(inputs, self.onnx_inputs, "input")
        if outputs is not None and not isinstance(outputs, str):
            outputs = [self.onnx_outputs.get(o, o) for o in outputs]
        result = super().forward(inputs, training=training, grad=grad, outputs=outputs, on_output=on_output,
                                 parallel=parallel, fused=fused)
        back = {v: k for k, v in self.onnx_outputs.items()}
        return {back.get(k, k): v for k, v in result.items()}

    __call__ = forward

    def backward(self, grad_outputs, input_grads=True, wrt=None):
        if hasattr(grad_outputs, "items"):
            grad_outputs = _to_spec_names(grad_outputs, self.onnx_outputs, "gradient")
        return super().backward(grad_outputs, input_grads, wrt=wrt)

    def predict(self, x, batch_size: int = 256, output: str | None = None):
        return super().predict(x, batch_size, self.onnx_outputs.get(output, output) if output else None)


def _to_spec_names(arrays: dict, names: dict, what: str) -> dict:
    """Re-key ``arrays`` from ONNX names to spec names; a tensor given under both names is an error."""
    out = {}
    for k, v in arrays.items():
        key = names.get(k, k)
        if key in out:
            raise RunError(f"{what} '{k}' is given twice, under its ONNX and its spec name ({key})")
        out[key] = v
    return out


def import_onnx(source, input_shapes: dict[str, Any] | None = None, device: str = "cpu", dtype: str = "float32"):
    """Import an ONNX model as a compiled :class:`cnngraph.Model` with the ONNX weights loaded.

    The returned model's ``forward`` accepts inputs under the ONNX input names (or the spec's) and
    returns outputs under the ONNX output names. ``model.onnx_inputs``/``model.onnx_outputs`` map
    ONNX names to spec names.
    """
    from ..spec import load_spec
    result = onnx_to_spec(source, input_shapes)
    spec = load_spec(result.spec)
    model = OnnxModel(spec, device=device, dtype=dtype)
    model.load_params(result.weights)
    model.onnx_inputs = result.input_names
    model.onnx_outputs = result.output_names
    model.import_result = result
    return model


