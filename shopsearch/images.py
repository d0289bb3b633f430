"""Safe image decoding for catalogue files and hostile uploads.

The bytes are sniffed (never the filename or Content-Type), decompression bombs and
absurd dimensions are refused before decoding, EXIF orientation is applied, and every
failure becomes an InvalidImageError subclass with a reason a person can read."""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shopsearch.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageError

#: formats we decode; everything else is "not an image" to us
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
#: 40 megapixels: beyond any phone photo, well below Pillow's bomb threshold
DEFAULT_MAX_PIXELS = 40_000_000
#: longest side we accept, whatever the pixel count (e.g. 100000x1 strips)
DEFAULT_MAX_SIDE = 20_000


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


def _open(data: bytes | Path | str, max_pixels: int, max_side: int) -> Image.Image:
    if isinstance(data, (bytes, bytearray)):
        if len(data) == 0:
            raise InvalidImageError("the file is empty")
        src: object = io.BytesIO(data)
    else:
        p = Path(data)
        if not p.is_file():
            raise InvalidImageError(f"no such file: {p}")
        if p.stat().st_size == 0:
            raise InvalidImageError(f"the file is empty: {p}")
        src = p
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(src)  # type: ignore[arg-type]
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own wording names its threshold, not ours (a file past twice Pillow's limit
        # never reaches our check below)
        raise ImageTooLargeError(f"image dimensions are too large; the limit is {max_pixels:,} pixels "
                                 f"and {max_side} per side") from None
    except UnidentifiedImageError:
        raise UnsupportedImageError("not an image format we can read (JPEG, PNG, WebP, GIF, BMP, TIFF)") from None
    except OSError as e:
        raise InvalidImageError(f"cannot read image: {e}") from None
    except Exception as e:  # noqa: BLE001 - Pillow parsing hostile headers raises anything
        # ValueError (a zTXt chunk inflating past its limit, a truncated IHDR), SyntaxError,
        # struct.error, ZeroDivisionError...: all mean "this file is not a usable image".
        raise InvalidImageError(f"corrupt image header: {_reason(e)}") from None
    if img.format not in ALLOWED_FORMATS:
        raise UnsupportedImageError(f"unsupported image format {img.format}")
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InvalidImageError("image has no pixels")
    if w * h > max_pixels or max(w, h) > max_side:
        raise ImageTooLargeError(f"image is {w}x{h} pixels; the limit is {max_pixels:,} pixels and {max_side} per side")
    return img


def load_image(
    data: bytes | Path | str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode to an upright RGB PIL image, or raise InvalidImageError (or a subclass).

    draft_size lets large JPEGs decode at a reduced scale (PIL draft): far cheaper when the
    model only needs ~224 px. Alpha is composited on white, 16-bit and CMYK are converted."""
    img = _open(data, max_pixels, max_side)
    try:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
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


def lacks_detail(img: Image.Image) -> bool:
    """True for a photo without a single edge (one flat colour, a smooth gradient: a blank
    screenshot, a lens cap): nothing in it can identify a product, however close its colours
    lie to some product's."""
    small = img.convert("L")
    small.thumbnail((64, 64))
    a = np.asarray(small, np.float32)
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
    when the header cannot be read."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            return (h, w) if img.getexif().get(_ORIENTATION, 1) in _SIDEWAYS else (w, h)
    except Exception:  # noqa: BLE001 - the decoder proper reports what is wrong with the file
        return None


def inspect_image(path: str | Path) -> ImageMeta:
    """Hash and fully decode a catalogue file; raises InvalidImageError when unusable."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())  # before reading: a write during the read shows at the next rescan
            data = f.read() if st.st_size <= _READ_WHOLE else None
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise InvalidImageError(f"no such file: {path}") from None
    except OSError as e:
        raise InvalidImageError(f"cannot read image: {e}") from None
    if data is not None and not data:
        raise InvalidImageError(f"the file is empty: {path}")
    # clear errors for non-image files; a big file is decoded and hashed from disk instead
    img = _open(data if data is not None else path, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE)
    digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)
    fmt = img.format or "?"
    try:
        img.load()
        # the upright size (exif_transpose's), without the copy of the pixels it makes of every image
        w, h = img.size[::-1] if img.getexif().get(_ORIENTATION, 1) in _SIDEWAYS else img.size
    except Exception as e:  # noqa: BLE001 - see _open
        raise InvalidImageError(f"corrupt or truncated image: {_reason(e)}") from None
    return ImageMeta(digest, w, h, fmt, st.st_size, st.st_mtime_ns)
