"""Nearest neighbours among an allowed set of ids, inside FAISS (docs/filtered_search.md).

A search restricted to a set of image ids (a category, a price range, a routed category)
must return the best matches *of that set*, however small the set is, without reading the
rest of the index through the database. The set arrives as external ids; they are turned
into the index's internal positions (a lookup table over the IndexIDMap2's ids) once per set
and index, kept in a small cache keyed by the set itself (`PositionCache`), and then:

- flat vectors (the `flat` type, and the storage under `hnsw`): the allowed vectors are
  scored exactly, read in place by position (`knn_inner_products_by_idx`): one dot product
  per allowed vector and nothing for the others, so the cost follows the set's size; a
  large set of runs is read from the index's float16 copy first, when it has one, and only
  the candidates that could be in the top k scored on float32 (shopsearch/index/half_copy.py);
- HNSW with a large allowed set: the graph search with a bitmap selector and an efSearch
  raised as the allowed share shrinks (`graph_ef`);
- IVF types: a small set is scored exactly on its reconstructed vectors; a large one goes
  through the inverted lists with the selector and nprobe raised in proportion.
"""
from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import faiss
import numpy as np

from shopsearch.index.exact import empty_result, exact_among, flat_storage, top_k
from shopsearch.index.half_copy import HalfCopy
from shopsearch.index.segments import merge_best

#: allowed sets up to this size are scored exactly on their own vectors on IVF types
EXACT_LIMIT = 32_768
#: on HNSW, allowed sets up to this size are scored exactly (a graph walk with a selective
#: filter must visit ~1/share nodes per hit found; docs/filtered_search.md). Larger sets are
#: scored exactly too when the efSearch they need passes MAX_EF_SEARCH.
HNSW_EXACT_LIMIT = 65_536
#: ceilings of the search-breadth knobs raised for selective filters
MAX_EF_SEARCH = 2048
#: the HNSW walk among a share of the nodes widens its efSearch as (GRAPH_EF_SHARE / share)
#: ** GRAPH_EF_POWER (graph_ef; measured for recall@10 parity with the unfiltered walk)
GRAPH_EF_SHARE = 0.25
GRAPH_EF_POWER = 1.5
MAX_NPROBE_FACTOR = 64
#: bytes of positions (and bitmaps) kept per index for the allowed sets seen last
CACHE_BYTES = 64 << 20
#: PositionMap uses a lookup table while the ids span at most this many times their number
#: (and ascending_unique a mask while the positions do)
SPARSE_SPAN = 4


class PositionMap:
    """External id -> internal position of an IndexIDMap2. Image ids are dense (database
    keys), so the map is a lookup table over the id range (4 bytes per id in it: 4 MB at a
    million) and a translation is one gather, whatever the index's size; ids spread over
    more than SPARSE_SPAN times the table's length fall back to a binary search in a sorted
    copy (16 bytes per vector)."""

    def __init__(self, id_table: np.ndarray) -> None:
        self.external = id_table  # position -> external id
        n = len(id_table)
        self._lo = int(id_table.min()) if n else 0
        span = int(id_table.max()) - self._lo + 1 if n else 0
        self._lut: np.ndarray | None = None
        if n and span <= SPARSE_SPAN * n and n < 2 ** 31:
            self._lut = np.full(span, -1, dtype=np.int32)
            self._lut[id_table - self._lo] = np.arange(n, dtype=np.int32)
        else:
            self._order = np.argsort(id_table, kind="stable")
            self._sorted = id_table[self._order]

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Internal positions of the ids that are in the index (others and repeats dropped), ascending."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.external) == 0 or len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        if self._lut is not None:
            rel = ids - self._lo
            pos = self._lut[rel[(rel >= 0) & (rel < len(self._lut))]]
            return ascending_unique(pos[pos >= 0])
        at = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        return ascending_unique(self._order[at[self._sorted[at] == ids]])


def ascending_unique(pos: np.ndarray) -> np.ndarray:
    """Non-negative positions ascending without repeats (int64). Positions that fill most of
    their span (a category of a grouped layout, shopsearch/index/layout.py) are marked in a
    mask over it: no sort at all; others are sorted (np.sort: np.unique costs ~20x more)."""
    if len(pos) == 0:
        return np.zeros(0, dtype=np.int64)
    lo = int(pos.min())
    span = int(pos.max()) - lo + 1
    if span <= SPARSE_SPAN * len(pos):
        mask = np.zeros(span, dtype=bool)
        mask[pos - lo] = True
        return np.flatnonzero(mask).astype(np.int64) + lo
    # positions below 2^31 sort as int32: half the bytes, about half the time
    out = (np.sort(pos.astype(np.int32)) if lo + span <= 2 ** 31 else np.sort(pos)).astype(np.int64)
    repeat = out[1:] == out[:-1]
    return out[np.concatenate(([True], ~repeat))] if repeat.any() else out


