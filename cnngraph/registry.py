"""The registry of ops (and training components) and the pluggy plugin manager that fills it.

Built-ins register first (DEFAULT_PLUGINS), then installed packages through the entry-point group
``cnngraph``, then plugin files a user names. Every registration records which plugin made it, so
duplicates and broken ops are reported by plugin name.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import numbers
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pluggy

from . import hookspecs
from .blame import class_name, defined_at, source_line
from .errors import CnnGraphError, PluginError, ShapeError
from .op import Op

__all__ = ["Registry", "get_registry", "load_plugin_file", "register_plugin", "DEFAULT_PLUGINS",
           "did_you_mean", "format_validation_errors"]

_OP_TYPE = re.compile(r"[a-z][a-z0-9_]*")
DISABLE_ENV = "CNNGRAPH_DISABLE_PLUGINS"   # comma-separated installed plugin names not to load

DEFAULT_PLUGINS = (
    "cnngraph.plugins.activation",
    "cnngraph.plugins.connection",
    "cnngraph.plugins.pooling",
    "cnngraph.plugins.window1d",
    "cnngraph.plugins.window3d",
    "cnngraph.plugins.normalization",
    "cnngraph.plugins.regularization",
    "cnngraph.plugins.shape",
    "cnngraph.plugins.merge",
    "cnngraph.plugins.loss",
    "cnngraph.plugins.tensor", "cnngraph.plugins.lrn", "cnngraph.plugins.resize", "cnngraph.plugins.mathops",
    "cnngraph.plugins.logic",
    "cnngraph.train.builtins",
)

_HOOKS = ("cnngraph_register_ops", "cnngraph_register_optimizers", "cnngraph_register_schedules",
          "cnngraph_register_datasets", "cnngraph_register_augmentations")


def did_you_mean(name: str, known) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''. Case and '-' vs '_' are ignored first
    (Keras' 'Relu', 'MaxPool2D', 'cross-entropy')."""
    known = [str(k) for k in known]

    def norm(text):
        return str(text).lower().replace("-", "_")
    same = [k for k in known if norm(k) == norm(name)]
    close = same or difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    if not close:   # a match ignoring case and separators, e.g. 'MaxPool2D' -> 'max_pool2d'
        squeezed = {norm(k).replace("_", ""): k for k in known}
        close = [squeezed[m] for m in difflib.get_close_matches(norm(name).replace("_", ""), list(squeezed), n=1,
                                                                 cutoff=0.8)]
    return f" (did you mean '{close[0]}'?)" if close else ""


def format_validation_errors(exc, default_loc: str = "(config)", fields=()) -> str:
    """A pydantic ValidationError on one line: ``loc: message`` per error, joined by '; '.

    ``default_loc`` names a model-level error; an unknown key gets a did-you-mean hint from ``fields``.
    """
    parts = []
    for e in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in e["loc"]) or default_loc
        hint = did_you_mean(e["loc"][-1], fields) if e["type"] == "extra_forbidden" and e["loc"] else ""
        parts.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}{hint}")
    return "; ".join(parts)


