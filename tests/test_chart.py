"""The demo's SVG bar chart."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from load_balancing_module.cli.chart import bar_chart

SVG = "{http://www.w3.org/2000/svg}"


def _of_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}{tag}") if e.get("class") == cls]


def test_bars_are_proportional_to_the_values_and_stand_on_the_axis(tmp_path: Path) -> None:
    path = bar_chart(tmp_path / "c.svg", ["a", "b", "c", "d"], [10, 5, 0, 2.5], "requests per backend")
    root = ET.parse(path).getroot()
    bars = _of_class(root, "rect", "bar")
    heights = [float(b.get("height", "nan")) for b in bars]
    assert heights[0] > 0
    assert [h / heights[0] for h in heights] == pytest.approx([1.0, 0.5, 0.0, 0.25])
    (axis,) = _of_class(root, "line", "axis")
    for bar in bars:
        assert float(bar.get("y", "nan")) + float(bar.get("height", "nan")) == pytest.approx(float(axis.get("y1", "")))
    xs = [float(b.get("x", "nan")) for b in bars]
    assert xs == sorted(xs) and len(set(xs)) == 4  # side by side, in the order given
    assert [t.text for t in _of_class(root, "text", "label")] == ["a", "b", "c", "d"]
    assert [t.text for t in _of_class(root, "text", "value")] == ["10", "5", "0", "2"]
    (title,) = _of_class(root, "text", "title")
    assert title.text == "requests per backend"


def test_labels_are_escaped(tmp_path: Path) -> None:
    label = '<b>&"x"</b>'
    root = ET.parse(bar_chart(tmp_path / "c.svg", [label], [1], "a < b")).getroot()
    assert [t.text for t in _of_class(root, "text", "label")] == [label]
    assert _of_class(root, "text", "title")[0].text == "a < b"


def test_all_zero_values_draw_flat_bars(tmp_path: Path) -> None:
    root = ET.parse(bar_chart(tmp_path / "c.svg", ["a", "b"], [0, 0])).getroot()
    assert [float(b.get("height", "nan")) for b in _of_class(root, "rect", "bar")] == [0.0, 0.0]


def test_a_label_for_every_value() -> None:
    with pytest.raises(ValueError, match="2 labels for 1 values"):
        bar_chart("unused.svg", ["a", "b"], [1])
