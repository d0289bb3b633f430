"""Typed search results."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any


def plain_number(text: str) -> bool:
    """ASCII, without digit separators: int(), float() and Decimal() read `1_000` as 1000 and
    full-width or other scripts' digits ("５") as digits, which no client means."""
    return text.isascii() and "_" not in text


def parse_price(text: str) -> Decimal:
    """A price filter's bound as written; ValueError when it is no plain number. Whether it is a
    price a filter may name is SearchFilters.price_allowed's answer (NaN and inf parse here)."""
    try:
        if not plain_number(text):
            raise InvalidOperation(text)
        return Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None


@dataclass(frozen=True)
class SearchFilters:
    """Restrictions applied to products after vector search."""

    #: the highest price a filter may name: no filter means more (and a JSON answer's float would not keep it)
    MAX_PRICE = Decimal(10) ** 12

    category: str | None = None  # category path prefix, e.g. "Fruit/Apple"
    min_price: Decimal | float | None = None
    max_price: Decimal | float | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.category, self.min_price, self.max_price))

    @classmethod
    def price_allowed(cls, price: Decimal) -> bool:
        """Finite, from 0 to MAX_PRICE (1e999999999 is a finite Decimal but no float)."""
        return price.is_finite() and 0 <= price <= cls.MAX_PRICE


@dataclass(frozen=True)
class CategoryPrediction:
    """The classifier's view of a query or product image."""

    category: str
    confidence: float
    level: str = "fine"
    alternatives: tuple[tuple[str, float], ...] = ()
    routing: str = "off"  # "filter" | "top2" | "all" | "fused" | "off": what search did with it

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.category, "confidence": round(self.confidence, 4), "level": self.level,
                "alternatives": [{"category": c, "confidence": round(p, 4)} for c, p in self.alternatives],
                "routing": self.routing}


@dataclass(frozen=True)
class ProductHit:
    """One product in a result list, represented by its best-matching image."""

    sku: str
    title: str
    score: float
    image_id: int
    image_path: str
    brand: str | None = None
    price: Decimal | None = None
    currency: str | None = None
    category: str | None = None
    category_source: str | None = None
    matched_images: int = 1
    calibrated: float | None = None  # probability this is the right product (shopsearch.confidence)
    similarity: float | None = None  # the plain similarity when `score` holds a fused one (None: the same)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "title": self.title,
            "score": round(float(self.score), 6),
            "brand": self.brand,
            "price": float(self.price) if self.price is not None else None,
            "currency": self.currency,
            "category": self.category,
            "category_source": self.category_source,
            "matched_image": {"id": self.image_id, "path": self.image_path},
            "matched_images": self.matched_images,
            "calibrated_score": round(self.calibrated, 4) if self.calibrated is not None else None,
            "similarity": round(float(self.plain_score), 6),
        }

    @property
    def plain_score(self) -> float:
        """The image similarity itself, before any fusion bonus."""
        return self.score if self.similarity is None else self.similarity


@dataclass(frozen=True)
class SearchResult:
    hits: tuple[ProductHit, ...]
    model: str
    build_id: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    predicted_category: CategoryPrediction | None = None
    confidence: float | None = None  # probability the first hit is the right product; None: uncalibrated
    match: str | None = None  # "strong" | "weak" | "none" (None when uncalibrated)
    calibration: dict[str, Any] | None = None  # how confidence was obtained, or why there is none
    #: why the confidence is lower than the fit said (shopsearch.confidence.capped): "filter" (the
    #: category head puts the photo's product outside the category filter; without a head, the
    #: unfiltered search ranks it lower: SearchService._unfiltered_chance) or "flat" (one flat colour)
    confidence_limit: str | None = None
    #: advice on the photo itself, the results kept (shopsearch.photo_advice: "too_dark")
    advice: tuple[str, ...] = ()
    #: the vector searched with (float32, unit length); kept out of to_dict: the feedback log stores it
    query_vector: Any = field(default=None, repr=False, compare=False)

    def to_dict(self, hits: bool = True) -> dict[str, Any]:
        """`hits`=False: an empty results list, for a caller that writes its own (webapp cards)."""
        return {
            "results": [h.to_dict() for h in self.hits] if hits else [],
            "model": self.model,
            "build_id": self.build_id,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "predicted_category": self.predicted_category.to_dict() if self.predicted_category else None,
            "confidence": round(self.confidence, 4) if self.confidence is not None else None,
            "match": self.match,
            "confidence_limit": self.confidence_limit,
            "advice": list(self.advice),
            "calibration": self.calibration,
        }
