"""Shopper uploads: read from memory only, sniff and decode safely, optionally retain.

Werkzeug spools multipart files over 500 KB to a temporary file; InMemoryRequest keeps
them in memory instead (MAX_CONTENT_LENGTH bounds the size), so nothing a shopper sends
is written to disk unless RETAIN_UPLOADS names a folder."""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import os
import time
import uuid
from pathlib import Path
from typing import IO

import numpy as np
from flask import Request, current_app, g, request
from PIL import Image
from werkzeug.exceptions import RequestEntityTooLarge

from shopsearch.embedders.base import Embedder
from shopsearch.embedding.items import DECODED_MAX_SIDE
from shopsearch.embedding.preprocess import decode_query, draft_size_for
from shopsearch.errors import InvalidImageError
from shopsearch.images import load_image, scan_once
from shopsearch.regions import Box, crop_source
from webapp.errors import BadParameterError, MissingImageError
from webapp.metrics import observe_decode

log = logging.getLogger("shopsearch.web")

_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


class InMemoryRequest(Request):
    """A Request whose uploaded files never touch the disk."""

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        return io.BytesIO()


def upload_bytes(field: str = "image", allow_raw: bool = True) -> bytes | None:
    """The uploaded file's bytes: multipart field `field`, else (API) the raw body; None if absent."""
    if request.mimetype == "multipart/form-data":
        f = request.files.get(field)
        if f is None:
            return None
        data = f.read()
        # a form submitted with no file chosen sends an empty part with no filename
        return None if not data and not f.filename else data
    if allow_raw:  # any other Content-Type (curl --data-binary sends a form type): the bytes decide
        return _raw_body() or None
    return None


def _raw_body() -> bytes:
    """The request body, refused (413) beyond the limit: a chunked body has no Content-Length
    for werkzeug to check up front, and reading it only up to the limit would search a prefix."""
    limit = request.max_content_length
    if limit is None:
        return request.get_data(cache=False)
    stream = request.stream
    data = stream.read(limit)
    if stream.read(1):  # werkzeug's limited stream raises 413 itself here; any other stream too
        raise RequestEntityTooLarge()
    return data


#: what a shopper (page or API) reads when the decoder fails part-way: the decoder's own words
#: ("image file is truncated (3 bytes not processed)") mean nothing to them; the log keeps those
DAMAGED_PHOTO = ("We could not open this photo: the file seems damaged or incomplete (perhaps it did not "
                 "finish downloading or copying). Please try another photo.")


def decode_upload(data: bytes, embedder: Embedder) -> Image.Image:
    """Bytes -> upright RGB image, decoded as the indexer decodes catalogue files for this
    model (same JPEG draft scale), so an uploaded catalogue photo matches itself exactly.
    A damaged or truncated file is an InvalidImageError in a shopper's words."""
    t0 = time.perf_counter()
    try:
        img = decode_query(data, embedder, max_pixels=int(current_app.config["MAX_IMAGE_PIXELS"]))
    except InvalidImageError as e:
        if type(e) is not InvalidImageError or "empty" in str(e):
            raise  # not an image, too large, empty: their messages already say so plainly
        log.info("upload undecodable", extra={"error": str(e), "bytes": len(data)})
        raise InvalidImageError(DAMAGED_PHOTO) from e
    observe_decode(time.perf_counter() - t0)
    g.setdefault("images", []).append(img)  # closed in teardown
    _retain(data, img)
    return img


def _retain(data: bytes, img: Image.Image) -> None:
    folder: Path | None = current_app.config.get("RETAIN_UPLOADS")
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    fmt = Image.open(io.BytesIO(data)).format or "bin"  # header only: already validated
    final = folder / f"{digest}.{_EXT.get(fmt, 'bin')}"
    g.retained_photo = final.name  # the feedback log names the kept photo (and nothing else of it)
    if final.exists():
        return
    tmp = folder / f".{digest}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, final)
    log.info("upload retained", extra={"path": str(final), "bytes": len(data)})


def require_image(embedder: Embedder, field: str = "image", allow_raw: bool = True) -> tuple[bytes, Image.Image]:
    """The uploaded bytes and the photo decoded from them; MissingImageError (400) when none."""
    data = upload_bytes(field, allow_raw)
    if data is None:
        raise MissingImageError("no image was uploaded: send a photo in the multipart field 'image'"
                                + (" or as the raw request body" if allow_raw else ""))
    return data, decode_upload(data, embedder)


def crop_upload(data: bytes, img: Image.Image, box: Box, embedder: Embedder) -> Image.Image:
    """The shopper's box of an uploaded photo, after EXIF orientation and before embedding, cut
    at the resolution the model needs (shopsearch.regions.crop_source): `img` is decode_upload's."""
    with scan_once(data):  # crop_source reads the header for the photo's size, then decodes it again
        part = crop_source(data, img, box, draft_size_for(embedder), DECODED_MAX_SIDE,
                           int(current_app.config["MAX_IMAGE_PIXELS"]))
    g.setdefault("images", []).append(part)  # closed in teardown
    return part


# -- the query, carried between result pages without storing anything server-side ----
def encode_vector(vec: np.ndarray) -> str:
    return base64.urlsafe_b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(text: str, dim: int) -> np.ndarray:
    """A query vector posted back by a results page: exact length, finite, renormalised."""
    try:
        raw = base64.urlsafe_b64decode(text.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise BadParameterError("the search query is malformed; upload the photo again") from None
    if len(raw) != 4 * dim:
        raise BadParameterError("the search query does not fit this index; upload the photo again")
    vec = np.frombuffer(raw, dtype="<f4").astype(np.float64)  # float32 squares of 1e20 and more overflow
    norm = float(np.linalg.norm(vec)) if np.isfinite(vec).all() else 0.0
    if not norm > 0:
        raise BadParameterError("the search query is malformed; upload the photo again")
    return (vec / norm).astype(np.float32)


def preview_data_url(img: Image.Image, size: int = 240) -> str:
    """A small re-encoded JPEG of the query photo, inlined in the page (never stored)."""
    small = img.copy()
    small.thumbnail((size, size))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def checked_preview(text: str | None, size: int = 240) -> str | None:
    """A preview posted back by a results page, re-validated (it came from the client) and
    re-encoded at `size` (larger where object outlines are drawn on it)."""
    prefix = "data:image/jpeg;base64,"
    if not text or not text.startswith(prefix) or len(text) > 200_000:
        return None
    try:
        img = load_image(base64.b64decode(text[len(prefix):], validate=True), max_pixels=1_000_000)
    except (InvalidImageError, binascii.Error, ValueError):
        return None
    return preview_data_url(img, size)


def close_request_images(_exc: BaseException | None = None) -> None:
    for img in g.pop("images", []):
        img.close()
