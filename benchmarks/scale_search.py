"""The scale benchmark's searches (benchmarks/scale_bench.py): p50/p95 per filter kind through the
composition root on a kept data dir, queries embedded beforehand, and the unfiltered ANN search's
recall against exact search."""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np


def search_latencies(data_dir: Path, db_url: str, n: int, queries: int) -> dict[str, dict[str, float]]:
    """p50/p95 ms of SearchService.search_vector per filter kind (vectors embedded beforehand),
    and the unfiltered ANN search's recall@10 against exact search."""
    from PIL import Image

    from benchmarks.scale_data import catalogue_of, query_jpeg  # the repository is on sys.path (scale_bench)
    from shopsearch.app import open_search_service
    from shopsearch.config import Settings
    from shopsearch.results import SearchFilters

    settings = Settings.from_env(data_dir=data_dir, database_url=db_url, device="cpu")
    svc = open_search_service(settings, with_router=False)
    rng = np.random.default_rng(1)
    picks = rng.choice(n, queries, replace=False)
    catalogue = catalogue_of(data_dir.parent)
    vecs = svc.embedder.encode_images([Image.open(io.BytesIO(query_jpeg(int(i), catalogue))).convert("RGB")
                                       for i in picks])
    cats = [c.path for c in svc.catalogue.categories() if c.depth == 1]
    depts = [c.path for c in svc.catalogue.categories() if c.depth == 0]
    kinds = {"unfiltered": lambda j: SearchFilters(),
             "category": lambda j: SearchFilters(category=cats[j % len(cats)]),
             "price": lambda j: SearchFilters(min_price=100 + j, max_price=110 + j),  # ~1% of 1-1000
             "price_nothing": lambda j: SearchFilters(min_price=10 ** 7),
             "department": lambda j: SearchFilters(category=depts[j % len(depts)])}
    out = {}
    for kind, make in kinds.items():
        svc.search_vector(vecs[0], k=10, filters=make(0), routing=False)  # warm: loads, caches
        times, hits = [], []
        for j, v in enumerate(vecs):
            t0 = time.perf_counter()
            res = svc.search_vector(v, k=10, filters=make(j), routing=False)
            times.append((time.perf_counter() - t0) * 1000)
            hits.append(len(res.hits))
        out[kind] = {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
                     "mean_hits": float(np.mean(hits))}
    out["unfiltered"]["ann_recall10"] = ann_recall(svc.index, vecs, 10)
    svc.catalogue.close()
    return out


def ann_recall(index: object, vecs: np.ndarray, k: int) -> float | None:
    """recall@k of the index's unfiltered search against exact inner product over the vectors it
    stores (what an ANN index trades for speed); None when it keeps no float copy (IVF-PQ) or
    is not a plain VectorIndex."""
    import faiss

    from shopsearch.index.exact import flat_storage

    idmap = getattr(index, "faiss_index", None)
    flat = flat_storage(faiss.downcast_index(idmap.index)) if idmap is not None else None
    if flat is None or getattr(index, "delta_count", 0):
        return None
    q = np.ascontiguousarray(vecs, dtype=np.float32)
    _, pos = flat.search(q, k)
    truth = faiss.vector_to_array(idmap.id_map)[pos]
    got = index.search(q, k)[1]  # type: ignore[attr-defined]
    return float(np.mean([len(set(g) & set(t)) / k for g, t in zip(got.tolist(), truth.tolist())]))
