"""Network drawings: SVG, PNG, PDF, Graphviz DOT, Mermaid and a self-contained interactive HTML page.

>>> from cnngraph.viz.graph import draw_network              # doctest: +SKIP
>>> draw_network("specs/lenet5.yaml", "lenet5.svg")            # doctest: +SKIP

The layout is computed in Python (:mod:`cnngraph.viz.layout`); Graphviz is never needed.
An invalid spec is still drawn as far as it parses, with the failing layers in red.
"""
from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CnnGraphError, Problem, SpecError
from . import check_not_folder, make_parent, require_matplotlib
from .layout import Layout, layered_layout
from .netgraph import (FAMILY_COLORS, FAMILY_LABELS, VGraph, VNode, collapse_blocks, fmt_shape, from_raw,
                       from_spec, total_params)
from .scene import Box, Curve, Poly, Scene, Text, render_matplotlib, render_svg, text_width

__all__ = ["FORMATS", "DrawResult", "build_vgraph", "draw_network", "to_dot", "to_mermaid", "to_html", "to_svg",
           "make_scene", "png_dpi", "MAX_PNG_SIDE", "MAX_PNG_PIXELS"]

FORMATS = (".svg", ".png", ".pdf", ".dot", ".gv", ".mmd", ".html")

ID_SIZE, LINE_SIZE, SMALL_SIZE, EDGE_SIZE = 11.5, 10.0, 9.0, 8.5
PAD_X, PAD_Y, LINE_GAP = 10.0, 7.0, 3.5
ERR_COLOR = "#c53030"
OUTPUT_RING = 3.5   # gap between a model output's box and its second border
OUTPUT_LABEL = "model output"

# A PNG's size is capped by lowering its dpi: past these, Pillow refuses to open the file (a
# "decompression bomb", 179 M pixels) or warns (89 M), and few viewers cope. Tall graphs hit the side.
MAX_PNG_SIDE = 32_768
MAX_PNG_PIXELS = 80_000_000
MIN_PNG_DPI = 10    # below this a PNG shows nothing legible: refused instead


@dataclass
class DrawResult:
    path: Path
    format: str
    valid: bool
    problems: list[Problem] = field(default_factory=list)
    nodes: int = 0
    size: tuple | None = None      # PNG pixels / PDF points / SVG points
    dpi: int | None = None         # PNG: the dpi used (lower than asked when the picture was capped)
    collapsed: int = 0             # boxes that --collapse made from block instances


# ----------------------------------------------------------------------------------------------
def build_vgraph(source, with_params: bool = False, collapse: bool = False,
                 allow_plugins: bool = False) -> tuple[VGraph, list[Problem]]:
    """Load a spec (path or dict) for drawing. On a SpecError, a best-effort graph from the raw
    data is returned with the problems (a YAML that does not parse gives an empty graph)."""
    from ..spec import load_spec
    problems: list[Problem] = []
    try:
        spec = load_spec(source, allow_plugins=allow_plugins)
        vg = from_spec(spec, with_params)
    except SpecError as exc:
        problems = list(exc.problems)
        data: Any = source if isinstance(source, dict) else None
        name = "network"
        if data is None:
            from ..positions import parse_text, read_spec_text
            name = Path(str(source)).stem
            try:
                data, _ = parse_text(read_spec_text(source), str(source))
            except SpecError:
                data = None
            if isinstance(data, dict) and (data.get("blocks") is not None
                                           or any(isinstance(l, dict) and "block" in l
                                                  for l in data.get("layers") or [] if isinstance(l, dict))):
                data = _expand_blocks_quietly(data, str(source))
        vg = from_raw(data, problems, name)
    if collapse:
        vg = collapse_blocks(vg)
    return vg, problems


def _expand_blocks_quietly(data: dict, file: str) -> dict:
    """Inline block instances when the block expander is available (best effort)."""
    try:
        from ..blocks import expand_blocks
        expanded, _, _, _ = expand_blocks(data, {}, file)
        return expanded
    except Exception:
        return data


