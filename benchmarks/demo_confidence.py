"""What the demo tells shoppers: seeded Grocery Store test photos searched through the serving
search service (as the web app does), and the share of right and wrong first products called
`strong`, `weak` or `none` ("no close match"), with their mean confidence.

    shopsearch --data-dir var demo --no-serve          # the demo's data dir (calibrated on val photos)
    SHOPSEARCH_DATA_DIR=var python benchmarks/demo_confidence.py --dataset ../shared/datasets/grocerystore \
        --photos 50 --label "val photos, fused" --out benchmarks/results/demo_confidence_grocerystore.json

Several runs (say another calibration: `shopsearch index calibrate` without --photos) go into one
file with --append."""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from shopsearch.app import open_search_service
from shopsearch.config import Settings
from shopsearch.embedding.preprocess import decode_query
from shopsearch.evaluation.datasets import load_dataset
from shopsearch.evaluation.machine import machine_info

MATCHES = ("strong", "weak", "none")


def _shares(rows: list[dict]) -> dict:
    out = {m: round(sum(r["match"] == m for r in rows) / max(1, len(rows)), 3) for m in MATCHES}
    out["mean_confidence"] = round(sum(r["confidence"] or 0.0 for r in rows) / max(1, len(rows)), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, help="Grocery Store root")
    ap.add_argument("--photos", type=int, default=50)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--label", required=True, help="What this run's calibration is.")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--append", action="store_true", help="Add this run to the runs already in --out.")
    ap.add_argument("--note", default=None)
    a = ap.parse_args()
    queries = [q for q in load_dataset(a.dataset, "grocerystore", "iconic+train", "test").queries if q.sku]
    pick = random.Random(a.seed).sample(queries, a.photos)
    svc = open_search_service(Settings.from_env())
    rows = []
    for q in pick:
        res = svc.search_image(decode_query(q.path, svc.embedder), k=10)
        rows.append({"photo": Path(q.path).name, "sku": q.sku, "first": res.hits[0].sku,
                     "right": res.hits[0].sku == q.sku, "confidence": res.confidence, "match": res.match})
    right = [r for r in rows if r["right"]]
    wrong = [r for r in rows if not r["right"]]
    machine = machine_info()
    cal = res.calibration or {}
    run = {"label": a.label, "photos": len(rows), "seed": a.seed, "right_first": len(right),
           "right": _shares(right), "wrong": _shares(wrong),
           "calibration": f"{cal.get('status')}, {cal.get('scoring')}, features {'+'.join(cal.get('features') or [])}, "
                          f"none below {cal.get('none_below')}",
           "note": a.note, "load_avg_1m": machine.get("load_avg_1m"),
           "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    runs = []
    if a.append and a.out and a.out.is_file():
        runs = json.loads(a.out.read_text())["runs"]
    out = {"benchmark": "demo_confidence", "dataset": "grocerystore", "queries": "test (seeded sample)",
           "runs": runs + [run], "machine": machine}
    print(json.dumps(run, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=2) + "\n")
        # each photo's answer beside it (make_results renders only the top-level files)
        detail = a.out.with_suffix("") / f"run{len(out['runs'])}.json"
        detail.parent.mkdir(parents=True, exist_ok=True)
        detail.write_text(json.dumps({"label": a.label, "queries": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
