"""A digest of what one manifest row makes of a product, stored with it (products.row_digest)
so that a re-import skips unchanged rows by comparing digests in bulk.

It covers the row's fields, category path and attributes, and each image's path, role, file
size and mtime: a row whose digest matches names the same data and the same untouched files,
so nothing is decoded, hashed, compared column by column or written. The database clears a
stored digest when anything else writes what it covers (migration 0005's triggers), so a
match also means the catalogue still holds what that row last made of the product."""
from __future__ import annotations

import hashlib
import os
from typing import Iterable

from shopsearch.catalogue.records import ProductRecord


def _digest(rec: ProductRecord, stats: Iterable[tuple[int, int]]) -> str:
    parts = [rec.sku, rec.title, rec.description, rec.brand, None if rec.price is None else str(rec.price),
             rec.currency, rec.category_path, rec.attributes or None]
    if rec.keep:  # columns the manifest lacks: not the same row as one with those cells empty
        parts.append(sorted(rec.keep))
    for im, (size, mtime) in zip(rec.images, stats):
        parts.append((im.path, im.role, size, mtime))
    # repr, not JSON: a row's values come from one reader, so the same row gives the same text
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


def stored_digest(rec: ProductRecord) -> str | None:
    """The digest to store for a checked record (its images' stat filled in by the import);
    None when an image is unusable or has no stat, so that such a row is always checked again
    (and its problem reported again)."""
    stats = []
    for im in rec.images:
        if im.status != "ok" or im.file_size is None or im.file_mtime_ns is None:
            return None
        stats.append((im.file_size, im.file_mtime_ns))
    return _digest(rec, stats)


def current_digest(rec: ProductRecord) -> str | None:
    """The digest of a record as read from a manifest, its files stat'ed now (none read);
    None when a file cannot be stat'ed."""
    stats = []
    for im in rec.images:
        try:
            st = os.stat(im.path)
        except OSError:
            return None
        stats.append((st.st_size, st.st_mtime_ns))
    return _digest(rec, stats)
