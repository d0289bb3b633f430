"""Request parameters -> typed values, and results -> JSON/template-friendly dicts."""
from __future__ import annotations

from decimal import Decimal
from typing import Any, Mapping

from flask import current_app, url_for

from shopsearch.catalogue.records import ProductInfo
from shopsearch.errors import ConfigError
from shopsearch.rerank import RerankOptions
from shopsearch.rerank import parse_rerank as rerank_options
from shopsearch.results import ProductHit, SearchFilters, SearchResult, parse_price, plain_number
from webapp.card_urls import CardUrls, card_urls
from webapp.errors import BadParameterError


def _get(values: Mapping[str, str], name: str) -> str | None:
    v = values.get(name)
    return v.strip() if isinstance(v, str) and v.strip() else None


def parse_k(values: Mapping[str, str], default: int) -> int:
    raw = _get(values, "k")
    if raw is None:
        return default
    top = int(current_app.config["MAX_K"])
    try:
        if not plain_number(raw):
            raise ValueError(raw)
        k = int(raw)
    except ValueError:
        raise BadParameterError(f"k must be a whole number between 1 and {top}, not {raw!r}") from None
    if not 1 <= k <= top:
        raise BadParameterError(f"k must be between 1 and {top}, not {k}")
    return k


def _price(values: Mapping[str, str], name: str) -> Decimal | None:
    raw = _get(values, name)
    if raw is None:
        return None
    try:
        d = parse_price(raw)
    except ValueError:
        raise BadParameterError(f"{name} must be a number, not {raw!r}") from None
    if not SearchFilters.price_allowed(d):
        raise BadParameterError(f"{name} must be a price of 0 or more (at most {SearchFilters.MAX_PRICE:,}), "
                                f"not {raw[:40]!r}")
    return d


def parse_filters(values: Mapping[str, str]) -> SearchFilters:
    category = _get(values, "category")
    if category is not None and len(category) > 500:
        raise BadParameterError("category is too long")
    lo, hi = _price(values, "min_price"), _price(values, "max_price")
    if lo is not None and hi is not None and lo > hi:
        raise BadParameterError(f"min_price ({lo}) is above max_price ({hi})")
    return SearchFilters(category=category.strip("/") if category else None, min_price=lo, max_price=hi)


def parse_rerank(values: Mapping[str, str]) -> RerankOptions | None:
    """`rerank=off|qe|kr|qe+kr` (None when absent: the service's default)."""
    raw = _get(values, "rerank")
    if raw is None:
        return None
    if len(raw) > 100:
        raise BadParameterError("rerank is too long")
    try:
        # an unescaped `+` in a query string arrives as a space: `rerank=qe+kr` means qe+kr
        return rerank_options("+".join(raw.split()))
    except ConfigError as e:
        raise BadParameterError(str(e)) from None


def parse_switch(values: Mapping[str, str], name: str) -> bool | None:
    """An on/off query parameter (None when absent: the service's default)."""
    raw = _get(values, name)
    if raw is None:
        return None
    if raw.lower() in ("1", "true", "on", "yes"):
        return True
    if raw.lower() in ("0", "false", "off", "no"):
        return False
    raise BadParameterError(f"{name} must be on or off, not {raw!r}")


def parse_routing(values: Mapping[str, str]) -> bool:
    """`routing=off` turns the category routing off for this search; absent or on: the server's setting."""
    switch = parse_switch(values, "routing")
    return False if switch is False else bool(current_app.config["ROUTING"])


def image_urls(image_id: int) -> dict[str, str]:
    return {"thumbnail_url": url_for("images.image", image_id=image_id, size=320),
            "image_url": url_for("images.image", image_id=image_id, size=1280)}


def hit_dict(h: ProductHit, urls: CardUrls | None = None) -> dict[str, Any]:
    """A result card for JSON: `urls` (card_urls()) may be passed in to fetch it once per answer."""
    urls = urls or card_urls()
    d = h.to_dict()
    d["matched_image"].pop("path", None)  # server file paths are not the public's business
    d["matched_image"].update(thumbnail_url=urls.image_320(h.image_id), image_url=urls.image_1280(h.image_id))
    d["url"] = urls.product(h.sku)
    d["api_url"] = urls.api_product(h.sku)
    return d


def result_dict(res: SearchResult, filters: SearchFilters | None = None, k: int | None = None) -> dict[str, Any]:
    d = res.to_dict(hits=False)
    urls = card_urls()
    d["results"] = [hit_dict(h, urls) for h in res.hits]
    d["count"] = len(res.hits)
    if filters is not None:
        d["filters"] = {"category": filters.category,
                        "min_price": float(filters.min_price) if filters.min_price is not None else None,
                        "max_price": float(filters.max_price) if filters.max_price is not None else None}
    if k is not None:
        d["k"] = k
    return d


def product_dict(p: ProductInfo) -> dict[str, Any]:
    """A product for JSON: its attributes as the page shows them (VISIBLE_ATTRIBUTES: a manifest's
    other columns may be internal, e.g. a cost price, and the API is as public as the page)."""
    d = p.to_dict()
    d["attributes"] = dict(visible_attributes(p.attributes))
    for img, info in zip(d["images"], p.images):
        img.pop("path", None)
        if info.status == "ok":
            img.update(image_urls(info.id))
    d["url"] = url_for("pages.product", sku=p.sku)
    d["similar_url"] = url_for("api.similar", sku=p.sku)
    return d


def visible_attributes(attributes: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """The attributes the shop shows (VISIBLE_ATTRIBUTES: names, comma-separated, or `*`); none by default,
    since imported datasets carry internal fields ("coarse label 2")."""
    conf = current_app.config.get("VISIBLE_ATTRIBUTES") or ""
    names = [n.strip() for n in (conf if isinstance(conf, (list, tuple)) else str(conf).split(",")) if n.strip()]
    items = sorted((str(k), v) for k, v in (attributes or {}).items())
    if "*" in names:
        return items
    return [(k, v) for k, v in items if k in names]
