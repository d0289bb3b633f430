"""Does the query model the service chose (shopsearch/embedders/query_model.py: bf16 on CPUs
that have it) find the same products as the fp32 model? Every Grocery Store test photo is
searched twice in process through the serving SearchService of a demo data dir (fusion head,
calibration, centring as served): once with the fp32 model's vector, once with the chosen
query model's; writes top-1 correct rates (the first product is the photo's fine class), how
often the two first products agree, and the cosine between the two query vectors.

    .venv/bin/python benchmarks/query_model_check.py --data-dir /tmp/speeddemo \\
        --out benchmarks/results/query_model_check_grocery_test.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_GROCERY = Path(os.environ.get("SHOPSEARCH_GROCERY_DIR", REPO.parent / "shared" / "datasets" / "grocerystore"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, default=DEFAULT_GROCERY)
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--stride", type=int, default=1, help="every Nth photo of the split (1: all)")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16"])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "query_model_check.json")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from shopsearch.app import open_search_service
    from shopsearch.config import Settings
    from shopsearch.embedding.preprocess import decode_query
    from shopsearch.evaluation.machine import cpu_model

    svc = open_search_service(Settings.from_env(data_dir=a.data_dir))
    emb = svc.embedder
    choice = emb.prepare_queries(a.precision)
    lines = [ln.split(",")[0].strip() for ln in (a.dataset / "dataset" / f"{a.split}.txt").read_text().splitlines()
             if ln.strip()]
    lines = lines[:: max(1, a.stride)]
    correct32 = correctq = agree = 0
    cosines = []
    t0 = time.perf_counter()
    for rel in lines:
        img = decode_query(a.dataset / "dataset" / rel, emb)
        expected = Path(rel).parent.name
        v32 = emb.encode_images([img])[0]
        vq = emb.encode_query([img])[0]
        cosines.append(float(v32 @ vq))
        s32 = svc.search_vector(v32, k=1).hits
        sq = svc.search_vector(vq, k=1).hits
        correct32 += bool(s32) and s32[0].sku == expected
        correctq += bool(sq) and sq[0].sku == expected
        agree += bool(s32) and bool(sq) and s32[0].sku == sq[0].sku
    n = len(lines)
    result = {
        "benchmark": "query_model_check", "model": svc.manifest.model_name, "vectors": len(svc.index),
        "index_type": svc.manifest.index_type, "split": a.split, "stride": a.stride, "photos": n,
        "query_model": getattr(choice, "name", "fp32 (no choice made)"),
        "choice_ms": getattr(choice, "ms", {}), "choice_cosine": getattr(choice, "cosine", {}),
        "top1_correct_fp32": round(correct32 / n, 4), "top1_correct_query_model": round(correctq / n, 4),
        "top1_same_product": round(agree / n, 4),
        "query_cosine": {"min": round(min(cosines), 6), "median": round(statistics.median(cosines), 6)},
        "how": "in process, serving SearchService (fusion, calibration, centring as served), k=1, "
               "the same decoded photo embedded by the fp32 model and by the chosen query model",
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_1m": round(os.getloadavg()[0], 2)},
        "seconds": round(time.perf_counter() - t0, 1),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json.dumps(result, indent=2) + "\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
