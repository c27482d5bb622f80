"""Reusable blocks in spec files: named, parameterised groups of layers inlined before validation.

.. code-block:: yaml

    blocks:
      conv_bn_relu:
        args: {channels: null, stride: 1}     # null = required
        layers:
          - {id: conv, type: conv2d, out_channels: $channels, kernel_size: 3, stride: $stride, padding: 1}
          - {id: bn, type: batch_norm2d}
          - {id: act, type: relu}
    layers:
      - {id: stem, block: conv_bn_relu, channels: 32}           # layers stem.conv, stem.bn, stem.act
      - {id: stage1, block: conv_bn_relu, channels: 64, repeat: 3}   # stage1.0.conv … stage1.2.act

Rules
-----
- ``$name`` (or ``${name}`` inside a longer string) is replaced by the argument's value anywhere in a
  block's layers; a value that is exactly ``$name`` keeps the argument's type. ``$$`` is a literal ``$``.
- A block has one input by default, called ``input`` inside the block; ``inputs: [a, b]`` declares
  several (an instance then names as many in its own ``inputs``). The first layer of a block takes
  the block's input(s) unless it names its own ``inputs``.
- The block's output is its last layer, or the local layer named by ``output:``. Any other layer of an
  instance can be used from outside by its full id (``stem.bn``).
- Names in a block's ``inputs`` resolve in the instance first (local ids, then the block's input
  names), then outside it. An instance id used as an input (or in ``outputs``) means its output.
- ``repeat: N`` chains N copies ``id.0`` … ``id.N-1``; ``id`` then means the last copy's output.
- Blocks may use other blocks; a block that uses itself (directly or not) is an error.

:func:`expand_blocks` returns the spec with ``blocks`` removed and every instance inlined, with the
positions of expanded layers pointing into the block definition and a note naming the instance.
"""
from __future__ import annotations

import copy
import re
from typing import Any

from .errors import Problem
from .positions import path_to_str

__all__ = ["expand_blocks", "BLOCK_KEYS", "INSTANCE_KEYS"]

BLOCK_KEYS = ("args", "inputs", "output", "layers", "description")
INSTANCE_KEYS = ("id", "block", "inputs", "repeat")
_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SUBST = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_WHOLE = re.compile(r"^(?:\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*))$")
MAX_DEPTH = 32
BROKEN_INSTANCE = "__broken_block_instance__"   # marks the placeholder of an instance that failed to expand
DISPLAY = ("<display>",)   # key in the notes: expanded layer path → the path it was written at in the file
UNRESOLVED = ("<unresolved>",)   # key in the notes: input names reported here (graph checks stay silent on them)


class _Ref:
    """A layer name written in some scope, resolved once every instance is expanded."""

    __slots__ = ("name", "scope", "path", "note", "of_instance")

    def __init__(self, name: str, scope: "_Scope", path: tuple = (), note: str | None = None,
                 of_instance: bool = False):
        self.name = name
        self.scope = scope
        self.path = path     # where the file wrote it
        self.note = note     # the enclosing block instances, for messages
        self.of_instance = of_instance   # a block instance's `inputs`, used by layers written elsewhere


class _Scope:
    """Names visible in one list of layers: the top-level list or one block instance's layers."""

    def __init__(self, parent: "_Scope | None", prefix: str, aliases: dict[str, Any] | None = None):
        self.parent = parent
        self.prefix = prefix                 # "" at top level, "stem." inside instance stem
        self.local: dict[str, str] = {}      # local name → full id of the tensor it means
        self.children: dict[str, _Scope] = {}
        self.aliases = aliases or {}         # block input name → source (str or _Ref)

    def resolve(self, name: str, seen: int = 0) -> str:
        if seen > 64:
            return name
        found = self._lookup(name, seen)
        if found is not None:
            return found
        if name in self.aliases:
            return _resolve_source(self.aliases[name], seen + 1)
        if self.parent is not None:
            return self.parent.resolve(name, seen + 1)
        return name

    def resolve_inside(self, name: str, seen: int = 0) -> str:
        """A dotted path into this instance (``stem.conv``): local names only, never the outside."""
        found = self._lookup(name, seen)
        return found if found is not None else self.prefix + name

    def alias_for(self, name: str):
        """The block input ``name`` stands for when resolving it goes through one, else None."""
        scope = self
        while scope is not None:
            if scope._lookup(name, 0) is not None:
                return None
            if name in scope.aliases:
                return scope.aliases[name]
            scope = scope.parent
        return None

    def visible(self) -> list[str]:
        """Every name a layer of this scope may use as an input (for did-you-mean)."""
        names, scope = [], self
        while scope is not None:
            names += [n for n in (*scope.local, *scope.aliases, *scope.children) if n not in names]
            scope = scope.parent
        return names

    def _lookup(self, name: str, seen: int) -> str | None:
        """``name`` as a local name of this scope or a dotted path into a child instance; else None."""
        if name in self.local:
            return self.local[name]
        parts = name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:i])
            if head in self.children:
                return self.children[head].resolve_inside(".".join(parts[i:]), seen + 1)
        return None


