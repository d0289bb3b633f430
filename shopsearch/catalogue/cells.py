"""Manifest cells -> values: prices, category paths and image lists as CSV and JSONL rows
write them (shared by every manifest reader in importers.py)."""
from __future__ import annotations

import functools
import json
from decimal import Decimal, InvalidOperation

#: characters that make an image cell a list (JSON, or paths separated by | or ;)
_LIST_MARKS = frozenset("[|;")


#: the largest price the catalogue's NUMERIC(12, 2) column holds: PostgreSQL refuses a larger
#: one (or an infinite one) mid-import, and SQLite would store inf, which is no JSON number
MAX_PRICE = Decimal("9999999999.99")


def price(value: object, decimal_comma: bool = False) -> Decimal | None:
    """A price cell as a Decimal (None when empty); ValueError, quoting the cell as the file
    holds it, when it is not a price (not a number, NaN, infinite, negative or beyond
    MAX_PRICE). `decimal_comma` (a CSV separated by semicolons or tabs, as spreadsheets save
    it where decimals are written with a comma) also reads one comma as the decimal point."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    if decimal_comma and text.count(",") == 1 and "." not in text:
        text = text.replace(",", ".")  # "12,50" from a spreadsheet that writes decimal commas
    try:
        d = Decimal(text)
    except InvalidOperation:
        hint = ""
        if "," in str(value):
            hint = (" (write decimals with a comma or a point, e.g. 1,50 or 1.50, and no thousands separator)"
                    if decimal_comma else " (write decimals with a point, e.g. 1.50, and no thousands separator)")
        raise ValueError(f"price {value!r} is not a number{hint}") from None
    if not d.is_finite():
        raise ValueError(f"price {value!r} is not a number")
    if not 0 <= d <= MAX_PRICE:
        raise ValueError(f"price {value!r} must be between 0 and {MAX_PRICE}")
    return d


#: the catalogue's column widths (models.py): PostgreSQL refuses a longer value, and with it the
#: whole import, so a row holding one is refused alone, on every database alike
SKU_CHARS, TITLE_CHARS, BRAND_CHARS, CATEGORY_CHARS, CATEGORY_PATH_CHARS, IMAGE_PATH_CHARS = \
    200, 500, 200, 200, 1000, 2000


def text_cell(value: object, name: str, limit: int | None = None) -> str | None:
    """A text cell (None when empty; a number as its text); ValueError for a list or object
    (a JSONL row), a NUL character (PostgreSQL text cannot hold one) or more than `limit` characters."""
    if value is None or value == "":
        return None
    if isinstance(value, (dict, list, bool)):
        raise ValueError(f"{name} must be text, not {json.dumps(value)[:60]}")
    out = value if isinstance(value, str) else str(value)
    if "\x00" in out:
        raise ValueError(f"{name} holds a NUL character")
    if limit is not None and len(out) > limit:
        raise ValueError(f"{name} is {len(out):,} characters long; at most {limit} fit the catalogue")
    return out


def _json_list(value: object) -> object:
    """A CSV cell holding a JSON list (`["Home", "Bath/Shower"]`) as that list; else unchanged."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, list) else value
    return value


def category(value: object) -> tuple[str, ...] | None:
    """A category cell (`Fruit > Apple`, `Fruit/Apple` or a JSON list of levels) as its levels."""
    # a manifest names few categories on many rows: each text is parsed once
    return _category_of_text(value) if isinstance(value, str) else _parse_category(value)


@functools.lru_cache(maxsize=8192)
def _category_of_text(value: str) -> tuple[str, ...] | None:
    return _parse_category(value)


def _parse_category(value: object) -> tuple[str, ...] | None:
    value = _json_list(value)
    if value in (None, "", []):
        return None
    if isinstance(value, (list, tuple)):  # one level per element, whatever characters it holds
        parts = [str(v).strip() for v in value]
    else:
        text = str(value)
        parts = [p.strip() for p in (text.split(">") if ">" in text else text.split("/"))]
    parts = [p for p in parts if p]
    for p in parts:
        text_cell(p, "category level", CATEGORY_CHARS)
    if len("/".join(parts)) > CATEGORY_PATH_CHARS:
        raise ValueError(f"category path is over {CATEGORY_PATH_CHARS} characters long")
    return tuple(parts) or None


def image_list(value: object) -> list[str]:
    """An image cell (one path, paths separated by | or ;, or a JSON list) as its paths."""
    if value is None or value == "":
        return []
    if isinstance(value, str) and not (set(value) & _LIST_MARKS) and value.strip() == value:
        return [value]  # one plain path: most rows of most manifests
    value = _json_list(value)
    if value in (None, ""):
        return []
    if isinstance(value, list):
        return [str(v) for v in value if str(v).strip()]
    return [p.strip() for p in str(value).replace(";", "|").split("|") if p.strip()]
