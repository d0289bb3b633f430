"""Where a first catalogue import spends its CPU, checkout A against checkout B (issue 20).

Each turn imports a scale-bench manifest into an empty SQLite file in a fresh process of one
checkout (its code first on sys.path), turns interleaved A, B, B, A, ... so that a shared
machine's load falls on both alike, and records apart:

  read     the manifest read into records (main process)
  main     import_catalogue in the main process (row handling, upserts, waiting excluded)
  workers  the image checks in the worker processes (open, decode, hash, stat)

as CPU seconds (user + system), plus the wall seconds of the import.

    python benchmarks/import_cpu_ab.py --a /tmp/main-copy --b . --manifest /tmp/scale/manifest_20000.csv

Writes benchmarks/results/import_cpu_ab_<rows>.json (medians and B/A ratios).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from shopsearch.evaluation.machine import machine_info  # noqa: E402

#: run in a fresh interpreter whose sys.path starts with the checkout
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.readers import read_source
from shopsearch.catalogue.store import CatalogueStore

def cpu():
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime, b.ru_utime + b.ru_stime

store = CatalogueStore.open(f"sqlite:///{sys.argv[2]}")
c0 = cpu()
problems = []
records = list(read_source(Path(sys.argv[1]), "csv", problems))
c1, t1 = cpu(), time.perf_counter()
report = import_catalogue(store, records, problems, workers=2, progress=False)
c2, wall = cpu(), time.perf_counter() - t1
print(json.dumps({"read": c1[0] - c0[0], "main": c2[0] - c1[0], "workers": c2[1] - c1[1], "wall": wall,
                  "created": report.products_created}))
"""


def one(checkout: Path, manifest: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        out = subprocess.run([sys.executable, "-c", CHILD, str(manifest), str(Path(tmp) / "catalogue.db")],
                             cwd=checkout, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="checkout A (before)")
    ap.add_argument("--b", default=str(REPO), help="checkout B (after)")
    ap.add_argument("--manifest", required=True, help="a CSV manifest of scale_bench (images on disk)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--tag", default="", help="appended to the file name, e.g. xeon_loaded")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    sides = {"A": Path(args.a).resolve(), "B": Path(args.b).resolve()}
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    loads = []
    for rnd in range(args.rounds):
        for name in ("A", "B") if rnd % 2 == 0 else ("B", "A"):
            loads.append(os.getloadavg()[0])
            runs[name].append(one(sides[name], Path(args.manifest)))
            print(rnd, name, {k: round(v, 2) for k, v in runs[name][-1].items()}, flush=True)
    keys = ("read", "main", "workers", "wall")
    med = {n: {k: float(np.median([r[k] for r in rs])) for k in keys} for n, rs in runs.items()}
    for m in med.values():
        m["cpu_total"] = m["read"] + m["main"] + m["workers"]
    ratio = {k: med["B"][k] / med["A"][k] for k in med["A"] if med["A"][k]}
    rows = runs["A"][0]["created"]
    tag = f"_{args.tag}" if args.tag else ""
    path = Path(args.out) / f"import_cpu_ab_{rows}{tag}.json"
    path.write_text(json.dumps({"note": args.note, "rows": rows, "a": str(sides["A"]), "b": str(sides["B"]),
                                "runs": runs, "median_s": med, "ratio_b_over_a": ratio,
                                "load_avg_1m": {"min": min(loads), "max": max(loads)},
                                "machine": machine_info()}, indent=2))
    print(json.dumps({"median_s": med, "ratio_b_over_a": ratio}, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