@dataclass
class AllowedPositions:
    """One allowed set as seen by one index: the base segment's positions (tombstones left
    out, ascending) and the delta segment's, plus the base bitmap once a search wanted it."""

    base: np.ndarray
    delta: np.ndarray
    bits: np.ndarray | None = field(default=None, repr=False)
    cached: bool = False  # held by a PositionCache (which then counts its bytes)

    @property
    def nbytes(self) -> int:
        return self.base.nbytes + self.delta.nbytes + (0 if self.bits is None else self.bits.nbytes)


class PositionCache:
    """AllowedPositions per allowed-id array, keyed by the array itself (its identity, held
    weakly): the search service hands the same read-only array for a repeated filter
    (shopsearch/filter_sets.py), so a repeated filter skips the id -> position translation.
    An array that dies drops its entry; the whole is bounded by CACHE_BYTES."""

    def __init__(self) -> None:
        self._entries: OrderedDict[int, tuple[weakref.ref, AllowedPositions]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, allowed: np.ndarray, make: Callable[[], AllowedPositions]) -> AllowedPositions:
        key = id(allowed)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0]() is allowed:
                self._entries.move_to_end(key)
                return hit[1]
        made = make()
        if allowed.flags.writeable:  # an array its owner may still change is not kept
            return made
        with self._lock:
            self._drop(key)
            try:
                ref = weakref.ref(allowed, lambda _r, key=key: self._forget(key, _r))
            except TypeError:  # a view of a foreign buffer takes no weak reference
                return made
            self._entries[key] = (ref, made)
            made.cached = True
            self._bytes += made.nbytes
            while self._bytes > CACHE_BYTES and self._entries:
                self._drop(next(iter(self._entries)))
        return made

    def with_bits(self, entry: AllowedPositions, n: int) -> np.ndarray:
        """The base positions as an IDSelectorBitmap's bit array, made once per entry."""
        if entry.bits is None:
            bits = bitmap(entry.base, n)
            with self._lock:
                entry.bits = bits
                self._bytes += bits.nbytes if entry.cached else 0
        return entry.bits

    def _forget(self, key: int, ref: weakref.ref) -> None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] is ref:
                self._drop(key)

    def _drop(self, key: int) -> None:
        hit = self._entries.pop(key, None)
        if hit is not None:
            hit[1].cached = False
            self._bytes -= hit[1].nbytes


def bitmap(positions: np.ndarray, n: int) -> np.ndarray:
    """Bit array (little-endian bit order) with the `positions` of n set."""
    mask = np.zeros(n, dtype=bool)
    mask[positions] = True
    return np.packbits(mask, bitorder="little")


