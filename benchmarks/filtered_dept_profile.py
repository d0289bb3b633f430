"""Where a department-filtered search's time goes, beside the unfiltered one (issue 20).

In-process, on the catalogue and grouped HNSW index that filtered_search_ab.py prepares (a
search service as its turns make one: the 10-image update's tombstones and delta included),
the two kinds interleaved query by query. Each search_vector call is cut into sections by
timing wrappers around the functions it calls, in this process's CPU time (process_time:
on a shared machine far steadier than wall time) and wall time:

  allowed      AllowedImages.ids_for (the allowed set; a cache hit after the first query)
  translate    AllowedSearch's position-cache lookup (ids -> positions, cached)
  walk         the FAISS search itself (the filtered graph walk, or the unfiltered search)
  grouping     group_candidates (ids -> products in memory)
  rows         catalogue.candidate_rows (the best products' rows from the database)
  other        the rest of search_vector (Python glue, re-checks, result objects)

plus, for the walk alone, the walk at several efSearch values with the department's bitmap
(ef_walks), to size the walk against the whole search.

    python benchmarks/filtered_dept_profile.py --size 400000 --scratch S --db sqlite --tag xeon_loaded

Writes benchmarks/results/filtered_dept_profile_<size>_<db><_tag>.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._bench_io import cpu_block, utc_now, write_result  # noqa: E402

SECTIONS = ("allowed", "translate", "walk", "grouping", "rows")


class Clock:
    """Accumulates CPU and wall seconds per section for the current search."""

    def __init__(self) -> None:
        self.cpu = dict.fromkeys(SECTIONS, 0.0)
        self.wall = dict.fromkeys(SECTIONS, 0.0)

    def reset(self) -> None:
        for d in (self.cpu, self.wall):
            for key in d:
                d[key] = 0.0

    def wrap(self, name: str, fn):
        def timed(*a, **kw):
            c, w = time.process_time(), time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.cpu[name] += time.process_time() - c
                self.wall[name] += time.perf_counter() - w
        return timed


def table(p50: dict) -> list[dict]:
    """One row per kind: CPU p50 ms of the whole search and of each section (RESULTS.md's table)."""
    return [{"search": kind, **{f"{s}_cpu_ms": row[f"{s}_cpu"] for s in ("total", *SECTIONS, "other")},
             "total_wall_ms": row["total_wall"]} for kind, row in p50.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=400_000)
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--db", default="sqlite", choices=("sqlite", "postgresql"))
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--pg-schema", default="filtered_ab")
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--efs", default="128,160,192,256,400")
    ap.add_argument("--note", default="")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    load0 = os.getloadavg()[0]

    import faiss
    from PIL import Image

    import shopsearch.filter_sets as filter_sets
    import shopsearch.index.filtered as filtered
    import shopsearch.search as search_mod
    from benchmarks.filtered_search_ab import UPDATED
    from benchmarks.scale_bench import seeded_jpeg
    from shopsearch.catalogue.store import CatalogueStore
    from shopsearch.embedders import load_embedder
    from shopsearch.index.manifest import IndexManifest
    from shopsearch.index.vector_index import VectorIndex
    from shopsearch.results import SearchFilters
    from shopsearch.search import SearchService

    n, scratch = args.size, Path(args.scratch)
    meta = json.loads((scratch / f"index_{n}.json").read_text())
    index = VectorIndex(meta["dim"], meta["index_type"],
                        index=faiss.read_index(str(scratch / f"index_{n}_grouped.faiss")),
                        delta=faiss.read_index(str(scratch / f"delta_{n}.faiss")),
                        dead=np.arange(1, UPDATED + 1, dtype=np.int64))
    emb = load_embedder("colorhist", "cpu", scratch / "models")
    manifest = IndexManifest("ab", "colorhist", emb.fingerprint, meta["dim"], n, meta["index_type"],
                             "2026-01-01T00:00:00Z")
    url = (f"sqlite:///{scratch / f'catalogue_{n}.db'}" if args.db == "sqlite"
           else f"{args.pg_url}?options=-csearch_path%3D{args.pg_schema}_{n}")
    store = CatalogueStore.open(url, migrate=False)
    svc = SearchService(emb, index, store, manifest)

    clock = Clock()
    filter_sets.AllowedImages.ids_for = clock.wrap("allowed", filter_sets.AllowedImages.ids_for)
    filtered.PositionCache.get = clock.wrap("translate", filtered.PositionCache.get)
    search_mod.group_candidates = clock.wrap("grouping", search_mod.group_candidates)
    store.candidate_rows = clock.wrap("rows", store.candidate_rows)
    # the FAISS calls: the filtered walk (search_positions) and the unfiltered one (the index's own search)
    walk_positions = clock.wrap("walk", filtered.search_positions)
    filtered.search_positions = walk_positions
    base = index.faiss_index
    base_search = base.search
    base.search = clock.wrap("walk", base_search)

    rng = np.random.default_rng(1)
    picks = rng.choice(n, args.queries, replace=False)
    vecs = emb.encode_images([Image.open(io.BytesIO(seeded_jpeg(int(i) + 10 ** 8))).convert("RGB") for i in picks])
    depts = [c.path for c in store.categories() if c.depth == 0]
    kinds = {"unfiltered": lambda j: SearchFilters(),
             "department": lambda j: SearchFilters(category=depts[j % len(depts)])}
    for kind, make in kinds.items():
        for d in depts:  # warm: columns, allowed sets, positions and bitmaps of every department
            svc.search_vector(vecs[0], k=10, filters=make(depts.index(d)), routing=False)
    per: dict[str, dict[str, list[float]]] = {kind: {} for kind in kinds}
    for j, v in enumerate(vecs):
        for kind, make in kinds.items():
            clock.reset()
            c, w = time.process_time(), time.perf_counter()
            svc.search_vector(v, k=10, filters=make(j), routing=False)
            cpu, wall = time.process_time() - c, time.perf_counter() - w
            row = per[kind]
            row.setdefault("total_cpu", []).append(cpu * 1000)
            row.setdefault("total_wall", []).append(wall * 1000)
            for s in SECTIONS:
                row.setdefault(f"{s}_cpu", []).append(clock.cpu[s] * 1000)
                row.setdefault(f"{s}_wall", []).append(clock.wall[s] * 1000)
            row.setdefault("other_cpu", []).append((cpu - sum(clock.cpu.values())) * 1000)
            row.setdefault("other_wall", []).append((wall - sum(clock.wall.values())) * 1000)
    # the department walk alone, per efSearch (k=80 as the service fetches), with the unfiltered walk
    ids = svc.allowed_images.ids_for(SearchFilters(category=depts[0]))
    entry = index._among.cache.get(ids, lambda: None)
    inner = faiss.downcast_index(base.index)
    bits = index._among.cache.with_bits(entry, int(inner.ntotal))
    faiss.omp_set_num_threads(1)
    efs = [int(e) for e in args.efs.split(",")]
    walks: dict[str, list[float]] = {}
    for v in vecs:
        q = np.ascontiguousarray(v[None, :], dtype=np.float32)
        inner.hnsw.efSearch = 128
        c = time.process_time()
        inner.search(q, 80)
        walks.setdefault("unfiltered_ef128", []).append((time.process_time() - c) * 1000)
        for e in efs:
            sel = faiss.IDSelectorBitmap(int(inner.ntotal), faiss.swig_ptr(bits))
            c = time.process_time()
            inner.search(q, 80, params=faiss.SearchParametersHNSW(sel=sel, efSearch=e))
            walks.setdefault(f"dept_ef{e}", []).append((time.process_time() - c) * 1000)
    res = {"benchmark": "filtered_dept_profile", "note": args.note, "size": n, "db": args.db, "queries": len(vecs),
           "share": round(len(ids) / n, 3), **cpu_block(load0), "recorded_at": utc_now(),
           "sections_p50_ms": {kind: {k: round(float(np.median(v)), 3) for k, v in row.items()}
                               for kind, row in per.items()},
           "sections_mean_ms": {kind: {k: round(float(np.mean(v)), 3) for k, v in row.items()}
                                for kind, row in per.items()},
           "walk_cpu_p50_ms": {k: round(float(np.median(v)), 3) for k, v in walks.items()}}
    res["table"] = table(res["sections_p50_ms"])
    tag = f"_{args.tag}" if args.tag else ""
    write_result(res, Path(args.out) / f"filtered_dept_profile_{n}_{args.db}{tag}.json", echo=True)
    store.close()


if __name__ == "__main__":
    main()
