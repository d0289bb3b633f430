"""Safe image decoding for catalogue files and hostile uploads.

The bytes are sniffed (never the filename or Content-Type), decompression bombs and
absurd dimensions are refused before decoding, EXIF orientation is applied, and every
failure becomes an InvalidImageError subclass with a reason a person can read."""
from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from shopsearch.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageError
from shopsearch.jpeg_scan import JpegHeader, scan_header

try:  # HEIC/HEIF (the iPhone camera's format) through libheif; sniffed by content like the rest
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # an install without it reads every other format; HEIC is then "not an image"
    pass

#: formats we decode; everything else is "not an image" to us (HEIF: iPhones' HEIC photos)
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "HEIF"})
#: what the errors list as readable
READABLE = "JPEG, PNG, WebP, HEIC, GIF, BMP, TIFF"
#: the most pixels decoded at once: the limit of an image decoded whole (PNG, WebP, GIF, BMP,
#: TIFF, and the JPEGs that are decoded whole: progressive or in several scans), 3-4 bytes each in
#: memory (a 40 MP RGBA PNG peaks near 0.5 GB while converted), well below Pillow's bomb
#: threshold (89 MP). A JPEG straight from a camera or phone (48, 50, 108, 200 MP) is decoded at
#: the reduced scale (1/2 to 1/8 a side) that fits this, so only MAX_JPEG_PIXELS limits it
DEFAULT_MAX_PIXELS = 40_000_000
#: the largest photo accepted as a baseline JPEG, the format phone cameras write: 200-megapixel
#: sensors make 16320x12240 photos. Decoding one at 1/8 scale holds ~30 MB and takes well under a
#: second (its compressed data is still read in full), so a small file declaring huge dimensions
#: (a bomb) costs no more than a genuine photo
MAX_JPEG_PIXELS = 250_000_000
#: longest side we accept, whatever the pixel count (e.g. 100000x1 strips)
DEFAULT_MAX_SIDE = 20_000
#: a JPEG past DEFAULT_MAX_PIXELS with fewer bytes than a pixel count / this is a bomb (a small file
#: declaring huge dimensions, the rest made up by the decoder): an optimised all-white JPEG, the
#: most compressible photo there is, has 170-260 pixels a byte
_JPEG_MAX_PIXELS_PER_BYTE = 2048
#: JPEG decoding's reduced scales (libjpeg DCT scaling: 1/1, 1/2, 1/4, 1/8 a side)
_JPEG_SCALES = (1, 2, 4, 8)


@dataclass(frozen=True)
class ImageMeta:
    sha256: str
    width: int
    height: int
    format: str
    file_size: int | None = None  # os.stat before hashing: a later change moves them
    file_mtime_ns: int | None = None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _reason(e: Exception) -> str:
    """A decoder's exception as one short line naming its type (the message may be empty)."""
    text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _megapixels(pixels: int) -> str:
    text = f"{pixels / 1e6:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _pillow_open(src: object, jpeg: bool) -> Image.Image:
    """Image.open, except that a JPEG is opened by its own plugin: Image.open refuses anything
    past Pillow's bomb threshold (a warning past 89 MP, an error past 179 MP) before _open can
    tell that a baseline JPEG is decoded at a reduced scale, in bounded memory."""
    if not jpeg:
        return Image.open(src)  # type: ignore[arg-type]
    try:
        return JpegImagePlugin.jpeg_factory(src)  # type: ignore[arg-type]
    except (SyntaxError, IndexError, TypeError, struct.error) as e:
        # what Image.open turns into "cannot identify image file" (no plugin accepts the file)
        raise UnidentifiedImageError(str(e)) from None


_JPEG_SOI = b"\xff\xd8\xff"
#: (source, its header walk) while scan_once(source) holds: one upload's header is walked once
#: however many times the crop path reads it; [source, _UNSCANNED] until the first walk
_ONCE: ContextVar[list | None] = ContextVar("shopsearch_scan_once", default=None)
_UNSCANNED = object()


@contextmanager
def scan_once(data: bytes) -> Iterator[None]:
    """Within the block, load_image and upright_size of this very `data` object walk its JPEG
    header once and reuse the walk (the block holds `data`: its identity cannot be reused)."""
    token = _ONCE.set([data, _UNSCANNED])
    try:
        yield
    finally:
        _ONCE.reset(token)