# ----------------------------------------------------------------------------------------------
def _lines(node: VNode, show_params: bool) -> list[tuple[str, float, bool, str]]:
    """(text, size, bold, colour) lines of a node box."""
    lines = [(node.id, ID_SIZE, True, "#1a202c")]
    second = node.type if not node.detail else f"{node.type}  {node.detail}"
    if node.detail.startswith("→"):
        second = f"{node.type} {node.detail}"
    lines.append((second, LINE_SIZE, False, "#2d3748"))
    third = f"out {fmt_shape(node.shape)}" if node.shape is not None else "out ?"
    if show_params and node.params and node.type != "input":
        third += f"  ·  {node.params:,} params"
    lines.append((third, SMALL_SIZE, False, "#4a5568"))
    return lines


def _layer_count(vg: VGraph) -> int:
    return sum(len(v.members) or 1 for v in vg.nodes.values() if v.type not in ("input", "missing"))


def _layers_text(vg: VGraph) -> str:
    n = _layer_count(vg)
    return f"{n} layer{'' if n == 1 else 's'}"


def _box_size(lines) -> tuple[float, float]:
    w = max(text_width(t, s, b) for t, s, b, _ in lines) + 2 * PAD_X
    h = sum(s for _, s, _, _ in lines) + LINE_GAP * (len(lines) - 1) + 2 * PAD_Y + 2
    return max(w, 90.0), h


def _wrap_error(msg: str) -> list[str]:
    out = []
    for para in msg.splitlines():
        out += textwrap.wrap(para, 58) or [""]
    return out[:8]


def _tooltip(node: VNode) -> str:
    parts = [f"{node.id} ({node.type})"]
    if node.detail:
        parts.append(node.detail)
    parts.append(f"output {fmt_shape(node.shape)}")
    if node.params is not None:
        parts.append(f"{node.params:,} params")
    if node.members:
        parts.append("layers: " + ", ".join(node.members))
    if node.is_output:
        parts.append("model output")
    if node.error:
        parts.append("ERROR: " + node.error)
    return "\n".join(parts)


