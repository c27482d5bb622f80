"""Read YAML/JSON spec text keeping the line and column of every node.

Result: plain Python data plus a map from path tuples (``("layers", 3, "kernel_size")``) to
``(line, column)``, 1-based, so any later error can point into the file.
"""
from __future__ import annotations

import json
import re
from typing import Any

import yaml

from .errors import Problem, SpecError

__all__ = ["parse_text", "path_to_str", "Positions", "read_spec_text"]

Path_ = tuple
Positions = dict  # Path_ -> (line, column)


# An alias (*name) repeats its anchored node: nested aliases ("billion laughs") make a few lines stand for
# billions of values. Aliases may add this many values to a spec in all, far more than any network needs.
MAX_ALIAS_VALUES = 100_000

# PyYAML and the json module parse nested brackets recursively: a few hundred levels exhaust Python's
# stack (a RecursionError traceback). Specs nest a handful of levels; refuse deeper ones before parsing.
MAX_NESTING = 100

_SAFE_TAGS = {"tag:yaml.org,2002:" + t for t in ("map", "seq", "str", "int", "float", "bool", "null")}
_MERGE = "tag:yaml.org,2002:merge"


def _construct(node: yaml.Node, path: Path_, pos: Positions, file: str | None, problems: list[Problem]) -> Any:
    pos[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if node.tag not in _SAFE_TAGS:
        problems.append(Problem(f"YAML tag '{node.tag.replace('tag:yaml.org,2002:', '!!')}' is not allowed: specs are "
                                f"plain data (read with a safe loader)", path_to_str(path), file, *pos[path]))
        return None
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        own = [(k, v) for k, v in node.value if k.tag != _MERGE]
        here = pos[path]   # merged mappings must not move this mapping's own position to their anchor
        for key_node, value_node in node.value:   # `<<: *anchor` (or a list of them): keys written here win
            if key_node.tag != _MERGE:
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for src in sources:
                merged = _construct(src, path, pos, file, problems) if isinstance(src, yaml.MappingNode) else None
                if not isinstance(merged, dict):
                    problems.append(Problem("'<<' merges a mapping (an anchored '&name {...}') or a list of them",
                                            path_to_str(path), file, src.start_mark.line + 1, src.start_mark.column + 1))
                    continue
                for key, value in merged.items():
                    out.setdefault(key, value)
        pos[path] = here
        explicit: set = set()
        for key_node, value_node in own:
            key = _construct(key_node, path + ("<key>",), {}, file, problems)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                problems.append(Problem(f"mapping keys must be plain strings, found {key!r}", path_to_str(path), file,
                                        key_node.start_mark.line + 1, key_node.start_mark.column + 1))
                continue
            key = str(key) if not isinstance(key, str) else key
            if key in explicit:
                problems.append(Problem(f"key '{key}' appears twice in the same mapping", path_to_str(path + (key,)), file,
                                        key_node.start_mark.line + 1, key_node.start_mark.column + 1))
            explicit.add(key)
            pos[path + (key, "<key>")] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _construct(value_node, path + (key,), pos, file, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, path + (i,), pos, file, problems) for i, v in enumerate(node.value)]
    # scalars: let the safe constructor resolve the tag (int, float, bool, null, str)
    return _scalar(node)


