"""Catalogue image thumbnails: made once, cached under data_dir/thumbs, written atomically.

Files are keyed by the image's content sha256 and the size, so a changed image gets new
thumbnails and identical images share them. Every thumbnail is a re-encoded JPEG, so the
route can never hand out anything that is not a decodable image."""
from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from PIL import Image

from shopsearch.catalogue.records import ImageInfo
from shopsearch.errors import NotFoundError
from shopsearch.images import load_image, sha256_file

log = logging.getLogger("shopsearch.web")

#: the only sizes the route makes (longest side, px): a fixed set bounds the cache
SIZES = (160, 320, 640, 1280)


class ImageUnavailableError(NotFoundError):
    code = "image_not_found"


class ThumbCache:
    def __init__(self, root: Path, allowed_roots: tuple[Path, ...] | None = None) -> None:
        self.root = Path(root)
        self.allowed_roots = allowed_roots

    def source_path(self, image: ImageInfo) -> Path:
        """The image file, resolved (symlinks followed) and checked against the allowed roots."""
        try:
            path = Path(image.path).resolve(strict=True)
        except (OSError, RuntimeError):
            raise ImageUnavailableError(f"image {image.id} is missing on disk") from None
        if self.allowed_roots is not None and not any(path.is_relative_to(r) for r in self.allowed_roots):
            log.warning("image outside the allowed roots refused", extra={"image_id": image.id, "path": str(path)})
            raise ImageUnavailableError(f"image {image.id} is not available")
        if not path.is_file():
            raise ImageUnavailableError(f"image {image.id} is missing on disk")
        return path

    def thumbnail(self, image: ImageInfo, size: int) -> Path:
        """Path of the cached JPEG of `image` at `size`, making it on first use."""
        if size not in SIZES:
            raise ImageUnavailableError(f"no thumbnail size {size}; sizes are {', '.join(map(str, SIZES))}")
        src = self.source_path(image)
        digest = image.sha256 or sha256_file(src)
        out = self.root / digest[:2] / f"{digest}_{size}.jpg"
        if out.is_file():
            return out
        try:
            img = load_image(src, draft_size=size)
        except NotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken catalogue file is "unavailable", not a crash
            raise ImageUnavailableError(f"image {image.id} cannot be decoded: {e}") from None
        img.thumbnail((size, size), Image.LANCZOS)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
        try:
            img.save(tmp, "JPEG", quality=85, optimize=True)
            os.replace(tmp, out)  # concurrent makers race harmlessly: same bytes, atomic rename
        finally:
            tmp.unlink(missing_ok=True)
        return out
