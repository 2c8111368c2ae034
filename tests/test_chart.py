"""The demo's dependency-free PNG bar chart."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from load_balancing_module.chart import bar_chart


def test_writes_a_valid_png_with_one_bar_per_value(tmp_path: Path) -> None:
    path = bar_chart(tmp_path / "c.png", ["a", "b", "c"], [10, 5, 0], "title")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (3 * (24 + 3 * 64), 3 * 270)
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41 : 41 + idat_len])
    assert len(raw) == height * (1 + 3 * width)
    # Column of the first bar, just above the axis, is coloured; the third (value 0) is white.
    row = raw[(3 * 229) * (1 + 3 * width) + 1 :][: 3 * width]
    first_bar_x, third_bar_x = 3 * (24 + 20), 3 * (24 + 2 * 64 + 20)
    assert row[3 * first_bar_x : 3 * first_bar_x + 3] != b"\xff\xff\xff"
    assert row[3 * third_bar_x : 3 * third_bar_x + 3] == b"\xff\xff\xff"
