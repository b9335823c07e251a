"""Request bodies for the server tests: real images and the broken ones a server must refuse."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from frcnn.serving.examples import EXAMPLES, FOLDER


def example_bytes(index: int = 0) -> bytes:
    return (FOLDER / list(EXAMPLES)[index]).read_bytes()


def png_bytes(width: int, height: int, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header for a ``width`` x ``height`` RGB image, then zlib data of zero rows: a few
    KB that would decode to width * height * 3 bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    rows = zlib.compressobj(9)
    data = rows.compress(b"\x00" * (1 + 3 * width) * min(height, 64)) + rows.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
