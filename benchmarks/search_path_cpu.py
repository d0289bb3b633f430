"""CPU time of one photo search's non-model work, before/after in turns (issue 18): each variant
is a checkout whose code runs in its own process on one prepared data dir; the model runs once
per photo beforehand, so only what comes after it is timed, in this thread's CPU time
(time.thread_time: barely moved by other jobs on the cores, unlike wall time).

Stages, median ms over the Grocery test photos x repeats:
  decode       the upload's bytes -> RGB image (decode_query)
  search       SearchService.search_vector: routing/fusion head, FAISS, grouping with its
               catalogue reads, calibrated confidence (the density feature included)
  answer       the JSON answer from the result: result_dict (cards and their URLs) + jsonify
  api_cpu      one whole POST /api/v1/search through Flask's test client, model included

    .venv/bin/python benchmarks/search_path_cpu.py --data-dir /tmp/query10-demo \
        --variant before=/tmp/base --variant after=. --rounds 2 --out benchmarks/results/search_path_cpu.json

Each round runs every variant once (A B A B ...); the results keep every round and the
per-variant medians, with the CPU model and load averages."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _bench_io import cpu_block, data_dir_parser, utc_now, write_result

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GROCERY = Path(os.environ.get("SHOPSEARCH_GROCERY_DIR", REPO.parent / "shared" / "datasets" / "grocerystore"))


def _median_ms(fn, items, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        for it in items:
            t0 = time.thread_time()
            fn(it)
            out.append((time.thread_time() - t0) * 1000)
    return round(statistics.median(out), 3)


def worker(data_dir: Path, dataset: Path, queries: int, repeat: int, k: int) -> dict:
    """Runs inside the variant's checkout (its code first on sys.path)."""
    sys.path.insert(0, os.getcwd())
    import torch

    torch.set_num_threads(1)  # the search path is single-threaded; one thread keeps the model's share steady
    import webapp.params
    from shopsearch.config import Settings
    from shopsearch.embedding.preprocess import decode_query
    from shopsearch.search import query_vectors
    from webapp import create_app
    from webapp.params import result_dict

    # query_profile puts this script's checkout first on sys.path: imported only once the variant's code is
    from query_profile import query_photos

    if not Path(webapp.params.__file__).resolve().is_relative_to(Path.cwd().resolve()):
        raise RuntimeError(f"the variant's code is not the one imported: {webapp.params.__file__}")

    app = create_app({"SETTINGS": Settings.from_env(data_dir=data_dir), "RELOAD_CHECK_S": 3600})
    client = app.test_client()
    svc = app.extensions["shopsearch"].get()
    photos = query_photos(dataset, queries)
    vecs = [query_vectors(svc.embedder, [decode_query(p, svc.embedder)])[0] for p in photos]
    results = [svc.search_vector(v, k) for v in vecs]  # warm: head, density, statements, pool

    def answer(res) -> None:
        with app.test_request_context("/api/v1/search", method="POST"):
            app.json.response(result_dict(res, None, k))

    def api(data: bytes) -> None:
        assert client.post(f"/api/v1/search?k={k}", data=data, content_type="application/octet-stream").status_code == 200

    for p in photos[:3]:
        api(p)
    load1 = os.getloadavg()[0]
    stages = {"decode": _median_ms(lambda p: decode_query(p, svc.embedder), photos, repeat),
              "search": _median_ms(lambda v: svc.search_vector(v, k), vecs, repeat),
              "answer": _median_ms(answer, results, repeat),
              "api_cpu": _median_ms(api, photos, max(1, repeat // 2))}
    app.extensions["shopsearch"].flush_feedback(10.0)
    return {"stage_cpu_ms_median": stages, "loadavg_1m_before": round(load1, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2), "vectors": len(svc.index),
            "model": svc.manifest.model_name, "router": type(svc.router).__name__ if svc.router else None,
            "calibration_features": list(svc.calibration.query_features) if svc.calibration else None}


def main() -> int:
    ap = data_dir_parser(__doc__, DEFAULT_GROCERY)
    ap.add_argument("--variant", action="append", required=True, help="NAME=CHECKOUT")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--queries", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--worker", action="store_true", help=argparse_hidden())
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.worker:
        print(json.dumps(worker(a.data_dir.resolve(), a.dataset, a.queries, a.repeat, a.k)))
        return 0
    variants = dict(v.split("=", 1) for v in a.variant)
    load0 = os.getloadavg()[0]
    runs: list[dict] = []
    for rnd in range(a.rounds):
        for name, checkout in variants.items():
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--variant", a.variant[0],
                   "--data-dir", str(a.data_dir.resolve()), "--dataset", str(a.dataset), "--queries", str(a.queries),
                   "--repeat", str(a.repeat), "-k", str(a.k)]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent)}
            out = subprocess.run(cmd, cwd=Path(checkout).resolve(), env=env, capture_output=True, text=True, check=True)
            run = {"variant": name, "round": rnd + 1, **json.loads(out.stdout.strip().splitlines()[-1])}
            runs.append(run)
            print(json.dumps({k: run[k] for k in ("variant", "round", "stage_cpu_ms_median", "loadavg_1m_before")}),
                  file=sys.stderr)
    medians = {name: {s: round(statistics.median(r["stage_cpu_ms_median"][s] for r in runs if r["variant"] == name), 3)
                      for s in runs[0]["stage_cpu_ms_median"]} for name in variants}
    names = list(variants)
    ratios = {f"{names[-1]}/{names[0]}": {s: round(medians[names[-1]][s] / medians[names[0]][s], 3)
                                          for s in medians[names[0]] if medians[names[0]][s]}} if len(names) > 1 else {}
    result = {"benchmark": "search_path_cpu", "variants": variants, "k": a.k, "queries": a.queries, "repeat": a.repeat,
              "medians_cpu_ms": medians, "ratios": ratios, "runs": runs,
              "machine": cpu_block(load0, a.note),
              "how": "each variant in its own process from its checkout, in turns; this thread's CPU ms "
                     "(time.thread_time) per stage, median over Grocery test photos x repeats; torch and OpenMP "
                     "at one thread", "when": utc_now()}
    write_result(result, a.out, echo=True)
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
