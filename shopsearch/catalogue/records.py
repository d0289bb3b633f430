"""Typed, immutable views of catalogue rows, handed across module boundaries."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class ImageRecord:
    """An image as an importer found it (before it has an id)."""

    path: str
    role: str = "catalogue"
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    status: str = "ok"
    error: str | None = None
    file_size: int | None = None  # stat of the file when hashed (see catalogue/rescan.py)
    file_mtime_ns: int | None = None


@dataclass(frozen=True)
class ProductRecord:
    """A product as an importer read it from a manifest or folder."""

    sku: str
    title: str
    description: str | None = None
    brand: str | None = None
    price: Decimal | None = None
    currency: str | None = None
    category_path: tuple[str, ...] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    images: tuple[ImageRecord, ...] = ()
    #: the fields its source has no column for (a manifest of `sku,price` has no title): an existing
    #: product keeps its value of each ("title", "description", "brand", "price", "currency",
    #: "attributes"), a new one gets the default
    keep: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ImageInfo:
    id: int
    product_id: int
    path: str
    role: str
    sha256: str | None
    width: int | None
    height: int | None
    status: str
    error: str | None = None
    file_size: int | None = None
    file_mtime_ns: int | None = None


@dataclass(frozen=True)
class FileCheck:
    """What a rescan found for one image file: new content (status ok) or why it is unusable."""

    image_id: int
    status: str
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    file_size: int | None = None
    file_mtime_ns: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class UnusableImage:
    """A catalogue image that is not indexed, and why (import check, rescan or embedding)."""

    image_id: int
    sku: str
    path: str
    status: str  # missing | invalid
    error: str | None


@dataclass(frozen=True)
class CategoryInfo:
    id: int
    name: str
    path: str
    depth: int
    parent_id: int | None


@dataclass(frozen=True)
class ProductInfo:
    id: int
    sku: str
    title: str
    description: str | None
    brand: str | None
    price: Decimal | None
    currency: str | None
    category: str | None  # category path, e.g. "Fruit/Apple/Granny-Smith"
    category_source: str | None  # "merchant" | "predicted" | None
    predicted_category: str | None
    predicted_confidence: float | None
    attributes: dict[str, Any]
    images: tuple[ImageInfo, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "title": self.title,
            "description": self.description,
            "brand": self.brand,
            "price": float(self.price) if self.price is not None else None,
            "currency": self.currency,
            "category": self.category,
            "category_source": self.category_source,
            "predicted_category": self.predicted_category,
            "predicted_confidence": self.predicted_confidence,
            "attributes": self.attributes,
            "images": [
                {"id": i.id, "path": i.path, "role": i.role, "width": i.width, "height": i.height, "status": i.status}
                for i in self.images
            ],
        }


@dataclass(frozen=True, slots=True)
class CandidateRow:
    """A search candidate's live row: of its image and product, only what a result shows and the
    filters check (CatalogueStore.candidate_rows; no description, attributes or image metadata)."""

    image_id: int
    image_path: str
    sku: str
    title: str
    brand: str | None
    price: Decimal | None
    currency: str | None
    category: str | None  # merchant's path, else the predicted one
    category_source: str | None  # "merchant" | "predicted" | None


@dataclass(frozen=True)
class UpsertResult:
    sku: str
    product_id: int
    created: bool
    changed: bool
    images_added: int
    images_changed: int
    images_removed: int = 0  # no longer named by the product's row: deleted (their vectors leave at the next update)


@dataclass(frozen=True)
class IndexBuildInfo:
    build_id: str
    model_name: str
    model_fingerprint: str
    index_type: str
    dim: int
    vector_count: int
    status: str
    created_at: Any
    completed_at: Any


@dataclass(frozen=True)
class CatalogueStats:
    products: int
    images: int
    images_ok: int
    images_failed: int
    categories: int
    uncategorised: int