class _Loader(yaml.SafeLoader):
    """The safe loader, reading numbers as YAML 1.2 and JSON do: ``1e-3`` is a float (YAML 1.1 wants a dot,
    ``1.0e-3``, and reads ``1e-3`` as a string, which the spec's number fields would refuse)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))
_SCALAR_LOADER = _Loader("")


def _scalar(node: yaml.ScalarNode) -> Any:
    return _SCALAR_LOADER.construct_object(node, deep=True)


def path_to_str(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "<key>":
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


# Byte-order marks, longest first: UTF-32's LE mark begins with UTF-16's.
_BOMS = ((b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\xef\xbb\xbf", "utf-8"),
         (b"\xfe\xff", "utf-16-be"), (b"\xff\xfe", "utf-16-le"))
# What a file that is not text most likely is, by its first bytes (said in the message).
_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive (.npz?)"), (b"\x93NUMPY", "a NumPy .npy array"),
          (b"\x7fELF", "a program"))


def read_spec_text(path) -> str:
    """The text of spec file ``path``: UTF-8, or UTF-8/16/32 with a byte-order mark (which is dropped). A
    missing or unreadable file, bytes that are not UTF-8 (located) and NUL bytes are a SpecError."""
    from pathlib import Path
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(Problem(f"spec file not found: {path}", file=str(path))) from None
    except IsADirectoryError:
        raise SpecError(Problem(f"{path} is a folder, not a spec file", file=str(path))) from None
    except OSError as exc:
        raise SpecError(Problem(f"cannot read spec file: {exc.strerror or exc}", file=str(path))) from None
    bom = next(((mark, codec) for mark, codec in _BOMS if data.startswith(mark)), None)
    body = data[len(bom[0]):] if bom else data
    codec = bom[1] if bom else "utf-8"
    try:
        text = body.decode(codec)
    except UnicodeDecodeError as exc:
        raise SpecError(Problem(_undecodable(body, exc, codec, path), file=str(path))) from None
    if "\0" in text:
        line, column = _line_column(text, text.index("\0"))
        what = next((f" ({name})" for magic, name in _MAGIC if data.startswith(magic)), "")
        raise SpecError(Problem(f"not a text file{what}: a NUL byte at line {line}, column {column}; a spec is YAML "
                                f"or JSON text (UTF-16 without a byte-order mark? save it as UTF-8)", file=str(path)))
    return text


def _line_column(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _mostly_text(body: bytes) -> bool:
    """Few control characters and few bytes above 0x7f: text in an 8-bit encoding rather than binary data."""
    control = sum(1 for b in body if b < 0x20 and b not in b"\t\n\r")
    high = sum(1 for b in body if b >= 0x80)
    return control == 0 and high <= 0.1 * max(len(body), 1)


def _undecodable(body: bytes, exc: UnicodeDecodeError, codec: str, path) -> str:
    """"not a UTF-8 text file (byte 0xa9 at line L, column C)", with what the file looks like."""
    before = body[:exc.start].decode(codec, errors="replace")   # decodes: the error is after it
    line, column = _line_column(before, len(before))
    what = next((f"; it looks like {name}" for magic, name in _MAGIC if body.startswith(magic)), "")
    if codec != "utf-8":
        return (f"not a {codec.upper()} text file, as its byte-order mark says (byte 0x{body[exc.start]:02x} at line "
                f"{line}, column {column}){what}")
    hint = what or ("; save it as UTF-8 (it may be Latin-1 or Windows-1252 text)" if _mostly_text(body)
                    else "; a spec is YAML or JSON text")
    return f"not a UTF-8 text file (byte 0x{body[exc.start]:02x} at line {line}, column {column}){hint}"


def parse_text(text: str, file: str | None = None) -> tuple[Any, Positions]:
    """Parse YAML (or JSON, a YAML subset) safely, returning (data, positions). A ``.json`` file is read
    by the json module (YAML would accept a trailing comma and read 1e-3 as a string); YAML only
    locates its values."""
    text = text.removeprefix("\ufeff")   # a UTF-8 byte-order mark read as text: the json module refuses it
    is_json = bool(file and file.endswith(".json") and text.strip())   # an empty file: "the spec is empty"
    _check_nesting(text, file, is_json)
    data = _parse_json(text, file) if is_json else None
    try:
        root = yaml.compose(text, Loader=_Loader)
    except RecursionError:   # deep block nesting (indentation) that the bracket scan does not see
        line = _deepest_indented_line(text)
        raise SpecError(Problem(f"the spec nests too deeply to read (indented {line[1] - 1} columns here); expected "
                                f"at most {MAX_NESTING} levels of nested lists and mappings", "", file, *line)) from None
    except yaml.YAMLError as exc:
        if is_json:   # valid JSON that YAML cannot read: its problems go without positions
            return data, {}
        mark = getattr(exc, "problem_mark", None)
        msg = getattr(exc, "problem", None) or str(exc)
        raise SpecError(Problem(f"not valid YAML: {msg}{_yaml_context(exc)}", "", file,
                                mark.line + 1 if mark else None, mark.column + 1 if mark else None)) from None
    if root is None:
        raise SpecError(Problem("the spec is empty; expected a mapping with 'inputs', 'layers' and 'outputs'",
                                "", file, 1, 1))
    _check_aliases(root, file)   # first: it refuses an alias inside its own anchor, a loop for the depth walk
    _check_node_depth(root, file)
    pos: Positions = {}
    problems: list[Problem] = []
    constructed = _construct(root, (), pos, file, problems)
    if problems:
        raise SpecError(problems)
    return (data if is_json else constructed), pos


def _check_nesting(text: str, file: str | None, is_json: bool) -> None:
    """Refuse brackets ([ ], { }) nested more than MAX_NESTING deep, at the first bracket too deep. Brackets
    inside quoted strings and YAML comments do not count."""
    depth, line, col, quote, i, n = 0, 1, 0, "", 0, len(text)
    while i < n:
        ch = text[i]
        col += 1
        if ch == "\n":
            line, col = line + 1, 0
        elif quote:
            if ch == "\\" and quote == '"':
                i += 1
                col += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'" and (is_json or ch == '"' or i == 0 or text[i - 1] in " \t\n[{,:"):
            quote = ch   # a YAML apostrophe inside a plain word (it's) opens no string
        elif ch == "#" and not is_json and (i == 0 or text[i - 1] in " \t\n"):
            end = text.find("\n", i)
            i, col = (n if end < 0 else end) - 1, col - 1   # the newline is read next
        elif ch in "[{":
            depth += 1
            if depth > MAX_NESTING:
                raise SpecError(Problem(f"brackets nested more than {MAX_NESTING} levels deep; a spec's values nest "
                                        f"a few levels (a list of layers, a layer's list of inputs)", "", file,
                                        line, col))
        elif ch in "]}":
            depth = max(depth - 1, 0)
        i += 1


def _deepest_indented_line(text: str) -> tuple[int, int]:
    """(line, column) of the first non-blank character of the most indented line."""
    best = (1, 1)
    for number, row in enumerate(text.splitlines(), 1):
        stripped = row.lstrip(" ")
        if stripped and len(row) - len(stripped) + 1 > best[1]:
            best = (number, len(row) - len(stripped) + 1)
    return best


def _check_node_depth(root: yaml.Node, file: str | None) -> None:
    """Refuse block nesting (by indentation) deeper than MAX_NESTING, at the first node too deep; walked
    without recursion, as everything after this step recurses over the data. An aliased node is walked
    again only when reached deeper than before, so aliases ("billion laughs") cannot make this slow."""
    stack, seen = [(root, 1)], {}
    while stack:
        node, depth = stack.pop()
        if seen.get(id(node), 0) >= depth:
            continue
        seen[id(node)] = depth
        if depth > MAX_NESTING:
            raise SpecError(_at(node, file, f"lists and mappings nested more than {MAX_NESTING} levels deep; a "
                                            f"spec's values nest a few levels"))
        children = [v for pair in node.value for v in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        stack.extend((child, depth + 1) for child in children)


def _check_aliases(root: yaml.Node, file: str | None) -> None:
    """Refuse an alias inside its own anchor, and aliases that expand the spec by more than
    MAX_ALIAS_VALUES values, before anything is expanded; each anchored node is sized once."""
    size: dict[int, int] = {}   # id(node) -> how many values the node expands to
    uses: dict[int, int] = {}   # id(node) -> how many times it is written or aliased
    nodes: dict[int, yaml.Node] = {}

    def expand(node: yaml.Node) -> int:
        key = id(node)
        uses[key] = uses.get(key, 0) + 1
        if key in size:
            if size[key] < 0:
                raise SpecError(_at(node, file, "an alias is used inside its own anchored node, which would "
                                                "repeat forever; expected plain nested data"))
            return size[key]
        size[key], nodes[key] = -1, node
        children = [v for pair in node.value for v in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        size[key] = 1 + sum(expand(child) for child in children)
        return size[key]

    added = expand(root) - len(size)
    if added > MAX_ALIAS_VALUES:
        key = max((k for k in uses if uses[k] > 1), key=lambda k: uses[k] * size[k])
        raise SpecError(_at(nodes[key], file, f"alias expansion too large: aliases would add {added:,} values to the "
                                              f"spec (this anchored node of {size[key]:,} values is repeated by "
                                              f"{uses[key] - 1} aliases); expected at most {MAX_ALIAS_VALUES:,}"))


def _at(node: yaml.Node, file: str | None, message: str) -> Problem:
    return Problem(message, "", file, node.start_mark.line + 1, node.start_mark.column + 1)


def _yaml_context(exc) -> str:
    """What PyYAML was reading, and where that began when it is on another line (a '{' never closed is
    reported where the next line starts); a hint for a tab in the indentation."""
    ctx, start, mark = getattr(exc, "context", None), getattr(exc, "context_mark", None), getattr(exc, "problem_mark", None)
    text = ""
    if ctx:
        opened = f", opened at {start.line + 1}:{start.column + 1}" if start and mark and start.line != mark.line else ""
        text = f" ({ctx}{opened})"
    if "'\\t'" in str(getattr(exc, "problem", "")):
        text += "; indent with spaces, not tabs"
    return text


def _yaml_hint(text: str, file: str) -> str:
    """For a .json file that is not JSON at all (no opening brace) but a YAML mapping: say so."""
    if text.lstrip()[:1] in ("{", "["):
        return ""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except (yaml.YAMLError, RecursionError):
        return ""
    if not isinstance(root, yaml.MappingNode):
        return ""
    return f"; it looks like YAML, not JSON: rename it to {file[:-len('.json')]}.yaml"


def _parse_json(text: str, file: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (JSON allows no comma before a closing ] or })" if text[:exc.pos].rstrip().endswith(",") else \
            _yaml_hint(text, file)
        raise SpecError(Problem(f"not valid JSON: {exc.msg}{hint}", "", file, exc.lineno, exc.colno)) from None