def _resolve_source(src: Any, seen: int = 0) -> str:
    return src.scope.resolve(src.name, seen) if isinstance(src, _Ref) else src


def _written_ref(src: Any) -> Any:
    """The reference whose name is finally looked up: block inputs followed to what the instance passed."""
    for _ in range(64):
        nxt = src.scope.alias_for(src.name) if isinstance(src, _Ref) else None
        if not isinstance(nxt, _Ref):
            return src
        src = nxt
    return src


class _Expander:
    def __init__(self, data: dict, positions: dict, file: str | None):
        self.data = data
        self.pos = positions
        self.file = file
        self.problems: list[Problem] = []
        self._seen_problems: set = set()
        self.out_layers: list[dict] = []
        self.out_pos: dict = {}
        self.notes: dict = {}
        self.blocks: dict[str, dict] = {}
        self.used: set[str] = set()          # blocks instantiated at least once
        inputs = data.get("inputs")
        self.model_inputs = list(inputs) if isinstance(inputs, dict) else []

    # -- problems ---------------------------------------------------------------------------
    def where(self, path: tuple, key: bool = False) -> str:
        lc = self.lookup(path, key)
        return f"{self.file or '<spec>'}:{lc[0]}:{lc[1]}" if lc else (self.file or "<spec>")

    def lookup(self, path: tuple, key: bool = False):
        if key and tuple(path) + ("<key>",) in self.pos:
            return self.pos[tuple(path) + ("<key>",)]
        p = tuple(path)
        while True:
            if p in self.pos:
                return self.pos[p]
            if not p:
                return None
            p = p[:-1]

    def problem(self, message: str, path: tuple, layer: str | None = None, note: str | None = None,
                key: bool = False) -> None:
        lc = self.lookup(path, key)
        prob = Problem(message, path_to_str(tuple(path)), self.file, lc[0] if lc else None, lc[1] if lc else None,
                       layer, note)
        ident = (prob.message, prob.line, prob.column, prob.path)
        if ident not in self._seen_problems:
            self._seen_problems.add(ident)
            self.problems.append(prob)

    # -- block definitions ------------------------------------------------------------------
    def read_blocks(self) -> None:
        raw = self.data.get("blocks")
        if raw is None:
            return
        if not isinstance(raw, dict):
            self.problem(f"'blocks' must be a mapping of block name → definition, found {type(raw).__name__}",
                         ("blocks",))
            return
        for name, body in raw.items():
            path = ("blocks", name)
            if not _ARG_NAME.match(str(name)):
                self.problem(f"block names use letters, digits and '_' and start with a letter or '_'; "
                             f"found {name!r}", path, key=True)
                continue
            if not isinstance(body, dict):
                self.problem(f"block '{name}' must be a mapping with 'layers' (and optional 'args', "
                             f"'inputs', 'output'), found {type(body).__name__}", path)
                continue
            ok = True
            for key in body:
                if key not in BLOCK_KEYS:
                    from .registry import did_you_mean
                    hint = did_you_mean(key, BLOCK_KEYS)
                    self.problem(f"unknown key '{key}' in block '{name}'{hint}; a block has "
                                 f"{', '.join(BLOCK_KEYS)}", path + (key,), key=True)
                    ok = False
            layers = body.get("layers")
            if not isinstance(layers, list) or not layers:
                self.problem(f"block '{name}' needs a non-empty list 'layers'", path + (("layers",) if "layers" in body else ()))
                continue
            args = body.get("args") or {}
            if not isinstance(args, dict):
                self.problem(f"'args' of block '{name}' must be a mapping of name → default (null = required)",
                             path + ("args",))
                ok = False
                args = {}
            for a in args:
                if not _ARG_NAME.match(str(a)):
                    self.problem(f"argument names use letters, digits and '_'; found {a!r}", path + ("args", a),
                                 key=True)
                    ok = False
                elif a in INSTANCE_KEYS or a == "type":
                    self.problem(f"'{a}' cannot be a block argument: instances use it for themselves",
                                 path + ("args", a), key=True)
                    ok = False
            ins = body.get("inputs", ["input"])
            if isinstance(ins, str):
                ins = [ins]
            if not isinstance(ins, list) or not ins or not all(isinstance(i, str) for i in ins):
                self.problem(f"'inputs' of block '{name}' must be a name or a non-empty list of names",
                             path + ("inputs",))
                ok = False
                ins = ["input"]
            local_ids: dict[str, int] = {}
            for i, layer in enumerate(layers):
                lp = path + ("layers", i)
                if not isinstance(layer, dict):
                    self.problem(f"each layer of block '{name}' must be a mapping, found {type(layer).__name__}", lp)
                    ok = False
                    continue
                lid = layer.get("id")
                if not isinstance(lid, str) or not lid:
                    self.problem(f"every layer of block '{name}' needs an 'id' (it becomes '<instance>.<id>')",
                                 lp)
                    ok = False
                    continue
                if "$" in lid:
                    continue
                if lid in local_ids:
                    self.problem(f"duplicate layer id '{lid}' in block '{name}' (first used by layers[{local_ids[lid]}])",
                                 lp + ("id",))
                    ok = False
                elif lid in ins:
                    self.problem(f"layer id '{lid}' in block '{name}' is already the name of the block's input",
                                 lp + ("id",))
                    ok = False
                local_ids.setdefault(lid, i)
            output = body.get("output")
            if output is not None and (not isinstance(output, str) or (output not in local_ids and "$" not in output)):
                from .registry import did_you_mean
                self.problem(f"'output' of block '{name}' must name one of its layers "
                             f"({', '.join(local_ids)}), found {output!r}{did_you_mean(output, local_ids)}",
                             path + ("output",))
                ok = False
            if ok:
                self.blocks[name] = {"args": args, "inputs": ins, "output": output, "layers": layers, "path": path}

    # -- expansion --------------------------------------------------------------------------
    def run(self) -> None:
        self.read_blocks()
        layers = self.data.get("layers")
        if not isinstance(layers, list):
            return
        top = _Scope(None, "")
        default = [self.model_inputs[0]] if len(self.model_inputs) == 1 else None
        self.expand_list(layers, ("layers",), top, first_inputs=None, default_first=default, chain=[],
                         subst=None)
        self.report_unresolved()
        for layer in self.out_layers:
            if "inputs" in layer:
                v = layer["inputs"]
                layer["inputs"] = ([_resolve_source(s) for s in v] if isinstance(v, list) else _resolve_source(v))
        self.top = top
        for name in self.blocks:
            if name not in self.used:
                self.check_unused(name)
        self.check_unused_cycles()

    def report_unresolved(self) -> None:
        """Input names that resolve to nothing, once where each was written (a name inside a block is
        reported once for all its instances), with a did-you-mean from the names visible there. Plain
        top-level inputs are left to the graph checks, which say the same."""
        from .registry import did_you_mean
        ids = {layer.get("id") for layer in self.out_layers if isinstance(layer, dict)} | set(self.model_inputs)
        found: dict[tuple, tuple[_Ref, list[str]]] = {}
        for layer in self.out_layers:
            v = layer.get("inputs") if isinstance(layer, dict) else None
            for src in (v if isinstance(v, list) else [v]):
                if not isinstance(src, _Ref) or _resolve_source(src) in ids:
                    continue
                ref = _written_ref(src)
                if ref.scope.parent is None and not ref.of_instance:
                    continue
                found.setdefault((ref.path, ref.name), (ref, []))[1].append(str(layer.get("id")))
        for (path, name), (ref, users) in found.items():
            visible = ref.scope.visible() + [n for n in self.model_inputs if n not in ref.scope.visible()]
            note = ref.note
            if len(users) > 1:
                note = (note + "; " if note else "") + f"used by {len(users)} expanded layers: {', '.join(users)}"
            self.problem(f"input '{name}' is neither a layer id nor a model input{did_you_mean(name, visible)}",
                         path, users[0], note)
            self.notes.setdefault(UNRESOLVED, set()).add(_resolve_source(ref))

    def check_unused_cycles(self) -> None:
        """Blocks using each other in a circle, when no layer instantiates them (expansion finds the rest)."""
        import networkx as nx
        g = nx.DiGraph()
        for name, block in self.blocks.items():
            for layer in block["layers"]:
                if isinstance(layer.get("block"), str) and layer["block"] in self.blocks:
                    g.add_edge(name, layer["block"])
        order = {name: i for i, name in enumerate(self.blocks)}
        for cycle in nx.simple_cycles(g):
            k = min(range(len(cycle)), key=lambda i: order[cycle[i]])   # start where the spec does
            cycle = cycle[k:] + cycle[:k]
            if not set(cycle) & self.used:
                chain = " -> ".join(cycle + [cycle[0]])
                self.problem(f"blocks use each other in a circle ({chain}); blocks cannot be recursive",
                             self.blocks[cycle[0]]["path"], key=True)

    def check_unused(self, name: str) -> None:
        """What can be checked of a block no layer instantiates: op and block types, and $arguments."""
        from .registry import did_you_mean, get_registry
        block, ops = self.blocks[name], get_registry().ops
        for i, layer in enumerate(block["layers"]):
            lp = block["path"] + ("layers", i)
            kind, known, table = ("type", ops, "op type") if "type" in layer else ("block", self.blocks, "block")
            value = layer.get(kind)
            if isinstance(value, str) and "$" not in value and value not in known:
                self.problem(f"unknown {table} '{value}'{did_you_mean(value, known)} in block '{name}' (which no "
                             f"layer uses yet)", lp + (kind,))
            for key, text in layer.items():
                for m in _SUBST.finditer(text) if isinstance(text, str) else ():
                    arg = m.group(1) or m.group(2)
                    if arg and arg not in block["args"]:
                        self.problem(f"'${arg}' is not an argument of block '{name}'{did_you_mean(arg, block['args'])}"
                                     f"; its arguments: {', '.join(block['args']) or 'none'}", lp + (key,))

    def expand_list(self, layers: list, base: tuple, scope: _Scope, first_inputs, default_first, chain: list,
                    subst) -> str | None:
        """Inline a list of layers; returns the full id of the last item's output.

        ``first_inputs``: sources for a first layer that names none (inside a block) or None (top level:
        the graph's own rule applies). ``chain``: the enclosing instances (for notes and recursion).
        ``subst``: (args, block name, instance path) when inside a block.
        """
        prev_output: str | None = None
        seen: dict[str, tuple[int, bool]] = {}
        for i, raw in enumerate(layers):
            path = base + (i,)
            if not isinstance(raw, dict):
                self.emit(raw, path, chain)
                prev_output = None
                continue
            overrides, unresolved = {}, False
            if subst is not None:
                raw, overrides, unresolved = self.substitute(raw, path, subst, chain)
            lid = raw.get("id")
            if isinstance(lid, str):
                is_instance = "block" in raw
                if lid in seen and (is_instance or seen[lid][1]):
                    self.problem(f"duplicate id '{lid}' (first used by {path_to_str(base + (seen[lid][0],))}); "
                                 f"a block instance shares its id with no other layer", path + ("id",),
                                 scope.prefix + lid, self.note(chain) if chain else None)
                    continue
                seen.setdefault(lid, (i, is_instance))
            if prev_output is None:
                implicit = first_inputs
            else:
                implicit = [prev_output]
            if "block" in raw:
                prev_output = self.expand_instance(raw, path, scope, implicit, default_first if prev_output is None
                                                   else None, chain)
                if prev_output is None and isinstance(lid, str):
                    # reported already: a placeholder keeps its place and id, so the rest of the spec is
                    # still checked without echoing this problem (see spec._validate_layers)
                    prev_output = scope.prefix + lid
                    self.emit({"id": prev_output, BROKEN_INSTANCE: True}, path, chain)
                    scope.local[lid] = prev_output
                continue
            layer = dict(raw)
            lid = layer.get("id")
            full = scope.prefix + lid if isinstance(lid, str) else lid
            if isinstance(lid, str):
                layer["id"] = full
            if "inputs" in layer:
                v = layer["inputs"]
                note = self.note(chain) if chain else None
                if isinstance(v, str):
                    layer["inputs"] = _Ref(v, scope, path + ("inputs",), note)
                elif isinstance(v, list):
                    layer["inputs"] = [_Ref(s, scope, path + ("inputs", j), note) if isinstance(s, str) else s
                                       for j, s in enumerate(v)]
            elif implicit is not None and ((subst is not None and prev_output is None) or not self.out_layers
                                           or self.out_layers[-1].get("id") != implicit[0] or len(implicit) > 1):
                layer["inputs"] = implicit[0] if len(implicit) == 1 else list(implicit)
            layer = _order_keys(layer)
            if unresolved:   # a $argument the block lacks, reported already: not validated again as a value
                layer[BROKEN_INSTANCE] = True
            self.emit(layer, path, chain, overrides)
            if isinstance(lid, str):
                scope.local[lid] = full
                prev_output = full
            else:
                prev_output = None
        return prev_output

    def emit(self, layer: Any, src_path: tuple, chain: list, overrides: dict | None = None) -> None:
        j = len(self.out_layers)
        self.out_layers.append(layer)
        dst = ("layers", j)
        self.notes.setdefault(DISPLAY, {})[dst] = src_path   # errors name the file's path, not the expanded one
        n = len(src_path)
        for p, lc in self.pos.items():
            if p[:n] == src_path:
                self.out_pos[dst + p[n:]] = lc
        for rel, lc in (overrides or {}).items():   # values that came whole from an instance's argument
            for p in [q for q in self.out_pos if q[:len(dst + rel)] == dst + rel and "<key>" not in q[len(dst + rel):]]:
                del self.out_pos[p]
            self.out_pos[dst + rel] = lc
        if chain:
            self.notes[dst] = self.note(chain)

    def note(self, chain: list) -> str:
        parts = []
        for block, inst_id, inst_path in reversed(chain):
            bpath = self.blocks[block]["path"] if block in self.blocks else ("blocks", block)
            parts.append(f"in block '{block}' defined at {self.where(bpath, key=True)}, instantiated as '{inst_id}' at "
                         f"{self.where(inst_path)}")
        return "; ".join(parts)

    def expand_instance(self, raw: dict, path: tuple, scope: _Scope, implicit, default_first, chain: list):
        from .registry import did_you_mean
        name = raw.get("block")
        lid = raw.get("id")
        note = self.note(chain) if chain else None
        if not isinstance(lid, str) or not lid:
            self.problem("a block instance needs an 'id' (its layers are named '<id>.<layer>')", path, note=note)
            return None
        full = scope.prefix + lid
        if not isinstance(name, str) or name not in self.blocks:
            raw_blocks = self.data.get("blocks")
            known = list(raw_blocks) if isinstance(raw_blocks, dict) else []
            if not known:
                msg = f"unknown block {name!r}: the spec defines no blocks (add a top-level 'blocks:' mapping)"
            elif name in known:
                return None   # its definition is broken; that problem is reported already
            else:
                msg = f"unknown block {name!r}{did_you_mean(str(name), known)}; defined blocks: {', '.join(known)}"
            self.problem(msg, path + ("block",), full, note)
            return None
        if "type" in raw:
            self.problem("a layer has either 'type' (an op) or 'block' (a block instance), not both",
                         path + ("type",), full, note, key=True)
            return None
        if any(b == name for b, _, _ in chain):
            cycle = " -> ".join([b for b, _, _ in chain] + [name])
            self.problem(f"block '{name}' uses itself ({cycle}); blocks cannot be recursive", path + ("block",),
                         full, note)
            return None
        if len(chain) >= MAX_DEPTH:
            self.problem(f"blocks are nested more than {MAX_DEPTH} deep here (instance '{full}' of block '{name}'); "
                         f"flatten some levels", path + ("block",), full)
            return None
        block = self.blocks[name]
        self.used.add(name)
        # arguments
        args = {}
        bad = False
        for key, value in raw.items():
            if key in INSTANCE_KEYS:
                continue
            if key not in block["args"]:
                declared = ", ".join(block["args"]) or "none"
                self.problem(f"unknown argument '{key}' for block '{name}'{did_you_mean(key, block['args'])}; "
                             f"its arguments: {declared}", path + (key,), full, note, key=True)
                bad = True
            else:
                args[key] = value
        for key, default in block["args"].items():
            if key not in args:
                if default is None:
                    self.problem(f"block '{name}' needs argument '{key}' (defined at "
                                 f"{self.where(block['path'] + ('args', key))})", path, full, note)
                    bad = True
                else:
                    args[key] = default
        for key in block["args"]:   # defaults may use the instance's other arguments: hidden: ${c}*${t}
            if key not in raw and isinstance(args.get(key), str) and "$" in args[key]:
                given = {k: v for k, v in args.items() if k != key}
                whole = _WHOLE.match(args[key])
                if whole and (whole.group(1) or whole.group(2)) in given:   # `$c` keeps c's value and type
                    args[key] = given[whole.group(1) or whole.group(2)]
                else:
                    args[key] = _arithmetic(_SUBST.sub(lambda m: "$" if m.group(0) == "$$" else
                                                       str(given.get(m.group(1) or m.group(2), m.group(0))), args[key]))
        repeat = raw.get("repeat", 1)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            self.problem(f"'repeat' must be an integer >= 1, found {repeat!r}", path + ("repeat",), full, note)
            bad = True
        # inputs of the instance
        n_in = len(block["inputs"])
        if "inputs" in raw:
            v = raw["inputs"]
            vals = [v] if isinstance(v, str) else v
            if not isinstance(vals, list) or not all(isinstance(s, str) for s in vals):
                self.problem("'inputs' must be a layer name or a list of names", path + ("inputs",), full, note)
                return None
            if len(vals) != n_in:
                self.problem(f"block '{name}' takes {n_in} input{'s' if n_in != 1 else ''} "
                             f"({', '.join(block['inputs'])}), found {len(vals)}", path + ("inputs",), full, note)
                return None
            sources = [_Ref(s, scope, path + ("inputs",) + ((j,) if isinstance(v, list) else ()), note, True)
                       for j, s in enumerate(vals)]
        elif implicit is not None and len(implicit) == n_in:
            sources = list(implicit)
        elif implicit is None and default_first is not None and n_in == 1:
            sources = list(default_first)
        else:
            what = (f"{n_in} inputs ({', '.join(block['inputs'])})" if n_in > 1 else "an input")
            self.problem(f"block '{name}' takes {what}; name {'them' if n_in > 1 else 'it'} with 'inputs'",
                         path, full, note)
            return None
        if bad:
            return None
        if isinstance(repeat, int) and repeat > 1 and n_in != 1:
            self.problem(f"'repeat' chains copies output → input, so it needs a one-input block; "
                         f"'{name}' takes {n_in}", path + ("repeat",), full, note)
            return None
        out = None
        for k in range(repeat):
            copy_id = f"{lid}.{k}" if repeat > 1 else lid
            child = _Scope(scope, scope.prefix + copy_id + ".",
                           {alias: src for alias, src in zip(block["inputs"], sources)})
            inner_chain = chain + [(name, scope.prefix + copy_id, path)]
            last = self.expand_list(block["layers"], block["path"] + ("layers",), child, sources, None,
                                    inner_chain, (args, name, path))
            output_local = block["output"]
            if output_local is not None:
                output_local = self._subst_value(output_local, args)
                out = child.resolve(output_local) if isinstance(output_local, str) else last
            else:
                out = last
            if out is None:
                return None
            scope.children[copy_id] = child
            scope.local[copy_id] = out
            sources = [out]
        if repeat > 1:
            scope.local[lid] = out
        return out

    # -- substitution -----------------------------------------------------------------------
    def substitute(self, raw: dict, path: tuple, subst, chain: list) -> tuple[dict, dict, bool]:
        """Replace $args in one layer of a block; returns (layer, {relative path: position of the argument},
        whether a $name was not an argument (reported here))."""
        args, block, inst_path = subst
        note = self.note(chain) if chain else None
        overrides: dict = {}
        unresolved = []

        def walk(value, p):
            if isinstance(value, dict):
                return {k: walk(v, p + (k,)) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v, p + (i,)) for i, v in enumerate(value)]
            if not isinstance(value, str) or "$" not in value:
                return value
            whole = _WHOLE.match(value)
            if whole:
                arg = whole.group(1) or whole.group(2)
                if arg in args:
                    lc = self.lookup(inst_path + (arg,)) if inst_path + (arg,) in self.pos else None
                    if lc is not None:
                        overrides[p[len(path):]] = lc
                    return copy.deepcopy(args[arg])
            missing = []

            def repl(m):
                if m.group(0) == "$$":
                    return "$"
                arg = m.group(1) or m.group(2)
                if arg not in args:
                    missing.append(arg)
                    return m.group(0)
                return str(args[arg])
            out = _arithmetic(_SUBST.sub(repl, value)) if not missing else _SUBST.sub(repl, value)
            unresolved.extend(missing)
            for arg in missing:
                from .registry import did_you_mean
                declared = ", ".join(args) or "none"
                self.problem(f"'${arg}' is not an argument of block '{block}'{did_you_mean(arg, args)}; "
                             f"its arguments: {declared}", p, note=note)
            return out
        layer = walk(raw, path)
        return layer, overrides, bool(unresolved)

    @staticmethod
    def _subst_value(value: Any, args: dict) -> Any:
        if isinstance(value, str):
            whole = _WHOLE.match(value)
            if whole and (whole.group(1) or whole.group(2)) in args:
                return args[whole.group(1) or whole.group(2)]
        return value


