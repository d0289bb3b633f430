"""CatalogueStore: products, images, categories and index-build records over SQLAlchemy."""
from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, selectinload, sessionmaker

import numpy as np

from shopsearch.catalogue import bulk, db
from shopsearch.catalogue.models import Category, IndexBuild, Product, ProductImage
from shopsearch.catalogue.records import (
    CatalogueStats,
    CategoryInfo,
    ImageInfo,
    ImageRecord,
    IndexBuildInfo,
    ProductInfo,
    ProductRecord,
    UnusableImage,
    UpsertResult,
)
from shopsearch.errors import ProductNotFoundError

#: stands for "/" inside a category name (DIVISION SLASH)
LEVEL_SLASH = "\u2215"
_PRODUCT_FIELDS = ("title", "description", "brand", "price", "currency", "attributes")
#: products per upsert transaction (a batch binds ~2 parameters per product and image: far below
#: PostgreSQL's 65,535)
UPSERT_BATCH = 500
#: values per IN (...) list: PostgreSQL refuses statements of more than 65,535 bind parameters
IN_CHUNK = 10_000




def _image_info(img: ProductImage) -> ImageInfo:
    return ImageInfo(img.id, img.product_id, img.path, img.role, img.sha256, img.width, img.height, img.status,
                     img.error, img.file_size, img.file_mtime_ns)


def _product_info(p: Product, with_images: bool = True) -> ProductInfo:
    source = "merchant" if p.category_id is not None else ("predicted" if p.predicted_category_id else None)
    return ProductInfo(
        id=p.id,
        sku=p.sku,
        title=p.title,
        description=p.description,
        brand=p.brand,
        price=p.price,
        currency=p.currency,
        category=p.category.path if p.category else (p.predicted_category.path if p.predicted_category else None),
        category_source=source,
        predicted_category=p.predicted_category.path if p.predicted_category else None,
        predicted_confidence=p.predicted_confidence,
        attributes=dict(p.attributes or {}),
        images=tuple(_image_info(i) for i in p.images) if with_images else (),
    )


def _product_columns() -> tuple[Any, ...]:
    return (*(getattr(Product, f) for f in _PRODUCT_FIELDS), Product.category_id)


def _unchanged(rec: ProductRecord, row: Any, images: list[ImageInfo], cat_id: int | None) -> bool:
    """Would upserting `rec` over the stored `row` and its `images` write nothing?"""
    for f in _PRODUCT_FIELDS:
        new = dict(rec.attributes or {}) if f == "attributes" else getattr(rec, f)
        old = dict(row.attributes or {}) if f == "attributes" else getattr(row, f)
        if new != old:
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
    for f in _PRODUCT_FIELDS:
        new = dict(rec.attributes or {}) if f == "attributes" else getattr(rec, f)
        if getattr(p, f) != new:
            setattr(p, f, new)
            changed = True
    if cat_id is not None and p.category_id != cat_id:
        p.category_id = cat_id
        changed = True
    by_path = {i.path: i for i in p.images}
    added = img_changed = removed = 0
    for im in _unique_paths(rec.images):
        cur = by_path.get(im.path)
        if cur is None:
            p.images.append(ProductImage(path=im.path, role=im.role, sha256=im.sha256, width=im.width,
                                         height=im.height, status=im.status, error=im.error,
                                         file_size=im.file_size, file_mtime_ns=im.file_mtime_ns))
            added += 1
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
    return created, changed or bool(added or img_changed or removed), added, img_changed, removed


def _unique_paths(images: Sequence[ImageRecord]) -> list[ImageRecord]:
    """A row naming one file twice gets one image (the first mention)."""
    seen: set[str] = set()
    return [im for im in images if not (im.path in seen or seen.add(im.path))]  # type: ignore[func-returns-value]


