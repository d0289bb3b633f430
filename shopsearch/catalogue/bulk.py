"""Bulk catalogue reads as plain rows: no ORM object per image or product.

At a million images an ORM object per row costs seconds and gigabytes; these reads select
the columns they need with SQLAlchemy Core, and lists of ids go to the database in chunks
well below the bind-parameter limits (PostgreSQL: 65,535 per statement; SQLite: 32,766)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from sqlalchemy import Select, bindparam, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import aliased

from shopsearch.catalogue.db import raw_cursor
from shopsearch.catalogue.models import CatalogueState, Category, Product, ProductImage
from shopsearch.catalogue.records import CandidateRow, ImageInfo, ProductInfo

#: ids per IN (...) list: below both databases' bind-parameter limits, with room for the rest of the query
ID_CHUNK = 10_000

#: image columns in ImageInfo's field order: rows read with them become ImageInfo without an ORM object
IMAGE_COLUMNS = (ProductImage.id, ProductImage.product_id, ProductImage.path, ProductImage.role,
                 ProductImage.sha256, ProductImage.width, ProductImage.height, ProductImage.status,
                 ProductImage.error, ProductImage.file_size, ProductImage.file_mtime_ns)


def chunks(ids: Sequence[int], size: int = ID_CHUNK) -> Iterator[list[int]]:
    """Consecutive slices of at most `size` ids."""
    for start in range(0, len(ids), size):
        yield [int(i) for i in ids[start:start + size]]


def image_rows(conn: Connection, only_ok: bool = False) -> list[ImageInfo]:
    """Every image (or only indexable ones, status ok) in id order."""
    q = select(*IMAGE_COLUMNS).order_by(ProductImage.id)
    if only_ok:
        q = q.where(ProductImage.status == "ok")
    return [ImageInfo(*row) for row in conn.execute(q)]


def image_stats(conn: Connection) -> list[tuple[int, str, str, int | None, int | None]]:
    """(id, path, status, file size, file mtime ns) of every image, as plain tuples: what a
    rescan needs to stat the files, without the rest of the row."""
    # the driver's own cursor: its rows are tuples already (no SQLAlchemy Row per image)
    with raw_cursor(conn) as cur:
        cur.execute("SELECT id, path, status, file_size, file_mtime_ns FROM product_images")
        return cur.fetchall()


@functools.cache
def _images_by_id_query() -> Select:
    """The select of images_by_id, built once: every thumbnail request runs it."""
    return select(*IMAGE_COLUMNS).where(ProductImage.id.in_(bindparam("ids", expanding=True))).order_by(ProductImage.id)


def images_by_id(conn: Connection, ids: Sequence[int]) -> list[ImageInfo]:
    """The images with these ids (those that exist), in id order, chunked below the parameter limits."""
    out: list[ImageInfo] = []
    for part in chunks(sorted(ids)):
        out += [ImageInfo(*row) for row in conn.execute(_images_by_id_query(), {"ids": part})]
    return out


@functools.cache
def _products_for_images_query() -> Select:
    """The joined select of products_for_images, built once: every search runs it, and building
    the statement cost more than the database answering it."""
    merchant, predicted = aliased(Category), aliased(Category)
    return (select(*IMAGE_COLUMNS, Product.sku, Product.title, Product.description, Product.brand, Product.price,
                   Product.currency, Product.category_id, merchant.path, predicted.path,
                   Product.predicted_confidence, Product.attributes)
            .join(Product, Product.id == ProductImage.product_id)
            .outerjoin(merchant, merchant.id == Product.category_id)
            .outerjoin(predicted, predicted.id == Product.predicted_category_id)
            .where(ProductImage.id.in_(bindparam("ids", expanding=True))))


def products_for_images(engine: Engine, image_ids: Sequence[int]) -> dict[int, tuple[ProductInfo, ImageInfo]]:
    """image id -> (its product without its image list, the image), for ids that still exist:
    one joined query per chunk of ids."""
    ids = sorted({int(i) for i in image_ids})
    if not ids:
        return {}
    q = _products_for_images_query()
    out: dict[int, tuple[ProductInfo, ImageInfo]] = {}
    products: dict[int, ProductInfo] = {}  # one ProductInfo per product, shared by its images
    with engine.connect() as conn:
        for part in chunks(ids):
            for row in conn.execute(q, {"ids": part}):
                img = ImageInfo(*row[:len(IMAGE_COLUMNS)])
                (sku, title, description, brand, price, currency, category_id, merchant_path, predicted_path,
                 predicted_conf, attributes) = row[len(IMAGE_COLUMNS):]
                prod = products.get(img.product_id)
                if prod is None:
                    category, source = _category(category_id, merchant_path, predicted_path)
                    prod = products[img.product_id] = ProductInfo(
                        id=img.product_id, sku=sku, title=title, description=description, brand=brand,
                        price=price, currency=currency, category=category,
                        category_source=source, predicted_category=predicted_path,
                        predicted_confidence=predicted_conf, attributes=dict(attributes or {}))
                out[img.id] = (prod, img)
    return out


def _category(category_id: int | None, merchant_path: str | None,
              predicted_path: str | None) -> tuple[str | None, str | None]:
    """A product's category path and where it came from: the merchant's, else the predicted one."""
    source = "merchant" if category_id is not None else ("predicted" if predicted_path else None)
    return merchant_path or predicted_path, source


@functools.cache
def _candidate_rows_query() -> Select:
    """products_for_images' select cut to what a search answer shows (built once, like it)."""
    merchant, predicted = aliased(Category), aliased(Category)
    return (select(ProductImage.id, ProductImage.path, Product.sku, Product.title, Product.brand, Product.price,
                   Product.currency, Product.category_id, merchant.path, predicted.path)
            .join(Product, Product.id == ProductImage.product_id)
            .outerjoin(merchant, merchant.id == Product.category_id)
            .outerjoin(predicted, predicted.id == Product.predicted_category_id)
            .where(ProductImage.id.in_(bindparam("ids", expanding=True))))


