"""Network drawings: every format, real content, layout quality, invalid specs drawn in red."""
from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import networkx as nx
import numpy as np
import pytest
from PIL import Image

import cnngraph
from cnngraph.cli import main
from cnngraph.viz.graph import build_vgraph, draw_network, make_scene, to_dot, to_mermaid
from cnngraph.viz.layout import layered_layout
from cnngraph.viz.netgraph import FAMILY_COLORS, collapse_blocks, from_spec

SPECS = ["specs/lenet5.yaml", "specs/resnet_small.yaml", "specs/inception_small.yaml"]

BROKEN = """name: broken
inputs:
  image: {shape: [1, 28, 28]}
layers:
  - {id: conv1, type: conv2d, out_channels: 6, kernel_size: 5}
  - {id: act1, type: relu}
  - {id: conv2, type: conv2d, out_channels: 16, kernel_sise: 5}
  - {id: pool, type: max_pool2d, kernel_size: 2}
  - {id: flat, type: flatten}
  - {id: fc, type: dense, out_features: 10}
outputs: [fc]
"""

BLOCKY = {
    "name": "blocky", "inputs": {"image": {"shape": [3, 16, 16]}},
    "layers": [
        {"id": "stem", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
        {"id": "stage1.0.conv", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
        {"id": "stage1.0.act", "type": "relu"},
        {"id": "stage1.1.conv", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
        {"id": "stage1.1.act", "type": "relu"},
        {"id": "stage2.0.conv", "type": "conv2d", "out_channels": 16, "kernel_size": 3, "stride": 2, "padding": 1},
        {"id": "stage2.0.act", "type": "relu"},
        {"id": "gap", "type": "global_avg_pool2d"},
        {"id": "flat", "type": "flatten"},
        {"id": "logits", "type": "dense", "out_features": 10},
    ],
    "outputs": ["logits"],
}


def layer_ids(path):
    spec = cnngraph.load_spec(path)
    return list(spec.graph.nodes)


def _png_ok(path, min_w=200, min_h=200):
    im = Image.open(path)
    im.load()
    assert im.format == "PNG"
    w, h = im.size
    assert w >= min_w and h >= min_h
    a = np.asarray(im.convert("RGB"), dtype=np.float32)
    # not blank: many distinct colours and a good share of non-white pixels
    assert a.std() > 10
    assert (a.min(axis=2) < 200).mean() > 0.01
    return im, a


@pytest.mark.parametrize("spec", SPECS)
def test_svg_contains_every_layer_and_parses(tmp_path, spec):
    out = tmp_path / "g.svg"
    res = draw_network(spec, out, show_params=True)
    assert res.valid
    text = out.read_text()
    root = ET.fromstring(text)    # well-formed XML
    assert root.tag.endswith("svg")
    ns = {"s": "http://www.w3.org/2000/svg"}
    groups = {g.get("data-id") for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "node"}
    assert groups == set(layer_ids(spec))
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    for n in layer_ids(spec):
        assert n in texts
    # one path per edge, colours by family
    g = cnngraph.load_spec(spec).graph
    assert len(root.findall(".//s:path", ns)) == g.number_of_edges()
    assert FAMILY_COLORS["conv"][0] in text


def test_labels_show_kernel_stride_channels_shapes_and_params():
    vg = from_spec(cnngraph.load_spec("specs/resnet_small.yaml"), with_params=True)
    assert vg.nodes["b2_conv1"].detail == "3x3 /2 → 32"
    assert vg.nodes["b2_proj"].detail == "1x1 /2 → 32"
    assert vg.nodes["stem"].shape == (16, 32, 32)
    assert vg.nodes["stem"].params == 16 * 3 * 9                     # bias: false
    assert vg.nodes["b1_bn1"].params == 32                           # weight + bias, running stats excluded
    labels = {(s, d): l for s, d, l in vg.edges}
    assert labels[("b1_out", "b2_proj")] == "16x32x32"
    assert labels[("gap", "flat")] == "32x1x1"
    lenet = from_spec(cnngraph.load_spec("specs/lenet5.yaml"), with_params=True)
    assert lenet.nodes["pool1"].detail == "2x2"
    assert lenet.nodes["fc1"].detail == "→ 120"
    assert sum(n.params for n in lenet.nodes.values()) == cnngraph.compile("specs/lenet5.yaml").param_count()


def test_labels_show_both_values_where_height_and_width_differ():
    spec = cnngraph.load_spec({"inputs": {"image": {"shape": [1, 16, 16]}},
                               "layers": [{"id": "c", "type": "conv2d", "out_channels": 4, "kernel_size": [3, 5],
                                           "stride": [2, 1], "dilation": [2, 1]},
                                          {"id": "p", "type": "max_pool2d", "kernel_size": 2, "stride": 1,
                                           "dilation": [1, 2]}],
                               "outputs": ["p"]})
    vg = from_spec(spec)
    assert vg.nodes["c"].detail == "3x5 /2,1 dil 2,1 → 4"
    assert vg.nodes["p"].detail == "2x2 /1 dil 1,2"


def test_png_and_pdf_render(tmp_path):
    res = draw_network("specs/resnet_small.yaml", tmp_path / "g.png", show_params=True, dpi=72)
    im, a = _png_ok(tmp_path / "g.png")
    assert im.size == res.size                      # the size we computed is the file's
    assert im.size[1] > im.size[0]                  # top to bottom
    # the conv family fill colour is really painted
    conv = np.array([int(FAMILY_COLORS["conv"][0][i:i + 2], 16) for i in (1, 3, 5)], np.float32)
    assert (np.abs(a - conv).sum(axis=2) < 6).sum() > 500
    res = draw_network("specs/lenet5.yaml", tmp_path / "lr.png", direction="LR", dpi=50)
    im2, _ = _png_ok(tmp_path / "lr.png", 100, 50)
    assert im2.size[0] > im2.size[1]                # left to right
    draw_network("specs/digits_cnn.yaml", tmp_path / "g.pdf")
    data = (tmp_path / "g.pdf").read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 2000


def _dot_structure(text):
    """A small DOT reader: node ids and edges of a digraph written by to_dot."""
    assert re.match(r'^digraph "[^"]*" \{', text) and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    q = r'"((?:[^"\\]|\\.)*)"'
    edges = re.findall(rf"^\s*{q} -> {q}", text, re.M)
    nodes = re.findall(rf"^\s*{q} \[label=", text, re.M)
    return set(nodes), edges


@pytest.mark.parametrize("spec", SPECS)
def test_dot_is_valid_graphviz(tmp_path, spec):
    out = tmp_path / "g.dot"
    draw_network(spec, out)
    text = out.read_text()
    nodes, edges = _dot_structure(text)
    g = cnngraph.load_spec(spec).graph
    assert nodes == set(g.nodes)
    assert set(edges) == set(g.edges)
    pydot = pytest.importorskip("pydot")
    parsed = nx.nx_pydot.from_pydot(pydot.graph_from_dot_data(text)[0])
    parsed_nodes = {n.strip('"') for n in parsed.nodes}
    assert set(g.nodes) <= parsed_nodes
    assert {(a.strip('"'), b.strip('"')) for a, b, *_ in parsed.edges} == set(g.edges)


@pytest.mark.parametrize("spec", SPECS)
def test_mermaid_structure(tmp_path, spec):
    out = tmp_path / "g.mmd"
    draw_network(spec, out, direction="LR")
    lines = [l.strip() for l in out.read_text().splitlines() if l.strip() and not l.strip().startswith("%%")]
    assert lines[0] == "flowchart LR"
    node_re = re.compile(r'^(n\d+)(\(\[|\[\[|\[)"(.*)"(\]\)|\]\]|\])$')
    edge_re = re.compile(r'^(n\d+) -->(?:\|"[^"]*"\|)? (n\d+)$')
    nodes, edges, classes, double = {}, [], set(), set()
    for l in lines[1:]:
        if m := node_re.match(l):
            assert '"' not in m.group(3)          # quotes are escaped inside labels
            nodes[m.group(1)] = m.group(3)
            if m.group(2) == "[[":                # a double-bordered box: a model output
                double.add(m.group(1))
        elif m := edge_re.match(l):
            edges.append((m.group(1), m.group(2)))
        elif l.startswith("classDef ") or l.startswith("class "):
            classes.add(l.split()[1] if l.startswith("classDef") else l.split()[-1])
        else:
            pytest.fail(f"unexpected Mermaid line: {l}")
    g = cnngraph.load_spec(spec).graph
    by_id = {re.match(r"<b>(.*?)</b>", v).group(1): k for k, v in nodes.items()}
    assert set(by_id) == set(g.nodes)
    assert {(by_id_inv, b) for by_id_inv, b in edges} == {(by_id[a], by_id[b]) for a, b in g.edges}
    assert {"conv", "input"} <= classes
    assert double == {by_id[o] for o in g.graph["outputs"]}


def test_html_is_self_contained_and_interactive(tmp_path):
    out = tmp_path / "g.html"
    draw_network("specs/inception_small.yaml", out, show_params=True)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    # offline: no external scripts, styles, fonts or images
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page)
    assert "@import" not in page and "url(" not in page
    assert "<svg" in page and "addEventListener('wheel'" in page and "mousedown" in page
    blob = re.search(r'<script id="nodes" type="application/json">(.*?)</script>', page, re.S).group(1)
    nodes = json.loads(blob)
    g = cnngraph.load_spec("specs/inception_small.yaml").graph
    assert set(nodes) == set(g.nodes)
    assert nodes["br3"]["detail"] == "3x3 same → 24" and nodes["br3"]["shape"] == "24x16x16"
    assert nodes["mixed"]["inputs"] == ["br1_act", "br3_act2", "br5_act2", "brp_act"]
    for n in g.nodes:
        assert f'data-id="{n}"' in page


def test_layout_has_no_overlaps_and_few_crossings():
    spec = cnngraph.load_spec("specs/inception_small.yaml")
    vg = from_spec(spec)
    scene, lay = make_scene(vg)
    boxes = [(lay.pos[n], lay.size[n]) for n in lay.pos]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            (x1, y1), (w1, h1) = boxes[i]
            (x2, y2), (w2, h2) = boxes[j]
            assert abs(x1 - x2) * 2 >= w1 + w2 - 1e-6 or abs(y1 - y2) * 2 >= h1 + h2 - 1e-6
    # every edge points down (TB)
    for s, d in spec.graph.edges:
        assert lay.pos[s][1] < lay.pos[d][1]
    assert lay.crossings == 0
    # a K_{2,2}-like crossing is undone by the barycentric sweeps
    g = nx.DiGraph([("a", "d"), ("b", "c"), ("r", "a"), ("r", "b"), ("c", "z"), ("d", "z")])
    lay2 = layered_layout(g, {n: (40, 20) for n in g})
    assert lay2.crossings == 0
    assert (lay2.pos["a"][0] < lay2.pos["b"][0]) == (lay2.pos["d"][0] < lay2.pos["c"][0])


def test_collapse_blocks(tmp_path):
    vg, problems = build_vgraph(BLOCKY, with_params=True, collapse=True)
    assert not problems
    assert list(vg.nodes) == ["image", "stem", "stage1", "stage2", "gap", "flat", "logits"]
    assert vg.nodes["stage1"].members == ["stage1.0.conv", "stage1.0.act", "stage1.1.conv", "stage1.1.act"]
    assert vg.nodes["stage1"].params == 2 * (8 * 8 * 9 + 8)
    assert vg.nodes["stage2"].shape == (16, 8, 8)
    assert [(s, d) for s, d, _ in vg.edges] == [("image", "stem"), ("stem", "stage1"), ("stage1", "stage2"),
                                                ("stage2", "gap"), ("gap", "flat"), ("flat", "logits")]
    draw_network(BLOCKY, tmp_path / "c.svg", collapse=True)
    text = (tmp_path / "c.svg").read_text()
    assert 'data-id="stage1"' in text and "stage1.0.conv" not in text.split("<title>")[0]


def test_invalid_spec_is_drawn_with_red_node(tmp_path, capsys):
    spec = tmp_path / "broken.yaml"
    spec.write_text(BROKEN)
    out = tmp_path / "broken.svg"
    rc = main(["viz", str(spec), "-o", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "wrote" in err and "kernel_sise" in err and "Traceback" not in err
    root = ET.fromstring(out.read_text())
    sv = "{http://www.w3.org/2000/svg}"
    red = FAMILY_COLORS["error"]
    failing = [g.get("data-id") for g in root.iter(sv + "g") if g.get("class") == "node"
               and any(r.get("stroke") == red[1] for r in g.iter(sv + "rect"))]
    assert failing == ["conv2"]
    assert "did you mean 'kernel_size'" in html.unescape(out.read_text())
    # layers before the failure keep their shapes
    vg, problems = build_vgraph(str(spec))
    assert vg.nodes["act1"].shape == (6, 24, 24) and vg.nodes["conv2"].shape is None
    assert problems and not vg.valid
    # PNG of the same: red pixels present
    assert main(["viz", str(spec), "-o", str(tmp_path / "broken.png"), "--dpi", "80"]) == 1
    a = np.asarray(Image.open(tmp_path / "broken.png").convert("RGB")).astype(int)
    assert ((a[..., 0] > 180) & (a[..., 1] < 40) & (a[..., 2] < 40)).sum() > 50


def test_unparsable_yaml_still_writes_a_file(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("layers: [\n  - {id: a\n")
    res = draw_network(str(spec), tmp_path / "bad.svg")
    assert not res.valid and (tmp_path / "bad.svg").read_text().count("not valid YAML") >= 1


def test_cli_errors_are_clean(tmp_path, capsys):
    assert main(["viz", "specs/lenet5.yaml", "-o", str(tmp_path / "g.jpg")]) == 1
    assert "unknown format '.jpg'" in capsys.readouterr().err
    assert main(["viz", "specs/nope.yaml", "-o", str(tmp_path / "g.svg")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["viz", "specs/lenet5.yaml", "-o", str(tmp_path / "g.mmd"), "--params"]) == 0
    assert "156 params" in (tmp_path / "g.mmd").read_text()


MOCK_DOM = r"""
const fs = require('fs');
const page = fs.readFileSync(process.argv[2], 'utf8');
const js = page.match(/<script>([\s\S]*?)<\/script>/)[1];
const blob = page.match(/<script id="nodes" type="application\/json">([\s\S]*?)<\/script>/)[1];
function el(name) {
  const h = {}; const attrs = {}; const cls = new Set();
  return {name, h, attrs, style: {}, textContent: '', innerHTML: '',
    classList: {add: c => cls.add(c), remove: c => cls.delete(c), has: c => cls.has(c)},
    addEventListener: (t, f) => { h[t] = f; }, setAttribute: (k, v) => { attrs[k] = String(v); },
    getAttribute: k => attrs[k], removeAttribute: k => { delete attrs[k]; },
    getBoundingClientRect: () => ({left: 0, top: 0, width: 800, height: 600}),
    querySelectorAll: () => [], querySelector: () => null};
}
const ids = page.match(/<g class="node" data-id="([^"]*)"/g).map(s => s.match(/data-id="([^"]*)"/)[1]);
const groups = ids.map(id => { const g = el('g'); g.attrs['data-id'] = id; return g; });
const svg = el('svg'); svg.querySelectorAll = sel => sel === 'g.node' ? groups : [];
const view = el('view'); view.querySelector = () => svg;
const elements = {nodes: Object.assign(el('script'), {textContent: blob}), view, tip: el('tip'), info: el('info'),
                  fit: el('fit'), zin: el('zin'), zout: el('zout')};
global.document = {getElementById: id => elements[id]};
const winh = {}; global.window = {addEventListener: (t, f) => { winh[t] = f; }};
eval(js);
const before = svg.attrs.viewBox;
view.h.wheel({deltaY: -100, clientX: 400, clientY: 300, preventDefault() {}});
const zoomed = svg.attrs.viewBox;
view.h.mousedown({clientX: 100, clientY: 100});
winh.mousemove({clientX: 160, clientY: 130});
winh.mouseup();
const panned = svg.attrs.viewBox;
setTimeout(() => {
  const target = groups[ids.indexOf(process.argv[3])];
  target.h.mouseenter(); const tip = elements.tip.textContent; target.h.click();
  console.log(JSON.stringify({before, zoomed, panned, tip, info: elements.info.innerHTML,
                              selected: target.classList.has('sel')}));
}, 5);
"""


def test_html_script_runs_pan_zoom_and_details(tmp_path):
    import shutil
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    out = tmp_path / "g.html"
    draw_network("specs/resnet_small.yaml", out, show_params=True)
    (tmp_path / "mock.js").write_text(MOCK_DOM)
    res = subprocess.run([node, str(tmp_path / "mock.js"), str(out), "b2_conv1"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    w0 = float(r["before"].split()[2])
    assert float(r["zoomed"].split()[2]) < w0                    # wheel up zooms in
    assert r["panned"].split()[:2] != r["zoomed"].split()[:2]    # dragging pans
    assert "b2_conv1" in r["tip"] and "3x3 /2 → 32" in r["tip"] and "4,608 params" in r["tip"]
    assert "<h2>b2_conv1</h2>" in r["info"] and "b1_out" in r["info"] and "b2_bn1" in r["info"]
    assert r["selected"]


def _text_extent(t):
    from cnngraph.viz.scene import text_width
    w = text_width(t.text, t.size, t.bold)
    x0 = {"start": t.x, "middle": t.x - w / 2, "end": t.x - w}[t.anchor]
    return x0, x0 + w


@pytest.mark.parametrize("direction", ["TB", "LR"])
def test_every_label_fits_on_the_canvas(direction):
    """No text runs off the picture: error messages beside red boxes (first line bold) included."""
    from cnngraph.viz.scene import Text
    long = BROKEN.replace("outputs: [fc]", "  - {id: fc9, type: dense, out_features: 10, inputs: [nowhere_to_be_found]}\n"
                                           "outputs: [fc]")
    import yaml
    for source in (yaml.safe_load(long), "specs/inception_small.yaml"):
        vg, _ = build_vgraph(source, with_params=True)
        scene, _ = make_scene(vg, direction, show_params=True)
        texts = [it for it in scene.items if isinstance(it, Text)]
        assert texts
        for t in texts:
            x0, x1 = _text_extent(t)
            assert 0 <= x0 and x1 <= scene.width, (t.text, x0, x1, scene.width)
            assert t.size <= t.y <= scene.height, (t.text, t.y, scene.height)


# ---------------------------------------------------------------------- probe fixes: paths, sizes, outputs
TWO_HEADS = """name: two_heads
inputs:
  image: {shape: [1, 8, 8]}
layers:
  - {id: conv, type: conv2d, out_channels: 4, kernel_size: 3}
  - {id: act, type: relu}
  - {id: flat, type: flatten}
  - {id: digit, type: dense, out_features: 10}
  - {id: parity, type: dense, out_features: 2, inputs: flat}
outputs: [act, digit, parity]
"""


def test_a_spec_path_that_is_not_a_readable_text_file_writes_nothing(tmp_path, capsys):
    """A typo in the spec path must not replace the last good drawing with an error card."""
    keep = tmp_path / "keep.svg"
    assert main(["viz", "specs/lenet5.yaml", "-o", str(keep)]) == 0
    good = keep.read_bytes()
    capsys.readouterr()
    (tmp_path / "blob.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    for spec, message in (("specs/lenet5.yml", "spec file not found: specs/lenet5.yml"),
                          (str(tmp_path), f"{tmp_path} is a folder, not a spec file"),
                          (str(tmp_path / "blob.yaml"), "blob.yaml: not a UTF-8 text file (byte 0x89 at line 1, "
                                                        "column 1); it looks like a PNG image"),
                          (str(tmp_path / "latin1.yaml"), "latin1.yaml: not a UTF-8 text file (byte 0xe9 at line 1, "
                                                          "column 10); save it as UTF-8")):
        for out in (keep, tmp_path / "new.png"):
            assert main(["viz", spec, "-o", str(out)]) == 1
            err = capsys.readouterr().err
            assert err.startswith("error: ") and message in err and err.count("\n") == 1
        if spec.endswith(".yaml"):   # validate says the same
            assert main(["validate", spec]) == 1
            assert message in capsys.readouterr().out
    assert keep.read_bytes() == good and not (tmp_path / "new.png").exists()


def test_output_in_a_file_where_a_folder_should_be_is_named(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["viz", "specs/lenet5.yaml", "-o", str(tmp_path / "file" / "x.svg")]) == 1
    assert f"'{tmp_path / 'file'}' is a file, not a folder" in capsys.readouterr().err


def test_png_is_sized_without_reopening_it_with_pillow(tmp_path, monkeypatch):
    """Reopening the PNG tripped Pillow's decompression-bomb check on big drawings (an error past
    179 M pixels, a warning past 89 M): the size comes from the PNG header instead."""
    import warnings
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)     # every drawing would be a "bomb" now
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = draw_network("specs/lenet5.yaml", tmp_path / "g.png", dpi=40)
    monkeypatch.undo()
    assert Image.open(tmp_path / "g.png").size == res.size and res.dpi == 40


def test_png_dpi_is_lowered_to_keep_the_picture_within_the_limits():
    from cnngraph.viz.graph import MAX_PNG_PIXELS, MAX_PNG_SIDE, png_dpi
    assert png_dpi(600, 900, 150) == 150
    # specs/resnet18_cifar.yaml at --dpi 600 was 5,161 x 54,821 px (283 M pixels)
    dpi = png_dpi(619.3, 6578.5, 600)
    w, h = 619.3 / 72 * dpi, 6578.5 / 72 * dpi
    assert dpi < 600 and max(w, h) <= MAX_PNG_SIDE and w * h <= MAX_PNG_PIXELS and w * h > 0.9 * MAX_PNG_PIXELS
    # an 800-layer chain at the default dpi was 959 x 173,483 px: the side is what limits it
    dpi = png_dpi(460.3, 83272, 150)
    assert 83272 / 72 * dpi <= MAX_PNG_SIDE < 83272 / 72 * (dpi + 1)
    with pytest.raises(cnngraph.errors.CnnGraphError, match="too large for a PNG.*--collapse"):
        png_dpi(400, 10_000_000, 150)


def test_cli_notes_a_lowered_dpi_and_refuses_past_the_floor(tmp_path, capsys, monkeypatch):
    from cnngraph.viz import graph
    monkeypatch.setattr(graph, "MAX_PNG_SIDE", 600)         # small limits keep the test fast
    monkeypatch.setattr(graph, "MAX_PNG_PIXELS", 150_000)
    assert main(["viz", "specs/lenet5.yaml", "-o", str(tmp_path / "g.png")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("note: lowered the PNG resolution from 150 to ") and "--collapse" in err
    w, h = Image.open(tmp_path / "g.png").size
    assert max(w, h) <= 600 and w * h <= 150_000
    monkeypatch.setattr(graph, "MAX_PNG_SIDE", 50)
    assert main(["viz", "specs/lenet5.yaml", "-o", str(tmp_path / "h.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the drawing") and err.count("\n") == 1 and not (tmp_path / "h.png").exists()


def test_one_layer_is_not_plural(tmp_path):
    one = {"name": "one", "inputs": {"x": {"shape": [1, 4, 4]}}, "layers": [{"id": "a", "type": "relu"}],
           "outputs": ["a"]}
    draw_network(one, tmp_path / "one.svg")
    draw_network(one, tmp_path / "one.html")
    assert ">1 layer<" in (tmp_path / "one.svg").read_text() and "1 layers" not in (tmp_path / "one.svg").read_text()
    assert "<p>1 layer." in (tmp_path / "one.html").read_text()
    from cnngraph.viz.graph import to_svg
    assert ">12 layers<" in to_svg(build_vgraph("specs/lenet5.yaml")[0])


def test_collapse_without_blocks_says_so(tmp_path, capsys):
    assert main(["viz", "specs/lenet5.yaml", "--collapse", "-o", str(tmp_path / "g.svg")]) == 0
    assert "note: --collapse found no block instances" in capsys.readouterr().err
    import yaml
    (tmp_path / "blocky.yaml").write_text(yaml.safe_dump(BLOCKY))
    assert main(["viz", str(tmp_path / "blocky.yaml"), "--collapse", "-o", str(tmp_path / "b.svg")]) == 0
    assert "note" not in capsys.readouterr().err


def test_every_model_output_is_marked_in_every_format(tmp_path):
    """Multi-output graphs: each spec output gets a second border (SVG/PNG/HTML), peripheries=2 (DOT)
    and a double-bordered box (Mermaid), and the legend says what it means."""
    spec = tmp_path / "two.yaml"
    spec.write_text(TWO_HEADS)
    outputs = {"act", "digit", "parity"}
    sv = "{http://www.w3.org/2000/svg}"
    draw_network(str(spec), tmp_path / "g.svg")
    root = ET.fromstring((tmp_path / "g.svg").read_text())
    rects = {g.get("data-id"): list(g.iter(sv + "rect")) for g in root.iter(sv + "g") if g.get("class") == "node"}
    assert {n for n, rs in rects.items() if len(rs) == 2} == outputs
    assert all(rs[0].get("fill") == "none" for n, rs in rects.items() if n in outputs)
    assert "model output" in (tmp_path / "g.svg").read_text()           # legend and tooltips
    scene, _ = make_scene(build_vgraph(str(spec))[0])                   # what PNG and PDF paint
    assert {b.node for b in scene.items if getattr(b, "fill", None) == "none" and b.node} == outputs
    draw_network(str(spec), tmp_path / "g.dot")
    marked = re.findall(r'^\s*"([^"]+)" \[.*peripheries=2', (tmp_path / "g.dot").read_text(), re.M)
    assert set(marked) == outputs
    draw_network(str(spec), tmp_path / "g.html")
    page = (tmp_path / "g.html").read_text()
    blob = json.loads(re.search(r'<script id="nodes" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert {n for n, v in blob.items() if v["output"]} == outputs
    # invalid specs and collapsed blocks keep the mark
    spec.write_text(TWO_HEADS.replace("out_features: 2", "out_featurez: 2"))
    vg, problems = build_vgraph(str(spec))
    assert problems and {n for n, v in vg.nodes.items() if v.is_output} == outputs
    vg, _ = build_vgraph(BLOCKY, collapse=True)
    assert [n for n, v in vg.nodes.items() if v.is_output] == ["logits"]


def test_png_and_explain_without_matplotlib_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # `import matplotlib` fails
    for ext in ("png", "pdf"):
        assert main(["viz", "specs/lenet5.yaml", "-o", str(tmp_path / f"g.{ext}")]) == 1
        assert capsys.readouterr().err == "error: PNG/PDF output needs matplotlib (pip install matplotlib)\n"
        assert not (tmp_path / f"g.{ext}").exists()
    assert main(["viz", "specs/lenet5.yaml", "-o", str(tmp_path / "g.svg")]) == 0   # SVG never needed it
    assert main(["explain", "specs/digits_cnn.yaml", "--filters", "-o", str(tmp_path / "f.png")]) == 1
    assert capsys.readouterr().err.endswith("error: explain needs matplotlib (pip install matplotlib)\n")


CYCLE = """name: t
inputs:
  image: {shape: [3, 8, 8]}
layers:
  - {id: a, type: conv2d, out_channels: 3, kernel_size: 1, inputs: c}
  - {id: b, type: relu, inputs: a}
  - {id: c, type: add, inputs: [b, image]}
outputs: [c]
"""


@pytest.mark.parametrize("ext,collapse", [(".svg", False), (".png", False), (".html", False), (".svg", True)])
def test_a_spec_with_a_cycle_is_drawn_with_the_cycle_in_red(tmp_path, capsys, ext, collapse):
    spec = tmp_path / "cycle.yaml"
    spec.write_text(CYCLE)
    out = tmp_path / f"cycle{ext}"
    rc = main(["viz", str(spec), "-o", str(out), "--dpi", "60"] + ["--collapse"] * collapse)
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "the layers form a cycle: c -> a -> b -> c" in err and out.stat().st_size > 0
    if ext == ".svg":
        root = ET.fromstring(out.read_text())
        red = [p for p in root.iter("{http://www.w3.org/2000/svg}path") if p.get("stroke") == "#c53030"]
        assert len(red) == 3          # c -> a, a -> b and the edge closing the cycle, b -> c


def test_layout_breaks_cycles_and_keeps_the_rest_in_order():
    g = nx.DiGraph([("image", "c"), ("c", "a"), ("a", "b"), ("b", "c")])
    order = {"image": 0, "a": 1, "b": 2, "c": 3}
    lay = layered_layout(g, {n: (90.0, 40.0) for n in g}, order_key=order.get)
    assert lay.back_edges == [("b", "c")]
    assert lay.ranks == {"image": 0, "c": 1, "a": 2, "b": 3}


def test_control_characters_in_a_parameter_are_escaped_in_labels(tmp_path, fresh, capsys):
    """A plugin's string parameter with a newline printed 'Glyph 10 missing' warnings on PNG output (the
    font has no glyph for it): labels show control characters escaped, a newline as \\n."""
    import warnings
    from cnngraph.viz.netgraph import key_params
    assert key_params("tagged", {"tag": "a\nb\tc é"}) == "tag=a\\nb\\tc é"
    (tmp_path / "tagged.py").write_text(
        "import cnngraph\nfrom cnngraph import Op, OpParams\n"
        "class P(OpParams):\n    tag: str = 'plain'\n"
        "class Tagged(Op):\n    type = 'tagged'\n    Params = P\n"
        "    def infer_shape(self, s): return s[0]\n    def init_params(self, s, rng): return {}\n"
        "    def forward(self, ctx, i, p): return i[0] + 0\n    def backward(self, ctx, gy): return [gy], {}\n"
        "@cnngraph.hookimpl\ndef cnngraph_register_ops(registry):\n    registry.add(Tagged)\n")
    (tmp_path / "s.yaml").write_text('plugins: [./tagged.py]\ninputs: {image: {shape: [1, 8, 8]}}\n'
                                     'layers: [{id: t1, type: tagged, tag: "one\\ntwo"}]\noutputs: [t1]\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["viz", str(tmp_path / "s.yaml"), "--allow-plugins", "-o", str(tmp_path / "g.png")]) == 0
    assert not [w for w in caught if "Glyph" in str(w.message)], [str(w.message) for w in caught]
    assert "Glyph" not in capsys.readouterr().err
    vg, _ = build_vgraph(str(tmp_path / "s.yaml"), allow_plugins=True)
    assert vg.nodes["t1"].detail == "tag=one\\ntwo"


def test_upsampling_has_its_own_colour_and_shows_its_factor():
    spec = cnngraph.load_spec({"inputs": {"image": {"shape": [4, 8, 8]}},
                               "layers": [{"id": "up", "type": "upsample2d"},
                                          {"id": "up2", "type": "upsample2d", "scale_factor": [2, 1.5], "mode": "bilinear"},
                                          {"id": "ps", "type": "pixel_shuffle", "upscale_factor": 2, "inputs": "image"},
                                          {"id": "to", "type": "upsample2d", "size": [13, 7], "inputs": "image"}],
                               "outputs": ["up2", "ps", "to"]})
    vg = from_spec(spec)
    assert {vg.nodes[n].family for n in ("up", "up2", "ps")} == {"resize"}
    assert FAMILY_COLORS["resize"] != FAMILY_COLORS["other"]
    assert vg.nodes["up"].detail == "×2 nearest" and vg.nodes["up2"].detail == "×2,1.5 bilinear"
    assert vg.nodes["ps"].detail == "×2" and vg.nodes["to"].detail == "→ 13x7 nearest"   # an output size
