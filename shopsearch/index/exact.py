"""Exact top-k among chosen positions of a flat index's vectors, read in place (the scoring
behind filtered search: shopsearch/index/filtered.py, docs/filtered_search.md)."""
from __future__ import annotations

import faiss
import numpy as np

from shopsearch.index.half_copy import HalfCopy
from shopsearch.index.half_copy import usable as half_usable

#: exact scoring takes the allowed positions run by run (a slice each) from this mean run length
RUN_SLICES = 32
#: ... and from this mean run length with FAISS's exhaustive k-NN per run (_exact_long_runs)
LONG_RUN = 1024


def empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) with no hits: ids -1, scores -inf."""
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def flat_storage(inner: faiss.Index) -> faiss.Index | None:
    """The IndexFlat holding the raw vectors (flat itself, or HNSW's storage), else None."""
    if isinstance(inner, faiss.IndexFlat):
        return inner
    storage = getattr(inner, "storage", None)
    if storage is not None:
        storage = faiss.downcast_index(storage)
        if isinstance(storage, faiss.IndexFlat):
            return storage
    return None


def exact_among(flat: faiss.Index, q: np.ndarray, k: int, positions: np.ndarray,
                half: HalfCopy | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product of the flat index's vectors at `positions` (ascending), read in
    place: one dot product per allowed vector, none for the rest (exact). Positions that form
    runs (a grouped layout) are scored run by run, each one matrix-vector product over a
    contiguous slice, or FAISS's k-NN over it for long runs; scattered ones are gathered one
    by one. With `half` (a float16 copy of `flat`'s vectors), a large set of runs is read from
    the copy first and only its best candidates scored here (shopsearch/index/half_copy.py)."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    positions = np.ascontiguousarray(positions, dtype=np.int64)
    breaks = np.flatnonzero(positions[1:] != positions[:-1] + 1) + 1
    if half is not None and half_usable(positions, len(breaks) + 1):
        bounds = np.concatenate(([0], breaks, [len(positions)])).tolist()
        starts = positions[bounds[:-1]].tolist()
        scores, pos = empty_result(len(q), k)
        for r in range(len(q)):
            cand = half.candidates(q[r], k, positions, bounds, starts)
            row_s, row_p = (_exact_one(flat, q[r:r + 1], k, positions, breaks) if cand is None
                            else _exact_one(flat, q[r:r + 1], k, cand))
            scores[r], pos[r] = row_s[0], row_p[0]
        return scores, pos
    return _exact_one(flat, q, k, positions, breaks)


def _exact_one(flat: faiss.Index, q: np.ndarray, k: int, positions: np.ndarray,
               breaks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """exact_among on float32 alone (`breaks`: where the runs of `positions` start, when known)."""
    if breaks is None:
        breaks = np.flatnonzero(positions[1:] != positions[:-1] + 1) + 1
    if (len(breaks) + 1) * LONG_RUN <= len(positions):
        return _exact_long_runs(flat, q, k, positions, breaks)
    if (len(breaks) + 1) * RUN_SLICES <= len(positions):
        return _exact_runs(flat, q, k, positions, breaks)
    scores, pos = empty_result(len(q), k)
    # ld_ids=0: every query row scores the same subset
    faiss.knn_inner_products_by_idx(faiss.swig_ptr(q), flat.get_xb(), faiss.swig_ptr(positions), flat.d, len(q),
                                    int(flat.ntotal), len(positions), k, faiss.swig_ptr(scores),
                                    faiss.swig_ptr(pos), 0)
    return np.where(pos >= 0, scores, -np.inf).astype(np.float32), pos


def _run_slices(flat: faiss.Index, positions: np.ndarray, breaks: np.ndarray
                ) -> tuple[np.ndarray, list[int], list[int]]:
    """A view of the flat index's stored vectors, the runs' bounds in `positions` and each
    run's first position."""
    n, d = int(flat.ntotal), int(flat.d)
    xb = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)
    bounds = np.concatenate(([0], breaks, [len(positions)])).tolist()
    return xb, bounds, positions[bounds[:-1]].tolist()


def _exact_runs(flat: faiss.Index, q: np.ndarray, k: int, positions: np.ndarray, breaks: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """exact_among for ascending positions cut into runs at `breaks`: one matrix-vector product
    per run and query."""
    xb, bounds, starts = _run_slices(flat, positions, breaks)
    d = int(flat.d)
    sims = np.empty((len(q), len(positions)), dtype=np.float32)
    for a, b, p in zip(bounds[:-1], bounds[1:], starts):
        block = faiss.swig_ptr(xb[p:p + b - a])
        for r in range(len(q)):
            # FAISS's SIMD loop on this thread: numpy's BLAS would start threads that spin
            # between searches, costing a busy server more CPU than the product itself
            faiss.fvec_inner_products_ny(faiss.swig_ptr(sims[r, a:b]), faiss.swig_ptr(q[r]), block, d, b - a)
    return top_k(sims, k, positions)


def _exact_long_runs(flat: faiss.Index, q: np.ndarray, k: int, positions: np.ndarray, breaks: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """_exact_runs for runs of LONG_RUN positions or more on average: each run's best k per
    query by FAISS's exhaustive search over the slice (scores and a heap in one pass, on this
    thread, where scoring into an array and partitioning it reads the scores twice), then the
    best k of those. A call per run: for many short runs the calls cost more than they save."""
    xb, bounds, starts = _run_slices(flat, positions, breaks)
    scores, pos = empty_result(len(q), k)
    for r in range(len(q)):
        # one query at a time: FAISS takes its single-thread SIMD loop below 20 queries, where
        # a batch would go to BLAS, whose threads spin between searches on a busy server
        row = q[r:r + 1]
        parts_s, parts_p = [], []
        for a, b, p in zip(bounds[:-1], bounds[1:], starts):
            ds, ix = faiss.knn(row, xb[p:p + b - a], min(k, b - a), metric=faiss.METRIC_INNER_PRODUCT)
            parts_s.append(ds[0])
            parts_p.append(ix[0] + p)
        found_s, found_p = np.concatenate(parts_s), np.concatenate(parts_p)
        if len(parts_s) == 1:  # one run: FAISS's heap already ranked it
            scores[r, :len(found_s)], pos[r, :len(found_p)] = found_s, found_p
        else:
            best_s, best_p = top_k(found_s[None, :], k, found_p)
            scores[r], pos[r] = best_s[0], best_p[0]
    return scores, pos


def top_k(sims: np.ndarray, k: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the k best columns of `sims` (nq, len(positions)) per row, best first."""
    kk = min(k, len(positions))
    top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    top_s = np.take_along_axis(sims, top, axis=1)
    order = np.argsort(-top_s, axis=1, kind="stable")
    scores, ids = empty_result(len(sims), k)
    scores[:, :kk] = np.take_along_axis(top_s, order, axis=1)
    ids[:, :kk] = positions[np.take_along_axis(top, order, axis=1)]
    return scores, ids
