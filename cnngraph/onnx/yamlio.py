"""Writing imported specs as readable YAML (short lists inline, keys in spec order)."""
from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["dump_spec", "write_spec"]


class _Dumper(yaml.SafeDumper):
    pass


def _list(dumper, data):
    flow = all(not isinstance(v, (dict, list)) or (isinstance(v, list) and all(not isinstance(w, (dict, list)) for w in v))
               for v in data) and len(data) <= 16
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _list)
_Dumper.add_representer(tuple, _list)


def dump_spec(spec: dict, header: str | None = None) -> str:
    text = yaml.dump(spec, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=110, allow_unicode=True)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    return text


def write_spec(spec: dict, path, header: str | None = None) -> None:
    Path(path).write_text(dump_spec(spec, header), encoding="utf-8")
