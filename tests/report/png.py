"""Just enough PNG decoding (8-bit RGB/RGBA, not interlaced) to look at a screenshot
without Pillow: zlib for the data, the five scanline filters undone by hand."""

from __future__ import annotations

import operator
import struct
import zlib
from dataclasses import dataclass

_WRAP = bytes(i & 0xFF for i in range(512))  # (a + b) mod 256, looked up in C


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    channels: int
    rows: list[bytes]

    def count_colour(self, rgb: str) -> int:
        """Occurrences of an exact #rrggbb colour (pixel alignment is checked)."""
        needle, n = bytes.fromhex(rgb.lstrip("#")), 0
        for row in self.rows:
            start = row.find(needle)
            while start != -1:
                n += start % self.channels == 0
                start = row.find(needle, start + 1)
        return n

    def ink_share(self) -> float:
        """The share of channel values that are not pure white."""
        total = sum(len(row) for row in self.rows)
        return sum(len(row) - row.count(b"\xff") for row in self.rows) / total


def decode(data: bytes) -> Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, "unsupported PNG variant"
    channels = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(bytes(idat)), width * channels
    rows, prev = [], bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        row = _unfilter(raw[start], raw[start + 1:start + 1 + stride], prev, channels)
        rows.append(row)
        prev = row
    return Image(width, height, channels, rows)


def _unfilter(kind: int, line: bytes, prev: bytes, bpp: int) -> bytes:
    if kind == 0:
        return line
    if kind == 2:  # Up
        return bytes(map(_WRAP.__getitem__, map(operator.add, line, prev)))
    out = bytearray(line)
    for i in range(len(out)):
        left = out[i - bpp] if i >= bpp else 0
        if kind == 1:  # Sub
            out[i] = (out[i] + left) & 0xFF
        elif kind == 3:  # Average
            out[i] = (out[i] + ((left + prev[i]) >> 1)) & 0xFF
        else:  # Paeth
            up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            out[i] = (out[i] + pred) & 0xFF
    return bytes(out)
