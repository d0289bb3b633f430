"""Image files that make Pillow raise something other than OSError (found by an adversarial
probe): each must be refused as one invalid file, never abort an import, a build or a request."""
from __future__ import annotations

import io
import struct

from PIL import Image, PngImagePlugin


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def ztxt_bomb_png() -> bytes:
    """A 32x32 PNG whose zTXt chunk inflates to 50 MB: ValueError in Image.open."""
    info = PngImagePlugin.PngInfo()
    info.add_text("big", "A" * 50_000_000, zip=True)
    return _encode(Image.new("RGB", (32, 32), (200, 10, 10)), "PNG", pnginfo=info)


def bad_ihdr_png() -> bytes:
    """A PNG whose IHDR chunk claims 5 bytes: ValueError('Truncated IHDR chunk') in Image.open."""
    data = bytearray(_encode(Image.new("RGB", (32, 32), (10, 200, 10)), "PNG"))
    data[8:12] = struct.pack(">I", 5)
    return bytes(data)


def bad_strip_tiff() -> bytes:
    """A TIFF with RowsPerStrip 0 (strips of no height): ValueError when its pixels are read."""
    data = bytearray(_encode(Image.new("RGB", (32, 32), (10, 10, 200)), "TIFF"))
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", data[entry:entry + 2])[0] == 278:  # RowsPerStrip (SHORT or LONG)
            data[entry + 8:entry + 12] = bytes(4)
    return bytes(data)


HOSTILE = {"ztxt.png": ztxt_bomb_png, "ihdr.png": bad_ihdr_png, "strip.tif": bad_strip_tiff}
