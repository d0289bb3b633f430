"""Photos from 48-200 MP phone cameras (baseline JPEGs) are imported, searched and uploaded: decoded
at a reduced JPEG scale, in bounded memory, with their true size and hash recorded; a file declaring
more than that, or a progressive JPEG / PNG too large to decode whole, is still refused clearly."""
from __future__ import annotations

import hashlib
import io
import struct

import pytest
from PIL import Image

from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.readers import RowProblem, read_source
from shopsearch.embedding.items import DECODED_MAX_SIDE
from shopsearch.embedding.preprocess import decode_source
from shopsearch.errors import ImageTooLargeError, InvalidImageError
from shopsearch.images import DEFAULT_MAX_PIXELS, MAX_JPEG_PIXELS, inspect_image, load_image
from tests.test_webapp import api_search, app, client, site  # noqa: F401

W48, H48 = 8064, 6048  # a 48 MP phone photo


def _jpeg(size: tuple[int, int], mode: str = "RGB", **kw) -> bytes:
    """A flat photo of that size (a few hundred KB: flat areas compress well)."""
    img = Image.new(mode, size, (90, 140, 60) if mode == "RGB" else 120)
    img.paste((200, 40, 40) if mode == "RGB" else 30, (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo48() -> bytes:
    return _jpeg((W48, H48))


def _declaring(data: bytes, w: int, h: int, sof: int | None = None) -> bytes:
    """The JPEG with its frame header claiming w x h (its data left as it is), and another SOF marker."""
    i = data.index(b"\xff\xc0")
    out = bytearray(data)
    out[i + 5:i + 9] = struct.pack(">HH", h, w)
    if sof is not None:
        out[i + 1] = sof
    return bytes(out)


def test_a_48mp_photo_is_inspected_at_its_true_size_and_hash(tmp_path, photo48):
    p = tmp_path / "phone.jpg"
    p.write_bytes(photo48)
    m = inspect_image(p)
    assert (m.width, m.height, m.format) == (W48, H48, "JPEG")
    assert m.sha256 == hashlib.sha256(photo48).hexdigest() and m.file_size == len(photo48)


def test_a_48mp_photo_is_decoded_at_a_reduced_scale(photo48):
    assert load_image(photo48, draft_size=320).size == (W48 // 8, H48 // 8)
    whole = load_image(photo48)  # no draft asked: the largest scale that fits the pixel limit
    assert whole.size == (W48 // 2, H48 // 2) and whole.size[0] * whole.size[1] <= DEFAULT_MAX_PIXELS
    query = decode_source(photo48, 320)
    assert max(query.size) == DECODED_MAX_SIDE and query.getpixel((query.size[0] * 3 // 8, query.size[1] * 3 // 8))[0] > 150


def test_a_200mp_photo_is_accepted(tmp_path):
    data = _jpeg((16320, 12240), "L")  # a 200 MP sensor's photo (greyscale: 4x less to encode here)
    p = tmp_path / "p200.jpg"
    p.write_bytes(data)
    m = inspect_image(p)
    assert (m.width, m.height) == (16320, 12240)
    assert load_image(p, draft_size=320).size == (2040, 1530)


def test_import_takes_a_48mp_photo(tmp_path, catalogue, photo48):
    (tmp_path / "phone.jpg").write_bytes(photo48)
    (tmp_path / "m.csv").write_text("sku,title,images\nP,Phone,phone.jpg\n")
    problems: list[RowProblem] = []
    report = import_catalogue(catalogue, read_source(tmp_path / "m.csv", "csv", problems), problems, workers=1,
                              progress=False)
    assert (report.images_added, report.images_failed) == (1, 0), report.problems
    (img,) = catalogue.get_product("P").images
    assert (img.status, img.width, img.height) == ("ok", W48, H48)
    assert img.sha256 == hashlib.sha256(photo48).hexdigest()


def test_a_48mp_upload_is_searched(client, photo48):  # noqa: F811
    r = api_search(client, photo48)
    assert r.status_code == 200, r.json


def test_bombs_and_oversized_files_are_still_refused(tmp_path):
    small = _jpeg((64, 48))
    # a small file claiming more than any phone photo
    with pytest.raises(ImageTooLargeError, match=f"the limit is {MAX_JPEG_PIXELS:,} pixels"):
        load_image(_declaring(small, 19_000, 14_000))
    with pytest.raises(ImageTooLargeError, match="20,000 per side"):
        load_image(_declaring(small, 30_000, 100))
    # a small file claiming 200 MP (the decoder would make up the pixels its data lacks)
    bomb = _declaring(small, 16_000, 12_000)
    with pytest.raises(ImageTooLargeError, match="far too little .* decompression bomb"):
        load_image(bomb, draft_size=320)
    (tmp_path / "bomb.jpg").write_bytes(bomb)
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        inspect_image(tmp_path / "bomb.jpg")
    # a genuine photo cut short is refused as truncated
    cut = _jpeg((W48, H48))
    with pytest.raises(InvalidImageError, match="truncated"):
        load_image(cut[:len(cut) * 2 // 3], draft_size=320)
    # a progressive JPEG is decoded whole (every coefficient held until its last scan): the general limit
    with pytest.raises(ImageTooLargeError, match="progressive JPEG.*ordinary \\(baseline\\) JPEG"):
        load_image(_declaring(small, W48, H48, sof=0xC2), draft_size=320)
    # other formats are decoded whole too
    png = io.BytesIO()
    Image.new("L", (7000, 6000)).save(png, "PNG")
    with pytest.raises(ImageTooLargeError, match="42 megapixels.*40 megapixels\\) for a PNG image"):
        load_image(png.getvalue())


def test_the_caller_s_pixel_limit_still_bounds_a_jpeg(photo48):
    with pytest.raises(ImageTooLargeError):
        load_image(photo48, max_pixels=500_000)  # 1/8 scale is 762k pixels
    assert load_image(photo48, max_pixels=1_000_000).size == (W48 // 8, H48 // 8)
