"""ANN benchmark: recall@10 against exact search, queries/s, build time and bytes per vector
for the index types ShopSearch ships (shopsearch.index.VectorIndex: flat, HNSW, IVF-Flat,
IVF-PQ), on seeded synthetic 512-d vectors.

The vectors are a Gaussian mixture in a 64-d latent space, projected to `dim` with a little
isotropic noise and L2-normalised, so neighbourhoods look like real embeddings (low
intrinsic dimension, clustered) rather than uniform noise, where no ANN works. Ground
truth is the exact (flat) search of the same queries, drawn from the same mixture.

    python benchmarks/ann_bench.py --n 100000                    # -> results/ann_100k.json
    python benchmarks/ann_bench.py --n 1000000 --queries 500     # -> results/ann_1m.json

Not a test: it prints figures and writes JSON for benchmarks/make_results.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shopsearch.evaluation.machine import machine_info  # noqa: E402
from shopsearch.evaluation.metrics import percentiles  # noqa: E402
from shopsearch.index.sizing import factory_string  # noqa: E402
from shopsearch.index.vector_index import VectorIndex  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
K = 10


def synthetic(n: int, dim: int, seed: int, clusters: int, latent: int = 64, chunk: int = 100_000) -> np.ndarray:
    """n unit vectors from a seeded Gaussian mixture (same seed -> same vectors)."""
    rng = np.random.default_rng(seed)
    model = np.random.default_rng(12345)  # the mixture itself is shared by base and query draws
    centers = model.standard_normal((clusters, latent), dtype=np.float32)
    proj = model.standard_normal((latent, dim), dtype=np.float32) / np.sqrt(latent)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        m = min(n, s + chunk) - s
        z = centers[rng.integers(0, clusters, m)] + 0.6 * rng.standard_normal((m, latent), dtype=np.float32)
        x = z @ proj + 0.1 * rng.standard_normal((m, dim), dtype=np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _is_ivf(itype: str) -> bool:
    return itype.lower().startswith("ivf")


def recall_vs_exact(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean |ANN top-k ∩ exact top-k| / k."""
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / exact.shape[1] for a, b in zip(found, exact)]))


def serialized_bytes(vi: VectorIndex) -> int:
    with tempfile.NamedTemporaryFile(suffix=".faiss", dir=os.environ.get("TMPDIR")) as f:
        faiss.write_index(vi.faiss_index, f.name)
        return os.path.getsize(f.name)


def measure(vi: VectorIndex, queries: np.ndarray, exact: np.ndarray | None, single: int) -> dict:
    """Batch queries/s + recall@10 vs exact, and single-query latency on the first `single` queries."""
    vi.search(queries[:8], K)  # warm-up
    t = time.perf_counter()
    _, ids = vi.search(queries, K)
    batch_s = time.perf_counter() - t
    threads = faiss.omp_get_max_threads()
    lat: dict[int, list[float]] = {threads: [], 1: []}
    # One query at a time, with FAISS's default OpenMP threads and with one thread: on a
    # busy machine, threads waiting on each other can cost more than the search itself.
    for n_threads in lat:
        faiss.omp_set_num_threads(n_threads)
        for q in queries[:single]:
            t = time.perf_counter()
            vi.search(q[None, :], K)
            lat[n_threads].append((time.perf_counter() - t) * 1000)
    faiss.omp_set_num_threads(threads)
    return {"recall_at_10": round(recall_vs_exact(ids, exact), 4) if exact is not None else 1.0,
            "qps_batch": round(len(queries) / batch_s, 1),
            "single_query_ms": {k: round(v, 3) for k, v in percentiles(lat[threads]).items()},
            "single_query_ms_1thread": {k: round(v, 3) for k, v in percentiles(lat[1]).items()}}, ids


