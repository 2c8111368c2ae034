"""A small SVG bar chart written as text, for the demo (no plotting library needed).

One bar per label, its height proportional to its value, the value above it
and the label under the axis. Labels and title are escaped: a backend's name
cannot break the document.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

COLOURS = ("#3465a4", "#4e9a06", "#c4a000", "#cc0000", "#75507b", "#06989a")
BAR_WIDTH = 48
GAP = 24
PLOT_HEIGHT = 200  # the tallest bar
TOP = 48  # room for the title and the tallest bar's value
BOTTOM = 32  # room for the labels


def bar_chart(path: str | Path, labels: Sequence[str], values: Sequence[float], title: str = "") -> Path:
    """Write an SVG bar chart of ``values`` (one bar per label) to ``path`` and return the path."""
    out = Path(path)
    out.write_text(render(labels, values, title), encoding="utf-8")
    return out


def render(labels: Sequence[str], values: Sequence[float], title: str = "") -> str:
    """The SVG document of the chart."""
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels for {len(values)} values")
    width = GAP + len(values) * (BAR_WIDTH + GAP)
    height = TOP + PLOT_HEIGHT + BOTTOM
    axis = TOP + PLOT_HEIGHT
    peak = max(values, default=0.0) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text class="title" x="{GAP}" y="20" font-size="16">{escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = GAP + i * (BAR_WIDTH + GAP)
        h = PLOT_HEIGHT * value / peak
        centre = x + BAR_WIDTH / 2
        parts.append(
            f'<rect class="bar" x="{x}" y="{axis - h:.2f}" width="{BAR_WIDTH}" height="{h:.2f}" '
            f'fill="{COLOURS[i % len(COLOURS)]}"><title>{escape(label)}: {value:g}</title></rect>'
        )
        parts.append(f'<text class="value" x="{centre}" y="{axis - h - 4:.2f}" text-anchor="middle">{value:.0f}</text>')
        parts.append(f'<text class="label" x="{centre}" y="{axis + 18}" text-anchor="middle">{escape(label)}</text>')
    parts.append(f'<line class="axis" x1="{GAP / 2}" y1="{axis}" x2="{width - GAP / 2}" y2="{axis}" stroke="#000000"/>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