def candidate_rows(engine: Engine, image_ids: Sequence[int]) -> dict[int, CandidateRow]:
    """image id -> its CandidateRow, for ids that still exist: what products_for_images reads of
    them that a search answer shows, without the description, the attributes (JSON decoded per
    row) and the image's metadata nobody shows (issue 18: every search runs it)."""
    ids = sorted({int(i) for i in image_ids})
    out: dict[int, CandidateRow] = {}
    if not ids:
        return out
    with engine.connect() as conn:
        for part in chunks(ids):
            for image_id, path, sku, title, brand, price, currency, category_id, merchant_path, predicted_path \
                    in conn.execute(_candidate_rows_query(), {"ids": part}):
                category, source = _category(category_id, merchant_path, predicted_path)
                out[image_id] = CandidateRow(image_id, path, sku, title, brand, price, currency, category, source)
    return out


@dataclass(frozen=True)
class FilterColumns:
    """What search filters look at, one entry per indexable image, sorted by image id: the
    product it belongs to, the product's price (NaN: none) and its category id (merchant's,
    else predicted; -1: none), plus every category's path by id."""

    image_ids: np.ndarray  # int64, ascending
    product_ids: np.ndarray  # int64
    prices: np.ndarray  # float64
    category_ids: np.ndarray  # int64
    category_paths: dict[int, str]


def filter_columns(engine: Engine) -> FilterColumns:
    """One query over the indexable images and their products (plus the small category
    table), turned into numpy columns."""
    price_null = "CASE WHEN p.price IS NULL THEN 1 ELSE 0 END"
    numbers = _numbers(engine, ["i.id", "i.product_id", "COALESCE(p.price, 0)", price_null,
                                "COALESCE(p.category_id, p.predicted_category_id, -1)"],
                       "product_images i JOIN products p ON p.id = i.product_id WHERE i.status = 'ok'", "i.id")
    with engine.connect() as conn:
        paths = {int(i): str(p) for i, p in conn.execute(select(Category.id, Category.path))}
    cols = numbers.reshape(-1, 5)
    cols = cols[np.argsort(cols[:, 0], kind="stable")]  # SQLite's group_concat promises no order
    prices = np.where(cols[:, 3] == 1, np.nan, cols[:, 2])
    return FilterColumns(cols[:, 0].astype(np.int64), cols[:, 1].astype(np.int64), prices,
                         cols[:, 4].astype(np.int64), paths)


#: the catalogue generation's select (migration 0004), built once: every search reads it
GENERATION = select(CatalogueState.generation).where(CatalogueState.id == 1)