class Registry:
    """Name → component tables, filled by plugins through the hooks in :mod:`cnngraph.hookspecs`."""

    def __init__(self) -> None:
        self.ops: dict[str, type[Op]] = {}
        self.optimizers: dict[str, type] = {}
        self.schedules: dict[str, type] = {}
        self.datasets: dict[str, Callable] = {}
        self.augmentations: dict[str, type] = {}
        self.owner: dict[tuple[str, str], str] = {}   # (table, name) → plugin name
        self.plugins: dict[str, str] = {}             # plugin name → where it came from
        self.skipped: dict[str, str] = {}             # installed plugin name → why it was not loaded
        self.empty: dict[str, str] = {}               # loaded plugin name → why it registered nothing
        # (table, name) → the installed plugins that all registered it: none of them is used
        self.contested: dict[tuple[str, str], dict[str, Any]] = {}   # ... → {plugin: what it registered}
        self.installing = False                       # registering an installed (entry-point) plugin
        self.current_plugin = "<runtime>"
        self.module_plugins: dict[str, str] = {}       # a plugin file's module name → its plugin name

    def _put(self, table: str, name: str, value: Any) -> None:
        kind = table[:-1]
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{self.current_plugin}' registered {'an' if kind[0] in 'aeiou' else 'a'} "
                              f"{kind} without a name ({getattr(value, '__name__', value)!r}: set its class "
                              f"attribute `type`)")
        entries = getattr(self, table)
        if entries.get(name) is value:   # the very same object again (a re-run cell, a plugin loaded twice): a no-op
            return
        if (table, name) in self.contested:
            if not self.installing:
                raise PluginError(f"{kind} '{name}' is registered by installed plugins "
                                  f"{', '.join(map(repr, self.contested[(table, name)]))} already; rename it")
            self.contested[(table, name)][self.current_plugin] = value
            return
        if name in entries and self.installing and self.plugins.get(self.owner[(table, name)], "").startswith("entry point"):
            # Two installed packages claim one name: which would win is an accident of load order, so
            # neither does; each package keeps its other components, and a spec using the name is told.
            self.contested[(table, name)] = {self.owner.pop((table, name)): entries.pop(name),
                                             self.current_plugin: value}
            return
        if name in entries:
            first = self.owner[(table, name)]
            where = self.plugins.get(first, "")
            where = f" ({where})" if where.startswith("entry point") else ""   # say which package
            if first == self.current_plugin and isinstance(value, type):   # one plugin, two classes: name them
                old = entries[name]
                where += f" as {class_name(old)}"
                here = f" as {class_name(value)}"
            else:
                here = ""
            raise PluginError(
                f"{kind} '{name}' is registered twice: by plugin '{first}'{where} and by plugin "
                f"'{self.current_plugin}'{here}; rename one of them")
        entries[name] = value
        self.owner[(table, name)] = self.current_plugin

    def add(self, op_cls: type[Op]) -> type[Op]:
        """Register a layer op class under ``op_cls.type``. Returns the class (usable as decorator)."""
        if not (isinstance(op_cls, type) and issubclass(op_cls, Op)):
            raise PluginError(f"plugin '{self.current_plugin}' registered {op_cls!r}, which is not a cnngraph.Op subclass")
        if self.ops.get(op_cls.type) is op_cls:   # registered already: keep its plugin (see _put)
            return op_cls
        if op_cls.type and not _OP_TYPE.fullmatch(op_cls.type):
            raise PluginError(f"plugin '{self.current_plugin}' registered op type {op_cls.type!r} "
                              f"({op_cls.__qualname__}); op types are snake_case: lower-case letters, digits and '_', "
                              f"starting with a letter (they are written in specs)")
        _check_params(op_cls, self.current_plugin)
        op_cls.plugin = self.current_plugin
        self._put("ops", op_cls.type, op_cls)
        _guard(op_cls)
        return op_cls

    def add_optimizer(self, cls: type) -> type:
        self._put("optimizers", cls.type, cls)
        return cls

    def add_schedule(self, cls: type) -> type:
        from .train.schedules import Schedule
        # the base class applies the warmup from its Params: checked here, not by an AttributeError mid-training
        if isinstance(cls, type) and issubclass(cls, Schedule) and not (
                isinstance(cls.Params, type) and issubclass(cls.Params, Schedule.Params)):
            raise PluginError(f"schedule '{getattr(cls, 'type', '?')}' (plugin '{self.current_plugin}'): Params must "
                              f"extend Schedule.Params (it brings warmup_epochs, which the base class applies), found "
                              f"{class_name(cls.Params)}; write `class Params(Schedule.Params):`")
        self._put("schedules", cls.type, cls)
        return cls

    def add_dataset(self, name: str, loader: Callable) -> Callable:
        self._put("datasets", name, loader)
        return loader

    def add_augmentation(self, cls: type) -> type:
        self._put("augmentations", cls.type, cls)
        return cls

    def op(self, name: str) -> type[Op]:
        """The op class registered as ``name``; KeyError with a suggestion otherwise."""
        try:
            return self.ops[name]
        except KeyError:
            why = self.contested_note("ops", name)
            raise KeyError(why or f"unknown op type '{name}'{did_you_mean(name, self.ops)}") from None

    def empty_note(self) -> str:
        """'; plugin 'p.py' registered nothing: ...' for each loaded plugin that registered nothing (the likely
        reason a name is unknown), else ''."""
        return "".join(f"; {why}" for why in self.empty.values())

    def contested_note(self, table: str, name: str) -> str | None:
        """Why ``name`` is missing when installed plugins registered it more than once, else None."""
        owners = list(self.contested.get((table, name)) or ())
        if not owners:
            return None
        listed = " and ".join(f"'{o}' ({self.plugins.get(o, 'installed')})" for o in owners)
        return (f"{table[:-1]} '{name}' is registered by more than one installed plugin: {listed}; neither is used. "
                f"Uninstall one, or disable one with {DISABLE_ENV}={owners[-1]}")


RESERVED_KEYS = ("id", "type", "inputs", "block")   # keys a spec layer uses itself


