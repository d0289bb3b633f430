"""What the HNSW walk costs with each way of storing the vectors, on one graph (issue 20).

At 1M vectors most of an unfiltered search is the HNSW walk, and most of the walk is reading
the vectors it scores from memory (384 float32 = 1.5 KB each, scattered over 1.5 GB). This
builds one HNSW32 graph over seeded vectors drawn like benchmarks/scale_data.py's (non-negative,
unit length), then gives the same graph other storages (float16, 8-bit scalar codes) so that
only the storage differs, and times single-query searches on one thread, in turns:

  p50/p95 ms of a search for the `fetch` nearest (80: what a k=10 search asks for) at efSearch,
  recall@10 and @80 against exact inner-product search over the float32 vectors.

    .venv/bin/python benchmarks/hnsw_storage_bench.py --n 1000000 --scratch /tmp/hnsw-storage \
        --tag epyc_avx512_idle

The graph is cached in --scratch (building it is most of a first run's time).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from shopsearch.evaluation.machine import machine_info  # noqa: E402

DIM = 384
#: storages swapped into graphs, kept alive here (SWIG objects take no new attributes)
KEEP: list[faiss.Index] = []
STORAGES = {"flat": None, "fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}


def vectors(n: int, seed: int) -> np.ndarray:
    """Seeded non-negative unit vectors, in chunks (1M x 384 float32 is 1.5 GB)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for a in range(0, n, 100_000):
        v = rng.random((min(n, a + 100_000) - a, DIM), dtype=np.float32)
        out[a:a + len(v)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def graph(x: np.ndarray, scratch: Path) -> faiss.IndexHNSWFlat:
    path = scratch / f"hnsw32_flat_{len(x)}.faiss"
    if path.exists():
        return faiss.read_index(str(path))
    index = faiss.index_factory(DIM, "HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    index.add(x)
    print(f"built HNSW32 over {len(x):,} in {time.perf_counter() - t0:.0f} s", flush=True)
    scratch.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    return index


def with_storage(base: faiss.IndexHNSWFlat, x: np.ndarray, qtype: int) -> faiss.Index:
    """The same graph over another storage: the walk scores through whatever distance computer
    the storage gives (FAISS keeps graph and storage apart), so a copy of the graph with its
    float storage swapped for scalar-quantizer codes differs from `base` in the storage only."""
    other = faiss.clone_index(base)
    faiss.downcast_index(other.storage).reset()  # drop the copied float vectors
    codes = faiss.IndexScalarQuantizer(DIM, qtype, faiss.METRIC_INNER_PRODUCT)
    codes.train(x[:200_000])
    codes.add(x)
    other.storage = codes
    other.own_fields = False  # Python owns `codes`: keep it alive with the index
    KEEP.append(codes)
    return other


def timed(index: faiss.Index, q: np.ndarray, fetch: int, ef: int) -> tuple[list[float], np.ndarray]:
    params = faiss.SearchParametersHNSW(efSearch=ef)
    ms, ids = [], []
    for row in q:
        t0 = time.perf_counter()
        _, i = index.search(row[None, :], fetch, params=params)
        ms.append((time.perf_counter() - t0) * 1000)
        ids.append(i[0])
    return ms, np.array(ids)


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--fetch", type=int, default=80)
    ap.add_argument("--ef", default="128")
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/hnsw-storage"))
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    x = vectors(args.n, seed=0)
    q = vectors(args.queries, seed=1)
    base = graph(x, args.scratch)
    t0 = time.perf_counter()
    _, truth = faiss.knn(q, x, args.fetch, metric=faiss.METRIC_INNER_PRODUCT)
    print(f"exact ground truth in {time.perf_counter() - t0:.1f} s", flush=True)
    indexes = {name: base if qt is None else with_storage(base, x, qt) for name, qt in STORAGES.items()}
    faiss.omp_set_num_threads(1)  # what one served query uses (shopsearch.index.sizing.one_faiss_thread)
    efs = [int(e) for e in args.ef.split(",")]
    runs: dict[str, dict] = {}
    for ef in efs:
        times: dict[str, list[float]] = {name: [] for name in indexes}
        found: dict[str, np.ndarray] = {}
        for _ in range(args.turns):  # in turns, so drift on a shared machine hits every storage alike
            for name, index in indexes.items():
                ms, found[name] = timed(index, q, args.fetch, ef)
                times[name] += ms
        for name in indexes:
            key = f"{name}_ef{ef}"
            runs[key] = {
                "storage": name, "ef": ef,
                "p50_ms": round(float(np.percentile(times[name], 50)), 4),
                "p95_ms": round(float(np.percentile(times[name], 95)), 4),
                "recall10": round(recall(found[name], truth, 10), 4),
                "recall80": round(recall(found[name], truth, args.fetch), 4),
                "bytes_per_vector": int(indexes[name].storage.sa_code_size()
                                        if hasattr(indexes[name].storage, "sa_code_size") else 4 * DIM),
            }
            flat_p50 = runs[f"flat_ef{ef}"]["p50_ms"]
            runs[key]["x_flat"] = round(runs[key]["p50_ms"] / flat_p50, 4)
            print(key, runs[key], flush=True)
    out = REPO / "benchmarks" / "results" / f"hnsw_storage_{args.n}{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({
        "benchmark": "hnsw_storage", "machine": machine_info(), "n": args.n, "dim": DIM,
        "queries": args.queries, "fetch": args.fetch, "turns": args.turns,
        "note": "one HNSW32 graph, three storages; single-query searches on one thread, in turns",
        "runs": runs,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