def _walk(src: bytes | bytearray | Path) -> tuple[bool, JpegHeader | None]:
    """(is a JPEG, its header walked by jpeg_scan, None when it cannot be walked to a scan). A
    file is read, not mapped: a catalogue file overwritten in place (cp) while it is mapped would
    kill the process with SIGBUS instead of failing that one image."""
    if isinstance(src, (bytes, bytearray)):
        return (True, scan_header(src)) if src[:3] == _JPEG_SOI else (False, None)
    with open(src, "rb") as f:
        if f.read(3) != _JPEG_SOI:
            return False, None
        f.seek(0)
        return True, scan_header(f.read())


def _jpeg_header(src: bytes | bytearray | Path) -> tuple[bool, JpegHeader | None]:
    """_walk, once per source within scan_once."""
    memo = _ONCE.get()
    mine = memo is not None and memo[0] is src
    if mine and memo[1] is not _UNSCANNED:  # type: ignore[index]
        return memo[1]  # type: ignore[index]
    walked = _walk(src)
    if mine:
        memo[1] = walked  # type: ignore[index]
    return walked


#: start-of-frame markers a decoder reads at a reduced scale a band at a time; the others need every
#: coefficient of the image (progressive) or cannot be scaled at all (lossless, hierarchical)
_SCALED_SOF = frozenset({0xC0, 0xC1, 0xC9})  # baseline, extended sequential (Huffman, arithmetic)


def _jpeg_decoded_in_bounded_memory(img: Image.Image, header: JpegHeader | None) -> bool:
    """True for a JPEG libjpeg decodes a band of rows at a time (sequential, one scan holding every
    component), so that decoding it at a reduced scale holds only the reduced image. A progressive
    or multi-scan JPEG keeps two bytes per pixel and component until its last scan, whatever the
    scale (a 200 MP progressive photo: 0.6-1.2 GB)."""
    if img.format not in ("JPEG", "MPO") or img.info.get("progressive") or img.info.get("progression"):
        return False
    return header is not None and header.sof in _SCALED_SOF and header.scan_components == getattr(img, "layers", 0)


