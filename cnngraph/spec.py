"""The spec file format: Pydantic models, loading with positions, and located error messages.

``load_spec`` parses, expands blocks, validates every layer against its op's parameter model,
compiles the graph and runs shape inference, collecting every problem before raising one
:class:`SpecError`.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import PluginError, Problem, SpecError
from .op import OpParams
from .blocks import BROKEN_INSTANCE, DISPLAY, UNRESOLVED, expand_blocks
from .positions import Positions, parse_text, path_to_str, read_spec_text
from .registry import Registry, did_you_mean, get_registry, load_plugin_file, plugin_loaded

__all__ = ["Spec", "LayerSpec", "InputSpec", "load_spec", "spec_problems_from_validation"]

ID_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
ID_RULE = "ASCII letters, digits, '_', '.' and '-', starting with a letter or '_'"


def _char_name(c: str) -> str:
    return "a space" if c == " " else f"{c!r} (U+{ord(c):04X})" if not c.isascii() or not c.isprintable() else repr(c)


def id_problem(v: str) -> str:
    """Why ``v`` is not a valid id (which character, where), or '' when it is."""
    if ID_PATTERN.match(v):
        return ""
    if not v:
        return f"an id may not be empty; use {ID_RULE}"
    if not re.match(r"[A-Za-z_]", v[0]):
        return f"starts with {_char_name(v[0])}; ids use {ID_RULE}"
    i = next(i for i, c in enumerate(v) if not re.match(r"[A-Za-z0-9_.\-]", c))
    return f"{_char_name(v[i])} at character {i + 1} is not allowed; ids use {ID_RULE}"


DTYPES = ("float32", "float64", "int64")


class InputSpec(BaseModel):
    """A model input: per-sample shape (batch implicit) and dtype."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    shape: list[int] = Field(description="per-sample shape, e.g. [C, H, W]; [] for a scalar per sample (labels)")
    dtype: Literal["float32", "float64", "int64"] = "float32"

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(d < 1 for d in v):
            raise ValueError(f"every dimension must be >= 1, found {v}")
        return v


class _TopLevel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "network"
    description: Optional[str] = None
    plugins: list[str] = []
    inputs: dict[str, InputSpec] = Field(min_length=1)
    blocks: Optional[dict[str, Any]] = None
    layers: list[dict[str, Any]] = Field(min_length=1)
    outputs: Union[str, list[str]]
    train: Optional[dict[str, Any]] = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        # `cnngraph train` writes to runs/<name>/: a name that is not one plain folder name could write elsewhere
        if not v.strip() or v in (".", "..") or any(c in v for c in "/\\\0"):
            raise ValueError(f"expected one plain folder name (`cnngraph train` writes to runs/<name>/): not empty, "
                             f"'.' or '..', and without '/', '\\' or NUL; found {v!r}")
        return v

    @field_validator("inputs")
    @classmethod
    def _input_names_ok(cls, v: dict) -> dict:
        bad = [f"{k!r}: {id_problem(k)}" for k in v if id_problem(k)]
        if bad:   # they are referenced from layers' inputs like layer ids
            raise ValueError(f"input names follow the layer-id rule: {'; '.join(bad)}")
        return v