def _check_params(op_cls: type[Op], plugin: str) -> None:
    """An op's ``Params`` must be an OpParams model (unknown keys are then errors), use no key the spec
    itself uses for a layer, and have defaults that pass its own validation."""
    from typing import Annotated

    from pydantic import TypeAdapter, ValidationError
    from .op import OpParams
    Params = op_cls.Params
    where = f"op '{op_cls.type}' (plugin '{plugin}')"
    if not (isinstance(Params, type) and issubclass(Params, OpParams)):
        raise PluginError(f"{where}: Params must be a subclass of cnngraph.OpParams (a pydantic model that "
                          f"refuses unknown keys), found {class_name(Params)}")
    clash = [k for k in Params.model_fields if k in RESERVED_KEYS]
    if clash:
        raise PluginError(f"{where}: parameter name {', '.join(map(repr, clash))} is reserved for the spec's own "
                          f"layer keys ({', '.join(RESERVED_KEYS)}); rename it")
    for name, field in Params.model_fields.items():
        if field.is_required():
            continue
        try:
            # with the field's constraints (Field(0, gt=0)): the bare annotation would accept the 0
            checked = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
            TypeAdapter(checked).validate_python(field.get_default(call_default_factory=True))
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"] if exc.errors() else str(exc)
            raise PluginError(f"{where}: the default of parameter '{name}' ({field.default!r}) is invalid: "
                              f"{reason}") from None
        except Exception:   # an annotation TypeAdapter cannot build (forward reference): pydantic checks later
            continue


def _guard(op_cls: type[Op]) -> None:
    """Make an exception inside an op's ``infer_shape`` or ``flops`` name the op and its plugin.

    ``infer_shape`` failures become a :class:`ShapeError` (a located spec problem at the layer), ``flops``
    failures a :class:`PluginError`: neither reaches the user as a bare traceback. Errors cnngraph raises on
    purpose (``ShapeError`` ...) pass unchanged.
    """
    for meth, err in (("infer_shape", ShapeError), ("flops", PluginError)):
        fn = getattr(op_cls, meth)
        if getattr(fn, "_cnngraph_guarded", False):
            continue

        def wrapper(self, *args, _fn=fn, _meth=meth, _err=err, **kwargs):
            try:
                out = _fn(self, *args, **kwargs)
            except CnnGraphError:
                raise
            except Exception as exc:
                at = f" at layer '{self.layer_id}'" if _meth == "flops" and self.layer_id else ""
                line = source_line(exc, _fn).removeprefix(" at ")
                raise _err(f"{_meth} of op '{self.type}' ({_plugin_at(self, line)}){at} raised "
                           f"{type(exc).__name__}: {exc}") from exc
            return _shape_of(self, out, _fn) if _meth == "infer_shape" else out

        functools.update_wrapper(wrapper, fn)
        wrapper._cnngraph_guarded = True
        setattr(op_cls, meth, wrapper)


def _plugin_at(op: Op, line: str) -> str:
    """"plugin 'p', p.py:12" (the line left out when unknown)."""
    return f"plugin '{type(op).plugin}'" + (f", {line}" if line else "")


def _shape_of(op: Op, out: Any, fn: Callable) -> tuple[int, ...]:
    """What ``infer_shape`` returned as a tuple of ints; anything else (5, None, a dimension of 1.5) is a
    ShapeError naming the op: int() would crash on the first or silently truncate the last."""
    dims = list(out) if isinstance(out, (tuple, list)) else None
    whole = dims is not None and all(_is_whole(d) for d in dims)
    if not whole:
        raise ShapeError(f"infer_shape of op '{op.type}' ({_plugin_at(op, defined_at(fn))}) returned {out!r}; "
                         f"expected a tuple of whole numbers")
    return tuple(int(d) for d in dims)


def _is_whole(d: Any) -> bool:
    """An int (NumPy's too) or an integral float such as 3.0; not a bool, not 1.5."""
    if isinstance(d, (bool, np.bool_)):
        return False
    if isinstance(d, numbers.Integral):
        return True
    return isinstance(d, numbers.Real) and float(d).is_integer()


