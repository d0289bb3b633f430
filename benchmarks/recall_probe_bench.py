"""What an HNSW build's recall probe (shopsearch/index/recall_probe.py) measures and costs: on a
kept data dir's serving index (e.g. scale_bench.py's 1M families catalogue), or on seeded
uniform unit vectors (`--uniform N,D`: no neighbourhood structure, the case the probe exists for).

    python benchmarks/recall_probe_bench.py --data-dir /tmp/scale32/data_sqlite_1000000 --out R.json
    python benchmarks/recall_probe_bench.py --uniform 200000,384 --out R.json

Prints and writes the probe (recall@10 per efSearch tried, the efSearch chosen) and its wall time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._bench_io import stamped_machine, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-dir", type=Path, help="a data dir whose serving index is HNSW")
    src.add_argument("--uniform", help="N,D: an HNSW32 over N seeded uniform unit vectors of D dims")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--note", default=None)
    args = ap.parse_args()

    import faiss

    from shopsearch.index.recall_probe import probe_hnsw
    from shopsearch.index.sizing import ef_for_size

    t0 = time.perf_counter()
    if args.data_dir is not None:
        from shopsearch.index.store import IndexStore

        from shopsearch.errors import ShopSearchError

        try:
            vi, manifest = IndexStore(args.data_dir / "index").load_current()
        except ShopSearchError as e:
            ap.error(f"--data-dir {args.data_dir}: {e}")
        index, n, source = vi.faiss_index.index, len(vi), f"{args.data_dir} (build {manifest.build_id})"
    else:
        try:
            n, d = (int(v) for v in args.uniform.split(","))
        except ValueError:
            ap.error(f"--uniform takes N,D (two integers), not {args.uniform!r}")
        if n <= 0 or d <= 0:
            ap.error("--uniform: N and D must be positive")
        x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.add(x)
        source = f"{n} seeded uniform unit vectors, {d} dims, HNSW32"
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    probe = probe_hnsw(index, ef_for_size(n))
    probe_s = time.perf_counter() - t1
    if probe is None:
        raise SystemExit(f"{source}: not an HNSW index over float vectors")
    result = {"benchmark": "recall_probe", **stamped_machine(), "source": source, "vectors": n,
              "probe": probe.to_dict(), "message": probe.message, "probe_seconds": round(probe_s, 2),
              "load_or_build_seconds": round(load_s, 1)}
    if args.note:
        result["note"] = args.note
    write_result(result, args.out)
    print(json.dumps({k: result[k] for k in ("source", "probe", "probe_seconds")}, indent=1))
    print(probe.message)


if __name__ == "__main__":
    main()
