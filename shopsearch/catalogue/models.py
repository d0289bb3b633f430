"""SQLAlchemy 2 models of the catalogue. The schema itself is made only by the
Alembic migrations under migrations/; these classes must match them."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# SQLite only auto-increments INTEGER PRIMARY KEY, so BigInteger falls back to Integer there.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# SQLite AUTOINCREMENT (migration 0007): without it a new row gets max(id) + 1, the id of a just
# deleted row, and image ids are the keys of the vectors in the index files. PostgreSQL ignores it.
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Category(Base):
    """A node of the category tree (e.g. Fruit > Apple > Granny-Smith)."""

    __tablename__ = "categories"
    __table_args__ = (UniqueConstraint("parent_id", "name", name="uq_categories_parent_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id", ondelete="CASCADE"), index=True)
    # "/"-joined names from the root: cheap to show, filter and compare.
    path: Mapped[str] = mapped_column(String(1000), unique=True)
    depth: Mapped[int] = mapped_column(Integer, default=0)

    parent: Mapped["Category | None"] = relationship(remote_side="Category.id")


class Product(Base):
    __tablename__ = "products"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(200), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str | None] = mapped_column(Text)
    brand: Mapped[str | None] = mapped_column(String(200))
    price: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    currency: Mapped[str | None] = mapped_column(String(3))
    category_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id", ondelete="SET NULL"), index=True)
    # A merchant's category is never overwritten by a prediction; predictions live beside it.
    predicted_category_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id", ondelete="SET NULL"))
    predicted_confidence: Mapped[float | None] = mapped_column(Float)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # digest of the manifest row last imported (catalogue/row_digest.py); NULL: compare in full
    row_digest: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    category: Mapped[Category | None] = relationship(foreign_keys=[category_id])
    predicted_category: Mapped[Category | None] = relationship(foreign_keys=[predicted_category_id])
    images: Mapped[list["ProductImage"]] = relationship(
        back_populates="product", cascade="all, delete-orphan", order_by="ProductImage.id"
    )


class ProductImage(Base):
    """One image of a product. Its id is the int64 key of its vector in FAISS."""

    __tablename__ = "product_images"
    # (migration 0006 adds a partial index of the unusable images, status <> 'ok', for the quick
    # status' COUNT; not declared here: its per-dialect WHERE would import both dialects at start-up)
    __table_args__ = (UniqueConstraint("product_id", "path", name="uq_product_images_product_path"), NEVER_REUSE_IDS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(2000), index=True)
    # "catalogue" (merchant's own picture) or "reference" (e.g. shopper photos added as extra views)
    role: Mapped[str] = mapped_column(String(20), default="catalogue")
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    # the file's size and mtime when it was hashed: a rescan re-hashes only files whose stat moved
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    file_mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    # "ok" | "missing" | "invalid"
    status: Mapped[str] = mapped_column(String(20), default="ok")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    product: Mapped[Product] = relationship(back_populates="images")


class IndexBuild(Base):
    """A record of each index build: which model, which index type, how many vectors."""

    __tablename__ = "index_builds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    build_id: Mapped[str] = mapped_column(String(64), unique=True)
    model_name: Mapped[str] = mapped_column(String(500))
    model_fingerprint: Mapped[str] = mapped_column(String(500))
    index_type: Mapped[str] = mapped_column(String(100))
    dim: Mapped[int] = mapped_column(Integer)
    vector_count: Mapped[int] = mapped_column(Integer, default=0)
    # "building" | "complete" | "failed"
    status: Mapped[str] = mapped_column(String(20), default="building")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # the catalogue generation whose indexable images this build holds exactly (None: unknown)
    catalogue_generation: Mapped[int | None] = mapped_column(BigInteger)


class CatalogueState(Base):
    """One row: the catalogue generation, bumped by database triggers (migration 0004) on every
    change to what an index holds: an image inserted or deleted, its status, content hash or
    product changed. Equal generations mean nothing an index build reads has changed."""

    __tablename__ = "catalogue_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