def generation(conn: Connection) -> int:
    """The catalogue generation, moved by every change to what an index holds."""
    return int(conn.execute(GENERATION).scalar() or 0)


def image_owners(engine: Engine) -> tuple[int, np.ndarray, np.ndarray]:
    """(catalogue generation, image ids int64 ascending, their product ids) of every image row
    whatever its status: what grouping a search's candidate images into products needs. The
    generation is read first, in the same transaction, so the columns are at least that recent."""
    with engine.connect() as conn, conn.begin():
        gen = generation(conn)
        numbers = _numbers(conn, ["id", "product_id"], "product_images", "id")
    cols = numbers.reshape(-1, 2).astype(np.int64)
    cols = cols[np.argsort(cols[:, 0], kind="stable")]  # SQLite's group_concat promises no order
    return gen, np.ascontiguousarray(cols[:, 0]), np.ascontiguousarray(cols[:, 1])


def image_ids_with_hashes(engine: Engine, hashes: Sequence[str]) -> np.ndarray:
    """Ids of every image whose content hash is one of `hashes` (exact duplicates), ascending."""
    out: list[int] = []
    with engine.connect() as conn:
        for start in range(0, len(hashes), ID_CHUNK):
            part = list(hashes[start:start + ID_CHUNK])
            out += [int(i) for i, in conn.execute(select(ProductImage.id).where(ProductImage.sha256.in_(part)))]
    return np.array(sorted(out), dtype=np.int64)


def ok_image_ids(engine: Engine) -> np.ndarray:
    """Ids of the indexable images (status ok), ascending."""
    return np.sort(_numbers(engine, ["id"], "product_images WHERE status = 'ok'", "id").astype(np.int64))


#: the key of an indexable image without a recorded content hash (the builder hashes its file)
NO_HASH = b"0" * 64


def indexable_keys(engine: Engine) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64, content hashes S64) of the indexable images (status ok), by ascending id;
    NO_HASH where none is recorded. One fixed-width text from the database (20 digits of id,
    64 of hash per image) cut up by numpy: no Python object per image."""
    if engine.dialect.name == "postgresql":
        row = "lpad(id::text, 20, '0') || coalesce(sha256, repeat('0', 64))"
        sql = f"SELECT string_agg({row}, '') FROM product_images WHERE status = 'ok'"
    else:
        row = "printf('%020d', id) || coalesce(sha256, '" + NO_HASH.decode() + "')"
        sql = f"SELECT group_concat({row}, '') FROM product_images WHERE status = 'ok'"
    with engine.connect() as conn:
        text_ = conn.exec_driver_sql(sql).scalar() or ""
    raw = text_.encode("ascii")
    if len(raw) % 84:
        raise ValueError("a content hash in the catalogue is not 64 hex digits")
    cells = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 84)
    # the last 18 digits: ids stay below 10**18, and 10**19 would not fit in an int64
    ids = (cells[:, 2:20].astype(np.int64) - 48) @ (10 ** np.arange(17, -1, -1, dtype=np.int64))
    keys = np.ascontiguousarray(cells[:, 20:]).view("S64").ravel()
    order = np.argsort(ids, kind="stable")
    return ids[order], keys[order]


def _numbers(bind: Engine | Connection, exprs: list[str], source: str, order: str) -> np.ndarray:
    """The numeric `exprs` of every row of `source`, row after row, as one float64 array.

    The database joins them into one comma-separated text that numpy parses in C: at a
    million rows this is several times faster than a Python tuple per row (ids stay exact
    in float64 up to 2**53)."""
    if bind.dialect.name == "postgresql":
        row = "concat_ws(',', " + ", ".join(exprs) + ")"
        sql = f"SELECT string_agg({row}, ',' ORDER BY {order}) FROM {source}"
    else:
        row = " || ',' || ".join(f"({e})" for e in exprs)
        sql = f"SELECT group_concat(r) FROM (SELECT {row} AS r FROM {source} ORDER BY {order})"
    if isinstance(bind, Connection):  # inside the caller's transaction
        text_ = bind.exec_driver_sql(sql).scalar()
    else:
        with bind.connect() as conn:
            text_ = conn.exec_driver_sql(sql).scalar()
    if not text_:
        return np.zeros(0, dtype=np.float64)
    return np.fromstring(text_, dtype=np.float64, sep=",")