def make_scene(vg: VGraph, direction: str = "TB", show_params: bool = False) -> tuple[Scene, Layout]:
    """Lay the graph out and turn it into drawing primitives."""
    node_lines = {n: _lines(v, show_params) for n, v in vg.nodes.items()}
    box = {n: _box_size(l) for n, l in node_lines.items()}
    err = {n: _wrap_error(v.error) for n, v in vg.nodes.items() if v.error}
    sizes = {}
    for n, (w, h) in box.items():
        if n in err:
            # the first line is drawn bold (see below): measure it bold
            ew = max(text_width(t, SMALL_SIZE, k == 0) for k, t in enumerate(err[n])) + 14
            eh = len(err[n]) * (SMALL_SIZE + 3) + 4
            sizes[n] = (w + ew, max(h, eh))
        else:
            sizes[n] = (w, h)
    g = vg.digraph()
    order = {n: i for i, n in enumerate(vg.nodes)}
    lay = layered_layout(g, sizes, direction, order_key=lambda n: order.get(n, 0),
                         rank_gap=50.0 if direction == "TB" else 70.0)

    # header: title, totals, notes
    header = []
    title = vg.name
    tp = total_params(vg) if show_params else None
    sub = _layers_text(vg)
    if tp is not None:
        sub += f"  ·  {tp:,} trainable params"
    if not vg.valid:
        sub += "  ·  INVALID SPEC: failing layers in red"
    header.append((title, 14.0, True, "#1a202c"))
    header.append((sub, 10.0, False, ERR_COLOR if not vg.valid else "#4a5568"))
    for note in vg.notes:
        for ln in _wrap_error(note):
            header.append((ln, SMALL_SIZE, False, ERR_COLOR))
    head_h = sum(s + 4 for _, s, _, _ in header) + 10
    families = []
    for v in vg.nodes.values():
        f = "error" if v.error else v.family
        if f not in families:
            families.append(f)
    legend_h = 26.0
    has_outputs = any(v.is_output for v in vg.nodes.values())
    legend = [FAMILY_LABELS.get(f, f) for f in families] + [OUTPUT_LABEL] * has_outputs
    width = max(lay.width, max(text_width(t, s, b) for t, s, b, _ in header) + 40,
                sum(text_width(label, SMALL_SIZE) + 34 for label in legend) + 40)
    height = head_h + lay.height + legend_h
    dx = (width - lay.width) / 2
    scene = Scene(width, height, title=f"{vg.name} network graph")

    y = 16.0
    for t, s, b, c in header:
        y += s
        scene.add(Text(20, y, t, s, b, c))
        y += 4

    def rect(n):
        cx, cy = lay.pos[n]
        cx, cy = cx + dx, cy + head_h
        w, h = box[n]
        if n in err:   # the box sits at the left (TB) or top-left of the reserved area
            tw, th = sizes[n]
            return (cx - tw / 2, cy - h / 2, w, h)
        return (cx - w / 2, cy - h / 2, w, h)

    # edges below boxes
    out_edges: dict[str, list] = {}
    in_edges: dict[str, list] = {}
    for s, d, label in vg.edges:
        if s in lay.pos and d in lay.pos:
            out_edges.setdefault(s, []).append((s, d, label))
            in_edges.setdefault(d, []).append((s, d, label))
    along = 0 if direction == "TB" else 1

    def centre(n):
        x, y_, w, h = rect(n)
        return (x + w / 2, y_ + h / 2)

    def port(n, edge, side):
        x, y_, w, h = rect(n)
        lst = out_edges[n] if side == "out" else in_edges[n]
        other = (lambda e: centre(e[1])) if side == "out" else (lambda e: centre(e[0]))
        lst = sorted(lst, key=lambda e: other(e)[along])
        k = lst.index(edge)
        span = (w if direction == "TB" else h) * 0.6
        off = 0.0 if len(lst) == 1 else -span / 2 + span * k / (len(lst) - 1)
        if direction == "TB":
            return (x + w / 2 + off, y_ + h if side == "out" else y_)
        return (x + w if side == "out" else x, y_ + h / 2 + off)

    def back_port(n, side):   # a point on the right of the side where edges of ``side`` normally attach
        x, y_, w, h = rect(n)
        if direction == "TB":
            return (x + w * 0.85, y_ + h if side == "out" else y_)
        return (x + w if side == "out" else x, y_ + h * 0.85)

    back = set(lay.back_edges)
    in_cycle = _cycle_edges(g) if not vg.valid else set()
    labels = []
    for s, d, label in vg.edges:
        if s not in lay.pos or d not in lay.pos:
            continue
        # an edge closing a cycle runs against the flow: from the source's far side to the target's near one
        up = -1 if (s, d) in back else 1
        if up == 1:
            p0, tip = port(s, (s, d, label), "out"), port(d, (s, d, label), "in")
        else:
            p0, tip = back_port(s, "in"), back_port(d, "out")
        mids = [(px + dx, py + head_h) for px, py in lay.routes.get((s, d), [])]
        p1 = (tip[0], tip[1] - 7 * up) if direction == "TB" else (tip[0] - 7 * up, tip[1])
        pts = [p0] + mids + [p1]
        path = [pts[0]]
        for a, b in zip(pts, pts[1:]):
            if direction == "TB":
                my = (a[1] + b[1]) / 2
                path += [(a[0], my), (b[0], my), b]
            else:
                mx = (a[0] + b[0]) / 2
                path += [(mx, a[1]), (mx, b[1]), b]
        failing = vg.nodes[d].error is not None and vg.nodes[s].shape is None
        color = ERR_COLOR if (s, d) in in_cycle else "#718096"
        scene.add(Curve(path, color, 1.2))
        if direction == "TB":
            scene.add(Poly([(tip[0] - 4, tip[1] - 8 * up), (tip[0] + 4, tip[1] - 8 * up), tip], color))
        else:
            scene.add(Poly([(tip[0] - 8 * up, tip[1] - 4), (tip[0] - 8 * up, tip[1] + 4), tip], color))
        if label and not failing:
            a, b = pts[0], pts[1]
            if direction == "TB":
                labels.append(Text((a[0] + b[0]) / 2 + 5, (a[1] + b[1]) / 2 + 3, label, EDGE_SIZE,
                                   color="#2b6cb0", halo=True))
            else:
                labels.append(Text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 - 4, label, EDGE_SIZE,
                                   color="#2b6cb0", anchor="middle", halo=True))
    for n, v in vg.nodes.items():
        if n not in lay.pos:
            continue
        x, y_, w, h = rect(n)
        fam = "error" if v.error else v.family
        fill, stroke = FAMILY_COLORS.get(fam, FAMILY_COLORS["other"])
        if v.is_output:   # a second border marks the model's outputs (several in multi-output graphs)
            r = OUTPUT_RING
            scene.add(Box(x - r, y_ - r, w + 2 * r, h + 2 * r, "none", stroke, 1.3, radius=6.0 + r, node=n))
        scene.add(Box(x, y_, w, h, fill, stroke, 2.6 if v.error else 1.3, node=n, title=_tooltip(v),
                      dash=bool(v.members)))
        ty = y_ + PAD_Y
        for t, s, b, c in node_lines[n]:
            ty += s
            scene.add(Text(x + w / 2, ty, t, s, b, c if not (v.error and b) else "#9b2c2c", anchor="middle",
                           node=n))
            ty += LINE_GAP
        if n in err:
            lines = err[n]
            ey = y_ + h / 2 - len(lines) * (SMALL_SIZE + 3) / 2 + SMALL_SIZE
            for k, ln in enumerate(lines):
                scene.add(Text(x + w + 10, ey + k * (SMALL_SIZE + 3), ln, SMALL_SIZE, k == 0, ERR_COLOR, node=n))
    for t in labels:
        scene.add(t)
    # legend
    lx, ly = 20.0, height - legend_h + 6
    for f in families:
        fill, stroke = FAMILY_COLORS.get(f, FAMILY_COLORS["other"])
        scene.add(Box(lx, ly, 14, 12, fill, stroke, 1.5 if f == "error" else 1.0, radius=3))
        label = FAMILY_LABELS.get(f, f)
        scene.add(Text(lx + 19, ly + 10, label, SMALL_SIZE, color="#2d3748"))
        lx += text_width(label, SMALL_SIZE) + 34
    if has_outputs:   # a double-bordered swatch, like the output boxes
        scene.add(Box(lx - 2, ly - 2, 18, 16, "none", "#4a5568", 1.0, radius=4))
        scene.add(Box(lx, ly, 14, 12, "#ffffff", "#4a5568", 1.0, radius=3))
        scene.add(Text(lx + 19, ly + 10, OUTPUT_LABEL, SMALL_SIZE, color="#2d3748"))
    return scene, lay


