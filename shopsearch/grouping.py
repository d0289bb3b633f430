"""A search's candidate images -> products, from in-memory columns.

Grouping the nearest images into products needs only each image's product id. Reading a
joined row per candidate image from the database (80 rows for k=10) cost more than the
vector search itself; instead the product id of every image row is kept in memory (two int64
columns, 16 bytes per image, plus a 4-byte table over the id range to find a candidate's row
in one read) and the database is asked only for the best image of each
candidate product, whose live row (title, price, category) is still read per search.

The columns belong to one catalogue generation (migration 0004: every insert or delete of an
image row, and every change of its status, content hash or product, moves it). Each search
reads the generation (one indexed row) and reloads the columns when it moved, so an image
deleted or moved to another product since is never grouped as it was."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


#: ImageOwners looks ids up in a table over their range while it spans at most this many times
#: their number (image ids are database keys: dense)
DENSE_SPAN = 4


@dataclass(frozen=True)
class ImageOwners:
    """Every image row's product, as of catalogue `generation`."""

    generation: int
    image_ids: np.ndarray  # int64, ascending
    product_ids: np.ndarray  # int64, the product of image_ids[i]
    #: image id - image_ids[0] -> row (-1: none), for dense ids; None: binary search
    table: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if n and int(self.image_ids[-1]) - int(self.image_ids[0]) < DENSE_SPAN * n and n < 2 ** 31:
            # one read per candidate instead of a binary search's ~20: after a large filtered
            # scan has evicted the caches, those reads are what the lookup costs
            table = np.full(int(self.image_ids[-1]) - int(self.image_ids[0]) + 1, -1, dtype=np.int32)
            table[self.image_ids - self.image_ids[0]] = np.arange(n, dtype=np.int32)
            object.__setattr__(self, "table", table)

    def __len__(self) -> int:
        return len(self.image_ids)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The row of each id (int64), -1 for ids that are not image rows (or -1 themselves)."""
        if not len(self):
            return np.full(len(ids), -1, dtype=np.int64)
        if self.table is not None:
            rel = ids - self.image_ids[0]
            inside = (rel >= 0) & (rel < len(self.table))
            return np.where(inside, self.table[np.where(inside, rel, 0)], -1).astype(np.int64)
        pos = np.minimum(np.searchsorted(self.image_ids, ids), len(self) - 1)
        return np.where(self.image_ids[pos] == ids, pos, -1)


@dataclass(frozen=True)
class Candidates:
    """One entry per product, best first: its best image, that image's score, and how many
    of the candidate images are the product's."""

    image_ids: np.ndarray  # int64
    scores: np.ndarray  # float32
    counts: np.ndarray  # int64


def group_candidates(owners: ImageOwners, ids: np.ndarray, scores: np.ndarray,
                     exclude_ids: np.ndarray | None = None) -> Candidates:
    """Group a vector search's answer (ids, best first; -1 for none) by product: images no
    longer in the catalogue and `exclude_ids` are left out; products are ordered by their
    best image's score, ties in the order the search returned them."""
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores)
    if not len(owners):
        return Candidates(ids[:0], scores[:0], np.zeros(0, dtype=np.int64))
    pos = owners.rows(ids)
    keep = (ids >= 0) & (pos >= 0)
    if exclude_ids is not None and len(exclude_ids):
        keep &= ~np.isin(ids, exclude_ids)
    ids, scores, products = ids[keep], scores[keep], owners.product_ids[pos[keep]]
    _, first, counts = np.unique(products, return_index=True, return_counts=True)
    # first occurrence = best image per product; a stable sort by score keeps the search's order on ties
    order = np.argsort(first, kind="stable")
    first, counts = first[order], counts[order]
    ranked = np.argsort(-scores[first], kind="stable")
    first, counts = first[ranked], counts[ranked]
    return Candidates(ids[first], scores[first], counts)


class OwnersCache:
    """The ImageOwners of the catalogue's current generation, loaded on first use and again
    whenever the generation moved; `load` returns (generation, image ids, product ids)."""

    def __init__(self, generation: Callable[[], int], load: Callable[[], tuple[int, np.ndarray, np.ndarray]]) -> None:
        self._generation = generation
        self._load = load
        self._owners: ImageOwners | None = None
        self._lock = threading.Lock()
        self.loads = 0  # how many times the columns were read (tests)

    def current(self) -> ImageOwners:
        """The columns of the generation the catalogue is at now (one small read per call)."""
        generation = self._generation()
        owners = self._owners
        if owners is not None and owners.generation == generation:
            return owners
        with self._lock:  # one reload per change, however many threads notice it
            owners = self._owners
            if owners is None or owners.generation != generation:
                gen, image_ids, product_ids = self._load()
                owners = self._owners = ImageOwners(gen, image_ids, product_ids)
                self.loads += 1
            return owners
