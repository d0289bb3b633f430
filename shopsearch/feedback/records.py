"""Typed records of the feedback log: what a search writes, what analysts read back."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

import numpy as np

from shopsearch.photo_advice import known_advice
from shopsearch.results import SearchResult

#: the interactions a shop may report against a logged search
EVENTS = ("click", "confirm", "reject", "add_to_cart", "purchase")
#: the shopper's verdicts on one product: the latest one counts
VERDICTS = ("confirm", "reject")
#: the known SearchResult.confidence_limit values a logged search reads back (anything else: none)
CONFIDENCE_LIMITS = ("flat", "filter")


def new_request_id() -> str:
    """128 random bits as 32 hex digits: unguessable, so knowing one is the right to report on it."""
    return secrets.token_hex(16)


def is_request_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class LoggedHit:
    rank: int  # 1-based, within its region
    sku: str
    image_id: int
    score: float
    calibrated: float | None = None
    category: str | None = None
    region: int = 0  # 0: the whole photo (or its crop); n: the n-th object found in it


@dataclass(frozen=True)
class SearchLogEntry:
    """One search as it is written to the log."""

    request_id: str
    build_id: str
    model_name: str
    model_fingerprint: str
    kind: str  # "image" | "text" | "refine" (a results page re-run with new filters or k)
    source: str  # "api" | "page"
    vector: np.ndarray = field(repr=False)
    hits: tuple[LoggedHit, ...]
    options: dict[str, Any] = field(default_factory=dict)
    match: str | None = None
    confidence: float | None = None
    photo: str | None = None

    @classmethod
    def from_result(cls, request_id: str, result: SearchResult, fingerprint: str, *, kind: str, source: str,
                    options: dict[str, Any] | None = None, regions: Sequence[SearchResult] = (),
                    photo: str | None = None) -> "SearchLogEntry":
        """The entry of `result`; `regions` are the found objects' results (objects=auto), in order.
        The photo's advice (result.advice) is kept in `options` as "advice" (only when there is
        some), so that the results page rebuilt from the log gives it again; likewise the result's
        confidence_limit ("flat", "filter") as "confidence_limit", so it gives the same verdict wording."""
        if result.query_vector is None:
            raise ValueError("the search result carries no query vector to log")
        shown = [LoggedHit(r + 1, h.sku, h.image_id, float(h.score), h.calibrated, h.category)
                 for r, h in enumerate(result.hits)]
        for n, region in enumerate(regions, start=1):
            shown += [LoggedHit(r + 1, h.sku, h.image_id, float(h.score), h.calibrated, h.category, region=n)
                      for r, h in enumerate(region.hits)]
        opts = dict(options or {})
        if result.advice:
            opts["advice"] = list(result.advice)
        if result.confidence_limit:
            opts["confidence_limit"] = str(result.confidence_limit)
        return cls(request_id, result.build_id, result.model, fingerprint, kind, source,
                   np.asarray(result.query_vector, dtype=np.float32), tuple(shown), opts,
                   result.match, result.confidence, photo)


@dataclass(frozen=True)
class LoggedEvent:
    sku: str
    event: str
    created_at: datetime


@dataclass(frozen=True)
class LoggedSearch:
    """A search read back from the log, with what was shown and what shoppers did."""

    request_id: str
    created_at: datetime
    build_id: str
    model_name: str
    model_fingerprint: str
    kind: str
    source: str
    options: dict[str, Any]
    match: str | None
    confidence: float | None
    hits: tuple[LoggedHit, ...]
    events: tuple[LoggedEvent, ...] = ()

    @property
    def advice(self) -> tuple[str, ...]:
        """The photo's advice as the search gave it (shopsearch.photo_advice; known codes only)."""
        given = self.options.get("advice")
        return known_advice(given) if isinstance(given, list) else ()

    @property
    def confidence_limit(self) -> str | None:
        """Why the search's confidence was capped, as it gave it ("flat", "filter"; others: None)."""
        given = self.options.get("confidence_limit")
        return given if isinstance(given, str) and given in CONFIDENCE_LIMITS else None

    def rank_of(self, sku: str) -> int | None:
        """The product's rank in the main list, else its best rank in a found object's list."""
        main = [h.rank for h in self.hits if h.sku == sku and h.region == 0]
        other = [h.rank for h in self.hits if h.sku == sku]
        return min(main) if main else (min(other) if other else None)

    def skus_with(self, event: str) -> set[str]:
        return {e.sku for e in self.events if e.event == event}

    def verdicts(self) -> dict[str, str]:
        """sku -> "confirm" | "reject": the latest verdict on each product (events are in log order)."""
        return {e.sku: e.event for e in self.events if e.event in VERDICTS}

    def confirmed(self) -> set[str]:
        """Products whose latest verdict is "this is it" (a later "not this" takes it back)."""
        return {sku for sku, v in self.verdicts().items() if v == "confirm"}


@dataclass(frozen=True)
class ConfirmedPair:
    """A logged query whose right product a shopper confirmed: training and evaluation data."""

    request_id: str
    created_at: datetime
    build_id: str
    model_fingerprint: str
    kind: str
    sku: str
    rank: int  # where the serving build ranked it then (main list)
    category: str | None
    vector: np.ndarray = field(repr=False)  # float32, as searched (the crop's when cropped)