def _cycle_edges(g) -> set:
    """The edges that lie on a cycle of ``g`` (drawn in red: an invalid spec may have one)."""
    import networkx as nx
    edges = set()
    for comp in nx.strongly_connected_components(g):
        if len(comp) > 1:
            edges |= {(s, d) for s, d in g.subgraph(comp).edges}
    return edges


# ----------------------------------------------------------------------------------------------
def _dot_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(vg: VGraph, direction: str = "TB", show_params: bool = False) -> str:
    """Graphviz DOT text (``dot -Tsvg`` renders it; not needed by cnngraph)."""
    out = [f"digraph {_dot_str(vg.name)} {{",
           f"  rankdir={direction};",
           f"  label={_dot_str(vg.name + ('' if vg.valid else ' (INVALID SPEC)'))}; labelloc=t; fontname=\"DejaVu Sans\";",
           '  node [shape=box, style="rounded,filled", fontname="DejaVu Sans", fontsize=10];',
           '  edge [fontname="DejaVu Sans", fontsize=8, color="#718096", fontcolor="#2b6cb0"];']
    for n, v in vg.nodes.items():
        fam = "error" if v.error else v.family
        fill, stroke = FAMILY_COLORS.get(fam, FAMILY_COLORS["other"])
        label = "\n".join(t for t, _, _, _ in _lines(v, show_params))
        if v.error:
            label += "\nERROR: " + v.error
        attrs = f"label={_dot_str(label)}, fillcolor={_dot_str(fill)}, color={_dot_str(stroke)}"
        if v.error:
            attrs += ", penwidth=2.5, fontcolor=\"#9b2c2c\""
        if v.members:
            attrs += ', style="rounded,filled,dashed"'
        if v.is_output:
            attrs += ", peripheries=2"   # a second border, as in the drawings
        out.append(f"  {_dot_str(n)} [{attrs}];")
    for s, d, label in vg.edges:
        extra = f" [label={_dot_str(label)}]" if label else ""
        out.append(f"  {_dot_str(s)} -> {_dot_str(d)}{extra};")
    for k, note in enumerate(vg.notes):
        out.append(f"  {_dot_str(f'__note{k}')} [shape=note, label={_dot_str(note)}, fontcolor=\"#c53030\", "
                   f"color=\"#c53030\", style=\"\"];")
    out.append("}")
    return "\n".join(out) + "\n"


