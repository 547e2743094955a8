"""Hostile image payloads for the decode-limit tests and bench/bench_decode_bomb.py (no tests here).

A decompression bomb is a tiny, valid file that declares a huge image: a PNG's IDAT of all-zero rows
deflates about 1000:1, so a 12000x12000 greyscale PNG is 140 KB and decodes to 144 MB (432 MB as
the RGB the pipeline converts it to). Built row by row, so making one never allocates the image.
"""
from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(height: int, width: int, colour: bool = False) -> bytes:
    """A valid 8-bit PNG of ``height`` x ``width`` zero pixels (grey, or RGB with ``colour``)."""
    channels = 3 if colour else 1
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2 if colour else 0, 0, 0, 0)
    z = zlib.compressobj(9)
    row = bytes(1 + width * channels)          # filter byte 0 + a row of zeros
    parts = [z.compress(row) for _ in range(height)]
    parts.append(z.flush())
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def jpeg_with_size(jpeg: bytes, height: int, width: int) -> bytes:
    """``jpeg`` with the frame header (SOF) rewritten to declare ``height`` x ``width``: what a hostile
    encoder sends to make a decoder allocate for an image the data does not hold."""
    i = 2
    while i + 4 <= len(jpeg):
        marker = jpeg[i + 1]
        length = struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return jpeg[:i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9:]
        i += 2 + length
    raise ValueError("no SOF marker in the JPEG")