def bench_type(itype: str, base: np.ndarray, queries: np.ndarray, exact: np.ndarray | None, params: list[int],
               train_sample: int, single: int, seed: int) -> tuple[dict, np.ndarray | None]:
    n, dim = base.shape
    t0 = time.perf_counter()
    vi = VectorIndex(dim, itype, expected_size=n)
    train_n = 0
    if not vi.is_trained:
        # IVF k-means on a bounded sample: training on every vector costs O(n * nlist * dim) per iteration.
        train_n = min(n, train_sample)
        pick = np.random.default_rng(seed + 1).choice(n, train_n, replace=False)
        vi.train(base[np.sort(pick)])
    t_train = time.perf_counter() - t0
    for s in range(0, n, 200_000):
        vi.add(np.arange(s, min(n, s + 200_000), dtype=np.int64), base[s:s + 200_000])
    build_s = time.perf_counter() - t0
    nbytes = serialized_bytes(vi)
    row = {"index": itype, "factory": factory_string(itype, dim, n), "build_seconds": round(build_s, 2),
           "train_seconds": round(t_train, 2), "train_vectors": train_n,
           "bytes_per_vector": round(nbytes / n, 1), "index_mb": round(nbytes / 2**20, 1), "settings": []}
    print(f"  {itype:8s} built in {build_s:7.1f}s (train {t_train:.1f}s on {train_n}), "
          f"{nbytes / n:7.1f} B/vector", flush=True)
    gt = None
    for p in params or [0]:
        if itype == "hnsw":
            vi.ef_search = p
        elif _is_ivf(itype):
            vi.nprobe = p
        m, ids = measure(vi, queries, exact, single)
        if exact is None:
            gt = ids
        key = "ef_search" if itype == "hnsw" else "nprobe" if _is_ivf(itype) else None
        setting = ({key: p} if key else {}) | m
        row["settings"].append(setting)
        label = f"{key}={p}" if key else "exact"
        print(f"    {label:14s} recall@10 {m['recall_at_10']:.4f}  {m['qps_batch']:9.1f} q/s batch  "
              f"single p50 {m['single_query_ms']['p50']:.3f} ms ({m['single_query_ms_1thread']['p50']:.3f} ms "
              "on 1 thread)", flush=True)
    del vi
    return row, gt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    ap.add_argument("--clusters", type=int, default=0, help="mixture components (default n/200)")
    ap.add_argument("--types", default="flat,hnsw,ivfflat,ivfpq",
                    help="index types (VectorIndex names or FAISS factory strings, then ';'-separated)")
    ap.add_argument("--ef", default="16,32,64,128,256", help="HNSW efSearch values")
    ap.add_argument("--nprobe", default="1,4,16,64,128", help="IVF nprobe values")
    ap.add_argument("--train-sample", type=int, default=100_000, help="IVF training vectors (at most)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default results/ann_<n>.json)")
    a = ap.parse_args(argv)

    name = f"{a.n // 1_000_000}m" if a.n % 1_000_000 == 0 else f"{a.n // 1000}k" if a.n % 1000 == 0 else str(a.n)
    out = Path(a.out) if a.out else RESULTS / f"ann_{name}.json"
    clusters = a.clusters or max(16, a.n // 200)
    print(f"ANN benchmark: n={a.n} dim={a.dim} queries={a.queries} clusters={clusters} "
          f"faiss threads={faiss.omp_get_max_threads()}", flush=True)
    t = time.perf_counter()
    base = synthetic(a.n, a.dim, a.seed, clusters)
    queries = synthetic(a.queries, a.dim, a.seed + 1_000_003, clusters)
    print(f"  data generated in {time.perf_counter() - t:.1f}s", flush=True)
    # FAISS factory strings contain commas: separate types with ';' when passing one.
    types = [x.strip() for x in a.types.split(";" if ";" in a.types else ",") if x.strip()]
    if types[0] != "flat":
        types = ["flat"] + [x for x in types if x != "flat"]  # flat first: it is the ground truth
    rows, exact = [], None
    for itype in types:
        params = ([int(x) for x in a.ef.split(",")] if itype == "hnsw" else
                  [int(x) for x in a.nprobe.split(",")] if _is_ivf(itype) else [])
        row, gt = bench_type(itype, base, queries, exact, params, a.train_sample, a.single, a.seed)
        if exact is None:
            exact = gt
        rows.append(row)
    result = {
        "benchmark": "ann", "n": a.n, "dim": a.dim, "queries": a.queries, "k": K, "clusters": clusters,
        "data": "seeded Gaussian mixture in a 64-d latent space, projected to dim, +0.1 noise, L2-normalised",
        "seed": a.seed, "faiss_threads": faiss.omp_get_max_threads(), "indexes": rows,
        "target": "recall@10 >= 0.95 of exact",
        "smallest_setting_meeting_target": {
            r["index"]: next((s for s in r["settings"] if s["recall_at_10"] >= 0.95), None) for r in rows},
        "machine": machine_info(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
