"""PyTorch reference implementations of cnngraph layers and graphs (needs torch).

Used by the parity tests and the side-by-side benchmarks: the same network, computed by PyTorch's
own operators. ``TorchNet`` is a ``torch.nn.Module`` built from a compiled model's graph.
"""
from __future__ import annotations

import numpy as np
import torch

from .backend import to_numpy
from .graph import topological_order

F = torch.nn.functional


def _torch_pads(pad, x):
    """cnngraph's explicit (begin, end) per spatial axis, e.g. [top, bottom, left, right], as F.pad's argument
    (last axis first); None for the other padding forms (an int, one per axis), which torch takes as they are."""
    if not (isinstance(pad, (list, tuple)) and len(pad) == 2 * (x.dim() - 2)):
        return None
    return tuple(v for i in range(len(pad) - 2, -1, -2) for v in pad[i:i + 2])


def _pool(layer, x, fn, fill):
    """Pooling with cnngraph's padding forms: an int, [h, w] or asymmetric [top, bottom, left, right] (3-D:
    [d, h, w] or [front, back, top, bottom, left, right]), padded explicitly with ``fill``, since torch pools
    pad symmetrically."""
    pad = layer.get("padding", 0)
    explicit = _torch_pads(pad, x)
    if explicit is None:
        return fn(x, pad)
    return fn(F.pad(x, explicit, value=fill), 0)


def _avg_pool(layer, x):
    pad, include = layer.get("padding", 0), layer.get("count_include_pad", True)
    pool = F.avg_pool3d if layer["type"] == "avg_pool3d" else F.avg_pool2d

    def avg(v, padding):
        return pool(v, layer["kernel_size"], layer.get("stride"), padding,
                    ceil_mode=layer.get("ceil_mode", False), count_include_pad=include)
    if include or _torch_pads(pad, x) is None:
        return _pool(layer, x, avg, 0.0)
    ones = torch.ones_like(x[:1, :1])      # sum over the real pixels / their number
    return _pool(layer, x, avg, 0.0) / _pool(layer, ones, avg, 0.0)


def _per_sample_aligned(ts):
    """cnngraph broadcasts per-sample shapes aligned right, after the batch axis: unit axes go after the batch."""
    rank = max(v.dim() for v in ts)
    return [v.reshape(v.shape[:1] + (1,) * (rank - v.dim()) + v.shape[1:]) for v in ts]


_UNARY = {"sqrt": torch.sqrt, "exp": torch.exp, "log": torch.log, "abs": torch.abs, "neg": torch.neg,
          "reciprocal": torch.reciprocal, "erf": torch.special.erf}


