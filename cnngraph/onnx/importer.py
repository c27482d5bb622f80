"""ONNX → cnngraph spec: the graph walk, constant folding, naming and the public entry points.

Every tensor of the ONNX graph is either a *constant* (an initializer, a Constant node, or anything
computed only from constants, including ``Shape`` of a tensor whose shape is known) held as a NumPy
array, or a *dynamic* tensor produced by a cnngraph layer, whose first dimension is the batch.
Constants are folded at import time with ``onnx.reference``; the batch dimension stands as the
sentinel value ``BATCH`` while folding, so shape arithmetic such as ``Reshape(x, [Shape(x)[0], -1])``
is recognised. Op handlers (``import_ops.py``) map the remaining nodes to cnngraph layers.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CnnGraphError, ShapeError
from ..model import Model
from .common import OnnxError, UniqueNames, node_base_name, require_onnx, sanitize

__all__ = ["BATCH", "Dyn", "f32", "onnx_to_spec", "import_onnx", "OnnxModel", "ImportResult"]

BATCH = 999983   # stand-in for the batch size inside folded shape computations (a prime no real dim uses)


def f32(v) -> float:
    """A float32 attribute as the shortest decimal that reads back to it (0.2, not 0.2000000029)."""
    return float(str(np.float32(v)))


@dataclass
class Dyn:
    """A tensor computed at run time by cnngraph layer (or model input) ``id``; ``shape`` is per sample."""

    id: str
    shape: tuple


@dataclass
class ImportResult:
    """What :func:`onnx_to_spec` returns: the spec as plain data, its weights, and the name maps."""

    spec: dict
    weights: dict[str, np.ndarray]
    input_names: dict[str, str]    # ONNX graph input name → spec input name
    output_names: dict[str, str]   # ONNX graph output name → spec output (layer id)


class _Skip(Exception):
    """A node cannot be imported because an input of it could not be (already reported)."""


class Importer:
    def __init__(self, model, input_shapes: dict[str, Any] | None = None):
        onnx = require_onnx()
        self.onnx = onnx
        self.model = model
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.input_shapes = dict(input_shapes or {})
        self.consts: dict[str, np.ndarray] = {}
        self.dyn: dict[str, Dyn] = {}
        self.failed: set[str] = set()
        self.layers: list[dict] = []
        self.by_id: dict[str, dict] = {}
        self.shapes: dict[str, tuple] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.unsupported: dict[str, list[str]] = {}
        self.problems: list[str] = []
        self.const_layers: dict[tuple, str] = {}
        self.consumers: Counter = Counter()
        self.declared_batch: int | None = None
        self.input_names: dict[str, str] = {}
        self.output_names: dict[str, str] = {}
        self.current_node = None
        self.current_layers: list[str] = []
        self.names = UniqueNames()
        from ..registry import get_registry
        self.registry = get_registry()

    # -- setup -----------------------------------------------------------------------------
    def _read_inputs(self) -> dict[str, dict]:
        from onnx import numpy_helper
        for init in self.graph.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        for sp in getattr(self.graph, "sparse_initializer", []):
            raise OnnxError(f"sparse initializer '{sp.values.name}' is not supported")
        spec_inputs = {}
        unknown = set(self.input_shapes) - {i.name for i in self.graph.input}
        if unknown:
            raise OnnxError(f"--input-shape names {', '.join(sorted(unknown))}, which the model does not take "
                            f"(its inputs: {', '.join(i.name for i in self.graph.input if i.name not in self.consts)})")
        for inp in self.graph.input:
            if inp.name in self.consts:
                continue   # an initializer listed as an input (IR < 4): a weight
            tt = inp.type.tensor_type
            if not inp.type.HasField("tensor_type"):
                raise OnnxError(f"input '{inp.name}' is not a tensor; only tensor inputs are supported")
            elem = tt.elem_type
            from onnx import TensorProto
            if elem in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
                dtype = "float32"
            elif elem in (TensorProto.INT64, TensorProto.INT32):
                dtype = "int64"
            else:
                raise OnnxError(f"input '{inp.name}' has element type "
                                f"{TensorProto.DataType.Name(elem)}; supported: float, double, float16, int32, int64")
            if inp.name in self.input_shapes:
                dims = [int(d) for d in self.input_shapes[inp.name]]
                if tt.HasField("shape") and len(tt.shape.dim) != len(dims):
                    raise OnnxError(f"--input-shape for '{inp.name}' has {len(dims)} dimensions, the model "
                                    f"declares {len(tt.shape.dim)}")
                if tt.HasField("shape"):
                    for i, d in enumerate(tt.shape.dim):
                        if d.HasField("dim_value") and i > 0 and d.dim_value != dims[i]:
                            raise OnnxError(f"--input-shape for '{inp.name}' gives dimension {i} as {dims[i]}, "
                                            f"the model fixes it at {d.dim_value}")
            else:
                if not tt.HasField("shape"):
                    raise OnnxError(f"input '{inp.name}' has no declared shape; give one with "
                                    f"--input-shape {inp.name}=1,3,224,224")
                dims = []
                for i, d in enumerate(tt.shape.dim):
                    if d.HasField("dim_value") and d.dim_value > 0:
                        dims.append(int(d.dim_value))
                    elif i == 0:
                        dims.append(-1)   # dynamic batch
                    else:
                        sym = d.dim_param or "?"
                        raise OnnxError(f"input '{inp.name}' has a symbolic dimension {i} ('{sym}'); only the "
                                        f"batch dimension may be dynamic. Fix it with "
                                        f"--input-shape {inp.name}=" + ",".join(
                                            "1" if j == 0 else (str(x.dim_value) if x.HasField('dim_value') else (x.dim_param or "N"))
                                            for j, x in enumerate(tt.shape.dim)))
            if len(dims) < 1:
                raise OnnxError(f"input '{inp.name}' is a scalar; inputs need a batch dimension")
            if dims[0] > 0:
                self.declared_batch = dims[0]
            name = self.names.take(inp.name, "input")
            self.input_names[inp.name] = name
            self.dyn[inp.name] = Dyn(name, tuple(dims[1:]))
            self.shapes[name] = tuple(dims[1:])
            spec_inputs[name] = {"shape": list(dims[1:])} | ({"dtype": dtype} if dtype != "float32" else {})
        if not spec_inputs:
            raise OnnxError("the model has no inputs besides its initializers")
        return spec_inputs

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
        return OnnxError(f"{n.op_type} node '{n.name or n.output[0]}': {message}")

    def dyn_of(self, name: str, rank: int | None = None, like: Dyn | None = None) -> Dyn:
        """A tensor as a layer output; constants become ``constant`` layers broadcasting against a
        tensor of ``rank`` dimensions (batch included), taking their batch size from ``like``."""
        v = self.get(name)
        if isinstance(v, Dyn):
            return v
        arr = np.asarray(v)
        if rank is not None and arr.ndim >= rank:
            if arr.ndim > rank or arr.shape[0] != 1:
                raise self.fail(f"constant '{name}' of shape {arr.shape} varies along the batch axis")
            arr = arr[0]
        elif rank is not None and arr.ndim >= 1 and arr.shape[0] == 1:
            arr = arr[0]   # a leading unit axis broadcasts either way; drop it (as the exporter adds one)
        key = (name, arr.shape, like.id if like is not None else None)
        if key in self.const_layers:
            return Dyn(self.const_layers[key], arr.shape)
        lid = self.names.take(name, "const")
        self.add_layer({"id": lid, "type": "constant", "inputs": [like.id] if like is not None else [],
                        "shape": list(arr.shape)}, arr.shape,
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
        params = {k: v for k, v in (params or {}).items()}
        op_cls = self.registry.ops[type_]
        try:
            op = op_cls(op_cls.Params.model_validate(params))
            shape = tuple(int(d) for d in op.infer_shape([s.shape for s in srcs]))
        except ShapeError as exc:
            raise self.fail(f"{exc} (input shapes: {', '.join(str(s.shape) for s in srcs)})") from None
        except Exception as exc:   # pydantic validation
            raise self.fail(f"cannot express as a '{type_}' layer: {exc}") from None
        base = node_base_name(node.name, node.op_type) if node.name else node.op_type.lower()
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
        from onnx.reference import ReferenceEvaluator
        feeds = {n: self.consts[n] for n in node.input if n}
        from onnx import helper
        try:
            graph = helper.make_graph([node], "fold", [helper.make_empty_tensor_value_info(n) for n in feeds],
                                      [helper.make_empty_tensor_value_info(o) for o in node.output if o])
            ev = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)]))
            results = ev.run(None, feeds)
            it = iter(results)
            return [next(it) if o else None for o in node.output]
        except Exception as exc:
            raise self.fail(f"could not fold this constant computation: {type(exc).__name__}: {exc}") from None

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> ImportResult:
        from .import_ops import FOLD_NEVER, HANDLERS
        spec_inputs = self._read_inputs()
        outputs = [o.name for o in self.graph.output]
        reserved = {}
        for o in outputs:
            if o in self.input_names:
                continue
            reserved[o] = self.names.take(o, "output")
        for node in self.graph.node:
            for i in node.input:
                self.consumers[i] += 1
        fused = self._find_gelu()
        fused.update(self._find_torch_lrn(fused))
        dead = self._dead_nodes(fused)
        for k, node in enumerate(self.graph.node):
            self.current_node = node
            self.current_layers = []
            if k in dead:
                continue   # reaches no graph output (or only feeds a fused pattern)
            if k in fused:
                src = fused[k]
                if src is None:
                    continue   # inside a fused pattern
                src, type_, params = (src, "gelu", {}) if isinstance(src, str) else src
                try:
                    x = self.get(src)
                    if isinstance(x, np.ndarray):
                        raise OnnxError(f"constant {type_} input")
                    self.dyn[node.output[0]] = self.emit(type_, [x], params)
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
                if (all(v is None or isinstance(v, np.ndarray) for v in ins) and node.op_type not in FOLD_NEVER
                        and not (handler is not None and getattr(handler, "prefers_handler", False))):
                    results = self.fold(node)
                    if any(isinstance(r, np.ndarray) and r.size and BATCH in np.abs(r.astype(np.float64, copy=False)).ravel()
                           and node.op_type == "ConstantOfShape" for r in results):
                        raise self.fail("the shape depends on the batch size; only shapes known at import "
                                        "time can be built")
                elif handler is None:
                    self.unsupported.setdefault(node.op_type, []).append(node.name or node.output[0])
                    self.failed.update(node.output)
                    continue
                else:
                    results = handler(self, node, self.attrs(node))
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
                    self._claim_output(name, reserved[name])
        self._report()
        spec_outputs = []
        for o in outputs:
            if o in self.input_names:
                self.current_node = type("N", (), {"op_type": "Output", "name": o, "output": [o]})()
                self.current_layers = []
                lid = reserved.get(o) or self.names.take(o + "_out")
                src = self.dyn[o]
                self.add_layer({"id": lid, "type": "identity", "inputs": [src.id]}, src.shape)
                self.output_names[o] = lid
            spec_outputs.append(self.output_names[o])
        spec = {"name": sanitize(self.graph.name or "onnx_model", "onnx_model"),
                "description": self._description(),
                "inputs": spec_inputs, "layers": self._compact(self.layers), "outputs": spec_outputs}
        return ImportResult(spec, self.weights, dict(self.input_names), dict(self.output_names))

    def _find_gelu(self) -> dict:
        """The exact-GELU subgraph x · 0.5 · (1 + erf(x / √2)) as PyTorch and cnngraph write it:
        Div(x, √2) → Erf → Add(·, 1) → Mul(x, ·) → Mul(·, 0.5). Returns id(node) → None for the
        inner nodes and → x's name for the last Mul."""
        nodes = list(self.graph.node)
        producer = {o: k for k, n in enumerate(nodes) for o in n.output}
        users: dict[str, list] = {}
        for k, n in enumerate(nodes):
            for i in n.input:
                users.setdefault(i, []).append(k)
        graph_outputs = {o.name for o in self.graph.output}

        def scalar(name, value):
            v = self.consts.get(name)
            if v is None and name in producer and nodes[producer[name]].op_type == "Constant":
                try:
                    self.current_node = nodes[producer[name]]
                    v = self.fold(nodes[producer[name]])[0]
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
            km = only_user(add.output[0])
            mul1 = node_of(km, "Mul")
            if mul1 is None or x not in mul1.input:
                continue
            kh = only_user(mul1.output[0])
            mul2 = node_of(kh, "Mul")
            if mul2 is None or not scalar(mul2.input[1] if mul2.input[0] == mul1.output[0] else mul2.input[0], 0.5):
                continue
            out.update({kd: None, ke: None, ka: None, km: None, kh: x})
        return out

    @staticmethod
    def _refs(node) -> list[str]:
        """Every tensor ``node`` reads: its inputs plus the outer-scope names its subgraphs (If, Loop) use."""
        names = list(node.input)
        from onnx import AttributeProto
        for a in node.attribute:
            graphs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs) if a.type == AttributeProto.GRAPHS else []
            for g in graphs:
                inner = {i.name for i in g.input} | {i.name for i in g.initializer}
                for n in g.node:
                    names += [i for i in Importer._refs(n) if i not in inner]
                    inner.update(n.output)
                names += [o.name for o in g.output if o.name not in inner]
        return [n for n in names if n]

    def _dead_nodes(self, fused: dict) -> set[int]:
        """Nodes whose outputs reach no graph output once fused patterns read only their input."""
        nodes = list(self.graph.node)
        needed = {o.name for o in self.graph.output}
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
            needed.update(self._refs(node))
        return dead

    def _find_torch_lrn(self, taken: dict) -> dict:
        """torch.nn.LocalResponseNorm as torch.onnx.export writes it (no LRN node):
        x / (k + alpha · AvgPool3d_(size,1,1)(Pad(Reshape(x·x, (N,1,C,H,W)))) reshaped back)^beta.
        Returns index of the Div → (x, "local_response_norm", params), index of each inner node → None."""
        nodes = list(self.graph.node)
        producer = {o: k for k, n in enumerate(nodes) for o in n.output}
        graph_outputs = {o.name for o in self.graph.output}

        def const_value(name):
            if name in self.consts:
                return self.consts[name]
            k = producer.get(name)
            if k is None or nodes[k].op_type != "Constant":
                return None
            try:
                self.current_node = nodes[k]
                return self.fold(nodes[k])[0]
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
            from onnx import helper
            from onnx.reference import ReferenceEvaluator
            if name in self.consts:
                return [int(v) for v in np.asarray(self.consts[name]).reshape(-1)]
            sub, todo, seen = [], [name], set()
            while todo:
                t = todo.pop()
                if t in seen or t in self.consts:
                    continue
                seen.add(t)
                k = producer.get(t)
                if k is None:
                    return None   # a graph input
                if nodes[k].op_type == "Shape":
                    return None
                sub.append(k)
                todo += self._refs(nodes[k])
            try:
                feeds = {t: self.consts[t] for k in sub for t in self._refs(nodes[k]) if t in self.consts}
                g = helper.make_graph([nodes[k] for k in sorted(set(sub))], "pads",
                                      [helper.make_empty_tensor_value_info(t) for t in feeds],
                                      [helper.make_empty_tensor_value_info(name)])
                ev = ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)]))
                return [int(v) for v in np.asarray(ev.run(None, feeds)[0]).reshape(-1)]
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
                    outer = [t for t in self._refs(n)[1:] if t in producer]
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
        dead = self._dead_nodes({**taken, **out})
        users: dict[str, list[int]] = {}
        for j, n in enumerate(nodes):
            if j not in dead:
                for t in self._refs(n):
                    users.setdefault(t, []).append(j)
        bad = {j for j, v in out.items() if v is None
               and any(u not in out and u not in taken for o in nodes[j].output for u in users.get(o, []))}
        if bad:
            return {}
        return out

    def _claim_output(self, name: str, lid: str) -> None:
        """Give the layer computing graph output ``name`` the id ``lid`` (the sanitised output name)."""
        r = self.get(name)
        if isinstance(r, Dyn) and self.current_layers and r.id == self.current_layers[-1] and r.id not in self.input_names.values():
            self._rename(r.id, lid)
            self.dyn[name] = Dyn(lid, r.shape)
        elif isinstance(r, Dyn):
            self.add_layer({"id": lid, "type": "identity", "inputs": [r.id]}, r.shape)
            self.dyn[name] = Dyn(lid, r.shape)
        else:
            arr = np.asarray(r, dtype=np.float32)
            self.add_layer({"id": lid, "type": "constant", "inputs": [], "shape": list(arr.shape)}, arr.shape,
                           {"value": arr})
            self.dyn[name] = Dyn(lid, arr.shape)
            del self.consts[name]
        self.output_names[name] = lid

    def _rename(self, old: str, new: str) -> None:
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


def _load(source):
    onnx = require_onnx()
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.is_file():
            raise OnnxError(f"{source}: file not found")
        try:
            model = onnx.load(str(p))
        except Exception as exc:
            raise OnnxError(f"{source}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    else:
        model = source
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

    def forward(self, inputs, training=False, grad=None, outputs=None, on_output=None):
        if isinstance(inputs, dict):
            inputs = {self.onnx_inputs.get(k, k): v for k, v in inputs.items()}
        if outputs is not None:
            outputs = [self.onnx_outputs.get(o, o) for o in outputs]
        result = super().forward(inputs, training=training, grad=grad, outputs=outputs, on_output=on_output)
        back = {v: k for k, v in self.onnx_outputs.items()}
        return {back.get(k, k): v for k, v in result.items()}

    __call__ = forward

    def backward(self, grad_outputs, input_grads=True):
        grad_outputs = {self.onnx_outputs.get(k, k): v for k, v in grad_outputs.items()}
        return super().backward(grad_outputs, input_grads)


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


