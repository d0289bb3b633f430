"""The order in which a build stores its vectors (docs/filtered_search.md, grouped layout).

A filtered search scores the allowed vectors exactly, read in place by their position in
the base index. Read in id order, a category's vectors lie scattered over the whole index
and each one costs a cache miss; stored grouped, they are a few contiguous runs that one
matrix-vector product per run scores at memory speed. So builds add their vectors ordered by

1. category path, compared segment by segment, so that every category *subtree* (a leaf, a
   department) is one contiguous run (a plain string order would put "a/b-c" between "a/b"
   and "a/b/c");
2. price within a category, so that a price range is one run per category (and a category
   plus a price range one run);
3. image id.

Images without a category go last, then those the columns do not know (added since).
The order is a storage choice only: search results do not depend on it."""
from __future__ import annotations

import numpy as np

from shopsearch.catalogue.bulk import FilterColumns


def grouped_order(ids: np.ndarray, cols: FilterColumns) -> np.ndarray:
    """The permutation of `ids` (image ids, any order) that stores them grouped as above."""
    ids = np.asarray(ids, dtype=np.int64)
    by_path = sorted(cols.category_paths, key=lambda cid: tuple(cols.category_paths[cid].split("/")))
    # rank per category id + 1 (slot 0: no category); unknown ids rank after every category
    rank = np.full(max(cols.category_paths, default=0) + 2, len(by_path), dtype=np.int64)
    rank[np.asarray(by_path, dtype=np.int64) + 1] = np.arange(len(by_path))
    at = np.minimum(np.searchsorted(cols.image_ids, ids), max(len(cols.image_ids) - 1, 0))
    known = cols.image_ids[at] == ids if len(cols.image_ids) else np.zeros(len(ids), bool)
    cat_rank = np.where(known, rank[np.where(known, cols.category_ids[at], -1) + 1], len(by_path) + 1)
    price = np.where(known, cols.prices[at] if len(cols.prices) else 0.0, np.nan)
    return np.lexsort((ids, price, cat_rank))  # the last key sorts first; NaN prices last


def storage_order(ids: list[int], keys: list[str], cols: FilterColumns) -> tuple[list[int], list[str]]:
    """`ids` and their `keys` (lists in step) reordered as a base index stores them."""
    order = grouped_order(np.array(ids, dtype=np.int64), cols).tolist()
    return [ids[i] for i in order], [keys[i] for i in order]
