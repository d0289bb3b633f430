"""Exact filtered scans that read half the bytes: a float16 copy of a large index's vectors.

Scoring a large allowed set exactly (a whole category at a million vectors: 20,000 × 384-d,
30 MB of float32) is a pass over memory, and the pass also evicts the caches the rest of the
search then runs cold on. A float16 copy of the vectors (2 bytes a dimension beside the 4 of
float32) is scanned instead, run by run, by FAISS's scalar-quantizer scanner (one heap kept
across the runs), for the best k + MARGIN; those are scored again on the float32 vectors, and
the best k of them returned. That is exact, not approximate: float16 rounds each component
within a relative 2^-11, so no score moves by more than a bound B (ERROR × |q| × the largest
stored norm, plus float32 summation order); every vector whose true score could reach the true
k-th lies within 2B of the float16 k-th, and when the copy's (k + MARGIN)-th is already below
that line all of them are among the candidates. When it is not (more than MARGIN near-ties at
the k-th place), the set is scored on float32 as before.

Only sets of runs are scanned here (a category or a price range of a grouped layout,
shopsearch/index/layout.py): scattered positions would cost a scanner call each. A set of
SPLIT_SET vectors or more is cut in two halves scanned at once, one on a scan thread, when
the copy was given one (`threads`) and no other search holds it: a scan reads memory at the
pace one core can draw it, so two cores read a category in about half the time. A search
that finds the thread busy scans alone, as before; and when the cores are busy with other
work (other workers' searches), a split gains nothing and costs a busy server throughput, so
a split whose halves' CPU time is under MIN_SPEEDUP times its wall time (a half waited for a
core: their moving average, so that a lone hiccup does not count) makes the scans run alone
for QUIET_S before the next one tries again.
"""
from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

#: candidates kept beyond k for the float32 re-scoring
MARGIN = 48
#: relative rounding error of a float16 component (round to nearest: 2^-11), doubled for safety
ERROR = 2.0 ** -10
#: sets smaller than this are scored on float32 directly (the copy saves less than its overhead)
MIN_SET = 4096
#: runs shorter than this on average are not scanned here (a scanner call per run)
MIN_MEAN_RUN = 32
#: sets of at least this many vectors are scanned in two halves at once when a scan thread is free
SPLIT_SET = 8192
#: split scans whose halves' CPU time together is under this many times their wall time (a moving
#: average, weight SPEEDUP_WEIGHT for the latest) waited for a core: the machine is busy, so scans
#: run alone for QUIET_S seconds, and then one splits again to see (a split a QUIET_S at most
#: while the cores stay busy)
MIN_SPEEDUP = 1.3
SPEEDUP_WEIGHT = 0.25
QUIET_S = 0.1
FLOAT16_MAX = 65504.0
_LOWEST = float(np.finfo(np.float32).min)  # the empty slot of FAISS's min-heap (CMin::neutral)


