"""A drawing as a list of primitives (boxes, text, curves, polygons) and its two painters:
SVG text written directly, and matplotlib (PNG/PDF). Coordinates are points, y pointing down."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from html import escape

__all__ = ["Scene", "Box", "Text", "Curve", "Poly", "text_width", "render_svg", "render_matplotlib", "png_size",
           "FONT"]

FONT = "DejaVu Sans"
SVG_FONT = "'DejaVu Sans', Verdana, 'Segoe UI', Arial, sans-serif"


@lru_cache(maxsize=4096)
def text_width(s: str, size: float, bold: bool = False) -> float:
    """Width in points of ``s`` set in DejaVu Sans (matplotlib's bundled font)."""
    if not s:
        return 0.0
    try:
        from matplotlib.font_manager import FontProperties
        fp = FontProperties(family=FONT, weight="bold" if bold else "normal", size=size)
        w, _, _ = _T2P().get_text_width_height_descent(s, fp, ismath=False)
        return float(w)
    except Exception:  # pragma: no cover - no matplotlib: a generous estimate
        return len(s) * size * (0.66 if bold else 0.6)


@lru_cache(maxsize=1)
def _T2P():
    from matplotlib.textpath import TextToPath
    return TextToPath()


@dataclass
class Box:
    x: float
    y: float
    w: float
    h: float
    fill: str
    stroke: str
    stroke_width: float = 1.2
    radius: float = 6.0
    node: str | None = None        # layer id (for hover/click in HTML)
    title: str = ""               # tooltip text
    dash: bool = False


@dataclass
class Text:
    x: float
    y: float                      # baseline
    text: str
    size: float = 10.0
    bold: bool = False
    color: str = "#1a202c"
    anchor: str = "start"         # start | middle | end
    halo: bool = False            # white outline so it stays legible over lines
    node: str | None = None


@dataclass
class Curve:
    points: list[tuple[float, float]]   # start, (control1, control2, end)*
    color: str = "#4a5568"
    width: float = 1.1


@dataclass
class Poly:
    points: list[tuple[float, float]]
    fill: str = "#4a5568"


@dataclass
class Scene:
    width: float
    height: float
    items: list = field(default_factory=list)
    title: str = ""

    def add(self, item):
        self.items.append(item)
        return item


# ---------------------------------------------------------------------------------------------
def _f(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def render_svg(scene: Scene, standalone: bool = True, svg_id: str = "cnngraph-net") -> str:
    """The scene as SVG text (UTF-8). Each layer box is a ``<g class="node" data-id=...>`` with a
    ``<title>`` tooltip."""
    out = []
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" id="{svg_id}" width="{_f(scene.width)}pt" '
            f'height="{_f(scene.height)}pt" viewBox="0 0 {_f(scene.width)} {_f(scene.height)}" '
            f'font-family="{escape(SVG_FONT)}">')
    if standalone:
        out.append('<?xml version="1.0" encoding="UTF-8"?>')
    out.append(head)
    if scene.title:
        out.append(f"<title>{escape(scene.title)}</title>")
    out.append('<rect x="0" y="0" width="100%" height="100%" fill="#ffffff"/>')
    out.append('<g id="viewport">')
    open_node = None
    for it in scene.items:
        node = getattr(it, "node", None)
        if node != open_node:
            if open_node is not None:
                out.append("</g>")
            if node is not None:
                out.append(f'<g class="node" data-id="{escape(node)}">')
            open_node = node
        if isinstance(it, Box):
            extra = ' stroke-dasharray="5,3"' if it.dash else ""
            title = f"<title>{escape(it.title)}</title>" if it.title else ""
            out.append(f'<rect x="{_f(it.x)}" y="{_f(it.y)}" width="{_f(it.w)}" height="{_f(it.h)}" '
                       f'rx="{_f(it.radius)}" fill="{it.fill}" stroke="{it.stroke}" '
                       f'stroke-width="{_f(it.stroke_width)}"{extra}>{title}</rect>')
        elif isinstance(it, Text):
            anchor = {"start": "start", "middle": "middle", "end": "end"}[it.anchor]
            style = ' font-weight="bold"' if it.bold else ""
            halo = ' stroke="#ffffff" stroke-width="3" paint-order="stroke" stroke-linejoin="round"' if it.halo else ""
            out.append(f'<text x="{_f(it.x)}" y="{_f(it.y)}" font-size="{_f(it.size)}" fill="{it.color}" '
                       f'text-anchor="{anchor}"{style}{halo}>{escape(it.text)}</text>')
        elif isinstance(it, Curve):
            p = it.points
            d = f"M{_f(p[0][0])},{_f(p[0][1])}"
            for k in range(1, len(p), 3):
                c1, c2, e = p[k:k + 3]
                d += f" C{_f(c1[0])},{_f(c1[1])} {_f(c2[0])},{_f(c2[1])} {_f(e[0])},{_f(e[1])}"
            out.append(f'<path class="edge" d="{d}" fill="none" stroke="{it.color}" stroke-width="{_f(it.width)}"/>')
        elif isinstance(it, Poly):
            pts = " ".join(f"{_f(x)},{_f(y)}" for x, y in it.points)
            out.append(f'<polygon points="{pts}" fill="{it.fill}"/>')
    if open_node is not None:
        out.append("</g>")
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


def render_matplotlib(scene: Scene, path, fmt: str, dpi: int = 150) -> tuple[int, int]:
    """Paint the scene with matplotlib (Agg/PDF backends, no display). Returns the PNG size in pixels
    (for PDF, the page size in points)."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.patches import FancyBboxPatch, PathPatch, Polygon
    from matplotlib.path import Path as MPath

    fig = Figure(figsize=(scene.width / 72.0, scene.height / 72.0))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, scene.width)
    ax.set_ylim(scene.height, 0)
    ax.axis("off")
    fig.patch.set_facecolor("white")
    z = 1
    for it in scene.items:
        z += 1
        if isinstance(it, Box):
            r = min(it.radius, it.w / 2, it.h / 2)
            ax.add_patch(FancyBboxPatch((it.x + r, it.y + r), it.w - 2 * r, it.h - 2 * r,
                                        boxstyle=f"round,pad={r}", facecolor=it.fill, edgecolor=it.stroke,
                                        linewidth=it.stroke_width, linestyle="--" if it.dash else "-", zorder=z))
        elif isinstance(it, Text):
            kw = {}
            if it.halo:
                import matplotlib.patheffects as pe
                kw["path_effects"] = [pe.withStroke(linewidth=3, foreground="white")]
            ax.text(it.x, it.y, it.text, fontsize=it.size, fontweight="bold" if it.bold else "normal",
                    color=it.color, ha={"start": "left", "middle": "center", "end": "right"}[it.anchor],
                    va="baseline", family=FONT, zorder=z + 1000, **kw)
        elif isinstance(it, Curve):
            codes = [MPath.MOVETO] + [MPath.CURVE4] * (len(it.points) - 1)
            ax.add_patch(PathPatch(MPath(it.points, codes), facecolor="none", edgecolor=it.color,
                                   linewidth=it.width, zorder=1))
        elif isinstance(it, Poly):
            ax.add_patch(Polygon(it.points, closed=True, facecolor=it.fill, edgecolor="none", zorder=2))
    if fmt == "pdf":
        fig.savefig(path, format="pdf")
        return int(round(scene.width)), int(round(scene.height))
    fig.savefig(path, format="png", dpi=dpi, facecolor="white")
    return png_size(path)


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's header. Not Pillow: opening a big drawing would trip its
    decompression-bomb check (a warning, or an error past 179 M pixels) on a file we just wrote."""
    import struct
    with open(path, "rb") as f:
        head = f.read(24)
    return struct.unpack(">II", head[16:24])