class _Plugins:
    """The process-wide plugin manager and the registry it has filled so far."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.files: dict[str, str] = {}   # resolved path → plugin name

    def register(self, plugin: Any, name: str, origin: str) -> None:
        """Register one plugin object and run its hooks against the registry."""
        if self.pm.has_plugin(name) or self.pm.is_registered(plugin):   # loaded already, maybe by another name
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:   # pluggy's message goes on with its whole registry: keep the first line
            raise PluginError(f"plugin '{name}' ({origin}) could not be registered: "
                              f"{str(exc).splitlines()[0]}") from exc
        try:
            self.pm.check_pending()   # a @hookimpl whose name is no hook (a typo) is an error, not ignored
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            unknown = [n for n in dir(plugin) if n not in _HOOKS
                       and getattr(getattr(plugin, n, None), hookspecs.PROJECT + "_impl", None) is not None]
            what = ", ".join(f"'{n}'{did_you_mean(n, _HOOKS)}" for n in unknown) or str(exc)
            raise PluginError(f"plugin '{name}' ({origin}) implements unknown hook {what}; the hooks are: "
                              f"{', '.join(_HOOKS)}") from None
        self.registry.plugins[name] = origin
        try:
            self._run_hooks(plugin, name)
        except PluginError:
            self._forget(name)   # no half-registered plugin: fixing it and loading again works
            raise
        if getattr(plugin, "__file__", None):   # the same file named as a path later is this plugin
            self.files.setdefault(str(Path(plugin.__file__).resolve()), name)
        if origin != "built-in" and name not in self.registry.owner.values() and not _converts(plugin):
            self.registry.empty[name] = _nothing_note(plugin, name)

    def _forget(self, name: str) -> None:
        reg = self.registry
        for (table, entry), owner in list(reg.owner.items()):
            if owner == name:
                getattr(reg, table).pop(entry, None)
                del reg.owner[(table, entry)]
        for key, claims in list(reg.contested.items()):   # a name it contested goes back to the one other claimant
            claims.pop(name, None)
            if len(claims) == 1:
                (owner, value), = claims.items()
                getattr(reg, key[0])[key[1]] = value
                reg.owner[key] = owner
                del reg.contested[key]
        reg.plugins.pop(name, None)
        reg.empty.pop(name, None)
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)

    def _run_hooks(self, plugin: Any, name: str) -> None:
        reg = self.registry
        reg.current_plugin = name
        try:
            for hook in _HOOKS:
                fn = getattr(plugin, hook, None)
                if fn is None:
                    continue
                try:
                    fn(registry=reg)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(f"plugin '{name}' failed in {hook}: {type(exc).__name__}: {exc}") from exc
        finally:
            reg.current_plugin = "<runtime>"

    def load_defaults(self) -> None:
        for modname in DEFAULT_PLUGINS:
            self.register(importlib.import_module(modname), modname, "built-in")
        self._load_entry_points()
        self.pm.check_pending()
        for (table, name) in self.registry.contested:
            print(f"warning: {self.registry.contested_note(table, name)}.", file=sys.stderr)

    def _load_entry_points(self) -> None:
        """Load every installed plugin. A broken or disabled one is skipped (with one warning for the
        broken) instead of stopping every command: its components are missing, and the error that
        names a missing op type says why."""
        from importlib.metadata import entry_points
        disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
        for ep in entry_points(group=hookspecs.PROJECT):
            package = f"package {ep.dist.name} {ep.dist.version}" if ep.dist else ""
            if ep.name in disabled:
                self.registry.skipped[ep.name] = f"disabled by {DISABLE_ENV}"
                continue
            try:
                plugin = ep.load()
                why = None
            except Exception as exc:  # noqa: BLE001 - whatever the package raises on import
                why = f"failed to import: {type(exc).__name__}: {exc}"
            if why is None:
                try:
                    self.registry.installing = True
                    self.register(plugin, ep.name, f"entry point {ep.value}" + (f" ({package})" if package else ""))
                except PluginError as exc:
                    why = str(exc)
                finally:
                    self.registry.installing = False
            if why is not None:
                self.registry.skipped[ep.name] = why
                print(f"warning: installed plugin '{ep.name}' (entry point {ep.value}{', ' + package if package else ''})"
                      f" is skipped: {why}. Fix or uninstall it, or set {DISABLE_ENV}={ep.name} to silence this.",
                      file=sys.stderr)


def _nothing_note(plugin: Any, name: str) -> str:
    """Why a plugin registered nothing: no hook functions (a misspelled one named), or hooks that added nothing."""
    hooks = [h for h in _HOOKS if callable(getattr(plugin, h, None))]
    if hooks:
        return f"plugin '{name}' registered nothing: its {', '.join(hooks)} added no component"
    near = [f"'{n}'{did_you_mean(n, _HOOKS)}" for n in dir(plugin)
            if n.startswith("cnngraph_") and callable(getattr(plugin, n)) and did_you_mean(n, _HOOKS)]
    return (f"plugin '{name}' registered nothing: it has no @cnngraph.hookimpl functions (e.g. cnngraph_register_ops)"
            + (f"; it defines {', '.join(near)}" if near else ""))


def _converts(plugin: Any) -> bool:
    """Whether a plugin module added ONNX export or import functions (a plugin may do only that)."""
    module = getattr(plugin, "__name__", None)
    for modname, table in (("cnngraph.onnx.exporter", "EXPORTERS"), ("cnngraph.onnx.import_ops", "HANDLERS")):
        functions = getattr(sys.modules.get(modname), table, None) or {}
        if any(getattr(fn, "__module__", None) == module for fn in functions.values()):
            return True
    return False


_STATE: _Plugins | None = None


def _state() -> _Plugins:
    global _STATE
    if _STATE is None:
        state = _Plugins()
        _STATE = state
        try:
            state.load_defaults()
        except Exception:
            _STATE = None
            raise
    return _STATE


def get_registry() -> Registry:
    """The registry with built-ins, installed entry-point plugins and any plugin loaded so far."""
    return _state().registry


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object (a module or any object with hookimpls) at run time.

    Example
    -------
    >>> import cnngraph
    >>> class MyOps:
    ...     @cnngraph.hookimpl
    ...     def cnngraph_register_ops(self, registry):
    ...         pass
    >>> cnngraph.register_plugin(MyOps(), name="my-ops")
    """
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    _state().register(plugin, name, "registered at run time")


