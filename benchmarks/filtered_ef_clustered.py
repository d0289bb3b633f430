"""Recall of the HNSW graph walk among a large allowed set, per efSearch, on clustered vectors (issue 20).

filtered_ef_probe.py times the walk on the scale benchmarks' seeded *uniform* vectors, on
which HNSW's recall is ~0.1 even unfiltered (384 independent dimensions: every vector is
nearly equidistant), so recall there says nothing. This probe builds its own HNSW32 index
over clustered, non-negative unit vectors (2,000 centres, histogram-like), allows a random
20% or 8% of it, and measures per efSearch: p50 ms of the walk (one thread) and recall@10 /
recall@k against the exact answer over the allowed vectors; and the unfiltered walk at
efSearch 128 for reference.

    python benchmarks/filtered_ef_clustered.py --size 100000 --out benchmarks/results/filtered_ef_clustered_100k_xeon_loaded.json
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._bench_io import cpu_block, utc_now, write_result  # noqa: E402


def _recall(got: np.ndarray, want: np.ndarray, k: int) -> float:
    return len(set(got[:k].tolist()) & set(want[:k].tolist())) / k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=80, help="results asked (the service fetches 8k for a page of k=10)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--efs", default="128,192,256,400,640,1000,1600")
    ap.add_argument("--shares", default="0.2,0.08", help="allowed shares (random subsets)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    import faiss

    from shopsearch.index.exact import exact_among
    from shopsearch.index.filtered import bitmap

    n, d, k = args.size, 384, args.k
    rng = np.random.default_rng(0)
    centres = rng.random((2000, d), dtype=np.float32) ** 4
    x = centres[rng.integers(0, len(centres), n)] + 0.15 * rng.random((n, d), dtype=np.float32) ** 4
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t0 = time.perf_counter()
    index = faiss.index_factory(d, "HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    build_s = time.perf_counter() - t0
    flat = faiss.downcast_index(index.storage)
    q = x[rng.choice(n, args.queries, replace=False)] + 0.1 * rng.random((args.queries, d), dtype=np.float32) ** 4
    q = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)
    faiss.omp_set_num_threads(1)
    index.hnsw.efSearch = 128
    _, plain = index.search(q, k)
    _, truth_all = flat.search(q, k)
    res: dict = {"benchmark": "filtered_ef_clustered", "size": n, "dim": d, "k": k, "queries": len(q),
                 **cpu_block(load0), "recorded_at": utc_now(), "build_s": build_s,
                 "unfiltered_ef128": {"recall10": float(np.mean([_recall(plain[i], truth_all[i], 10)
                                                                 for i in range(len(q))])),
                                      f"recall{k}": float(np.mean([_recall(plain[i], truth_all[i], k)
                                                                  for i in range(len(q))]))},
                 "rows": []}
    for share in (float(s) for s in args.shares.split(",")):
        pos = np.sort(rng.choice(n, int(n * share), replace=False))
        bits = bitmap(pos, n)
        truth = [exact_among(flat, q[i:i + 1], k, pos)[1][0] for i in range(len(q))]
        for ef in (int(e) for e in args.efs.split(",")):
            ms, r10, rk = [], [], []
            for i in range(len(q)):
                sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
                t = time.perf_counter()
                _, got = index.search(q[i:i + 1], k, params=faiss.SearchParametersHNSW(sel=sel, efSearch=ef))
                ms.append((time.perf_counter() - t) * 1000)
                r10.append(_recall(got[0], truth[i], 10))
                rk.append(_recall(got[0], truth[i], k))
            res["rows"].append({"share": share, "ef": ef, "p50_ms": float(np.median(ms)),
                                "recall10": float(np.mean(r10)), f"recall{k}": float(np.mean(rk))})
            print(res["rows"][-1], flush=True)
    write_result(res, args.out, echo=True)


if __name__ == "__main__":
    main()
