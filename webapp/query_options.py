"""Search options beyond k and the filters: the crop box, objects=auto, the category
filter resolved against the catalogue, and how prices and regions are shown."""
from __future__ import annotations

from decimal import Decimal
from typing import Any, Mapping

from flask import current_app

from shopsearch.category_filter import resolve_category
from shopsearch.regions import Box, Region, parse_box
from shopsearch.results import SearchFilters, plain_number
from webapp.errors import BadParameterError
from webapp.params import hit_dict

#: currency codes shown as a symbol before the amount; others are written after it
_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "INR": "₹", "CNY": "¥"}


def parse_crop(values: Mapping[str, str]) -> Box | None:
    """`crop=x,y,w,h` (fractions of the upright photo) or None; InvalidRegionError (400) when bad."""
    raw = values.get("crop")
    if raw is None or not str(raw).strip():
        return None
    return parse_box(str(raw))


def parse_objects(values: Mapping[str, str]) -> int:
    """How many object regions to find: 0 (off) unless `objects=auto` (or a number up to MAX_OBJECTS)."""
    raw = str(values.get("objects") or "").strip().lower()
    top = int(current_app.config["MAX_OBJECTS"])
    if raw in ("", "0", "off", "none", "false"):
        return 0
    if raw in ("auto", "on", "true"):
        return top
    try:
        if not plain_number(raw):
            raise ValueError(raw)
        n = int(raw)
    except ValueError:
        raise BadParameterError(f"objects must be 'auto' or a number from 1 to {top}, not {raw!r}") from None
    if not 1 <= n <= top:
        raise BadParameterError(f"objects must be 'auto' or a number from 1 to {top}, not {n}")
    return n


def resolved(filters: SearchFilters, categories: list[str]) -> SearchFilters:
    """The filters with the category resolved to a catalogue path (UnknownCategoryError, 400, when none)."""
    if not filters.category:
        return filters
    return SearchFilters(resolve_category(filters.category, categories), filters.min_price, filters.max_price)


def region_dict(r: Region) -> dict[str, Any]:
    d = r.to_dict()
    d["results"] = [hit_dict(h) for h in r.result.hits]
    return d


def format_price(price: Decimal | float | None, currency: str | None) -> str | None:
    """`€117.75`, `117.75 SEK`: the product's currency, else the shop's default (CURRENCY)."""
    if price is None:
        return None
    code = (currency or current_app.config.get("CURRENCY") or "").strip().upper()
    amount = f"{float(price):,.2f}"
    if code in _SYMBOLS:
        return f"{_SYMBOLS[code]}{amount}"
    return f"{amount} {code}".strip()