def _mmd_text(s: str) -> str:
    return (s.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
             .replace("\n", "<br/>"))


def to_mermaid(vg: VGraph, direction: str = "TB", show_params: bool = False) -> str:
    """Mermaid flowchart text (renders on GitHub and in Mermaid Live)."""
    ids = {n: f"n{i}" for i, n in enumerate(vg.nodes)}
    out = [f"%% {vg.name}" + ("" if vg.valid else " (invalid spec: failing layers in red)"),
           f"flowchart {direction}"]
    for n, v in vg.nodes.items():
        lines = [t for t, _, _, _ in _lines(v, show_params)]
        lines[0] = f"<b>{_mmd_text(lines[0])}</b>"
        label = "<br/>".join([lines[0]] + [_mmd_text(l) for l in lines[1:]])
        if v.error:
            label += "<br/>ERROR: " + _mmd_text(v.error)
        # inputs are stadiums; outputs get Mermaid's double-bordered "subroutine" box
        shape = ('(["', '"])') if v.type == "input" else ('[["', '"]]') if v.is_output else ('["', '"]')
        out.append(f"  {ids[n]}{shape[0]}{label}{shape[1]}")
    for s, d, label in vg.edges:
        out.append(f"  {ids[s]} -->|\"{_mmd_text(label)}\"| {ids[d]}" if label else f"  {ids[s]} --> {ids[d]}")
    used = {}
    for n, v in vg.nodes.items():
        used.setdefault("error" if v.error else v.family, []).append(ids[n])
    for fam, members in used.items():
        fill, stroke = FAMILY_COLORS.get(fam, FAMILY_COLORS["other"])
        width = "3px" if fam == "error" else "1px"
        out.append(f"  classDef {fam} fill:{fill},stroke:{stroke},stroke-width:{width},color:#1a202c")
        out.append(f"  class {','.join(members)} {fam}")
    return "\n".join(out) + "\n"