def plugin_loaded(path: str | Path) -> bool:
    """Whether this plugin file (or module name) is loaded already, e.g. by ``--plugin``."""
    state = _state()
    p = Path(path)
    if p.suffix == ".py":
        return str(p.resolve()) in state.files
    return state.pm.has_plugin(str(path))


def load_plugin_file(path: str | Path) -> str:
    """Import a plain Python file (or an importable module name) as a plugin; returns its name.

    Loading the same file twice is a no-op, also when it is named once as a module and once as a path.
    Import errors become PluginError naming the file.
    """
    state = _state()
    p = Path(path)
    if p.suffix != ".py" and not p.exists():
        return _load_module(state, str(path))
    resolved = str(p.resolve())
    if resolved in state.files:
        return state.files[resolved]
    if p.is_dir():
        raise PluginError(f"plugin '{path}' is a directory; name a .py file in it, or the package as an importable "
                          f"module name (installed, or on PYTHONPATH)")
    if not p.is_file():
        raise PluginError(f"plugin file '{path}' does not exist")
    if p.suffix != ".py":
        raise PluginError(f"plugin file '{path}': expected a Python file (.py) or an importable module name")
    name = str(path)
    modname = "cnngraph_userplugin_" + p.stem + "_" + str(abs(hash(resolved)) % 10**8)
    module = _exec_file(state, modname, resolved, name, path)
    try:
        state.register(module, name, f"file {resolved}")
    except PluginError:
        sys.modules.pop(modname, None)   # not remembered as loaded: fixing the file and loading again works
        raise
    state.files[resolved] = name
    return name


def _load_module(state: _Plugins, modname: str) -> str:
    """Import and register a plugin named as a module; one already loaded (by its entry point, or as a file
    path) is not loaded again."""
    try:
        found = importlib.util.find_spec(modname)
    except Exception:   # noqa: BLE001 - a missing parent package: the import below says so
        found = None
    origin = getattr(found, "origin", None)
    if origin and str(Path(origin).resolve()) in state.files:
        return state.files[str(Path(origin).resolve())]
    try:
        module = importlib.import_module(modname)
    except Exception as exc:
        p = Path(modname)
        hint = f" (did you mean the file '{modname}.py'?)" if p.with_name(p.name + ".py").is_file() else ""
        raise PluginError(f"plugin module '{modname}' failed to import: {type(exc).__name__}: {exc}{hint}") from exc
    if state.pm.is_registered(module):
        return state.pm.get_name(module)
    state.register(module, modname, f"module {modname}")
    return modname


def _exec_file(state: _Plugins, modname: str, resolved: str, name: str, path: str | Path) -> Any:
    """Run a plugin file as module ``modname``. Its folder is on sys.path while it runs, so it can import a
    helper module next to it; only then, so the folder's files do not shadow later imports. Ops it registers
    with cnngraph.register_op are credited to ``name``."""
    spec = importlib.util.spec_from_file_location(modname, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    state.registry.module_plugins[modname] = name
    folder = str(Path(resolved).parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(modname, None)
        if not state.pm.has_plugin(name):
            state._forget(name)   # ops it registered before failing
        line = ""
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == resolved:
                line = f":{tb.tb_lineno}"
            tb = tb.tb_next
        if isinstance(exc, SyntaxError) and exc.lineno:
            line = f":{exc.lineno}"
        raise PluginError(f"plugin file '{path}{line}' failed to import: {type(exc).__name__}: {exc}") from exc
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module
