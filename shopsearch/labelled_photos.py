"""Labelled shopper photos for the confidence calibration: a CSV with `image,sku` columns
(the format `shopsearch bench recall --layout manifest` reads), embedded with the serving
model through the vector cache and matched to catalogue product ids."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from shopsearch.catalogue.store import CatalogueStore
from shopsearch.confidence_fit import LabelledQuery
from shopsearch.embedders.base import Embedder
from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.pipeline import WorkItem, embed_items
from shopsearch.errors import ManifestError, ProductNotFoundError
from shopsearch.images import sha256_file


@dataclass(frozen=True)
class LabelledPhotos:
    queries: tuple[LabelledQuery, ...]
    unknown_skus: int  # photos of SKUs the catalogue lacks: searched as products the shop does not sell
    unreadable: tuple[str, ...]  # rows whose photo could not be read or embedded


def read_labelled_csv(path: Path, skipped: list[int] | None = None) -> list[tuple[Path, str]]:
    """(photo path, sku) rows; relative paths are relative to the CSV. ManifestError when malformed;
    the line numbers of rows without both an image and a sku are added to `skipped`."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"labelled photos file {path} not found (a CSV with columns image,sku)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.DictReader(f)
        col = next((c for c in ("image", "path") if c in (rows.fieldnames or [])), None)
        if col is None or "sku" not in (rows.fieldnames or []):
            raise ManifestError(f"{path}: a labelled photos CSV needs a header row with 'image' and 'sku' columns")
        out = []
        for row in rows:
            img, sku = (row.get(col) or "").strip(), (row.get("sku") or "").strip()
            if img and sku:
                p = Path(img)
                out.append((p if p.is_absolute() else (path.parent / p).resolve(), sku))
            elif skipped is not None:
                skipped.append(rows.line_num)
    if not out:
        raise ManifestError(f"{path}: no rows with both an image and a sku")
    return out


def load_labelled_photos(rows: Sequence[tuple[Path, str]], embedder: Embedder, catalogue: CatalogueStore,
                         cache_root: Path, progress: bool = True) -> LabelledPhotos:
    """Embed the photos (cached by content) and name each one's product id (None: not in the catalogue)."""
    keyed, unreadable = [], []
    for p, sku in rows:
        try:
            keyed.append((sha256_file(p), p, sku))
        except OSError:
            unreadable.append(str(p))
    cache = VectorCache(cache_root, embedder.fingerprint, embedder.dim)
    report = embed_items(embedder, [WorkItem(k, str(p)) for k, p, _ in keyed], cache, progress=progress)
    unreadable += [f"{item.path}: {reason}" for item, reason in report.failed]
    product_ids: dict[str, int | None] = {}
    for sku in {s for _, _, s in keyed}:
        try:
            product_ids[sku] = catalogue.get_product(sku).id
        except ProductNotFoundError:
            product_ids[sku] = None
    found = [(k, sku) for k, _, sku in keyed if k in cache]
    vectors = cache.get_many([k for k, _ in found]) if found else []
    queries = tuple(LabelledQuery(v, product_ids[sku]) for v, (_, sku) in zip(vectors, found))
    return LabelledPhotos(queries, sum(1 for q in queries if q.product is None), tuple(unreadable))
