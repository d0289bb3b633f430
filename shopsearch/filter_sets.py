"""Which image ids a search's filters allow, answered from memory (docs/filtered_search.md).

The catalogue's filter columns (per indexable image: product, price, category) are read
once per search service with one query and kept as numpy arrays (about 56 bytes per image
with the price and category orders: 56 MB at a million). A category is a slice of the images
grouped by category and a price range a slice of the images sorted by price (work in
proportion to what they match), and recent answers are kept in a small cache bounded by bytes, so repeated filters (the same category
page, the same price bucket) cost a dictionary lookup and no database round trip.

The columns are those of the catalogue when the service was opened (a service serves one
index build; the web app opens a new one for each new build). Search still reads each
hit's product from the database and re-checks the filters on it, so a price or category
changed since then can hide a product until the next build, never show a wrong one."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import numpy as np

from shopsearch.catalogue.bulk import FilterColumns
from shopsearch.results import SearchFilters

#: bytes of cached allowed-id arrays kept per service
CACHE_BYTES = 64 << 20


def _matches(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


class AllowedImages:
    """Allowed image ids for (filters, routed categories); loads its columns on first use."""

    def __init__(self, load: Callable[[], FilterColumns]) -> None:
        self._load = load
        self._cols: FilterColumns | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._price_order: tuple[np.ndarray, np.ndarray] | None = None
        self._category_order: tuple[np.ndarray, np.ndarray] | None = None

    def columns(self) -> FilterColumns:
        with self._lock:
            if self._cols is None:
                self._cols = self._load()
            return self._cols

    def ids_for(self, filters: SearchFilters, categories: tuple[str, ...] | None = None) -> np.ndarray | None:
        """Image ids (unique, in no set order, a read-only array, the same one for a repeated filter) passing
        the shopper's filters and, when given, lying in one of `categories` (routing); None
        when nothing restricts the search."""
        if not filters.active and categories is None:
            return None
        key = (filters.category, _num(filters.min_price), _num(filters.max_price), categories)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        ids = self._compute(self.columns(), filters, categories)
        # read-only: the index keys its translation of a repeated set on the array (PositionCache)
        ids.flags.writeable = False
        with self._lock:
            if key not in self._cache and ids.nbytes <= CACHE_BYTES:
                self._cache[key] = ids
                self._cached_bytes += ids.nbytes
                while self._cached_bytes > CACHE_BYTES:
                    _, old = self._cache.popitem(last=False)
                    self._cached_bytes -= old.nbytes
        return ids

    def _compute(self, cols: FilterColumns, f: SearchFilters, categories: tuple[str, ...] | None) -> np.ndarray:
        rows = None  # rows of the columns still allowed; None: all
        if f.min_price is not None or f.max_price is not None:
            # a price range is a slice of the rows sorted by price: work in proportion to what it matches
            order, sorted_prices = self._by_price(cols)
            lo = 0 if f.min_price is None else int(np.searchsorted(sorted_prices, _num(f.min_price), "left"))
            hi = int(np.searchsorted(sorted_prices, np.inf if f.max_price is None else _num(f.max_price), "right"))
            rows = order[lo:max(lo, hi)]
        for prefixes in ((f.category,) if f.category else None, categories):
            if prefixes is None:
                continue
            matched = [cid for cid, path in cols.category_paths.items() if _matches(path, prefixes)]
            if rows is None:
                # the rows grouped by category (made once): work in proportion to what matches
                order, bounds = self._by_category(cols)
                starts, ends = bounds[matched], bounds[np.asarray(matched, dtype=np.int64) + 1]
                rows = np.concatenate([order[a:b] for a, b in zip(starts, ends)]) if matched \
                    else np.empty(0, dtype=np.int64)
            else:
                # a lookup table over category ids (slot 0: no category) turns the prefix test into one gather
                lut = np.zeros(max(cols.category_paths, default=0) + 2, dtype=bool)
                lut[np.asarray(matched, dtype=np.int64) + 1] = True
                rows = rows[lut[cols.category_ids[rows] + 1]]
        if rows is None:
            return cols.image_ids.copy()
        # not sorted: the index turns ids into positions in any order and orders those itself
        # (shopsearch/index/filtered.py PositionMap), so a sort here would be paid twice
        return cols.image_ids[rows]

    def _by_category(self, cols: FilterColumns) -> tuple[np.ndarray, np.ndarray]:
        """Rows grouped by category id (ascending rows within each) and where each id's group
        starts (`bounds[cid]` to `bounds[cid + 1]`); made once."""
        with self._lock:
            if self._category_order is None:
                order = np.argsort(cols.category_ids, kind="stable")
                top = max(cols.category_paths, default=0) + 2
                bounds = np.searchsorted(cols.category_ids[order], np.arange(top), "left")
                self._category_order = (order, bounds)
            return self._category_order

    def _by_price(self, cols: FilterColumns) -> tuple[np.ndarray, np.ndarray]:
        """Rows in price order (no price last, never inside a range) and the sorted prices; made once."""
        with self._lock:
            if self._price_order is None:
                order = np.argsort(cols.prices, kind="stable")  # NaN sorts last
                self._price_order = (order, cols.prices[order])
            return self._price_order

def _num(value) -> float | None:
    return None if value is None else float(value)
