"""A search's candidate images -> products, from in-memory columns.

Grouping the nearest images into products needs only each image's product id. Reading a
joined row per candidate image from the database (80 rows for k=10) cost more than the
vector search itself; instead the product id of every image row is kept in memory (two int64
columns, 16 bytes per image) and the database is asked only for the best image of each
candidate product, whose live row (title, price, category) is still read per search.

The columns belong to one catalogue generation (migration 0004: every insert or delete of an
image row, and every change of its status, content hash or product, moves it). Each search
reads the generation (one indexed row) and reloads the columns when it moved, so an image
deleted or moved to another product since is never grouped as it was."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class ImageOwners:
    """Every image row's product, as of catalogue `generation`."""

    generation: int
    image_ids: np.ndarray  # int64, ascending
    product_ids: np.ndarray  # int64, the product of image_ids[i]

    def __len__(self) -> int:
        return len(self.image_ids)


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
    pos = np.minimum(np.searchsorted(owners.image_ids, ids), len(owners) - 1)
    keep = (ids >= 0) & (owners.image_ids[pos] == ids)
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
