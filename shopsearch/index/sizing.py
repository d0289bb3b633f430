"""Which FAISS index a catalogue of a given size gets, its factory string and search-time defaults."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import faiss
import numpy as np

# Above these sizes exact search gets slow enough that ANN pays off; see
# benchmarks/ann_bench.py for the recall (>= 0.95 of exact at k=10) behind them.
# At 100k vectors exact search is already tens of times slower per query than HNSW32 at
# nearly the same recall (benchmarks/results/ann_100k.json, ann_1m.json; benchmarks/RESULTS.md),
# so HNSW from 100k. HNSW holds the full vectors plus links: past 2M vectors IVF-PQ with
# SQ8 re-ranking, a fraction of the memory at recall@10 near 0.98, takes over.
HNSW_THRESHOLD = 100_000
IVFPQ_THRESHOLD = 2_000_000
#: most vectors an IVF/PQ index is trained on (about 40 per list at 4k lists)
MAX_TRAIN_VECTORS = 160_000
#: search-time defaults of the ANN types (see benchmarks/results/ann_*.json). HNSW32 recall@10
#: at efSearch 64 fell from 0.991 (100k) to 0.941 (1M), at 128 it is 0.998 / 0.975: 128 up to
#: 1M vectors, 256 beyond (ef_for_size). IVF-PQ re-ranks k * 8 candidates (0.990 at 100k).
DEFAULT_NPROBE = 16
DEFAULT_EF_SEARCH = 128
DEFAULT_REFINE_K_FACTOR = 8


def ef_for_size(n: int) -> int:
    """HNSW efSearch that keeps recall@10 >= 0.95 of exact at this size (measured to 1M on vectors
    with neighbourhood structure; every HNSW build checks it on its own: recall_probe.py)."""
    return DEFAULT_EF_SEARCH if n <= 1_000_000 else 2 * DEFAULT_EF_SEARCH


def choose_index_type(n: int) -> str:
    """Exact search for small catalogues, HNSW then IVF-PQ as they grow."""
    if n < HNSW_THRESHOLD:
        return "flat"
    if n < IVFPQ_THRESHOLD:
        return "hnsw"
    return "ivfpq"


def factory_string(index_type: str, dim: int, n: int) -> str:
    """Our short names -> a FAISS factory string (anything else is passed through)."""
    if index_type == "flat":
        return "Flat"
    if index_type == "hnsw":
        return "HNSW32,Flat"
    if index_type == "ivfpq":
        # PQ codes alone cap recall@10 near 0.67 (benchmarks/results/ann_100k.json); re-ranking
        # k_factor x k candidates on 8-bit scalar codes lifts it to 0.976 (k_factor 4), 0.990 (8)
        # (benchmarks/results/ivfpq_refine_100k.json) for ~600 B/vector instead of 2 KB (512-d).
        # "np": no polysemous training. The factory does it by default (seconds of CPU per
        # sub-quantizer whatever the catalogue's size: most of a small IVF-PQ build) only to
        # relabel the codes for a Hamming pre-filter our searches never enable (polysemous_ht
        # stays 0); the centroids, and so every search result, are the same without it.
        nlist = int(max(16, min(65536, 4 * np.sqrt(max(n, 1)))))
        return f"IVF{nlist},PQ{pq_m(dim)}x8np,Refine(SQ8)"
    if index_type == "ivfflat":
        return f"IVF{int(max(16, 4 * np.sqrt(max(n, 1))))},Flat"
    return index_type


def pq_m(dim: int) -> int:
    """PQ sub-quantizers: as many as possible up to 64 while keeping >= 4 dims each."""
    return next((m for m in (64, 48, 32, 16, 8, 4, 2) if dim % m == 0 and dim // m >= 4), 1)


def estimate_bytes_per_vector(index_type: str, dim: int) -> int:
    """Rough RAM per vector, printed before a build (ids included)."""
    if index_type == "flat":
        return 4 * dim + 16
    if index_type == "hnsw":
        return 4 * dim + 32 * 2 * 4 + 16
    if index_type == "ivfpq":
        return pq_m(dim) + dim + 8 + 16  # PQ code + SQ8 refine code + id + list overhead
    return 4 * dim + 16


@contextmanager
def one_faiss_thread() -> Iterator[None]:
    """FAISS's OpenMP thread count 1 for this thread's calls inside (OpenMP keeps the setting
    per thread, so other threads' searches and builds keep theirs), restored after."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def faiss_reason(e: RuntimeError) -> str:
    """What a FAISS error says, without the C++ function, file and failed assertion it names."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", lines[-1] if lines else "FAISS refused it")
    return re.sub(r"^Error: '.*?' failed: ", "", text)[:300]
