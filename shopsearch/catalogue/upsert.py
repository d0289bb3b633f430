"""One batch of product upserts, in one transaction, written in bulk.

New products and their images go in with two bulk writes per batch (SQLite: the driver's
executemany on plain tuples; PostgreSQL: COPY), not a round trip per product; unchanged products
are compared on plain rows and not written; only products whose row changed are loaded as
ORM objects and updated (a re-import changes few). Statements stay far below PostgreSQL's
65,535 bind parameters: SQLAlchemy pages multi-row INSERTs (insertmanyvalues), and the
lookups bind one batch of SKUs or ids."""
from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from sqlalchemy import Text, bindparam, cast, select, update
from sqlalchemy.orm import Session, selectinload

from shopsearch.catalogue import bulk
from shopsearch.catalogue.db import raw_cursor
from shopsearch.catalogue.models import Product, ProductImage, utcnow
from shopsearch.catalogue.records import ImageInfo, ImageRecord, ProductRecord, UpsertResult
from shopsearch.catalogue.row_digest import stored_digest

PRODUCT_FIELDS = ("title", "description", "brand", "price", "currency", "attributes")


def upsert_batch(s: Session, records: Sequence[ProductRecord],
                 category_id: Callable[[tuple[str, ...]], int]) -> list[UpsertResult]:
    """Insert or update `records` in session `s`; `category_id` gives (or makes) a category's id.
    Categories are resolved first, so that no pending ORM object is flushed by their queries."""
    cat_ids = [category_id(r.category_path) if r.category_path else None for r in records]
    rows = {r.sku: r for r in s.execute(select(Product.id, Product.sku, *_product_columns())
                                         .where(Product.sku.in_([r.sku for r in records])))}
    images: dict[int, list[ImageInfo]] = {}
    if rows:
        pids = [r.id for r in rows.values()]
        for r in s.execute(select(*bulk.IMAGE_COLUMNS).where(ProductImage.product_id.in_(pids))):
            images.setdefault(r.product_id, []).append(ImageInfo(*r))
    digests = [stored_digest(r) for r in records]
    out: list[UpsertResult | None] = [None] * len(records)
    new, changed, stale = [], [], []
    for j, rec in enumerate(records):
        row = rows.get(rec.sku)
        if row is None:
            new.append(j)
        elif _unchanged(rec, row, images.get(row.id, []), cat_ids[j]):
            out[j] = UpsertResult(rec.sku, row.id, False, False, 0, 0)
            if row.row_digest != digests[j]:  # imported before digests, or cleared since
                stale.append(j)
        else:
            changed.append(j)
    if new:
        ids = _insert_new(s, [records[j] for j in new], [cat_ids[j] for j in new], [digests[j] for j in new])
        for j, pid in zip(new, ids):
            out[j] = UpsertResult(records[j].sku, pid, True, True,
                                  sum(im.status == "ok" for im in _unique_paths(records[j].images)), 0)
    if changed:
        wanted = [rows[records[j].sku].id for j in changed]
        loaded = {p.id: p for p in s.scalars(select(Product).options(selectinload(Product.images))
                                             .where(Product.id.in_(wanted)))}
        for j, pid in zip(changed, wanted):
            out[j] = UpsertResult(records[j].sku, pid, *_apply(loaded[pid], records[j], cat_ids[j], created=False))
        s.flush()
    # after the flush: its writes to the products' fields and images cleared their digests (triggers)
    if stale or changed:
        s.execute(update(Product.__table__).where(Product.__table__.c.id == bindparam("pid"))
                  .values(row_digest=bindparam("digest")),
                  [{"pid": rows[records[j].sku].id, "digest": digests[j]} for j in stale + changed])
    return [r for r in out if r is not None]


