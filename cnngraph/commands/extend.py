"""check-op (the op conformance suite) and expand (a spec with its blocks inlined)."""
from __future__ import annotations

import sys

import yaml

from ..errors import CnnGraphError
from .common import add_spec_options, load_spec_args, seed_value

__all__ = ["register", "dump_spec"]


def register(sub) -> None:
    p = sub.add_parser("check-op", help="conformance suite on an op: shapes, dtypes, gradients vs finite "
                                        "differences, batch independence")
    p.add_argument("name", nargs="?", metavar="NAME", help="op type (see `cnngraph ops`)")
    p.add_argument("--all", action="store_true", help="check every registered op")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the random inputs and parameters")
    p.add_argument("--quiet", "-q", action="store_true", help="print only failures and the count")
    add_spec_options(p, reads_spec=False)
    p.set_defaults(func=cmd_check_op)

    p = sub.add_parser("expand", help="print a spec with its blocks inlined, as YAML that validates on its own")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")
    add_spec_options(p)
    p.set_defaults(func=cmd_expand)


def cmd_check_op(args) -> int:
    from ..conformance import check_op, check_ops, format_results
    from ..registry import get_registry, load_plugin_file
    for plugin in args.plugin:
        load_plugin_file(plugin)
    if args.all == bool(args.name):
        raise CnnGraphError("name one op (`cnngraph check-op relu`) or pass --all")
    if args.all:
        results = check_ops(seed=args.seed)
    else:
        get_registry()
        results = check_op(args.name, seed=args.seed)
    text = format_results([r for r in results if not args.quiet or r.ok is False] if args.quiet else results)
    if args.quiet:
        summary = format_results(results).splitlines()[-1]
        text = "\n".join(text.splitlines()[:-1] + [summary])
    print(text)
    return 1 if any(r.ok is False for r in results) else 0


class _Dumper(yaml.SafeDumper):
    pass


class _Flow(dict):
    """A mapping written on one line (one layer per line)."""


class _FlowList(list):
    pass


_Dumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v.items(), flow_style=True))
_Dumper.add_representer(_FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def _flowed(value):
    if isinstance(value, dict):
        return _Flow({k: _flowed(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return _FlowList(_flowed(v) for v in value)
    return value


def dump_spec(data: dict) -> str:
    """YAML for a spec dict: top-level keys in block style, each layer and input on one line."""
    out = {}
    for key, value in data.items():
        if key == "layers" and isinstance(value, list):
            out[key] = [_flowed(layer) for layer in value]
        elif key == "inputs" and isinstance(value, dict):
            out[key] = {k: _flowed(v) for k, v in value.items()}
        elif key in ("outputs", "plugins") and isinstance(value, list):
            out[key] = _FlowList(value)
        else:
            out[key] = value
    return yaml.dump(out, Dumper=_Dumper, sort_keys=False, width=200, allow_unicode=True)


def cmd_expand(args) -> int:
    spec = load_spec_args(args, args.spec, check_shapes=False)   # seeing the expansion helps find a shape error
    data = spec.to_dict()
    if spec.base_dir and data.get("plugins"):
        data["plugins"] = [_plugin_path(p, spec.base_dir, args.output) for p in data["plugins"]]
    text = f"# expanded from {args.spec} by `cnngraph expand`\n" + dump_spec(data)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _plugin_path(path: str, base_dir, output) -> str:
    """A plugin file named in the spec (relative to the spec's folder) as the expanded spec must name it:
    relative to the output file's folder (the project moves as a whole), else absolute (stdout, or on
    another drive)."""
    import os
    from pathlib import Path
    if not path.endswith(".py") or Path(path).is_absolute():
        return path
    full = os.path.abspath(os.path.join(base_dir, path))
    if not output:
        return full
    try:
        return Path(os.path.relpath(full, os.path.dirname(os.path.abspath(output)))).as_posix()
    except ValueError:   # Windows: another drive has no relative path
        return full
