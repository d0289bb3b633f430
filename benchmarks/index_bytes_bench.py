"""What one search node holds: bytes per vector of each index type, measured on a built index.

    .venv/bin/python benchmarks/index_bytes_bench.py            # 20,000 vectors, 512-d and 1280-d
    .venv/bin/python benchmarks/index_bytes_bench.py --n 100000

Builds each type with VectorIndex (the indexer's own factory strings) on random unit
vectors and records the size of the saved index (FAISS serialisation, what `IndexStore`
writes and a search node loads into RAM) divided by the number of vectors, ids included.
Written to benchmarks/results/index_bytes.json."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from shopsearch.evaluation.machine import machine_info  # noqa: E402
from shopsearch.index.sizing import estimate_bytes_per_vector, factory_string  # noqa: E402
from shopsearch.index.vector_index import VectorIndex  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dims", default="512,1280")
    ap.add_argument("--types", default="flat,hnsw,ivfpq")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "index_bytes.json")
    args = ap.parse_args(argv)
    rows = []
    rng = np.random.default_rng(0)
    for dim in (int(d) for d in args.dims.split(",")):
        vecs = rng.standard_normal((args.n, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        ids = np.arange(args.n, dtype=np.int64)
        for itype in args.types.split(","):
            t0 = time.perf_counter()
            index = VectorIndex(dim, itype, expected_size=args.n)
            index.add(ids, vecs)
            size = len(faiss.serialize_index(index.faiss_index))
            rows.append({"index_type": itype, "factory": factory_string(itype, dim, args.n), "dim": dim,
                         "vectors": args.n, "bytes": size, "bytes_per_vector": round(size / args.n, 1),
                         "estimate_bytes_per_vector": estimate_bytes_per_vector(itype, dim),
                         "build_seconds": round(time.perf_counter() - t0, 2)})
            print(json.dumps(rows[-1]), flush=True)
    out = {"benchmark": "index_bytes", "machine": machine_info(), "rows": rows}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