def _exact_on_vectors(inner: faiss.Index, q: np.ndarray, k: int, positions: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Score the allowed vectors (reconstructed from the index) one by one: exact, any type."""
    vecs = inner.reconstruct_batch(positions)
    return top_k(q @ vecs.T, k, positions)


def graph_ef(ef_search: int, k: int, share: float) -> int:
    """efSearch of a graph walk that may return only the allowed `share` of the nodes.

    FAISS keeps the allowed nodes among *every* node the walk scores (each step's whole
    neighbour list), not only those in its beam, so matching the unfiltered search's recall@10
    needs far less than a beam of k allowed nodes (k / share): the breadth needed grows as
    (GRAPH_EF_SHARE / share) ** GRAPH_EF_POWER below a quarter of the nodes (measured on
    clustered vectors: benchmarks/RESULTS.md, filtered_ef_clustered_100k_shares_*; the cost
    in deeper recall is in docs/filtered_search.md). Never below the index's own efSearch
    (nor k)."""
    base = max(ef_search, k)
    widen = (GRAPH_EF_SHARE / max(share, 1e-9)) ** GRAPH_EF_POWER
    return max(base, math.ceil(base * widen))


def search_positions(inner: faiss.Index, q: np.ndarray, k: int, positions: np.ndarray, nprobe: int,
                     ef_search: int, refine_k_factor: float, bits: Callable[[], np.ndarray],
                     half: HalfCopy | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k internal positions among `positions` (ascending, non-empty) for queries `q`;
    `bits()` gives the positions' bitmap (cached by the caller) when a selector needs one;
    `half`: a float16 copy of the flat vectors for large exact scans (exact_among)."""
    n = int(inner.ntotal)
    share = len(positions) / max(n, 1)
    widen = math.ceil(1.0 / max(share, 1e-9))
    flat = flat_storage(inner)
    ef = graph_ef(ef_search, k, share)
    if flat is not None and (flat is inner or len(positions) <= HNSW_EXACT_LIMIT or ef > MAX_EF_SEARCH):
        return exact_among(flat, q, k, positions, half)
    if flat is not None and hasattr(inner, "hnsw"):
        b = bits()
        sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(b))
        return inner.search(q, k, params=faiss.SearchParametersHNSW(sel=sel, efSearch=int(ef)))
    if len(positions) <= EXACT_LIMIT:
        return _exact_on_vectors(inner, q, k, positions)
    b = bits()
    sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(b))
    base = faiss.downcast_index(inner.base_index) if hasattr(inner, "base_index") else inner
    ivf = faiss.extract_index_ivf(base)
    probe = int(min(ivf.nlist, nprobe * min(widen, MAX_NPROBE_FACTOR)))
    ivf_params = faiss.SearchParametersIVF(sel=sel, nprobe=probe)
    if base is inner:
        return inner.search(q, k, params=ivf_params)
    return inner.search(q, k, params=faiss.IndexRefineSearchParameters(k_factor=refine_k_factor,
                                                                        base_index_params=ivf_params))


class AllowedSearch:
    """The filtered search of one VectorIndex: its base segment (an IndexIDMap2), tombstoned
    base ids and delta segment (an IndexIDMap2 over a flat index), with the id -> position
    tables made on first use and the positions of recent allowed sets cached."""

    def __init__(self, base: faiss.Index, delta: faiss.Index | None, dead: np.ndarray) -> None:
        self._base = base
        self._delta = delta
        self._dead = dead  # sorted
        self._maps: dict[str, PositionMap] = {}
        self.cache = PositionCache()

    def _map(self, name: str) -> PositionMap:
        if name not in self._maps:
            index = self._base if name == "base" else self._delta
            self._maps[name] = PositionMap(faiss.vector_to_array(index.id_map).astype(np.int64))
        return self._maps[name]

    def _translate(self, allowed: np.ndarray) -> AllowedPositions:
        # a tombstoned id is dropped from the base only: a changed image lives on in the delta
        base_ids = allowed[~np.isin(allowed, self._dead)] if len(self._dead) else allowed
        delta = self._map("delta").positions(allowed) if self._delta is not None else np.zeros(0, np.int64)
        return AllowedPositions(self._map("base").positions(base_ids), delta)

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray, nprobe: int, ef_search: int,
               refine_k_factor: float, half: HalfCopy | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the best k allowed ids per query row, both segments merged; `half`:
        a float16 copy of the base segment's vectors (shopsearch/index/half_copy.py)."""
        entry = self.cache.get(allowed, lambda: self._translate(allowed))
        scores, ids = empty_result(len(q), k)
        if len(entry.base):
            inner = faiss.downcast_index(self._base.index)
            scores, pos = search_positions(inner, q, k, entry.base, nprobe, ef_search, refine_k_factor,
                                           lambda: self.cache.with_bits(entry, int(inner.ntotal)), half)
            ids = np.where(pos >= 0, self._map("base").external[np.maximum(pos, 0)], -1)
        if not len(entry.delta):
            return scores, ids
        flat = flat_storage(faiss.downcast_index(self._delta.index))
        if flat is None:  # not a delta this code writes (segments.new_delta): through its own selector
            keep = faiss.IDSelectorBatch(self._map("delta").external[entry.delta])
            ds, dids = self._delta.search(q, min(k, len(entry.delta)), params=faiss.SearchParameters(sel=keep))
            return merge_best(scores, ids, ds, dids, k)
        ds, dpos = exact_among(flat, q, min(k, len(entry.delta)), entry.delta)
        dids = np.where(dpos >= 0, self._map("delta").external[np.maximum(dpos, 0)], -1)
        return merge_best(scores, ids, ds, dids, k)