def torch_layer(layer, t, p, training=False, update_stats=False):
    """Apply one cnngraph layer (spec dict) with PyTorch to torch tensors ``t`` and params ``p``.
    ``update_stats``: batch norm in training updates ``p``'s running statistics in place (else copies)."""
    t = list(t)
    typ = layer["type"]
    if typ in ("conv2d", "conv3d"):
        pad = layer.get("padding", 0)
        if _torch_pads(pad, t[0]) is not None:
            t[0], pad = F.pad(t[0], _torch_pads(pad, t[0])), 0
        conv = F.conv3d if typ == "conv3d" else F.conv2d
        return conv(t[0], p["weight"], p.get("bias"), layer.get("stride", 1), pad, layer.get("dilation", 1),
                    layer.get("groups", 1))
    if typ in ("conv_transpose2d", "conv_transpose3d"):
        pad, n = layer.get("padding", 0), 3 if typ == "conv_transpose3d" else 2
        per_side = isinstance(pad, (list, tuple)) and len(pad) == 2 * n
        conv = F.conv_transpose3d if n == 3 else F.conv_transpose2d
        y = conv(t[0], p["weight"], p.get("bias"), layer.get("stride", 1), 0 if per_side else pad,
                 layer.get("output_padding", 0), layer.get("groups", 1), layer.get("dilation", 1))
        if per_side:      # torch pads symmetrically: crop the rest
            y = y[(slice(None), slice(None), *(slice(pad[2 * i], y.shape[2 + i] - pad[2 * i + 1]) for i in range(n)))]
        return y
    if typ == "dense":
        return F.linear(t[0], p["weight"], p.get("bias"))
    if typ == "embedding":
        return F.embedding(t[0].long(), p["weight"])
    if typ in ("max_pool2d", "max_pool3d"):
        pool = F.max_pool3d if typ == "max_pool3d" else F.max_pool2d
        return _pool(layer, t[0], lambda v, pad: pool(v, layer["kernel_size"], layer.get("stride"), pad,
                                                      layer.get("dilation", 1),
                                                      ceil_mode=layer.get("ceil_mode", False)), -torch.inf)
    if typ in ("avg_pool2d", "avg_pool3d"):
        return _avg_pool(layer, t[0])
    if typ == "global_avg_pool2d":   # (N, C, L), (N, C, H, W) or (N, C, D, H, W)
        return t[0].mean(dim=tuple(range(2, t[0].dim())), keepdim=True)
    if typ == "global_max_pool2d":
        return t[0].amax(dim=tuple(range(2, t[0].dim())), keepdim=True)
    if typ == "batch_norm2d":
        stats = [p[k] if update_stats else p[k].clone() for k in ("running_mean", "running_var")]
        return F.batch_norm(t[0], *stats, p.get("weight"), p.get("bias"),
                            training=training, momentum=layer.get("momentum", 0.1), eps=layer.get("eps", 1e-5))
    if typ == "group_norm":
        return F.group_norm(t[0], layer["num_groups"], p.get("weight"), p.get("bias"), layer.get("eps", 1e-5))
    if typ == "layer_norm":
        return F.layer_norm(t[0], t[0].shape[t[0].dim() - layer.get("axes", 1):], p.get("weight"), p.get("bias"),
                            layer.get("eps", 1e-5))
    if typ == "flatten":
        return torch.flatten(t[0], 1)
    if typ == "pixel_shuffle":
        r = layer["upscale_factor"]
        if layer.get("mode", "crd") == "crd":
            return F.pixel_shuffle(t[0], r)
        n, c, h, w = t[0].shape   # DCR (ONNX DepthToSpace's default): the block offset is the slow channel index
        return t[0].reshape(n, r, r, c // (r * r), h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, -1, h * r, w * r)
    if typ == "upsample2d":
        mode = layer.get("mode", "nearest")
        extra = {"align_corners": layer.get("align_corners", False)} if mode in ("bilinear", "bicubic") else {}
        if layer.get("size") is not None:
            size = layer["size"]
            return F.interpolate(t[0], size=(size, size) if isinstance(size, int) else tuple(size), mode=mode, **extra)
        scale = layer.get("scale_factor", 2.0)
        scale = (float(scale),) * 2 if isinstance(scale, (int, float)) else tuple(float(v) for v in scale)
        return F.interpolate(t[0], scale_factor=scale, mode=mode, **extra)
    simple = {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
    if typ in simple:
        return simple[typ](t[0])
    if typ == "leaky_relu":
        return F.leaky_relu(t[0], layer["negative_slope"])
    if typ == "elu":
        return F.elu(t[0], layer["alpha"])
    if typ == "prelu":
        return F.prelu(t[0], p["weight"])
    if typ == "softplus":
        return F.softplus(t[0], layer.get("beta", 1.0), layer.get("threshold", 20.0))
    if typ == "selu":
        return layer.get("scale", 1.0507009873554805) * F.elu(t[0], layer.get("alpha", 1.6732632423543772))
    if typ == "celu":
        return F.celu(t[0], layer.get("alpha", 1.0))
    if typ == "softsign":
        return F.softsign(t[0])
    if typ == "unary":
        return _UNARY[layer["fn"]](t[0])
    if typ == "pow":
        return torch.pow(t[0], layer["exponent"])
    if typ in ("maximum", "minimum"):
        return getattr(torch, typ)(*_per_sample_aligned(t))
    if typ == "reduce":
        axes, keep = list(layer["axes"]), layer.get("keepdims", False)
        how = {"mean": torch.mean, "sum": torch.sum, "max": torch.amax}[layer.get("op", "mean")]
        return how(t[0], dim=axes, keepdim=keep)
    if typ == "gelu":
        return F.gelu(t[0], approximate=layer.get("approximate", "none"))
    if typ == "softmax":
        return F.softmax(t[0], dim=layer.get("axis", 1))
    if typ == "log_softmax":
        return F.log_softmax(t[0], dim=layer.get("axis", 1))
    if typ == "add":
        return sum(t[1:], t[0])
    if typ == "concat":
        return torch.cat(t, dim=layer.get("axis", 1))
    reduction = layer.get("reduction", "mean")
    if typ == "cross_entropy":
        weight = layer.get("weight")
        extra = {} if layer.get("ignore_index") is None else {"ignore_index": layer["ignore_index"]}
        return F.cross_entropy(t[0], t[1], label_smoothing=layer.get("label_smoothing", 0.0), reduction=reduction,
                               weight=None if weight is None else torch.tensor(weight, dtype=t[0].dtype), **extra)
    if typ == "binary_cross_entropy":
        return F.binary_cross_entropy_with_logits(t[0], t[1].reshape(t[0].shape), reduction=reduction)
    if typ == "mse":
        return F.mse_loss(t[0], t[1], reduction=reduction)
    if typ == "dropout":
        return F.dropout(t[0], layer["p"], training)
    raise NotImplementedError(typ)


def torch_graph(model, feeds: dict, training: bool = False):
    """Run ``model``'s graph with PyTorch ops on copies of its parameters (float64 leaf tensors).

    Returns (outputs dict, params dict of leaf tensors, input leaf tensors)."""
    g = model.graph
    leaves = {k: torch.tensor(np.asarray(v), dtype=torch.float64, requires_grad=k in model.trainable_names)
              for k, v in model.params.items()}
    env = {k: torch.tensor(np.asarray(v), dtype=torch.float64, requires_grad=True) for k, v in feeds.items()}
    inputs = dict(env)
    for node in topological_order(g):
        attrs = g.nodes[node]
        if attrs["kind"] != "layer":
            continue
        layer = {"type": attrs["type"], **attrs["params"].model_dump()}
        local = {k.split(".", 1)[1] if k.startswith(node + ".") else k: v for k, v in leaves.items()
                 if k.rsplit(".", 1)[0] == node}
        env[node] = torch_layer(layer, [env[s] for s in attrs["inputs"]], local, training, update_stats=True)
    return {o: env[o] for o in g.graph["outputs"]}, leaves, inputs


class TorchNet(torch.nn.Module):
    """A ``torch.nn.Module`` computing a cnngraph model's graph with PyTorch ops and copies of its
    parameters (buffers such as running statistics are updated in training like PyTorch's own)."""

    def __init__(self, model, dtype=torch.float32):
        super().__init__()
        self.graph = model.graph
        self.order = [n for n in topological_order(model.graph) if model.graph.nodes[n]["kind"] == "layer"]
        self.inputs = list(model.spec.inputs)
        self.outputs = list(model.spec.outputs)
        self.weights = torch.nn.ParameterDict()
        self.state = {}
        for name, value in model.params.items():
            t = torch.tensor(to_numpy(value), dtype=dtype)
            if name in model.trainable_names:
                self.weights[name.replace(".", "__")] = torch.nn.Parameter(t)
            else:
                self.state[name] = t
        self.layers = {n: {"type": self.graph.nodes[n]["type"], **self.graph.nodes[n]["params"].model_dump()}
                       for n in self.order}

    def _local(self, node):
        out = {k.split("__", 1)[1]: v for k, v in self.weights.items() if k.split("__", 1)[0] == node}
        out.update({k.split(".", 1)[1]: v for k, v in self.state.items() if k.rsplit(".", 1)[0] == node})
        return out

    def forward(self, *xs):
        env = dict(zip(self.inputs, xs))
        for node in self.order:
            layer = self.layers[node]
            env[node] = torch_layer(layer, [env[s] for s in self.graph.nodes[node]["inputs"]], self._local(node),
                                    self.training, update_stats=True)
        outs = [env[o] for o in self.outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)