def _insert_new(s: Session, records: list[ProductRecord], cat_ids: list[int | None],
                digests: list[str | None]) -> list[int]:
    """Multi-row INSERTs of new products (ids returned in order) and of their images."""
    now = utcnow()
    conn = s.connection()
    if conn.dialect.name == "postgresql":
        return _copy_new(conn, records, cat_ids, digests, now)
    # one executemany without RETURNING, then the new ids by SKU (unique, indexed): with
    # RETURNING in parameter order SQLAlchemy ran one INSERT per product on SQLite
    table = Product.__table__
    _executemany(conn, table, ("sku", "title", "description", "brand", "price", "currency", "category_id",
                               "attributes", "row_digest"),
                 [(r.sku, r.title, r.description, r.brand, r.price, r.currency, c, dict(r.attributes or {}), d)
                  for r, c, d in zip(records, cat_ids, digests)], {"created_at": now, "updated_at": now})
    by_sku: dict[str, int] = {}
    skus = [r.sku for r in records]
    for start in range(0, len(skus), bulk.ID_CHUNK):
        by_sku.update((sku, pid) for sku, pid in conn.execute(
            select(table.c.sku, table.c.id).where(table.c.sku.in_(skus[start:start + bulk.ID_CHUNK]))))
    ids = [by_sku[s] for s in skus]
    _executemany(conn, ProductImage.__table__, ("product_id", "path", "role", "sha256", "width", "height", "status",
                                                "error", "file_size", "file_mtime_ns"),
                 [(pid, im.path, im.role, im.sha256, im.width, im.height, im.status, im.error, im.file_size,
                   im.file_mtime_ns) for pid, r in zip(ids, records) for im in _unique_paths(r.images)],
                 {"created_at": now})
    return ids


def _executemany(conn: Any, table: Any, columns: Sequence[str], rows: list[tuple], same: dict[str, Any]) -> None:
    """SQLite: one INSERT of `rows` (values of `columns`) plus the values `same` for every row, run as
    the driver's executemany on plain tuples in the session's transaction. Each value goes
    through its column type's bind processor, as SQLAlchemy would write it, but `same` once per
    call: SQLAlchemy's per-row parameter handling cost more than SQLite storing the rows."""
    if not rows:
        return
    def processor(column: str) -> Callable[[Any], Any] | None:  # what SQLAlchemy applies for this dialect
        return table.c[column].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)

    procs = [(i, p) for i, c in enumerate(columns) if (p := processor(c))]
    fixed = tuple(p(v) if (p := processor(c)) else v for c, v in same.items())
    if procs:
        def processed(row: tuple) -> tuple:
            values = list(row)
            for i, p in procs:
                values[i] = p(values[i])
            return (*values, *fixed)
        params = [processed(r) for r in rows]
    else:
        params = [(*r, *fixed) for r in rows]
    names = [*columns, *same]
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    with raw_cursor(conn) as cur:
        cur.executemany(sql, params)


_PRODUCT_COPY = "COPY products (id, sku, title, description, brand, price, currency, category_id, attributes, " \
                "row_digest, created_at, updated_at) FROM STDIN"
_IMAGE_COPY = "COPY product_images (product_id, path, role, sha256, width, height, status, error, file_size, " \
              "file_mtime_ns, created_at) FROM STDIN"


def _copy_new(conn: Any, records: list[ProductRecord], cat_ids: list[int | None], digests: list[str | None],
              now: Any) -> list[int]:
    """PostgreSQL: ids drawn from the products' sequence, then both tables filled with COPY,
    in the session's transaction. A multi-row INSERT made psycopg parse one statement of
    thousands of placeholders per page, and the images went one prepared statement per row.
    COPY fires the same insert triggers (the catalogue generation moves)."""
    ids = [int(i) for i in conn.exec_driver_sql(
        "SELECT nextval(pg_get_serial_sequence('products', 'id')) FROM generate_series(1, %(n)s)",
        {"n": len(records)}).scalars()]
    with raw_cursor(conn) as cur:
        with cur.copy(_PRODUCT_COPY) as copy:
            for pid, r, c, d in zip(ids, records, cat_ids, digests):
                # json.dumps: the text SQLAlchemy's JSON type writes, which re-imports compare with
                copy.write_row((pid, r.sku, r.title, r.description, r.brand, r.price, r.currency, c,
                                json.dumps(dict(r.attributes or {})), d, now, now))
        with cur.copy(_IMAGE_COPY) as copy:
            for pid, r in zip(ids, records):
                for im in _unique_paths(r.images):
                    copy.write_row((pid, im.path, im.role, im.sha256, im.width, im.height, im.status, im.error,
                                    im.file_size, im.file_mtime_ns, now))
    return ids


