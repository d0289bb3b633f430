"""CatalogueStore: products, images, categories and index-build records over SQLAlchemy."""
from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterable, Iterator, Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, selectinload, sessionmaker

import numpy as np

from shopsearch.catalogue import bulk, db
from shopsearch.catalogue.upsert import upsert_batch
from shopsearch.catalogue.models import CatalogueState, Category, IndexBuild, Product, ProductImage
from shopsearch.catalogue.records import (
    CandidateRow,
    CatalogueStats,
    CategoryInfo,
    FileCheck,
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
#: products per upsert transaction (written in bulk: catalogue/upsert.py)
UPSERT_BATCH = 2000
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


class CatalogueStore:
    """All catalogue reads and writes. Takes an engine; call `open()` for a checked one."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        #: category path -> id, for imports (categories are never deleted, only added)
        self._category_ids: dict[tuple[str, ...], int] = {}

    @classmethod
    def open(cls, url: str, migrate: bool = True) -> "CatalogueStore":
        """Engine for `url`, migrated to head (or only checked when migrate=False)."""
        engine = db.connect(url)
        head = db.head_from_files()
        if head is not None and db.current_revision(engine) == head:
            return cls(engine)  # at head already: Alembic is not even imported
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
        """Insert or update products, in one transaction per UPSERT_BATCH of them, written in bulk
        (catalogue/upsert.py). A product whose row and images are unchanged is compared on plain
        rows and not written; a record naming images replaces the product's image set (a record
        naming none leaves it alone)."""
        out: list[UpsertResult] = []
        for start in range(0, len(records), UPSERT_BATCH):
            made: dict[tuple[str, ...], int] = {}
            with self.session() as s:

                def category_id(names: tuple[str, ...]) -> int:
                    cid = self._category_ids.get(names) or made.get(names)
                    if cid is None:
                        cid = made[names] = self.ensure_category(names, s)
                    return cid

                out += upsert_batch(s, records[start:start + UPSERT_BATCH], category_id)
            # remembered once committed: a rolled-back batch leaves no id behind that does not exist
            self._category_ids.update(made)
        return out

    def row_digests(self) -> dict[str, tuple[int, str]]:
        """SKU -> (product id, stored row digest) of every product that has one
        (catalogue/row_digest.py), read as plain tuples by the driver's cursor."""
        with self.engine.connect() as conn:
            with db.raw_cursor(conn) as cur:
                cur.execute("SELECT sku, id, row_digest FROM products WHERE row_digest IS NOT NULL")
                return {sku: (pid, digest) for sku, pid, digest in cur.fetchall()}

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

    def candidate_rows(self, image_ids: Sequence[int]) -> dict[int, CandidateRow]:
        """Map image id -> what a search answer shows of it and its product (live rows; ids that
        still exist): products_for_images without the fields no answer shows."""
        return bulk.candidate_rows(self.engine, image_ids)

    def filter_columns(self) -> bulk.FilterColumns:
        """Per indexable image: product, price and category as numpy columns (search filters)."""
        return bulk.filter_columns(self.engine)

    def image_owners(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(generation, image ids ascending, their product ids) of every image row: search
        groups its candidates with these, read once per catalogue generation."""
        return bulk.image_owners(self.engine)

    def image_ids_with_hashes(self, hashes: Sequence[str]) -> np.ndarray:
        """Ids of the images whose content hash is one of `hashes`, ascending."""
        return bulk.image_ids_with_hashes(self.engine, hashes)

    def ok_image_ids(self) -> np.ndarray:
        """Ids of the indexable images, ascending (`index status` compares them with a build's)."""
        return bulk.ok_image_ids(self.engine)

    def indexable_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, content hashes as S64; bulk.NO_HASH where none) of the indexable images, by id."""
        return bulk.indexable_keys(self.engine)

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

    def image_stats(self) -> list[tuple[int, str, str, int | None, int | None]]:
        """(id, path, status, file size, file mtime ns) of every image (a rescan's stat list)."""
        with self.engine.connect() as conn:
            return bulk.image_stats(conn)

    def images_by_id(self, ids: Sequence[int]) -> list[ImageInfo]:
        """The images with these ids that exist, in id order."""
        with self.engine.connect() as conn:
            return bulk.images_by_id(conn, ids)

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

    def record_file_checks(self, checks: Sequence[FileCheck], expected_generation: int) -> int | None:
        """Write what a rescan found (one transaction, the generation counter's row locked
        first, so no other writer moves it meanwhile); the generation after the writes when
        nobody changed the catalogue since `expected_generation` (a stat snapshot taken then
        stays exact with these writes applied), else None."""
        with self.engine.begin() as conn:
            state = CatalogueState.__table__
            # a no-op write: takes the row lock (PostgreSQL) or the database's write lock (SQLite)
            conn.execute(update(state).where(state.c.id == 1).values(generation=state.c.generation))
            before = self._generation(conn)
            table = ProductImage.__table__
            for c in checks:
                values = dict(status=c.status, error=c.error, file_size=c.file_size, file_mtime_ns=c.file_mtime_ns)
                if c.status == "ok":
                    values.update(sha256=c.sha256, width=c.width, height=c.height)
                conn.execute(update(table).where(table.c.id == c.image_id).values(**values))
            after = self._generation(conn)
        return after if before == expected_generation else None

    def source(self) -> str:
        """Which database this is (its URL without the password): what a stat snapshot describes."""
        return self.engine.url.render_as_string(hide_password=True)

    def image(self, image_id: int) -> ImageInfo | None:
        """One image row (plain columns: every thumbnail request reads one)."""
        found = self.images_by_id([image_id])
        return found[0] if found else None

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

    def unusable_count(self) -> int:
        """Images whose file is missing or undecodable (one COUNT)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(ProductImage)
                                    .where(ProductImage.status != "ok")).scalar() or 0)

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

    def generation(self) -> int:
        """The catalogue generation: moved by every change to what an index holds (migration 0004)."""
        with self.engine.connect() as conn:
            return self._generation(conn)

    @staticmethod
    def _generation(conn) -> int:
        return bulk.generation(conn)

    def build_generation(self, build_id: str) -> int | None:
        """The generation whose indexable images `build_id` holds exactly (None: not known)."""
        with self.engine.connect() as conn:
            return conn.execute(select(IndexBuild.catalogue_generation)
                                .where(IndexBuild.build_id == build_id)).scalar()

    def set_build_generation(self, build_id: str, generation: int) -> None:
        """Record that `build_id` holds exactly the indexable images of catalogue `generation`."""
        with self.session() as s:
            s.execute(update(IndexBuild).where(IndexBuild.build_id == build_id)
                      .values(catalogue_generation=generation))

    def builds(self) -> list[IndexBuildInfo]:
        with self.session() as s:
            rows = s.scalars(select(IndexBuild).order_by(IndexBuild.id.desc()))
            return [
                IndexBuildInfo(r.build_id, r.model_name, r.model_fingerprint, r.index_type, r.dim, r.vector_count,
                               r.status, r.created_at, r.completed_at)
                for r in rows
            ]