class _LayerHead(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    type: str
    inputs: Union[None, str, list[str]] = None

    @field_validator("id")
    @classmethod
    def _id_ok(cls, v: str) -> str:
        problem = id_problem(v)
        if problem:
            raise ValueError(problem)
        return v


@dataclass
class LayerSpec:
    """One validated layer: its id, op type, input names and validated op parameters."""

    id: str
    type: str
    inputs: list[str]
    params: OpParams
    index: int                       # position in the (expanded) layers list
    explicit_inputs: bool = False


@dataclass
class Spec:
    """A validated network spec. Build with :func:`load_spec`."""

    name: str
    inputs: dict[str, InputSpec]
    layers: list[LayerSpec]
    outputs: list[str]
    train: Any = None                # cnngraph.train.config.TrainSpec or None
    plugins: list[str] = field(default_factory=list)
    description: Optional[str] = None
    file: Optional[str] = None
    base_dir: Optional[str] = None
    positions: Positions = field(default_factory=dict, repr=False)
    notes: dict = field(default_factory=dict, repr=False)   # path → extra note (block definitions)
    data: dict = field(default_factory=dict, repr=False)    # the expanded spec as plain data
    graph: Any = field(default=None, repr=False)             # networkx.DiGraph with inferred shapes
    broken_layers: set = field(default_factory=set, repr=False)   # ids of layers whose definition failed
    warnings: list = field(default_factory=list, repr=False)       # Problems of a valid but likely wrong spec

    def layer(self, layer_id: str) -> LayerSpec:
        for layer in self.layers:
            if layer.id == layer_id:
                return layer
        raise KeyError(layer_id)

    def to_dict(self) -> dict:
        """The expanded spec as plain data (blocks inlined); it validates on its own."""
        return copy.deepcopy(self.data)

    @property
    def sha256(self) -> str:
        """Hash of the canonical expanded spec, used to match checkpoints to specs."""
        return hashlib.sha256(json.dumps(self.data, sort_keys=True).encode()).hexdigest()

    def problem(self, message: str, path: tuple = (), layer: str | None = None) -> Problem:
        """A Problem located at ``path`` inside this spec."""
        return _locate(message, path, self.positions, self.file, layer, self.notes)


# ---------------------------------------------------------------------------------------------
def _locate(message: str, path: tuple, positions: Positions, file: str | None,
            layer: str | None = None, notes: dict | None = None, key: bool = False) -> Problem:
    probe = tuple(path)
    line = col = None
    if key and probe + ("<key>",) in positions:
        line, col = positions[probe + ("<key>",)]
    else:
        while True:
            if probe in positions:
                line, col = positions[probe]
                break
            if not probe:
                break
            probe = probe[:-1]
    note = None
    shown = tuple(path)
    if notes:
        p = tuple(path)
        while p:
            if p in notes:
                note = notes[p]
                break
            p = p[:-1]
        written = notes.get(DISPLAY, {}).get(tuple(path[:2]))   # an expanded layer: where the file wrote it
        if written is not None:
            shown = written + tuple(path[2:])
    return Problem(message, path_to_str(shown), file, line, col, layer, note)


def _data_path(loc: tuple, data: Any) -> tuple[tuple, tuple]:
    """Split a pydantic error location into the part that indexes the data and the rest (union tags)."""
    path: list = []
    cur = data
    rest: list = []
    for part in loc:
        if rest:
            rest.append(part)
            continue
        if isinstance(cur, dict) and part in cur:
            path.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            path.append(part)
            cur = cur[part]
        else:
            rest.append(part)
    return tuple(path), tuple(rest)


def spec_problems_from_validation(exc: ValidationError, data: Any, prefix: tuple, positions: Positions,
                                  file: str | None, layer: str | None = None, model: type[BaseModel] | None = None,
                                  notes: dict | None = None) -> list[Problem]:
    """Turn a pydantic ValidationError into located Problems (one per data path)."""
    grouped: dict[tuple, list[dict]] = {}
    for err in exc.errors(include_url=False):
        path, rest = _data_path(tuple(err["loc"]), data)
        if err["type"] in ("extra_forbidden", "missing"):
            path = tuple(err["loc"])    # the key itself
        grouped.setdefault(path, []).append(err)
    problems = []
    for path, errs in grouped.items():
        full = prefix + path
        first = errs[0]
        kind = first["type"]
        if kind == "extra_forbidden":
            key = path[-1]
            known = list(_fields_of(model, path[:-1])) if model else []
            hint = _foreign_key_hint(key, known, model) or did_you_mean(key, known)
            exp = f"; expected one of: {', '.join(known)}" if known and not hint else ""
            problems.append(_locate(f"unknown key '{key}'{hint}{exp}", full, positions, file, layer, notes, key=True))
        elif kind == "missing":
            problems.append(_locate(f"missing required key '{path[-1]}'", full[:-1], positions, file, layer, notes))
        else:
            found = first.get("input")
            special = _special_wording(full, first, found)
            text = special or _spec_wording(errs)
            shown = bool(special) and ("write" in special or kind == "too_short")   # the message shows the value
            if not shown and "found" not in text and (not isinstance(found, (dict, list))
                                                      or isinstance(found, list) and len(str(found)) < 60):
                text += f" (found {found!r})"
            if isinstance(found, str) and kind == "literal_error":   # dtype: flaot32, mode: bilnear
                text += _close_choice(found, re.findall(r"'([^']*)'", first.get("ctx", {}).get("expected", "")))
            if isinstance(found, bool) and first["type"] == "string_type":   # id: on, mode: no
                text += "; YAML reads yes/no/on/off/true/false as booleans: quote the word"
            if isinstance(found, str) and found.startswith("$"):
                written = (notes or {}).get(DISPLAY, {}).get(tuple(full[:2]), ())
                text += ("; $arguments are not substituted in the arguments of a block instance"
                         if written[:1] == ("blocks",) else  # a block's own $names are substituted before
                         "; $arguments are substituted only in the layers of a block (see blocks:)")
            problems.append(_locate(text, full, positions, file, layer, notes))
    return problems


# pydantic's "Input should be a valid dictionary" says "input", a word the spec uses for its inputs: say
# what is expected in the spec's words instead
_EXPECTED = {"string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
             "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
             "bool_parsing": "true or false", "list_type": "a list", "tuple_type": "a list", "dict_type": "a mapping",
             "model_type": "a mapping", "model_attributes_type": "a mapping"}


def _spec_wording(errs: list[dict]) -> str:
    """One message for the errors at one place: 'expected a string or a list' for a union's alternatives."""
    kinds = [_EXPECTED[e["type"]] for e in errs if e["type"] in _EXPECTED]
    if kinds and len(kinds) == len(errs):
        kinds = list(dict.fromkeys(kinds))
        return "expected " + (" or ".join(kinds) if len(kinds) < 3 else ", ".join(kinds[:-1]) + " or " + kinds[-1])
    msgs: list[str] = []
    for e in errs:
        m = e["msg"].removeprefix("Value error, ")
        m = re.sub(r"^Input should be (greater|less)", r"expected a value \1", m)
        m = re.sub(r"^Input should (be|have)", lambda g: "expected" if g[1] == "be" else "expected to have", m)
        if m not in msgs:
            msgs.append(m)
    return "; or ".join(msgs)


def _flow(value: Any) -> str:
    """A value as a spec writes it inline (YAML flow style): {shape: [3, 16, 16]}."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) and not re.fullmatch(r"[A-Za-z_][\w.\-]*", value) else str(value)


def _special_wording(full: tuple, err: dict, found: Any) -> str:
    """Messages that say what to write, for the mistakes of the spec's structure seen most ('' for others)."""
    kind = err["type"]
    if kind == "too_short" and len(full) == 1 and full[0] in ("layers", "inputs"):
        what = ("layer", "list") if full[0] == "layers" else ("input, e.g. image: {shape: [3, 32, 32]}", "mapping")
        return f"the {what[1]} is empty; a spec needs at least one {what[0]}"
    if len(full) == 2 and full[0] == "inputs" and kind in ("model_type", "dict_type"):
        shape = found if isinstance(found, list) else "[C, H, W]"
        return f"expected a mapping with the input's shape; write {full[1]}: {{shape: {_flow(shape)}}}"
    if full == ("inputs",) and kind == "dict_type":
        named = {e.pop("id", e.pop("name", None)): e for e in (dict(x) for x in found if isinstance(x, dict))} \
            if isinstance(found, list) else {}
        example = _flow(named) if named and None not in named else "{image: {shape: [3, 32, 32]}}"
        return f"expected a mapping from input names to their shapes; write inputs: {example}"
    if len(full) == 3 and full[0] == "layers" and full[2] == "inputs" and kind in ("string_type", "list_type"):
        return "expected a layer id or input name, or a list of them"
    if full == ("outputs",) and kind in ("string_type", "list_type"):
        return "expected a layer id, or a list of them"
    return ""


# keys that Keras and PyTorch habits bring to a layer: (the key meant here, or None; the hint)
_FOREIGN_KEYS = {
    "in_channels": (None, "input channels are inferred from the previous layer; remove in_channels"),
    "in_features": (None, "input features are inferred from the previous layer; remove in_features"),
    "activation": (None, "add a separate activation layer after it (e.g. {type: relu})"),
    "units": ("out_features", "write out_features (Keras' units)"),
    "filters": ("out_channels", "write out_channels (Keras' filters)"),
    "pool_size": ("kernel_size", "write kernel_size (Keras' pool_size)"),
    "strides": ("stride", "write stride (Keras' strides)"),
    "rate": ("p", "write p, the probability of dropping (Keras' rate)"),
    "use_bias": ("bias", "write bias (Keras' use_bias)"),
    "kernel_initializer": ("init", "write init (Keras' kernel_initializer)"),
}


def _foreign_key_hint(key: str, known: list[str], model) -> str:
    """The hint for a layer key from another framework, where the op has what it stands for."""
    meant, hint = _FOREIGN_KEYS.get(key, (None, None))
    if hint is None or not (isinstance(model, type) and issubclass(model, OpParams)) or (meant and meant not in known):
        return ""
    return f": {hint}"


def _close_choice(found: str, choices: list[str]) -> str:
    """did-you-mean among a parameter's choices, for near misses only: choices often share words, and
    'kaiming_normal' is not 'xavier_normal'."""
    close = [c for c in choices if c.lower() == found.lower()] or \
        difflib.get_close_matches(found, choices, n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _fields_of(model: type[BaseModel] | None, sub: tuple) -> list[str]:
    if model is None:
        return []
    if not sub:
        return list(model.model_fields)
    return []


# ---------------------------------------------------------------------------------------------
def _read_source(source: Any) -> tuple[Any, Positions, str | None, str | None]:
    if isinstance(source, dict):
        return copy.deepcopy(source), {}, None, None
    path = Path(source)
    data, positions = parse_text(read_spec_text(path), str(path))
    return data, positions, str(path), str(path.resolve().parent)


def _load_spec_plugins(names: list[str], base_dir: str | None, file: str | None, positions: Positions,
                       allow: bool) -> list[Problem]:
    if not names:
        return []
    resolved = [str(Path(base_dir, n)) if base_dir and n.endswith(".py") and not Path(n).is_absolute() else n
                for n in names]
    if not allow and not all(plugin_loaded(r) for r in resolved):   # --plugin FILE is consent for FILE
        listing = ", ".join(r for r in resolved if not plugin_loaded(r))
        return [_locate(f"this spec loads plugin code ({listing}); loading it runs that code. "
                        "If you trust it, pass --allow-plugins (CLI) or allow_plugins=True (Python)",
                        ("plugins",), positions, file)]
    problems = []
    for i, target in enumerate(resolved):
        try:
            load_plugin_file(target)
        except PluginError as exc:
            problems.append(_locate(str(exc), ("plugins", i), positions, file))
    return problems


def load_spec(source: Union[str, Path, dict], *, allow_plugins: bool = False, check_shapes: bool = True) -> Spec:
    """Load, validate and shape-check a network spec.

    Parameters
    ----------
    source : str, Path or dict
        A YAML or JSON file, or the spec as a dict.
    allow_plugins : bool
        Consent to import the plugin files the spec names under ``plugins:`` (they run code).
    check_shapes : bool
        Run shape inference (default). Every problem found is reported at once.

    Returns
    -------
    Spec

    Raises
    ------
    SpecError
        With every problem found, each with file:line:column, spec path, layer id and message.

    Examples
    --------
    >>> import cnngraph
    >>> spec = cnngraph.load_spec({"inputs": {"x": {"shape": [1, 8, 8]}},
    ...     "layers": [{"id": "c", "type": "conv2d", "out_channels": 4, "kernel_size": 3}],
    ...     "outputs": ["c"]})
    >>> spec.graph.nodes["c"]["out_shape"]
    (4, 6, 6)
    """
    data, positions, file, base_dir = _read_source(source)
    if not isinstance(data, dict):
        raise SpecError(_locate(f"expected a mapping with 'inputs', 'layers' and 'outputs' at the top level, "
                                f"found {type(data).__name__}", (), positions, file))
    # top-level keys starting with "x-" are the user's own (a home for YAML anchors), as in Compose files
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    notes: dict = {}
    problems: list[Problem] = []
    plugin_names = data.get("plugins") if isinstance(data.get("plugins"), list) else []
    plugin_problems = _load_spec_plugins([p for p in plugin_names if isinstance(p, str)], base_dir, file,
                                         positions, allow_plugins)
    problems += plugin_problems
    registry = get_registry()

    if data.get("blocks") is not None or any(isinstance(l, dict) and "block" in l for l in data.get("layers") or []):
        data, positions, notes, block_problems = expand_blocks(data, positions, file)
        problems += block_problems   # failed instances stay as placeholders: the rest is still checked

    top_failed = False
    try:
        top = _TopLevel.model_validate(data)
    except ValidationError as exc:
        problems += spec_problems_from_validation(exc, data, (), positions, file, model=_TopLevel, notes=notes)
        top, top_failed = _salvage_top_level(data, exc, positions), True
        if top is None:   # no usable inputs or layers: nothing more to check
            raise SpecError(problems) from None
    data.pop("blocks", None)

    layers, layer_problems, broken = _validate_layers(top.layers, registry, positions, file, notes, set(top.inputs),
                                                      plugins_missing=bool(plugin_problems))
    problems += layer_problems
    outputs = [top.outputs] if isinstance(top.outputs, str) else list(top.outputs)
    if not outputs and not top_failed:   # a missing or mistyped outputs key is reported already
        problems.append(_locate("outputs is empty; name the layer(s) the model returns", ("outputs",), positions,
                                file))
    for j, out in enumerate(outputs):
        if out in outputs[:j]:
            problems.append(_locate(f"output '{out}' is listed twice", ("outputs", j), positions, file))

    train = None
    if top.train is not None:
        from .train.config import validate_train
        train, train_problems = validate_train(top.train, positions, file, registry, [l.id for l in layers],
                                               {k: v.shape for k, v in top.inputs.items()})
        problems += train_problems

    spec = Spec(name=top.name, inputs=dict(top.inputs), layers=layers, outputs=outputs, train=train,
                plugins=list(top.plugins), description=top.description, file=file, base_dir=base_dir,
                positions=positions, notes=notes, data=data, broken_layers=broken | notes.get(UNRESOLVED, set()))
    # the layers that did validate are still compiled and shape-checked, so every problem shows at once
    from .graph import build_graph
    spec.graph, graph_problems = build_graph(spec, registry, check_shapes=check_shapes)
    problems += graph_problems
    if problems:
        raise SpecError(problems)
    spec.warnings = _double_activations(spec) + _unused(spec) + _channels_last(spec)
    return spec


def _channels_last(spec: Spec) -> list[Problem]:
    """An image input written (H, W, C), as NumPy/PIL/Keras hold images: it validates (a conv2d takes H as its
    channels) but trains on nonsense. Warned when the last size is a colour count (1, 3, 4) and the first is
    much larger."""
    out = []
    for name, inp in spec.inputs.items():
        shape = list(inp.shape)
        if len(shape) == 3 and shape[-1] in (1, 3, 4) and shape[0] >= 8 * shape[-1] and shape[1] >= 8 * shape[-1]:
            fixed = [shape[-1], *shape[:-1]]
            out.append(spec.problem(f"shape {shape} looks channels-last (H, W, C); cnngraph takes (C, H, W): write "
                                    f"shape: {fixed} (a conv2d now reads {shape[0]} channels of {shape[1]}x{shape[2]})",
                                    ("inputs", name, "shape")))
    return out


def _unused(spec: Spec) -> list[Problem]:
    """Layers and inputs that reach none of the outputs (nor the train section's loss output): never
    computed, as inference prunes them, so most likely a wrong ``inputs`` or a forgotten output."""
    import networkx as nx
    g = spec.graph
    ends = list(spec.outputs) + ([spec.train.loss_output] if spec.train and spec.train.loss_output else [])
    used = set(ends).union(*(nx.ancestors(g, o) for o in ends if o in g))
    out = []
    layers = [layer for layer in spec.layers if layer.id not in used]
    if layers:
        names = ", ".join(f"'{layer.id}'" for layer in layers)
        them = "them" if len(layers) > 1 else "it"
        what = f"layers {names} reach" if len(layers) > 1 else f"layer {names} reaches"
        out.append(spec.problem(f"{what} no output ({', '.join(spec.outputs)}), so the model never computes {them}: "
                                f"add {them} to outputs, or remove {them}", ("layers", layers[0].index), layers[0].id))
    for name in spec.inputs:
        if name not in used:
            out.append(spec.problem(f"input '{name}' feeds no layer that reaches an output: the model does not use "
                                    f"it", ("inputs", name)))
    return out


# a loss computes its activation itself: applied to that activation's output, it is applied twice
_ACTIVATION_INSIDE = {"cross_entropy": ("softmax",), "binary_cross_entropy": ("sigmoid",)}   # (log_softmax is harmless)


def _double_activations(spec: Spec) -> list[Problem]:
    out = []
    for layer in spec.layers:
        inside = _ACTIVATION_INSIDE.get(layer.type)
        src = spec.graph.nodes[layer.id]["inputs"][0] if inside else None
        if src is not None and spec.graph.nodes[src].get("type") in inside:
            out.append(spec.problem(f"'{layer.type}' takes logits and applies {inside[0]} itself, but its input "
                                    f"'{src}' is a {spec.graph.nodes[src]['type']} layer: the activation is applied "
                                    f"twice; feed it the layer before '{src}'", ("layers", layer.index), layer.id))
    return out


def _salvage_top_level(data: dict, exc: ValidationError, positions: Positions) -> _TopLevel | None:
    """The top level again after it failed (each failure is reported already), so that the layers and
    the train section are still checked: a mistyped key that is close to a missing one (``trian``)
    stands for it, other unknown keys and failing optional keys are left out, an input's bad dtype
    takes the default, and missing outputs are none. None when the inputs or layers are unusable."""
    clean = dict(data)
    inputs = clean.get("inputs")
    if isinstance(inputs, dict):
        clean["inputs"] = inputs = {k: dict(v) if isinstance(v, dict) else v for k, v in inputs.items()}
    errors = exc.errors(include_url=False)
    for err in errors:   # typos first: their value fills a missing key
        key = err["loc"][0]
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            meant = re.search(r"did you mean '(.+)'\?", did_you_mean(key, _TopLevel.model_fields))
            clean.pop(key)
            if meant and meant[1] not in data:
                clean[meant[1]] = data[key]
                positions.update({(meant[1],) + p[1:]: lc for p, lc in list(positions.items()) if p[:1] == (key,)})
    for err in errors:
        loc = err["loc"]
        if loc[0] == "inputs" and len(loc) >= 3 and loc[2] != "shape" and isinstance(inputs.get(loc[1]), dict):
            inputs[loc[1]].pop(loc[2], None)            # the default dtype serves for the shape checks
        elif loc[0] == "outputs" and loc[0] not in clean:
            clean["outputs"] = []
        elif loc[0] not in ("inputs", "layers", "outputs") and loc[0] in data:
            clean.pop(loc[0], None)
    try:
        return _TopLevel.model_validate(clean)
    except ValidationError:
        return None


def _validate_layers(raw_layers: list[dict], registry: Registry, positions: Positions, file: str | None,
                     notes: dict, input_names: set[str],
                     plugins_missing: bool = False) -> tuple[list[LayerSpec], list[Problem], set[str]]:
    """Validate each layer against its op; returns (valid layers, problems, ids of failed layers)."""
    problems: list[Problem] = []
    layers: list[LayerSpec] = []
    broken: set[str] = set()
    seen: dict[str, int] = {}
    unknown: list[tuple[str, str, tuple]] = []   # (layer id, op type, spec path) unknown while plugins are missing
    for i, raw in enumerate(raw_layers):
        where = ("layers", i)
        lid = raw.get("id") if isinstance(raw.get("id"), str) else None
        if raw.get(BROKEN_INSTANCE):   # a block instance that failed to expand (reported already)
            broken.add(lid)
            continue
        n_before = len(problems)
        try:
            head = _LayerHead.model_validate(raw)
        except ValidationError as exc:
            problems += spec_problems_from_validation(exc, raw, where, positions, file, lid, notes=notes)
            head = None
        if head is not None and head.id in seen:
            first = (notes or {}).get(DISPLAY, {}).get(("layers", seen[head.id]), ("layers", seen[head.id]))
            problems.append(_locate(f"duplicate layer id '{head.id}' (first used by {path_to_str(first)})",
                                    where + ("id",), positions, file, head.id, notes))
        elif head is not None and head.id in input_names:
            problems.append(_locate(f"layer id '{head.id}' is already the name of a model input",
                                    where + ("id",), positions, file, head.id, notes))
        if head is not None and len(problems) == n_before:
            seen[head.id] = i
            try:
                op_cls = registry.op(head.type)
            except KeyError as exc:
                if plugins_missing:   # the plugin problem is reported: one line for all such layers, below
                    unknown.append((head.id, head.type, where))
                    broken.add(head.id)
                    continue
                hint = registry.empty_note() or "; `cnngraph ops` lists the known types"
                hint += "".join(f"; installed plugin '{n}' was not loaded ({why})" for n, why in registry.skipped.items())
                problems.append(_locate(exc.args[0] + hint,
                                        where + ("type",), positions, file, head.id, notes))
            else:
                op_raw = {k: v for k, v in raw.items() if k not in ("id", "type", "inputs")}
                try:
                    params = op_cls.Params.model_validate(op_raw)
                except ValidationError as exc:
                    problems += spec_problems_from_validation(exc, op_raw, where, positions, file, head.id,
                                                              model=op_cls.Params, notes=notes)
                else:
                    inputs = [head.inputs] if isinstance(head.inputs, str) else list(head.inputs or [])
                    layers.append(LayerSpec(head.id, head.type, inputs, params, i,
                                            explicit_inputs=head.inputs is not None))
        if len(problems) > n_before and lid and seen.get(lid, i) == i:   # not a duplicate of a valid layer
            broken.add(lid)
    if unknown:
        problems.append(_unloaded_ops_problem(unknown, positions, file, notes))
    return layers, problems, broken


def _unloaded_ops_problem(unknown: list[tuple[str, str, tuple]], positions: Positions, file: str | None,
                          notes: dict) -> Problem:
    """One line for the layers whose op types are unknown while the spec's plugins are not loaded: they
    likely come from those plugins, so a line per layer would repeat the plugin problem."""
    ids = ", ".join(f"'{lid}'" for lid, _, _ in unknown)
    types = ", ".join(dict.fromkeys(f"'{t}'" for _, t, _ in unknown))
    lid, _, where = unknown[0]
    return _locate(f"unknown op type(s) {types} in layer(s) {ids}: they may come from the spec's plugins, which "
                   f"were not loaded (above); not checked further", where + ("type",), positions, file, lid, notes)
