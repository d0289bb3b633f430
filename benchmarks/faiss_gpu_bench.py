"""FAISS search on a GPU against the same index on the CPU, through ShopSearch's own
`VectorIndex.to_gpu()` (what `SHOPSEARCH_FAISS_GPU=auto|on` does when the server loads an index).

Seeded synthetic vectors (benchmarks/ann_bench.synthetic); ground truth is the CPU flat
(exact) search. For each index type: build on the CPU (IVF k-means on the GPU where
faiss-gpu is installed, as `index build` does), clone to the GPU, then batch queries/s and
single-query latency on both, recall@10 against exact, and how often the GPU's top-10 ids
equal the CPU's at the same setting.

    python3 benchmarks/faiss_gpu_bench.py --n 1000000 --queries 10000 --out $OUT/faiss_gpu.json

Needs faiss-gpu and a GPU (benchmarks/gpu_session.sh sets it up on a lent machine)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ann_bench import K, recall_vs_exact, synthetic  # noqa: E402

from shopsearch.evaluation.machine import machine_info  # noqa: E402
from shopsearch.index import VectorIndex  # noqa: E402
from shopsearch.index.faiss_gpu import gpu_available  # noqa: E402


def timed_search(vi: VectorIndex, queries: np.ndarray, single: int) -> tuple[np.ndarray, float, float]:
    """Top-K ids of every query, batch queries/s, and p50 ms of `single` one-query searches."""
    vi.search(queries[:16], K)  # warm-up (GPU kernels load lazily on first use)
    t = time.perf_counter()
    _, ids = vi.search(queries, K)
    qps = len(queries) / (time.perf_counter() - t)
    lat = []
    for q in queries[:single]:
        t = time.perf_counter()
        vi.search(q[None, :], K)
        lat.append((time.perf_counter() - t) * 1000)
    return ids, qps, float(np.median(lat))


def write(a: argparse.Namespace, rows: list[dict], argv: list[str] | None) -> None:
    """The result file, with the rows measured so far."""
    try:
        gpu_name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                  capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        gpu_name = None
    out = {"n": a.n, "dim": a.dim, "queries": a.queries, "k": K, "faiss": faiss.__version__, "gpu": gpu_name,
           "cpu_threads": faiss.omp_get_max_threads(), "machine": machine_info(), "rows": rows,
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": "python3 benchmarks/faiss_gpu_bench.py " + " ".join(argv or sys.argv[1:])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--single", type=int, default=200)
    ap.add_argument("--cpu-queries", type=int, default=300,
                    help="queries the CPU answers (exact search at 1M is slow; recall is read on these)")
    ap.add_argument("--types", default="flat,ivfflat,ivfpq")
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/results/faiss_gpu.json")
    a = ap.parse_args(argv)
    if not gpu_available():
        print("faiss has no GPU here (needs faiss-gpu and a GPU)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    base = synthetic(a.n, a.dim, seed=0, clusters=max(1, a.n // 200))
    queries = synthetic(a.queries, a.dim, seed=1, clusters=max(1, a.n // 200))
    print(f"data: {a.n} x {a.dim} in {time.perf_counter() - t0:.1f}s", flush=True)
    rows, exact = [], None
    for itype in a.types.split(","):
        t = time.perf_counter()
        cpu = VectorIndex(a.dim, itype, expected_size=a.n)
        if not cpu.is_trained:
            cpu.train(base[np.random.default_rng(1).choice(a.n, min(a.n, 200_000), replace=False)])
        for s in range(0, a.n, 200_000):
            cpu.add(np.arange(s, min(a.n, s + 200_000), dtype=np.int64), base[s:s + 200_000])
        build_s = time.perf_counter() - t
        if itype != "flat":
            cpu.nprobe = a.nprobe
        gpu = VectorIndex(a.dim, itype, index=faiss.clone_index(cpu.faiss_index))
        if itype != "flat":
            gpu.nprobe = a.nprobe
        t = time.perf_counter()
        on_gpu = gpu.to_gpu()
        copy_s = time.perf_counter() - t
        nc = min(a.cpu_queries, a.queries)
        ids_c, qps_c, p50_c = timed_search(cpu, queries[:nc], min(a.single, 20))
        if exact is None and itype == "flat":
            exact = ids_c
        ids_g, qps_g, p50_g = timed_search(gpu, queries, a.single) if on_gpu else (ids_c, 0.0, 0.0)
        ids_g = ids_g[:nc]
        row = {"index": itype, "on_gpu": on_gpu, "build_seconds_cpu": round(build_s, 2),
               "copy_to_gpu_seconds": round(copy_s, 2), "nprobe": None if itype == "flat" else a.nprobe,
               "cpu_queries": nc, "cpu_qps": round(qps_c, 1), "gpu_qps": round(qps_g, 1),
               "gpu_over_cpu": round(qps_g / qps_c, 1) if qps_c else None,
               "cpu_single_p50_ms": round(p50_c, 3), "gpu_single_p50_ms": round(p50_g, 3),
               "recall_at_10_cpu": round(recall_vs_exact(ids_c, exact), 4) if exact is not None else None,
               "recall_at_10_gpu": round(recall_vs_exact(ids_g, exact), 4) if exact is not None else None,
               "same_top10_as_cpu": round(float(np.mean([set(x) == set(y) for x, y in zip(ids_c, ids_g)])), 4)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        write(a, rows, argv)  # after every row: a later type that runs out of time loses only itself
        del cpu, gpu
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
