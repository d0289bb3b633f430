"""JPEG headers walked once, at C speed, before Pillow: padded or junk-filled headers refused in
milliseconds, padding no cover for a decompression bomb, MPO photos decoded at a reduced scale
like JPEGs, 12-bit JPEGs named as such; camera JPEGs (EXIF, ICC, XMP, progressive) still load."""
from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
from PIL import Image, ImageCms, JpegImagePlugin

import shopsearch.images as images
from shopsearch.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageError
from shopsearch.images import inspect_image, load_image, scan_once, upright_size
from shopsearch.jpeg_scan import MAX_MARKERS, MAX_PADDING, MAX_SCANS, scan_header
from tests.test_webapp import api_search, app, client, site  # noqa: F401

TEN_MB = 10_000_000


def _jpeg(size: tuple[int, int] = (640, 480), **kw) -> bytes:
    img = Image.new("RGB", size, (90, 140, 60))
    img.paste((200, 40, 40), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80, **kw)
    return buf.getvalue()


def _declaring(data: bytes, w: int, h: int) -> bytes:
    i = data.index(b"\xff\xc0")
    return data[:i + 5] + struct.pack(">HH", h, w) + data[i + 9:]


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


@pytest.fixture
def counted(monkeypatch):
    """How many header walks (jpeg_scan) and Pillow JPEG opens the code under test makes."""
    calls = {"walks": 0, "pillow": 0}

    def walk(data):
        calls["walks"] += 1
        return scan_header(data)

    def factory(*a, **k):
        calls["pillow"] += 1
        return real_factory(*a, **k)

    real_factory = JpegImagePlugin.jpeg_factory
    monkeypatch.setattr(images, "scan_header", walk)
    monkeypatch.setattr(JpegImagePlugin, "jpeg_factory", factory)
    return calls


