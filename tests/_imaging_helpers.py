"""Synthetic image files for the pixel-limit tests: huge headers, tiny files, nothing decoded."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png_bytes(w: int, h: int) -> bytes:
    """A PNG whose header claims ``w``×``h`` 1-bit grey pixels but whose data stops after a few
    bytes: opening it reads the size only, decoding fails as truncated (memory is never touched
    beyond the first rows)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def huge_png(path: Path, w: int, h: int) -> Path:
    path.write_bytes(huge_png_bytes(w, h))
    return path