class CatalogueStore:
    """All catalogue reads and writes. Takes an engine; call `open()` for a checked one."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, migrate: bool = True) -> "CatalogueStore":
        """Engine for `url`, migrated to head (or only checked when migrate=False)."""
        engine = db.connect(url)
        if migrate:
            db.upgrade(engine)
        db.check_schema(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    # -- categories -------------------------------------------------------
    def ensure_category(self, names: Sequence[str], s: Session | None = None) -> int:
        """Id of the category at `names` (root first), creating missing levels."""
        if s is None:
            with self.session() as s2:
                return self.ensure_category(names, s2)
        parent_id: int | None = None
        path = ""
        cat_id = None
        for depth, name in enumerate(names):
            # "/" separates levels in a path: one inside a name ("Bath/Shower", from a JSON
            # list) becomes U+2215, which reads the same, so the name stays one level
            name = name.replace("/", LEVEL_SLASH)
            path = f"{path}/{name}" if path else name
            cat = s.scalar(select(Category).where(Category.path == path))
            if cat is None:
                cat = Category(name=name, parent_id=parent_id, path=path, depth=depth)
                s.add(cat)
                s.flush()
            parent_id = cat_id = cat.id
        if cat_id is None:
            raise ValueError("empty category path")
        return cat_id

    def categories(self) -> list[CategoryInfo]:
        with self.session() as s:
            rows = s.scalars(select(Category).order_by(Category.path)).all()
            return [CategoryInfo(c.id, c.name, c.path, c.depth, c.parent_id) for c in rows]

    # -- products ---------------------------------------------------------
    def upsert_product(self, rec: ProductRecord) -> UpsertResult:
        """Insert or update a product and its images; unchanged data writes nothing."""
        return self.upsert_products([rec])[0]

    def upsert_products(self, records: Sequence[ProductRecord]) -> list[UpsertResult]:
        """Insert or update products, in one transaction per UPSERT_BATCH of them. A product whose
        row and images are unchanged is compared on plain rows and not written; a record naming
        images replaces the product's image set (a record naming none leaves it alone)."""
        out: list[UpsertResult] = []
        for start in range(0, len(records), UPSERT_BATCH):
            with self.session() as s:
                out += self._upsert_batch(s, records[start:start + UPSERT_BATCH])
        return out

    def _upsert_batch(self, s: Session, records: Sequence[ProductRecord]) -> list[UpsertResult]:
        rows = {r.sku: r for r in s.execute(select(Product.id, Product.sku, *_product_columns())
                                             .where(Product.sku.in_([r.sku for r in records])))}
        images: dict[int, list[ImageInfo]] = {}
        if rows:
            pids = [r.id for r in rows.values()]
            for r in s.execute(select(*bulk.IMAGE_COLUMNS).where(ProductImage.product_id.in_(pids))):
                images.setdefault(r.product_id, []).append(ImageInfo(*r))
        cats: dict[tuple[str, ...], int] = {}
        pending: list[tuple[ProductRecord, Product | None, int | None, tuple[bool, bool, int, int, int]]] = []
        for rec in records:
            cat_id = None
            if rec.category_path:
                if rec.category_path not in cats:
                    cats[rec.category_path] = self.ensure_category(rec.category_path, s)
                cat_id = cats[rec.category_path]
            row = rows.get(rec.sku)
            if row is not None and _unchanged(rec, row, images.get(row.id, []), cat_id):
                pending.append((rec, None, row.id, (False, False, 0, 0, 0)))
                continue
            p = None if row is None else s.scalar(
                select(Product).options(selectinload(Product.images)).where(Product.id == row.id))
            if p is None:
                p = Product(sku=rec.sku, title=rec.title, attributes={})
                s.add(p)
            pending.append((rec, p, None, _apply(p, rec, cat_id, created=row is None)))
        s.flush()  # one round of INSERTs/UPDATEs for the batch; new products get their ids
        return [UpsertResult(rec.sku, pid if p is None else p.id, *counts) for rec, p, pid, counts in pending]

    def image_files(self, paths: Sequence[str]) -> dict[str, ImageRecord]:
        """Path -> what the catalogue knows of a usable image file there (hash, size, stat when
        hashed): an import skips decoding a file whose stat has not moved since."""
        out: dict[str, ImageRecord] = {}
        cols = (ProductImage.path, ProductImage.sha256, ProductImage.width, ProductImage.height,
                ProductImage.file_size, ProductImage.file_mtime_ns)
        usable = (ProductImage.status == "ok", ProductImage.sha256.is_not(None))
        # path has no index of its own: past one IN list, one pass over the table beats a scan per list
        queries = [select(*cols).where(*usable)] if len(paths) > IN_CHUNK else \
            [select(*cols).where(ProductImage.path.in_(paths), *usable)] if paths else []
        wanted = set(paths)
        with self.engine.connect() as conn:
            for q in queries:
                for path, sha, w, h, size, mtime in conn.execute(q):
                    if path in wanted:
                        out[path] = ImageRecord(path, sha256=sha, width=w, height=h, file_size=size,
                                                file_mtime_ns=mtime)
        return out

    def delete_products(self, skus: Iterable[str]) -> list[str]:
        """Delete products (and their images) by SKU; returns the SKUs that existed."""
        skus = list(skus)
        with self.session() as s:
            found = list(s.scalars(select(Product.sku).where(Product.sku.in_(skus))))
            if found:
                ids = select(Product.id).where(Product.sku.in_(found))
                # Explicit image delete: SQLite without FK enforcement on old files would orphan them.
                s.execute(delete(ProductImage).where(ProductImage.product_id.in_(ids)))
                s.execute(delete(Product).where(Product.sku.in_(found)))
            return found

    def get_product(self, sku: str) -> ProductInfo:
        if "\x00" in sku:  # PostgreSQL refuses NUL in a query, and no stored SKU can hold one
            raise ProductNotFoundError(f"no product with SKU {sku!r}")
        with self.session() as s:
            p = s.scalar(
                select(Product)
                .options(selectinload(Product.images), selectinload(Product.category),
                         selectinload(Product.predicted_category))
                .where(Product.sku == sku)
            )
            if p is None:
                raise ProductNotFoundError(f"no product with SKU {sku!r}")
            return _product_info(p)

    def products(self, limit: int | None = None, offset: int = 0) -> list[ProductInfo]:
        with self.session() as s:
            q = (select(Product).options(selectinload(Product.images), selectinload(Product.category),
                                         selectinload(Product.predicted_category))
                 .order_by(Product.id).offset(offset))
            if limit is not None:
                q = q.limit(limit)
            return [_product_info(p) for p in s.scalars(q)]

    def products_for_images(self, image_ids: Sequence[int]) -> dict[int, tuple[ProductInfo, ImageInfo]]:
        """Map image id -> (its product, the image), for ids that still exist (plain rows,
        chunked below the databases' bind-parameter limits; any number of ids)."""
        return bulk.products_for_images(self.engine, image_ids)

    def filter_columns(self) -> bulk.FilterColumns:
        """Per indexable image: product, price and category as numpy columns (search filters)."""
        return bulk.filter_columns(self.engine)

    def ok_image_ids(self) -> np.ndarray:
        """Ids of the indexable images, ascending (`index status` compares them with a build's)."""
        return bulk.ok_image_ids(self.engine)

    def indexable_images(self) -> list[ImageInfo]:
        """Images with a readable file, in id order: what an index build embeds."""
        with self.engine.connect() as conn:
            return bulk.image_rows(conn, only_ok=True)

    def unusable_images(self) -> list[UnusableImage]:
        """Images an index build skips (missing or undecodable files), with their SKU and reason."""
        with self.session() as s:
            rows = s.execute(select(ProductImage.id, Product.sku, ProductImage.path, ProductImage.status,
                                    ProductImage.error)
                             .join(Product, Product.id == ProductImage.product_id)
                             .where(ProductImage.status != "ok").order_by(Product.sku, ProductImage.id))
            return [UnusableImage(*r) for r in rows]

    def images(self) -> list[ImageInfo]:
        """Every image whatever its status, in id order (what a rescan of the files checks)."""
        with self.engine.connect() as conn:
            return bulk.image_rows(conn)

    def update_image_file(self, image_id: int, status: str, sha256: str | None = None, width: int | None = None,
                          height: int | None = None, file_size: int | None = None, file_mtime_ns: int | None = None,
                          error: str | None = None) -> None:
        """Record what a rescan found for one image file (new content, or why it is unusable now)."""
        with self.session() as s:
            img = s.get(ProductImage, image_id)
            if img is None:
                return
            img.status, img.error = status, error
            img.file_size, img.file_mtime_ns = file_size, file_mtime_ns
            if status == "ok":
                img.sha256, img.width, img.height = sha256, width, height

    def image(self, image_id: int) -> ImageInfo | None:
        with self.session() as s:
            img = s.get(ProductImage, image_id)
            return _image_info(img) if img else None

    def mark_image_failed(self, image_id: int, error: str) -> None:
        with self.session() as s:
            img = s.get(ProductImage, image_id)
            if img is not None:
                img.status, img.error = "invalid", error

    def set_predicted_category(self, product_id: int, category_id: int | None, confidence: float | None) -> None:
        with self.session() as s:
            p = s.get(Product, product_id)
            if p is not None:
                p.predicted_category_id, p.predicted_confidence = category_id, confidence

    def stats(self) -> CatalogueStats:
        with self.session() as s:
            n_img = s.scalar(select(func.count()).select_from(ProductImage)) or 0
            ok = s.scalar(select(func.count()).select_from(ProductImage).where(ProductImage.status == "ok")) or 0
            return CatalogueStats(
                products=s.scalar(select(func.count()).select_from(Product)) or 0,
                images=n_img,
                images_ok=ok,
                images_failed=n_img - ok,
                categories=s.scalar(select(func.count()).select_from(Category)) or 0,
                uncategorised=s.scalar(select(func.count()).select_from(Product).where(Product.category_id.is_(None))) or 0,
            )

    def has_prices(self) -> bool:
        """Does any product have a price (the page hides its price filter otherwise)."""
        with self.session() as s:
            return s.scalar(select(Product.id).where(Product.price.is_not(None)).limit(1)) is not None

    # -- index builds -----------------------------------------------------
    def record_build(self, info: IndexBuildInfo) -> None:
        """Insert or update the row of an index build."""
        with self.session() as s:
            row = s.scalar(select(IndexBuild).where(IndexBuild.build_id == info.build_id))
            if row is None:
                row = IndexBuild(build_id=info.build_id)
                s.add(row)
            row.model_name, row.model_fingerprint = info.model_name, info.model_fingerprint
            row.index_type, row.dim, row.vector_count, row.status = info.index_type, info.dim, info.vector_count, info.status
            if info.status == "complete":
                row.completed_at = datetime.now(timezone.utc)

    def builds(self) -> list[IndexBuildInfo]:
        with self.session() as s:
            rows = s.scalars(select(IndexBuild).order_by(IndexBuild.id.desc()))
            return [
                IndexBuildInfo(r.build_id, r.model_name, r.model_fingerprint, r.index_type, r.dim, r.vector_count,
                               r.status, r.created_at, r.completed_at)
                for r in rows
            ]
