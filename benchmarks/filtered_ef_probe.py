"""HNSW efSearch for a large allowed set (a department, 20% of the index): recall and time (issue 20).

A filter whose set is larger than HNSW_EXACT_LIMIT walks the graph with a bitmap selector
(shopsearch/index/filtered.py). FAISS collects the allowed nodes among *every* node the walk
scores, not only those in its beam, so the efSearch a selective walk needs may be lower than
`max(ef_search, k) * 1/share`. This probe measures, on the grouped HNSW index that
filtered_search_ab.py prepares (seeded unit vectors, 384-d), per efSearch: p50 ms of the
graph walk (one FAISS thread, as a single query runs) and recall@10 / recall@k of the ids
against the exact answer (the allowed vectors scored one by one), for each department (20%)
and five groups of 4 leaf categories (8%); and the same for the unfiltered walk at the
index's efSearch (the reference quality). The seeded vectors are uniform in 384 dimensions,
on which HNSW finds ~0.1 of the true top-10 even unfiltered: read the times here and the
recall in filtered_ef_clustered.py.

    python benchmarks/filtered_search_ab.py prepare --size 400000 --db sqlite --layout-b grouped --scratch S
    python benchmarks/filtered_ef_probe.py --size 400000 --scratch S --tag xeon_loaded

Writes benchmarks/results/filtered_ef_probe_<size><_tag>.json.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=400_000)
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--k", type=int, default=80, help="results asked (the service fetches 8k for a page of k=10)")
    ap.add_argument("--efs", default="128,192,256,320,400,640")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    load0 = os.getloadavg()[0]

    import faiss
    from PIL import Image

    from benchmarks.scale_bench import seeded_jpeg
    from shopsearch.catalogue.store import CatalogueStore
    from shopsearch.embedders import load_embedder
    from shopsearch.filter_sets import AllowedImages
    from shopsearch.index.exact import exact_among
    from shopsearch.index.filtered import PositionMap, bitmap
    from shopsearch.index.sizing import ef_for_size
    from shopsearch.results import SearchFilters

    scratch, n, k = Path(args.scratch), args.size, args.k
    index = faiss.read_index(str(scratch / f"index_{n}_grouped.faiss"))
    inner = faiss.downcast_index(index.index)
    flat = faiss.downcast_index(inner.storage)
    pmap = PositionMap(faiss.vector_to_array(index.id_map).astype(np.int64))
    store = CatalogueStore.open(f"sqlite:///{scratch / f'catalogue_{n}.db'}", migrate=False)
    allowed = AllowedImages(store.filter_columns)
    depts = [c.path for c in store.categories() if c.depth == 0]
    emb = load_embedder("colorhist", "cpu", scratch / "models")
    rng = np.random.default_rng(1)
    picks = rng.choice(n, args.queries, replace=False)
    qs = emb.encode_images([Image.open(io.BytesIO(seeded_jpeg(int(i) + 10 ** 8))).convert("RGB") for i in picks])
    qs = np.ascontiguousarray(qs, dtype=np.float32)
    faiss.omp_set_num_threads(1)
    efs = [int(e) for e in args.efs.split(",")]
    sets = {d: pmap.positions(allowed.ids_for(SearchFilters(category=d))) for d in depts}
    # smaller sets still above HNSW_EXACT_LIMIT at 1M: 4 leaf categories (8%) each
    leaves = sorted(c.path for c in store.categories() if c.depth == 1)
    sets.update({f"4 leaves from {leaves[i]}": np.unique(np.concatenate(
        [pmap.positions(allowed.ids_for(SearchFilters(category=c))) for c in leaves[i:i + 4]]))
        for i in range(0, 20, 4)})
    bits = {d: bitmap(p, n) for d, p in sets.items()}
    truth = {d: [exact_among(flat, q[None, :], k, p)[1][0] if j % len(sets) == i else None
                 for j, q in enumerate(qs)] for i, (d, p) in enumerate(sets.items())}
    times: dict[tuple, list[float]] = {}
    exact_ms: list[float] = []
    # per share (rounded): recall@10 and recall@k
    rec10: dict[tuple, list[float]] = {}
    reck: dict[tuple, list[float]] = {}
    names = list(sets)
    for j, q in enumerate(qs):  # the efs interleaved per query: load falls on all alike
        d = names[j % len(names)]
        t = time.perf_counter()
        exact_among(flat, q[None, :], k, sets[d])
        exact_ms.append((time.perf_counter() - t) * 1000)
        for e in efs:
            sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits[d]))
            t = time.perf_counter()
            _, pos = inner.search(q[None, :], k, params=faiss.SearchParametersHNSW(sel=sel, efSearch=e))
            ms = (time.perf_counter() - t) * 1000
            want = truth[d][j]
            key = (round(len(sets[d]) / n, 2), e)
            times.setdefault(key, []).append(ms)
            rec10.setdefault(key, []).append(len(set(pos[0][:10]) & set(want[:10])) / 10)
            reck.setdefault(key, []).append(len(set(pos[0]) & set(want)) / k)
    # the unfiltered walk at the index's efSearch: the quality every search already accepts
    ef0 = ef_for_size(n)
    un_ms, un10, unk = [], [], []
    for q in qs:
        _, want = flat.search(q[None, :], k)
        inner.hnsw.efSearch = ef0
        t = time.perf_counter()
        _, pos = inner.search(q[None, :], k)
        un_ms.append((time.perf_counter() - t) * 1000)
        un10.append(len(set(pos[0][:10]) & set(want[0][:10])) / 10)
        unk.append(len(set(pos[0]) & set(want[0])) / k)
    res = {"benchmark": "filtered_ef_probe", "size": n, "k": k, "queries": len(qs),
           "shares": sorted({round(len(p) / n, 3) for p in sets.values()}), **cpu_block(load0),
           "recorded_at": utc_now(),
           "unfiltered": {"ef": ef0, "p50_ms": float(np.median(un_ms)), "recall10": float(np.mean(un10)),
                          f"recall{k}": float(np.mean(unk))},
           "exact_p50_ms_all_sets": float(np.median(exact_ms)),
           "graph": [{"share": sh, "ef": e, "p50_ms": float(np.median(times[sh, e])),
                      "x_unfiltered": float(np.median(times[sh, e]) / np.median(un_ms)),
                      "recall10": float(np.mean(v)), f"recall{k}": float(np.mean(reck[sh, e]))}
                     for (sh, e), v in sorted(rec10.items())]}
    tag = f"_{args.tag}" if args.tag else ""
    write_result(res, Path(args.out) / f"filtered_ef_probe_{n}{tag}.json", echo=True)
    store.close()


if __name__ == "__main__":
    main()