class HalfCopy:
    """A float16 copy of an IndexFlat's vectors (made once: about a second per million 384-d
    vectors) and the exact top-k of runs of positions read from it."""

    def __init__(self, flat: faiss.IndexFlat, threads: int = 1) -> None:
        n, d = int(flat.ntotal), int(flat.d)
        self.d = d
        self._sq = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        self._code_size = int(self._sq.code_size)
        self._sq.codes.resize(n * self._code_size)  # sized once: encoded in place, never regrown
        self._codes = faiss.rev_swig_ptr(self._sq.codes.data(), self._sq.codes.size())
        xb = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)
        top = 0.0
        for a in range(0, n, 65536):  # in blocks: the norms need no temporary the size of the index
            block = np.ascontiguousarray(xb[a:a + 65536])
            # one pass: a component that is inf, nan or beyond float16's range makes its vector's
            # squared norm inf, nan or above FLOAT16_MAX^2 (so does a norm that large: no copy either)
            sq_norm = float(np.einsum("ij,ij->i", block, block).max(initial=0.0))
            if not math.isfinite(sq_norm) or sq_norm > FLOAT16_MAX ** 2:
                raise ValueError("vectors with components outside float16's range")
            self._sq.sq.compute_codes_c(faiss.swig_ptr(block), faiss.swig_ptr(self._codes[a * self._code_size:]),
                                        len(block))
            top = max(top, sq_norm)
        self._sq.ntotal = n
        self.max_norm = math.sqrt(top)
        self._local = threading.local()
        # one scan thread beside the searching one (the second half of a large set), and a
        # non-blocking claim on it: a search never waits for another search's half
        # the scan thread, made by the first split of each process (a copy made before a server
        # forks its workers must not hand a child an executor whose thread stayed in the parent)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        #: threads a large scan may use: 2 splits it when the scan thread is free (lowering it to 1
        #: at any time stops splitting: benchmarks compare the two in one process)
        self.threads = max(1, min(threads, 2))
        self._claim = threading.Lock()
        self._quiet_until = 0.0  # time.monotonic() before which scans run alone (the cores were busy)
        # moving average of split scans' CPU / wall time: from 2 (two halves at once) at first; after
        # a quiet spell the next split's own figure (one split decides whether the cores are free again)
        self._speedup: float | None = 2.0

    def _scanner(self) -> faiss.InvertedListScanner:
        """This thread's scanner over the copy (a scanner holds its query: one per thread). Made
        once per thread and kept: SWIG cannot free one (no destructor wrapped), so a scanner per
        search would leak."""
        scanner = getattr(self._local, "scanner", None)
        if scanner is None:
            # labels from the ids handed to each scan (the positions), not (list, offset) pairs
            scanner = self._sq.sq.select_InvertedListScanner(faiss.METRIC_INNER_PRODUCT, None, False, None, False)
            self._local.scanner = scanner
        return scanner

    @property
    def nbytes(self) -> int:
        return int(self._codes.nbytes)

    def bound(self, q: np.ndarray) -> float:
        """Largest gap between a vector's float16 and float32 score for query q."""
        q_norm = float(np.linalg.norm(q))
        # float16's relative rounding, its absolute one below the normal range (2^-25 a component:
        # at most sqrt(d) |q| 2^-25 in all), then two float32 sums of d products in different orders
        return q_norm * (self.max_norm * (ERROR + 2 * self.d * 2.0 ** -24) + math.sqrt(self.d) * 2.0 ** -24) + 1e-7

    def candidates(self, q: np.ndarray, k: int, positions: np.ndarray, bounds: list[int],
                   starts: list[int]) -> np.ndarray | None:
        """Positions (ascending) among which the exact top-k of `positions` (ascending int64, in
        runs) lies for the query row q, read from the copy; None when more than MARGIN near-ties
        leave that unsure. The runs: run r is positions[bounds[r]:bounds[r+1]], from starts[r]."""
        kk = k + MARGIN
        row = np.ascontiguousarray(q, dtype=np.float32)
        if self._may_split(len(positions)):
            try:
                first, second = split_runs(bounds, starts)
                t0, c0 = time.perf_counter(), time.thread_time()
                other = self._scan_pool().submit(_timed, self._scan, row, kk, positions, *second)
                heaps = [self._scan(row, kk, positions, *first)]
                mine = time.thread_time() - c0
                heap, theirs = other.result()
                heaps.append(heap)
                self.judge_split(mine + theirs, time.perf_counter() - t0)
            finally:
                self._claim.release()
        else:
            heaps = [self._scan(row, kk, positions, bounds, starts)]
        scores = np.concatenate([h[0] for h in heaps])
        found = np.concatenate([h[1] for h in heaps])
        if len(scores) == 0:
            return found
        kth = float(np.sort(scores)[::-1][min(k, len(scores)) - 1])
        line = kth - 2 * self.bound(row)
        # a full heap whose lowest is above the line may have dropped a vector that belongs in the top k
        if any(len(s) == kk and float(s.min()) >= line for s, _ in heaps):
            return None
        return np.sort(found[scores >= line])

    def _may_split(self, size: int) -> bool:
        """Whether a scan of `size` positions splits now (the scan thread then claimed)."""
        return (self.threads > 1 and size >= SPLIT_SET and time.monotonic() >= self._quiet_until
                and self._claim.acquire(blocking=False))

    def _scan_pool(self) -> ThreadPoolExecutor:
        """This process's scan thread (called with the claim held)."""
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool, self._pool_pid = ThreadPoolExecutor(1, thread_name_prefix="half-scan"), os.getpid()
        return self._pool

    def judge_split(self, cpu_s: float, wall_s: float) -> None:
        """After a split scan (the claim held): its halves' CPU seconds together and its wall
        seconds. When split scans' moving average of the two falls under MIN_SPEEDUP, halves
        waited for a core: scans run alone for QUIET_S, and the next split's figure starts it anew."""
        got = cpu_s / max(wall_s, 1e-9)
        avg = got if self._speedup is None else (1 - SPEEDUP_WEIGHT) * self._speedup + SPEEDUP_WEIGHT * got
        self._speedup = avg
        if avg < MIN_SPEEDUP:
            self._quiet_until, self._speedup = time.monotonic() + QUIET_S, None

    def _scan(self, row: np.ndarray, kk: int, positions: np.ndarray, bounds: list[int],
              starts: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The best kk (scores, positions) of the runs on the copy, on this thread's scanner."""
        scores = np.full(kk, _LOWEST, dtype=np.float32)
        found = np.full(kk, -1, dtype=np.int64)
        scanner = self._scanner()
        scanner.set_query(faiss.swig_ptr(row))
        s_ptr, f_ptr = faiss.swig_ptr(scores), faiss.swig_ptr(found)
        codes, size = self._codes, self._code_size
        for a, b, p in zip(bounds[:-1], bounds[1:], starts):
            # the run's positions are the labels: one heap over every run
            scanner.scan_codes(b - a, faiss.swig_ptr(codes[p * size:]), faiss.swig_ptr(positions[a:b]), s_ptr, f_ptr,
                               kk)
        kept = found >= 0
        return scores[kept], found[kept]


def _timed(scan, *args):  # type: ignore[no-untyped-def]
    """scan(*args) and the CPU seconds this thread spent on it."""
    c0 = time.thread_time()
    out = scan(*args)
    return out, time.thread_time() - c0


def split_runs(bounds: list[int], starts: list[int]
               ) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    """Runs (bounds, starts) cut into two halves of as many positions each (the middle run,
    if any, cut in two): each half's bounds index the same positions array."""
    mid = bounds[-1] // 2
    r = next(i for i in range(len(bounds) - 1) if bounds[i + 1] > mid)  # the run holding position `mid`
    first = (bounds[:r + 1] + ([mid] if mid > bounds[r] else []), starts[:r + (1 if mid > bounds[r] else 0)])
    second = ([mid] + bounds[r + 1:], [starts[r] + mid - bounds[r]] + starts[r + 1:])
    return first, second


def usable(positions: np.ndarray, runs: int) -> bool:
    """Whether a set of `runs` runs is scanned on the copy."""
    return len(positions) >= MIN_SET and runs * MIN_MEAN_RUN <= len(positions)