# -- 1. padding and junk in the header ------------------------------------------------------
@pytest.mark.parametrize("padded", [
    pytest.param(lambda j: j[:2] + b"\xff" * TEN_MB + j[2:], id="fill-bytes-after-SOI"),
    pytest.param(lambda j: j[:20] + b"\x00" * TEN_MB + j[20:], id="junk-after-APP0"),
    pytest.param(lambda j: j[:20] + b"\x00\xff" * (TEN_MB // 2) + j[20:], id="escaped-ff-junk"),
])
def test_a_10mb_padded_header_is_refused_in_milliseconds_without_pillow(counted, tmp_path, padded):
    data = padded(_jpeg())
    assert len(data) > TEN_MB
    t0 = time.perf_counter()
    with pytest.raises(InvalidImageError, match="more than 65,536 bytes of padding or junk"):
        load_image(data, draft_size=224)
    assert time.perf_counter() - t0 < 1.5  # ~1-30 ms; Pillow's own byte loop took 4-11 s
    assert counted == {"walks": 1, "pillow": 0}  # one walk, and Pillow never reads the header
    (tmp_path / "p.jpg").write_bytes(data)  # a file on disk is walked through mmap, not read whole
    with pytest.raises(InvalidImageError, match="padding or junk"):
        inspect_image(tmp_path / "p.jpg")


def test_a_header_of_millions_of_markers_is_refused():
    j = _jpeg()
    for filler in (b"\xff\xe0\x00\x02", b"\xff\xd0"):  # empty APP0 segments; restart markers
        with pytest.raises(InvalidImageError, match=f"more than {MAX_MARKERS:,} markers"):
            load_image(j[:2] + filler * 2_000_000 + j[2:])


def test_a_little_padding_still_decodes_the_same_pixels():
    j = _jpeg()
    want = np.asarray(load_image(j))
    for padded in (j[:2] + b"\xff" * 1000 + j[2:],  # fill bytes, legal before any marker
                   j[:20] + b"\x00junk\xff\x00" * 100 + j[20:],  # bytes a damaged copy left between segments
                   j[:2] + b"\xff" * (MAX_PADDING - 10) + j[2:],  # just under the limit
                   j[:2] + _segment(0xE5, b"\x00" * 60_000) * 40 + j[2:]):  # large APP segments are no padding
        assert np.array_equal(np.asarray(load_image(padded)), want)


# -- 2. the bomb rule counts the image data, not the file --------------------------------------
def test_padding_does_not_hide_a_decompression_bomb():
    bomb = _declaring(_jpeg((64, 48)), 16_000, 12_000)  # 192 MP claimed from ~1 KB of data
    for padded in (bomb + b"\x00" * TEN_MB,  # junk after the picture (EOI)
                   bomb[:2] + _segment(0xE5, b"\x00" * 65_000) * 160 + bomb[2:]):  # 10 MB of APP segments
        assert len(padded) * 2048 > 16_000 * 12_000  # the file size alone would pass the rule
        with pytest.raises(ImageTooLargeError, match="from [0-9,]+ bytes of image data.*decompression bomb"):
            load_image(padded, draft_size=320)


def test_the_image_data_length_ends_at_the_first_marker_other_than_a_restart():
    head = (b"\xff\xd8" + _segment(0xC0, b"\x08" + struct.pack(">HH", 8, 8) + b"\x01\x01\x11\x00")
            + _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00"))
    data = head + b"\x12\xff\x00\x34\xff\xd3\x56\xff\xff\xd9" + b"after the picture" * 100
    h = scan_header(data)
    assert (h.sof, h.width, h.height, h.components, h.scan_components) == (0xC0, 8, 8, 1, 1)
    # stuffed 0xFF00 and the restart marker are data; the fill byte before EOI counts as data too
    assert (h.data_start, h.data_length) == (len(head), 8)


# -- camera JPEGs still load, at their size and orientation -----------------------------------
def test_camera_jpegs_with_exif_icc_xmp_and_progressive_still_load():
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter
    exif[0x010F] = "PhoneMaker"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    big_icc = icc + b"\x00" * 150_000  # split over several APP2 segments, as large profiles are
    for kw in ({"exif": exif.tobytes(), "icc_profile": icc},
               {"exif": exif.tobytes(), "icc_profile": big_icc, "xmp": b"<x:xmpmeta>" + b" " * 30_000},
               {"exif": exif.tobytes(), "icc_profile": icc, "progressive": True}):
        data = _jpeg((1200, 900), **kw)
        out = load_image(data)
        assert out.size == (900, 1200) and out.mode == "RGB"
        assert upright_size(data) == (900, 1200)
        assert scan_header(data).padding == 0


def test_a_large_camera_jpeg_is_still_decoded_at_a_reduced_scale():
    exif = Image.Exif()
    exif[0x0112] = 8
    data = _jpeg((4000, 3000), exif=exif.tobytes())
    assert load_image(data, max_pixels=1_000_000).size == (750, 1000)  # 1/4 a side fits, turned


def test_a_cropped_upload_walks_its_header_once_in_the_crop_path(client, counted):  # noqa: F811
    """decode_upload walks the header once; crop_source (upright size, then the sharper decode)
    reuses one walk instead of parsing the header again with Pillow."""
    scene = Image.new("RGB", (4000, 3000), (128, 128, 128))
    buf = io.BytesIO()
    scene.save(buf, "JPEG", quality=85)
    r = api_search(client, buf.getvalue(), crop="0.5,0.5,0.025,0.0333")
    assert r.status_code == 200, r.get_json()
    assert counted == {"walks": 2, "pillow": 2}  # the upload's decode, the crop's sharper decode
    data = buf.getvalue()
    with scan_once(data):
        assert upright_size(data) == (4000, 3000)
        load_image(data, draft_size=224)
    assert counted["walks"] == 3


# -- 3. MPO -----------------------------------------------------------------------------------
def _mpo(size: tuple[int, int]) -> bytes:
    left, right = Image.new("RGB", size, (200, 30, 30)), Image.new("RGB", size, (30, 30, 200))
    buf = io.BytesIO()
    left.save(buf, "MPO", save_all=True, append_images=[right], quality=85)
    return buf.getvalue()


def test_an_mpo_is_decoded_at_a_reduced_scale_like_a_jpeg(tmp_path):
    data = _mpo((3200, 2400))
    assert Image.open(io.BytesIO(data)).format == "MPO"
    out = load_image(data, draft_size=224)
    assert out.size == (400, 300) == load_image(_jpeg((3200, 2400)), draft_size=224).size
    assert np.abs(np.asarray(out, int)[150, 200] - (200, 30, 30)).max() < 12  # the first picture
    assert load_image(data, max_pixels=1_000_000).size == (800, 600)  # fits the pixel limit, as a JPEG
    (tmp_path / "p.mpo").write_bytes(data)
    meta = inspect_image(tmp_path / "p.mpo")
    assert (meta.format, meta.width, meta.height) == ("MPO", 3200, 2400)


# -- 4. 12-bit JPEGs --------------------------------------------------------------------------
def _twelve_bit() -> bytes:
    """A hand-made extended-sequential (SOF1) header with 12-bit samples, which Pillow cannot decode."""
    frame = b"\x0c" + struct.pack(">HH", 48, 64) + b"\x01\x01\x11\x00"
    return (b"\xff\xd8" + _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00") + _segment(0xC1, frame)
            + _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00") + b"\x00" * 64 + b"\xff\xd9")


def test_a_12_bit_jpeg_is_named_as_such(client):  # noqa: F811
    with pytest.raises(UnsupportedImageError, match="12-bit JPEGs are not supported.*re-save it as an ordinary 8-bit"):
        load_image(_twelve_bit())
    r = api_search(client, _twelve_bit())
    assert r.status_code == 415 and "12-bit JPEGs are not supported" in r.get_json()["error"]["message"]


def test_a_progressive_jpeg_repeating_its_scans_is_refused_before_decoding():
    """Each scan is one more pass of libjpeg over the whole image: a 4000x4000 photo with its
    last scan repeated 500 times (110 KB) took 11 s to decode."""
    data = _jpeg((1024, 1024), progressive=True)
    last = data.rindex(b"\xff\xda")
    scan = data[last:-2]  # the last scan, up to EOI
    assert scan_header(data) is not None and 1 + data.count(b"\xff\xda", data.index(b"\xff\xda") + 2) <= 12
    with load_image(data) as ordinary:  # a progressive photo's ~10 scans decode as before
        assert ordinary.size == (1024, 1024)
    bomb = data[:-2] + scan * MAX_SCANS + data[-2:]
    t0 = time.perf_counter()
    with pytest.raises(InvalidImageError, match="scans"):
        load_image(bomb)
    assert time.perf_counter() - t0 < 0.5