_ARITHMETIC = re.compile(r"^[\d\s.+\-*/()]+$")


def _arithmetic(text: str):
    """``"8*6"`` (what ``"${c}*${t}"`` becomes) as the number 48; other text unchanged. Only numbers,
    + - * / // and parentheses are evaluated (an AST walk, never eval)."""
    if not isinstance(text, str) or not _ARITHMETIC.match(text) or not any(c in text for c in "+-*/"):
        return text
    import ast
    import operator
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.USub: operator.neg, ast.UAdd: operator.pos}

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.operand))
        raise ValueError("not arithmetic")
    try:
        result = value(ast.parse(text.strip(), mode="eval").body)
    except (ValueError, SyntaxError, ZeroDivisionError):
        return text
    return int(result) if isinstance(result, float) and result.is_integer() else result


def _order_keys(layer: dict) -> dict:
    head = {k: layer[k] for k in ("id", "type", "inputs") if k in layer}
    head.update({k: v for k, v in layer.items() if k not in head})
    return head


def expand_blocks(data: dict, positions: dict, file: str | None) -> tuple[dict, dict, dict, list[Problem]]:
    """Inline every block instance of a parsed spec.

    Parameters
    ----------
    data : dict
        The parsed spec (not modified).
    positions : dict
        Path tuple → (line, column) for ``data``.
    file : str or None
        The spec file, for locations in notes.

    Returns
    -------
    (data, positions, notes, problems)
        The expanded spec without ``blocks``; positions re-rooted so that expanded layers point at their
        definitions; notes (path → "in block … instantiated as …"); problems found while expanding.
    """
    exp = _Expander(data, positions, file)
    exp.run()
    out = {k: copy.deepcopy(v) for k, v in data.items() if k != "blocks"}
    if not isinstance(data.get("layers"), list):
        return out, dict(positions), {}, exp.problems
    out["layers"] = exp.out_layers
    new_pos = {p: lc for p, lc in positions.items() if not (p and p[0] == "layers" and len(p) > 1)}
    if ("layers", "<key>") in positions:
        new_pos[("layers", "<key>")] = positions[("layers", "<key>")]
    new_pos.update(exp.out_pos)
    top = getattr(exp, "top", None)
    if top is not None:
        outputs = out.get("outputs")
        if isinstance(outputs, str):
            out["outputs"] = top.resolve(outputs)
        elif isinstance(outputs, list):
            out["outputs"] = [top.resolve(o) if isinstance(o, str) else o for o in outputs]
        train = out.get("train")
        if isinstance(train, dict) and isinstance(train.get("loss"), dict) and isinstance(train["loss"].get("output"), str):
            train["loss"]["output"] = top.resolve(train["loss"]["output"])
    return out, new_pos, exp.notes, exp.problems
