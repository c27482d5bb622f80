"""Shared pieces of the ONNX importer and exporter: the error type, name sanitising, lazy imports."""
from __future__ import annotations

import re

from ..errors import CnnGraphError

__all__ = ["OnnxError", "require_onnx", "sanitize", "node_base_name", "torch_scope", "UniqueNames", "ID_RE", "register_once"]

ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class OnnxError(CnnGraphError):
    """An ONNX model cannot be imported, or a spec cannot be exported, as asked."""


def require_onnx():
    """The ``onnx`` module, or an OnnxError saying how to install it."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - depends on the environment
        raise OnnxError("ONNX support needs the onnx package: pip install 'cnngraph[onnx]' (in a source checkout: "
                        "pip install -e '.[onnx]')") from None
    return onnx


def sanitize(name: str, fallback: str = "t") -> str:
    """A valid cnngraph id from an ONNX name: '/layer1/conv/Conv' → 'layer1.conv.Conv'."""
    s = name.strip().strip("/").replace("/", ".").replace("::", ".").replace(":", "_")
    s = re.sub(r"[^A-Za-z0-9_.\-]", "_", s)
    s = re.sub(r"\.{2,}", ".", s).strip(".")
    if not s:
        s = fallback
    if not re.match(r"[A-Za-z_]", s[0]):
        s = "n_" + s if s[0].isdigit() else "n" + s
    return s


class UniqueNames:
    """Hands out sanitised names, each once (suffixes _2, _3, … on clashes)."""

    def __init__(self, taken=()):
        self.taken = set(taken)

    def take(self, name: str, fallback: str = "t") -> str:
        base = sanitize(name, fallback)
        out, i = base, 2
        while out in self.taken:
            out = f"{base}_{i}"
            i += 1
        self.taken.add(out)
        return out


def node_base_name(name: str, op_type: str) -> str:
    """A readable id for an ONNX node. PyTorch scope names '/layer1/layer1.0/conv1/Conv' become the
    module path 'layer1.0.conv1'; other names are sanitised as they are."""
    if not name:
        return op_type.lower()
    if name.startswith("/"):
        parts = [p for p in name.split("/") if p]
        if len(parts) > 1 and re.fullmatch(re.escape(op_type) + r"(_\d+)?", parts[-1]):
            parts = parts[:-1]
            kept = [p for i, p in enumerate(parts) if not (i + 1 < len(parts) and parts[i + 1].startswith(p + "."))]
            return ".".join(kept)
        if len(parts) == 1 and re.fullmatch(re.escape(op_type) + r"(_\d+)?", parts[0]):
            return op_type.lower()
    return name


def torch_scope(node) -> str:
    """A readable id for a node of PyTorch's dynamo exporter, whose names say only the op (``node_conv2d``),
    from its metadata: ``pkg.torch.onnx.name_scopes`` ``['', 'stem', 'stem.0', 'conv2d']`` gives the module
    path ``stem.0`` for an op inside a torch.nn layer (``pkg.torch.onnx.class_hierarchy``), and path plus op
    (``b1.gelu``) for one in a model's own forward. '' without that metadata."""
    scopes, classes = (_literal_list(node, key) for key in ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy"))
    if not scopes:
        return ""
    path = ".".join(s for s in scopes[-2:-1] if s)
    if path and len(classes) >= 2 and classes[-2].startswith("torch.nn.modules."):
        return path
    return f"{path}.{scopes[-1]}" if path else scopes[-1]


def _literal_list(node, key: str) -> list[str]:
    """A metadata entry of ``node`` written as a Python list of strings; [] if absent or not that."""
    import ast
    raw = next((p.value for p in getattr(node, "metadata_props", ()) if p.key == key), None)
    try:
        value = ast.literal_eval(raw) if raw else []
    except (ValueError, SyntaxError):
        return []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def register_once(table: dict, key: str, fn, what: str) -> None:
    """``table[key] = fn`` unless another function holds ``key`` (the same one redefined, as when a module
    loads again, may replace itself): a plugin cannot silently change a built-in conversion."""
    old = table.get(key)
    if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
        from ..errors import PluginError
        raise PluginError(f"{what} '{key}' already has {old.__module__}.{old.__qualname__}; "
                          f"{fn.__module__}.{fn.__qualname__} cannot replace it")
    table[key] = fn