def to_svg(vg: VGraph, direction: str = "TB", show_params: bool = False) -> str:
    scene, _ = make_scene(vg, direction, show_params)
    return render_svg(scene)


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
html,body{margin:0;height:100%;font-family:'DejaVu Sans',Verdana,Arial,sans-serif;color:#1a202c}
#bar{position:fixed;top:0;left:0;right:0;height:38px;display:flex;align-items:center;gap:14px;padding:0 14px;
background:#f7fafc;border-bottom:1px solid #cbd5e0;font-size:13px;z-index:2}
#bar button{font:inherit;padding:3px 10px;border:1px solid #a0aec0;background:#fff;border-radius:4px;cursor:pointer}
#view{position:fixed;top:39px;left:0;right:340px;bottom:0;overflow:hidden;cursor:grab;background:#fff}
#view.drag{cursor:grabbing}
#view svg{width:100%;height:100%;display:block}
#panel{position:fixed;top:39px;right:0;width:340px;bottom:0;overflow:auto;border-left:1px solid #cbd5e0;
background:#fbfbfd;padding:12px 14px;box-sizing:border-box;font-size:13px}
#panel h2{font-size:15px;margin:4px 0 8px}
#panel table{border-collapse:collapse;width:100%}
#panel td{border-bottom:1px solid #e2e8f0;padding:3px 4px;vertical-align:top;word-break:break-word}
#panel td:first-child{color:#4a5568;width:34%}
#panel .err{color:#c53030;white-space:pre-wrap}
#tip{position:fixed;pointer-events:none;background:#1a202c;color:#fff;font-size:12px;padding:6px 8px;
border-radius:4px;white-space:pre;display:none;z-index:3;max-width:480px}
g.node{cursor:pointer}
g.node:hover rect{filter:brightness(0.93)}
g.node.sel rect{stroke:#d69e2e;stroke-width:3}
</style></head><body>
<div id="bar"><b>__NAME__</b><span id="hint">drag to pan · wheel to zoom · hover or click a layer for details</span>
<button id="fit">fit</button><button id="zin">+</button><button id="zout">&minus;</button></div>
<div id="view">__SVG__</div>
<div id="panel"><h2>__NAME__</h2><div id="info">__SUMMARY__</div></div>
<div id="tip"></div>
<script id="nodes" type="application/json">__NODES__</script>
<script>
(function(){
var NODES=JSON.parse(document.getElementById('nodes').textContent);
var view=document.getElementById('view'),svg=view.querySelector('svg'),tip=document.getElementById('tip');
var info=document.getElementById('info');
svg.removeAttribute('width');svg.removeAttribute('height');
var W=__W__,H=__H__,vb={x:0,y:0,w:W,h:H};
function apply(){svg.setAttribute('viewBox',vb.x+' '+vb.y+' '+vb.w+' '+vb.h);}
function fit(){var r=view.getBoundingClientRect(),s=Math.max(W/r.width,H/r.height,0.0001);
 vb.w=r.width*s;vb.h=r.height*s;vb.x=(W-vb.w)/2;vb.y=(H-vb.h)/2;
 if(H/r.height>W/r.width&&H>3*W){vb.w=W*1.05;vb.h=vb.w*r.height/r.width;vb.x=-W*0.025;vb.y=0;}apply();}
function zoom(f,cx,cy){var r=view.getBoundingClientRect();
 var px=vb.x+(cx-r.left)/r.width*vb.w,py=vb.y+(cy-r.top)/r.height*vb.h;
 vb.w*=f;vb.h*=f;vb.x=px-(cx-r.left)/r.width*vb.w;vb.y=py-(cy-r.top)/r.height*vb.h;apply();}
view.addEventListener('wheel',function(e){e.preventDefault();zoom(e.deltaY>0?1.15:1/1.15,e.clientX,e.clientY);},{passive:false});
var drag=null;
view.addEventListener('mousedown',function(e){drag={x:e.clientX,y:e.clientY,vx:vb.x,vy:vb.y,moved:false};view.classList.add('drag');});
window.addEventListener('mousemove',function(e){
 if(drag){var r=view.getBoundingClientRect(),dx=e.clientX-drag.x,dy=e.clientY-drag.y;
  if(Math.abs(dx)+Math.abs(dy)>3)drag.moved=true;
  vb.x=drag.vx-dx/r.width*vb.w;vb.y=drag.vy-dy/r.height*vb.h;apply();}
 if(tip.style.display==='block'){tip.style.left=(e.clientX+14)+'px';tip.style.top=(e.clientY+14)+'px';}});
window.addEventListener('mouseup',function(){view.classList.remove('drag');setTimeout(function(){drag=null;},0);});
function esc(s){return String(s).replace(/[&<>"]/g,function(c){return{'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c];});}
function text(n){var t=n.id+'  ('+n.type+')';if(n.detail)t+='\\n'+n.detail;t+='\\noutput '+n.shape;
 if(n.output)t+='\\nmodel output';
 if(n.params!==null)t+='\\n'+n.params.toLocaleString()+' params';if(n.error)t+='\\nERROR: '+n.error;return t;}
function show(n){var rows=[['type',n.type],['family',n.family],['parameters',n.detail||'-'],['output',n.shape]];
 if(n.params!==null)rows.push(['param count',n.params.toLocaleString()]);
 if(n.inputs&&n.inputs.length)rows.push(['inputs',n.inputs.join(', ')]);
 if(n.consumers&&n.consumers.length)rows.push(['feeds',n.consumers.join(', ')]);
 if(n.members&&n.members.length)rows.push(['layers',n.members.join(', ')]);
 if(n.all_params&&Object.keys(n.all_params).length)rows.push(['spec',esc(JSON.stringify(n.all_params))]);
 if(n.plugin)rows.push(['plugin',n.plugin]);
 if(n.output)rows.push(['model output','yes']);
 var h='<h2>'+esc(n.id)+'</h2><table>'+rows.map(function(r){return '<tr><td>'+r[0]+'</td><td>'+(r[0]==='spec'?r[1]:esc(r[1]))+'</td></tr>';}).join('')+'</table>';
 if(n.error)h+='<p class="err">'+esc(n.error)+'</p>';info.innerHTML=h;}
var groups=svg.querySelectorAll('g.node');
groups.forEach(function(g){var n=NODES[g.getAttribute('data-id')];if(!n)return;
 g.querySelectorAll('title').forEach(function(t){t.remove();});
 g.addEventListener('mouseenter',function(){tip.textContent=text(n);tip.style.display='block';});
 g.addEventListener('mouseleave',function(){tip.style.display='none';});
 g.addEventListener('click',function(){if(drag&&drag.moved)return;groups.forEach(function(o){o.classList.remove('sel');});
  g.classList.add('sel');show(n);});});
document.getElementById('fit').onclick=fit;
document.getElementById('zin').onclick=function(){var r=view.getBoundingClientRect();zoom(1/1.25,r.left+r.width/2,r.top+r.height/2);};
document.getElementById('zout').onclick=function(){var r=view.getBoundingClientRect();zoom(1.25,r.left+r.width/2,r.top+r.height/2);};
window.addEventListener('resize',fit);fit();
})();
</script></body></html>
"""


def to_html(vg: VGraph, direction: str = "TB", show_params: bool = False) -> str:
    """One self-contained page: inline SVG, pan/zoom, details on hover and click. No external assets."""
    from html import escape
    scene, _ = make_scene(vg, direction, show_params)
    svg = render_svg(scene, standalone=False)
    consumers: dict[str, list] = {}
    for s, d, _ in vg.edges:
        consumers.setdefault(s, []).append(d)
    nodes = {n: {"id": n, "type": v.type, "family": FAMILY_LABELS.get(v.family, v.family), "detail": v.detail,
                 "shape": fmt_shape(v.shape), "params": v.params, "error": v.error, "members": v.members,
                 "inputs": v.info.get("inputs", []), "consumers": consumers.get(n, []),
                 "all_params": v.info.get("params", {}), "plugin": v.info.get("plugin"), "output": v.is_output}
             for n, v in vg.nodes.items()}
    blob = json.dumps(nodes, default=str).replace("</", "<\\/")
    tp = total_params(vg) if show_params else None
    summary = f"<p>{_layers_text(vg)}"
    if tp is not None:
        summary += f", {tp:,} trainable parameters"
    summary += ".</p>"
    if not vg.valid:
        summary += "<p class='err'>This spec is invalid; failing layers are drawn in red.</p>"
        for note in vg.notes:
            summary += f"<p class='err'>{escape(note)}</p>"
    summary += "<p>Click a layer to see its details here.</p>"
    return (_HTML.replace("__TITLE__", escape(f"{vg.name} · cnngraph"))
            .replace("__NAME__", escape(vg.name))
            .replace("__SUMMARY__", summary)
            .replace("__W__", f"{scene.width:.1f}").replace("__H__", f"{scene.height:.1f}")
            .replace("__NODES__", blob)
            .replace("__SVG__", svg))


# ----------------------------------------------------------------------------------------------
def draw_network(source, out, direction: str = "TB", collapse: bool = False, show_params: bool = False,
                 allow_plugins: bool = False, dpi: int = 150) -> DrawResult:
    """Draw a spec (path or dict) to ``out``; the format follows the extension (see ``FORMATS``).

    An invalid spec is drawn as far as it parses; the result's ``valid`` is False and ``problems``
    lists why. Raises CnnGraphError, writing nothing, for an unknown extension, bad options, a spec
    path that is missing or not a text file, or PNG/PDF without matplotlib. A PNG's dpi is lowered
    where needed to stay within MAX_PNG_SIDE and MAX_PNG_PIXELS (the result's ``dpi`` is the one used).
    """
    check_not_folder(out, "network.svg")
    out = Path(out)
    ext = out.suffix.lower()
    if ext not in FORMATS:
        raise CnnGraphError(f"cannot write '{out}': unknown format '{ext or '(no extension)'}'; "
                            f"use one of {', '.join(FORMATS)}")
    direction = direction.upper()
    if direction not in ("TB", "LR"):
        raise CnnGraphError(f"direction must be TB or LR, found {direction!r}")
    if not isinstance(source, dict):
        _check_spec_file(Path(source))
    if ext in (".png", ".pdf"):
        require_matplotlib("PNG/PDF output")
    vg, problems = build_vgraph(source, show_params, collapse, allow_plugins)
    if not vg.nodes:
        vg.nodes["spec"] = VNode("spec", "unreadable", "error", "", None,
                                 error="\n".join(p.format() for p in problems) or "nothing to draw")
    make_parent(out)
    size = used_dpi = None
    try:
        if ext == ".svg":
            scene, _ = make_scene(vg, direction, show_params)
            out.write_text(render_svg(scene), encoding="utf-8")
            size = (scene.width, scene.height)
        elif ext in (".png", ".pdf"):
            scene, _ = make_scene(vg, direction, show_params)
            used_dpi = png_dpi(scene.width, scene.height, dpi) if ext == ".png" else None
            size = render_matplotlib(scene, out, ext[1:], dpi=used_dpi or dpi)
        elif ext in (".dot", ".gv"):
            out.write_text(to_dot(vg, direction, show_params), encoding="utf-8")
        elif ext == ".mmd":
            out.write_text(to_mermaid(vg, direction, show_params), encoding="utf-8")
        else:
            out.write_text(to_html(vg, direction, show_params), encoding="utf-8")
    except OSError as exc:
        raise CnnGraphError(f"cannot write '{out}': {exc}") from None
    collapsed = sum(1 for v in vg.nodes.values() if v.members)
    return DrawResult(out, ext[1:], not problems, problems, len(vg.nodes), size, used_dpi, collapsed)


def _check_spec_file(path: Path) -> None:
    """A spec path that is missing, not a file or not text is an error, not a drawing: an error card
    written to ``out`` would replace what is there (often the last good drawing) over a typo."""
    from ..positions import read_spec_text
    if not path.exists():
        raise CnnGraphError(f"spec file not found: {path}")
    if not path.is_file():
        raise CnnGraphError(f"{path} is a {'folder' if path.is_dir() else 'special file'}, not a spec file")
    try:
        read_spec_text(path)
    except SpecError as exc:   # worded as validate words it
        raise CnnGraphError(exc.problems[0].format()) from None


def png_dpi(width_pt: float, height_pt: float, dpi: int) -> int:
    """``dpi``, lowered where needed so that a drawing of this size (points) stays within
    MAX_PNG_SIDE pixels a side and MAX_PNG_PIXELS in all; CnnGraphError below MIN_PNG_DPI."""
    w, h = width_pt / 72 * dpi, height_pt / 72 * dpi
    scale = min(1.0, MAX_PNG_SIDE / max(w, h), math.sqrt(MAX_PNG_PIXELS / (w * h)))
    used = int(dpi * scale)
    if used < MIN_PNG_DPI:
        raise CnnGraphError(f"the drawing ({width_pt:.0f}x{height_pt:.0f} pt) is too large for a PNG: even at "
                            f"{MIN_PNG_DPI} dpi it exceeds {MAX_PNG_SIDE:,} px a side or {MAX_PNG_PIXELS:,} "
                            f"pixels; use --collapse, or write .svg or .html")
    return used
