"""A small PNG bar chart with no dependencies (zlib and struct), for the demo.

Draws one bar per label, labelled with a 3x5 pixel font, so ``omnixan-lb
demo`` can leave a picture of the load distribution without matplotlib.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

# 3x5 glyphs, one string of 15 bits per character (rows top to bottom).
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", "%": "101001010100101", ".": "000000000000010",
    ":": "000010000010000", "-": "000000111000000", " ": "000000000000000", "_": "000000000000111",
}  # fmt: skip
for _i, _c in enumerate("abcdefghijklmnopqrstuvwxyz"):
    _FONT.setdefault(_c, [
        "010101111101101", "110101110101110", "011100100100011", "110101101101110", "111100110100111",
        "111100110100100", "011100101101011", "101101111101101", "111010010010111", "001001001101010",
        "101101110101101", "100100100100111", "101111111101101", "110101101101101", "010101101101010",
        "110101110100100", "010101101111011", "110101110101101", "011100010001110", "111010010010010",
        "101101101101111", "101101101101010", "101101111111101", "101101010101101", "101101010010010",
        "111001010100111",
    ][_i])  # fmt: skip

Pixel = tuple[int, int, int]
COLOURS: Sequence[Pixel] = ((52, 101, 164), (78, 154, 6), (196, 160, 0), (204, 0, 0), (117, 80, 123), (6, 152, 154))


def bar_chart(path: str | Path, labels: Sequence[str], values: Sequence[float], title: str = "") -> Path:
    """Write a PNG bar chart of ``values`` and return its path."""
    scale = 3
    bar_w, gap, height, top, bottom = 40, 24, 200, 30, 40
    width = gap + len(values) * (bar_w + gap)
    rows = [[(255, 255, 255)] * width for _ in range(top + height + bottom)]
    peak = max(values, default=0.0) or 1.0
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x0 = gap + i * (bar_w + gap)
        h = round(height * value / peak)
        for y in range(top + height - h, top + height):
            for x in range(x0, x0 + bar_w):
                rows[y][x] = COLOURS[i % len(COLOURS)]
        _text(rows, x0, top + height + 6, label[: bar_w // 4], scale=1)
        _text(rows, x0, top + height - h - 8, f"{value:.0f}", scale=1)
    _text(rows, gap, 8, title, scale=2)
    for x in range(gap // 2, width - gap // 2):
        rows[top + height][x] = (0, 0, 0)
    big = [[px for px in row for _ in range(scale)] for row in rows for _ in range(scale)]
    out = Path(path)
    out.write_bytes(_png(big))
    return out


def _text(rows: list[list[Pixel]], x: int, y: int, text: str, scale: int) -> None:
    for n, ch in enumerate(text.lower()):
        glyph = _FONT.get(ch, _FONT[" "])
        for bit, on in enumerate(glyph):
            if on != "1":
                continue
            gx, gy = x + n * 4 * scale + (bit % 3) * scale, y + (bit // 3) * scale
            for dy in range(scale):
                for dx in range(scale):
                    if 0 <= gy + dy < len(rows) and 0 <= gx + dx < len(rows[0]):
                        rows[gy + dy][gx + dx] = (0, 0, 0)


def _png(rows: list[list[Pixel]]) -> bytes:
    height, width = len(rows), len(rows[0])
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
