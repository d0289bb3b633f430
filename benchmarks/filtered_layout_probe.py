"""What exact filtered scoring costs by vector layout (issue 20): the same number of allowed
vectors scored in place by position (`shopsearch.index.exact.exact_among`, what a category
filter does today) when they lie scattered through the index (a category of 1 in 50 in id
order), when they are random (a price range), and when they lie in one contiguous slice (what
storing the vectors grouped by category at build time would give). Synthetic seeded vectors,
no database; one process, the variants in turns.

    python benchmarks/filtered_layout_probe.py --size 1000000 --dim 384 \\
        --out benchmarks/results/filtered_layout_probe_1m.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from shopsearch.evaluation.machine import machine_info  # noqa: E402


def _ms(fn, repeats: int) -> float:
    fn()  # warm: page faults, caches
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1_000_000, help="vectors in the index")
    ap.add_argument("--dim", type=int, default=384, help="dimension (colorhist: 384)")
    ap.add_argument("--share", type=int, default=50, help="a category is 1 in this many vectors")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import faiss

    from shopsearch.index.exact import exact_among

    rng = np.random.default_rng(0)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(rng.random((args.size, args.dim), dtype=np.float32))
    q = rng.random((1, args.dim), dtype=np.float32)
    m = args.size // args.share
    layouts = {"scattered_every_nth": np.arange(7, args.size, args.share, dtype=np.int64)[:m],
               "random": np.sort(rng.choice(args.size, m, replace=False)).astype(np.int64),
               "contiguous": np.arange(m, dtype=np.int64)}
    xb = faiss.rev_swig_ptr(flat.get_xb(), args.size * args.dim).reshape(args.size, args.dim)

    def slice_gemv() -> np.ndarray:  # a contiguous run scored as one matrix-vector product
        s = xb[:m] @ q[0]
        return np.argpartition(-s, 10)[:10]

    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        r = {name: _ms(lambda p=pos: exact_among(flat, q, 10, p), args.repeats) for name, pos in layouts.items()}
        r["contiguous_slice_gemv"] = _ms(slice_gemv, args.repeats)
        rounds.append(r)
    median = {name: float(np.median([r[name] for r in rounds])) for name in rounds[0]}
    doc = {"benchmark": "filtered_layout_probe", "size": args.size, "dim": args.dim, "allowed": m,
           "what": "ms per query to score the allowed vectors exactly (exact_among, k=10), by layout",
           "rounds": rounds, "median_ms": median, "note": args.note, "machine": machine_info(),
           "load_avg_1m": os.getloadavg()[0]}
    print(json.dumps(median, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2))
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
