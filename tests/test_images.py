"""Hostile and unusual image input gives clear errors (or a correct RGB image)."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from shopsearch.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageError
from shopsearch.images import inspect_image, load_image


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_rejects_empty_and_non_images():
    with pytest.raises(InvalidImageError, match="empty"):
        load_image(b"")
    with pytest.raises(UnsupportedImageError):
        load_image(b"%PDF-1.4 not an image at all")
    with pytest.raises(UnsupportedImageError):
        load_image(b"GIF89a" + b"\x00" * 3)  # looks like a GIF, is not one


def test_truncated_jpeg_is_invalid():
    data = _bytes(Image.new("RGB", (400, 300), (200, 10, 10)), "JPEG", quality=95)
    with pytest.raises(InvalidImageError, match="truncated|corrupt|cannot"):
        load_image(data[: len(data) // 2])


def test_dimension_limits_and_bombs():
    big = _bytes(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ImageTooLargeError):
        load_image(big, max_pixels=1_000_000)
    strip = _bytes(Image.new("L", (30_000, 1)), "PNG")
    with pytest.raises(ImageTooLargeError):
        load_image(strip)
    # A PNG header claiming 100k x 100k pixels (a decompression bomb) is refused before decoding.
    bomb = _bytes(Image.new("1", (1, 1)), "PNG")
    ihdr = bomb.index(b"IHDR")
    import struct
    import zlib

    head = struct.pack(">II", 100_000, 100_000) + bomb[ihdr + 12: ihdr + 17]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + head) & 0xFFFFFFFF)
    forged = bomb[: ihdr + 4] + head + crc + bomb[ihdr + 21:]
    with pytest.raises(ImageTooLargeError):
        load_image(forged)


def test_modes_are_converted_to_rgb():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent -> white background
    out = load_image(_bytes(rgba, "PNG"))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)
    cmyk = load_image(_bytes(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((4, 4))[0] > 200
    sixteen = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))
    out16 = load_image(_bytes(sixteen, "PNG"))
    assert out16.mode == "RGB" and 140 < out16.getpixel((0, 0))[0] < 170


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = load_image(_bytes(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_inspect_image_reports_hash_and_size(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (30, 10), (1, 2, 3)).save(p)
    m = inspect_image(p)
    assert (m.width, m.height, m.format) == (30, 10, "PNG") and len(m.sha256) == 64
    with pytest.raises(InvalidImageError, match="no such file"):
        inspect_image(tmp_path / "missing.jpg")


def test_a_folder_or_a_device_is_named_as_such_not_as_missing(tmp_path):
    from shopsearch.images import inspect_image, load_image

    (tmp_path / "adir.jpg").mkdir()
    for read in (inspect_image, load_image):
        with pytest.raises(InvalidImageError, match="is a folder, not an image file"):
            read(tmp_path / "adir.jpg")
        with pytest.raises(InvalidImageError, match="not a regular file"):
            read("/dev/null")
        with pytest.raises(InvalidImageError, match="^no such file"):
            read(tmp_path / "gone.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")  # nothing writes to it: reading it would wait for ever
    with pytest.raises(InvalidImageError, match="not a regular file"):
        inspect_image(tmp_path / "pipe.jpg")


def test_heic_photos_from_iphones_are_read():
    from shopsearch.images import load_image

    im = Image.new("RGB", (320, 240), (200, 30, 30))
    buf = io.BytesIO()
    im.save(buf, format="HEIF", quality=90)
    data = buf.getvalue()
    assert data[4:12] == b"ftypheic"
    out = load_image(data)
    assert out.mode == "RGB" and out.size == (320, 240)
    assert np.abs(np.asarray(out, dtype=int)[120, 160] - (200, 30, 30)).max() < 12


def test_heic_import_and_unknown_bytes_name_heic(tmp_path):
    from shopsearch.images import inspect_image, load_image

    im = Image.new("RGB", (64, 48), (20, 120, 200))
    im.save(tmp_path / "p.heic", format="HEIF")
    meta = inspect_image(tmp_path / "p.heic")
    assert (meta.width, meta.height, meta.format) == (64, 48, "HEIF")
    with pytest.raises(UnsupportedImageError, match=r"\(JPEG, PNG, WebP, HEIC, GIF, BMP, TIFF\)"):
        load_image(b"certainly not a picture")