def _scaled(w: int, h: int, s: int) -> int:
    return -(-w // s) * -(-h // s)


def _too_large(w: int, h: int, limit: int, max_side: int, what: str, jpeg_limit: int | None) -> ImageTooLargeError:
    text = (f"image is {w}x{h} pixels ({_megapixels(w * h)} megapixels); the limit is {limit:,} pixels "
            f"({_megapixels(limit)} megapixels){what} and {max_side:,} per side")
    if jpeg_limit is not None and w * h <= jpeg_limit and max(w, h) <= max_side:
        text += (f"; saved as an ordinary (baseline) JPEG, as cameras and phones save photos, it could have up to "
                 f"{_megapixels(jpeg_limit)} megapixels")
    return ImageTooLargeError(text)


def _not_a_file(p: Path) -> str:
    """Why `p` is no image file to read: absent (the wording importers and rescans count as
    "missing"), a folder, or a device, pipe or socket."""
    if p.is_dir():
        return f"is a folder, not an image file: {p}"
    if p.exists():
        return f"not a regular file (a device, pipe or socket): {p}"
    return f"no such file: {p}"


def _open(data: bytes | Path | str, max_pixels: int, max_side: int,
          max_jpeg_pixels: int = MAX_JPEG_PIXELS) -> tuple[Image.Image, JpegHeader | None]:
    """The image opened (header only) and checked against the limits, with its JPEG header as
    jpeg_scan walked it (None for other formats), which the decoding steps reuse."""
    if isinstance(data, (bytes, bytearray)):
        if len(data) == 0:
            raise InvalidImageError("the file is empty")
        src: object = io.BytesIO(data)
        whole: bytes | bytearray | Path = data
    else:
        whole = p = Path(data)
        if not p.is_file():
            raise InvalidImageError(_not_a_file(p))
        if p.stat().st_size == 0:
            raise InvalidImageError(f"the file is empty: {p}")
        src = p
    try:
        # before Pillow, whose marker loop would spend seconds on a header padded with junk
        jpeg, header = _jpeg_header(whole)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _pillow_open(src, jpeg)
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own wording names its threshold, not ours (a file past twice Pillow's limit
        # never reaches our check below)
        raise ImageTooLargeError(f"image dimensions are too large; the limit is {max_pixels:,} pixels "
                                 f"and {max_side:,} per side") from None
    except UnidentifiedImageError:
        raise UnsupportedImageError(f"not an image format we can read ({READABLE})") from None
    except OSError as e:
        raise InvalidImageError(f"cannot read image: {e}") from None
    except Exception as e:  # noqa: BLE001 - Pillow parsing hostile headers raises anything
        # ValueError (a zTXt chunk inflating past its limit, a truncated IHDR), SyntaxError,
        # struct.error, ZeroDivisionError...: all mean "this file is not a usable image".
        raise InvalidImageError(f"corrupt image header: {_reason(e)}") from None
    if img.format not in ALLOWED_FORMATS:
        img.close()
        raise UnsupportedImageError(f"unsupported image format {img.format}")
    w, h = img.size
    if w <= 0 or h <= 0:
        img.close()
        raise InvalidImageError("image has no pixels")
    # a JPEG read a band at a time is decoded at the scale that fits max_pixels (1/8 at least);
    # anything else is decoded whole, so max_pixels is its limit
    scaled = img.format in ("JPEG", "MPO") and _jpeg_decoded_in_bounded_memory(img, header)
    jpeg_limit = min(max_jpeg_pixels, 64 * max_pixels)
    if scaled:
        assert header is not None  # _jpeg_decoded_in_bounded_memory says so
        if w * h > jpeg_limit or max(w, h) > max_side or _scaled(w, h, 8) > max_pixels:
            img.close()
            raise _too_large(w, h, jpeg_limit, max_side, "", None)
        # the image data only: padding, APP segments or bytes after the picture make no pixels
        size = header.data_length
        if w * h > max_pixels and size * _JPEG_MAX_PIXELS_PER_BYTE < w * h:
            img.close()
            raise ImageTooLargeError(f"image claims {w}x{h} pixels ({_megapixels(w * h)} megapixels) from "
                                     f"{size:,} bytes of image data, far too little for a photo that size: a "
                                     "damaged file or a decompression bomb")
    elif w * h > max_pixels or max(w, h) > max_side:
        img.close()
        what = " for a progressive JPEG" if img.format in ("JPEG", "MPO") else f" for a {img.format} image"
        raise _too_large(w, h, max_pixels, max_side, what, jpeg_limit)
    return img, header


def _draft(img: Image.Image, header: JpegHeader | None, draft_size: int | None, max_pixels: int) -> None:
    """Set a JPEG's (or an MPO's first picture's) reduced decoding scale: the one draft_size asks
    for (its both sides stay >= draft_size, as Pillow's draft picks it), reduced further until
    the decoded pixels fit max_pixels. Nothing for other formats, or a JPEG decoded whole
    (_open refused one past max_pixels)."""
    if img.format not in ("JPEG", "MPO"):
        return
    w, h = img.size
    need = next((s for s in _JPEG_SCALES if _scaled(w, h, s) <= max_pixels), None)
    if need is None or need == 1 or not _jpeg_decoded_in_bounded_memory(img, header):
        if draft_size:  # exactly as before large photos were accepted: the same decoded pixels
            img.draft("RGB", (draft_size, draft_size))
        return
    asked = 1
    if draft_size:
        fit = min(w // draft_size, h // draft_size)
        asked = max(s for s in _JPEG_SCALES if s <= max(fit, 1))
    s = max(asked, need)
    img.draft("RGB", (max(1, w // s), max(1, h // s)))


def load_image(
    data: bytes | Path | str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    draft_size: int | None = None,
    max_jpeg_pixels: int = MAX_JPEG_PIXELS,
) -> Image.Image:
    """Decode to an upright RGB PIL image, or raise InvalidImageError (or a subclass).

    draft_size lets large JPEGs decode at a reduced scale (PIL draft): far cheaper when the
    model only needs ~224 px. A baseline JPEG larger than max_pixels (up to max_jpeg_pixels) is
    decoded at the reduced scale (1/2, 1/4, 1/8 a side) that fits max_pixels, whatever
    draft_size asks: never more than max_pixels are decoded. Alpha is composited on white,
    16-bit and CMYK are converted."""
    img, header = _open(data, max_pixels, max_side, max_jpeg_pixels)
    try:
        _draft(img, header, draft_size, max_pixels)
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.getchannel("A"))
            return bg
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit greyscale: scale to 8 bits rather than clipping to white. Mode I (32-bit) holds
            # whatever the writer put in it: 8-bit values (an 8-bit photo saved as I) stay as they
            # are, 16-bit ones are scaled like I;16, anything wider by its own maximum
            scale = 1 / 256
            if img.mode == "I":
                hi = img.getextrema()[1]
                scale = 1.0 if hi <= 255 else 1 / 256 if hi <= 65535 else 255 / hi
            img = img.point(lambda v: v * scale).convert("L")
        return img.convert("RGB")
    except InvalidImageError:
        raise
    except Exception as e:  # noqa: BLE001 - see _open: a decoder's exception is the file's fault
        # Truncated JPEGs, broken PNG chunks, TIFF strips outside the image land here.
        raise InvalidImageError(f"corrupt or truncated image: {_reason(e)}") from None


#: a photo whose mean |Laplacian| of grey levels (at 64 px) is under this shows no edge anywhere:
#: one flat colour, or a smooth gradient. Grocery Store test photos score 14-80 (median 36), the
#: same darkened to 8% of their brightness 1.8 and more; a flat colour 0, a wide gradient 0.4.
FLAT_EDGES = 1.0


def grey_thumbnail(img: Image.Image | np.ndarray) -> np.ndarray:
    """The photo's grey levels at 64 px (float32), what the checks on a photo's content read
    (lacks_detail, shopsearch.photo_advice): made once per photo and handed to each; an array
    is taken as already made."""
    if isinstance(img, np.ndarray):
        return img
    small = img.convert("L")
    small.thumbnail((64, 64))
    return np.asarray(small, np.float32)


def lacks_detail(img: Image.Image | np.ndarray) -> bool:
    """True for a photo (or its grey_thumbnail) without a single edge (one flat colour, a smooth
    gradient: a blank screenshot, a lens cap): nothing in it can identify a product, however
    close its colours lie to some product's."""
    a = grey_thumbnail(img)
    if a.shape[0] < 3 or a.shape[1] < 3:
        return float(a.std()) < 2.0
    lap = 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
    return float(np.abs(lap).mean()) < FLAT_EDGES


#: the EXIF orientation tag, and its values that turn the picture by a quarter (width and height swap)
_ORIENTATION = 0x0112
_SIDEWAYS = frozenset({5, 6, 7, 8})

#: files up to this size are read once, then hashed and decoded from memory (one open, one read)
_READ_WHOLE = 32 << 20


def upright_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a photo as shown (EXIF orientation applied) from its header alone, or None
    when the header cannot be read. A JPEG's comes from its header walk (jpeg_scan), shared with
    load_image within scan_once: no second parse of an upload's header."""
    try:
        jpeg, header = _jpeg_header(data)
        if jpeg:
            if header is None:
                return None
            w, h = header.width, header.height
            return (h, w) if header.orientation in _SIDEWAYS else (w, h)
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            return (h, w) if img.getexif().get(_ORIENTATION, 1) in _SIDEWAYS else (w, h)
    except Exception:  # noqa: BLE001 - the decoder proper reports what is wrong with the file
        return None


def inspect_image(path: str | Path) -> ImageMeta:
    """Hash and fully decode a catalogue file; raises InvalidImageError when unusable."""
    if not Path(path).is_file():  # a folder, or a FIFO, which open() would wait on for ever
        raise InvalidImageError(_not_a_file(Path(path)))
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())  # before reading: a write during the read shows at the next rescan
            data = f.read() if st.st_size <= _READ_WHOLE else None
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise InvalidImageError(_not_a_file(Path(path))) from None
    except OSError as e:
        raise InvalidImageError(f"cannot read image: {e}") from None
    if data is not None and not data:
        raise InvalidImageError(f"the file is empty: {path}")
    # clear errors for non-image files; a big file is decoded and hashed from disk instead
    img, header = _open(data if data is not None else path, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE)
    digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)
    fmt = img.format or "?"
    size = img.size  # the true size: a JPEG is checked below at 1/8 scale
    try:
        # every byte of the file is decoded all the same (a truncated or corrupt one is refused),
        # into 1/64 of the pixels: a 200 MP photo holds ~30 MB, not 0.6 GB
        _draft(img, header, 1, DEFAULT_MAX_PIXELS)
        img.load()
        # the upright size (exif_transpose's), without the copy of the pixels it makes of every image
        w, h = size[::-1] if img.getexif().get(_ORIENTATION, 1) in _SIDEWAYS else size
    except Exception as e:  # noqa: BLE001 - see _open
        raise InvalidImageError(f"corrupt or truncated image: {_reason(e)}") from None
    return ImageMeta(digest, w, h, fmt, st.st_size, st.st_mtime_ns)