def _product_columns() -> tuple[Any, ...]:
    # attributes as the stored JSON text: an unchanged row is told by comparing texts, without
    # decoding a JSON document per product (a re-import of a million rows spent seconds there)
    return (*(getattr(Product, f) for f in PRODUCT_FIELDS if f != "attributes"),
            cast(Product.attributes, Text).label("attributes_text"), Product.category_id, Product.row_digest)


def _same_attributes(new: dict, stored_text: str | None) -> bool:
    """Whether `new` equals the stored JSON: its text as SQLAlchemy writes it (json.dumps), else decoded."""
    if not new:  # most manifests carry no extra columns: no JSON work at all
        return stored_text in (None, "{}", "null") or not json.loads(stored_text)
    if stored_text is not None and json.dumps(new) == stored_text:
        return True
    decoded = json.loads(stored_text) if stored_text else None
    return new == dict(decoded or {})


def _unchanged(rec: ProductRecord, row: Any, images: list[ImageInfo], cat_id: int | None) -> bool:
    """Would upserting `rec` over the stored `row` and its `images` write nothing?"""
    for f in PRODUCT_FIELDS:
        if f in rec.keep:  # the manifest has no column for it: left as it is
            continue
        if f == "attributes":
            if not _same_attributes(dict(rec.attributes or {}), row.attributes_text):
                return False
        elif getattr(rec, f) != getattr(row, f):
            return False
    if cat_id is not None and row.category_id != cat_id:
        return False
    if not rec.images:
        return True
    by_path = {i.path: i for i in images}
    if {im.path for im in rec.images} != set(by_path):
        return False
    return all(
        (im.role, im.sha256, im.width, im.height, im.status, im.error, im.file_size, im.file_mtime_ns)
        == (cur.role, cur.sha256, cur.width, cur.height, cur.status, cur.error, cur.file_size, cur.file_mtime_ns)
        for im in rec.images for cur in (by_path[im.path],))


def _apply(p: Product, rec: ProductRecord, cat_id: int | None, created: bool) -> tuple[bool, bool, int, int, int]:
    """Write `rec` onto the ORM product `p`; (created, changed, images added, changed, removed)."""
    changed = created
    for f in PRODUCT_FIELDS:
        if f in rec.keep:
            continue
        new = dict(rec.attributes or {}) if f == "attributes" else getattr(rec, f)
        if getattr(p, f) != new:
            setattr(p, f, new)
            changed = True
    if cat_id is not None and p.category_id != cat_id:
        p.category_id = cat_id
        changed = True
    by_path = {i.path: i for i in p.images}
    added = recorded = img_changed = removed = 0
    for im in _unique_paths(rec.images):
        cur = by_path.get(im.path)
        if cur is None:
            p.images.append(ProductImage(path=im.path, role=im.role, sha256=im.sha256, width=im.width,
                                         height=im.height, status=im.status, error=im.error,
                                         file_size=im.file_size, file_mtime_ns=im.file_mtime_ns))
            recorded += 1
            added += im.status == "ok"  # an unusable file is recorded (the product page shows it), not added
            continue
        new_vals = dict(role=im.role, sha256=im.sha256, width=im.width, height=im.height, status=im.status,
                        error=im.error)
        if any(getattr(cur, k) != v for k, v in new_vals.items()):
            for k, v in new_vals.items():
                setattr(cur, k, v)
            img_changed += 1
        # a touched file with the same bytes is not a change; just remember its new stat
        if (cur.file_size, cur.file_mtime_ns) != (im.file_size, im.file_mtime_ns):
            cur.file_size, cur.file_mtime_ns = im.file_size, im.file_mtime_ns
    if rec.images:  # the row names the product's images: those it no longer names go (delete-orphan)
        named = {im.path for im in rec.images}
        for img in [i for i in p.images if i.path not in named]:
            p.images.remove(img)
            removed += 1
    return created, changed or bool(recorded or img_changed or removed), added, img_changed, removed


def _unique_paths(images: Sequence[ImageRecord]) -> list[ImageRecord]:
    """A row naming one file twice gets one image (the first mention)."""
    seen: set[str] = set()
    return [im for im in images if not (im.path in seen or seen.add(im.path))]  # type: ignore[func-returns-value]


