"""What the confidence adds to a photo search (ms per query): `annotate` on a ranked list, with the
catalogue-only fit before (score + lead) and now (with the photo's familiarity to the catalogue,
shopsearch.density), on random unit vectors of the model's width for several catalogue sizes. One
process, the variants interleaved, so the ratio holds on a loaded machine.

    python benchmarks/confidence_cost.py --out benchmarks/results/confidence_cost.json"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from shopsearch.confidence import Calibration, annotate
from shopsearch.density import fit_density
from shopsearch.evaluation.machine import machine_info
from shopsearch.results import ProductHit, SearchResult


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--products", default="81,1000,10000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    hits = SearchResult(tuple(ProductHit(f"s{i}", "t", 0.8 - 0.05 * i, i, "p") for i in range(10)), "m", "b")
    before = Calibration(True, top1=(6.0, 2.0, -3.0), hit=(8.0, 4.0, -4.0), query_features=("score", "lead"))
    rows = []
    for n in (int(x) for x in a.products.split(",")):
        labels = np.repeat(np.arange(n), 2)
        dens = fit_density(_unit(rng.normal(size=(2 * n, a.dim))), labels, max_vectors=4000)
        after = Calibration(True, top1=(6.0, 2.0, 1.0, -3.0), hit=(8.0, 4.0, -4.0),
                            query_features=("score", "lead", "density"), density=dens)
        queries = _unit(rng.normal(size=(a.queries, a.dim))).astype(np.float32)
        spent = {"before": 0.0, "after": 0.0}
        for q in queries:  # interleaved: the load hits both alike
            for name, cal in (("before", before), ("after", after)):
                t = time.perf_counter()
                annotate(hits, cal, vector=q)
                spent[name] += time.perf_counter() - t
        ms = {k: round(v * 1000 / a.queries, 4) for k, v in spent.items()}
        rows.append({"products": n, "dim": a.dim, "ms_before": ms["before"], "ms_after": ms["after"],
                     "added_ms": round(ms["after"] - ms["before"], 4)})
        print(rows[-1], flush=True)
    out = {"benchmark": "confidence_cost", "queries": a.queries, "rows": rows, "machine": machine_info(),
           "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if a.out:
        a.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
