"""Where one image search spends its time, in process (no HTTP client or server overhead):
POST /api/v1/search (JSON) and POST /search (the results page, then its thumbnails), each
request timed by stage, plus a cProfile of the JSON search's hottest functions.

Stages are timed around the same calls the routes make (upload parse, decode, preprocess,
model, FAISS, database, JSON/HTML); a data dir with a built index is required, e.g. the one
benchmarks/load_bench.py prepares:

    .venv/bin/python benchmarks/query_profile.py --data-dir /tmp/speeddemo --out benchmarks/results/query_profile.json
"""
from __future__ import annotations

import cProfile
import io
import os
import pstats
import random
import statistics
import sys
import time
from pathlib import Path

from _bench_io import cpu_block, data_dir_parser, utc_now, write_result

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_GROCERY = Path(os.environ.get("SHOPSEARCH_GROCERY_DIR", REPO.parent / "shared" / "datasets" / "grocerystore"))


def query_photos(dataset: Path, n: int) -> list[bytes]:
    lines = (dataset / "dataset" / "test.txt").read_text().splitlines()
    picks = random.Random(0).sample([ln.split(",")[0].strip() for ln in lines if ln.strip()], n)
    return [(dataset / "dataset" / p).read_bytes() for p in picks]


def stage_times(svc, photos: list[bytes], k: int, clock=time.perf_counter) -> dict[str, float]:
    """Median ms of each stage of a search, the calls the routes make, one photo at a time.
    clock=time.thread_time gives this thread's CPU ms instead: with one intra-op thread
    (OMP_NUM_THREADS=1) all the work runs in this thread, and CPU time barely moves when other
    jobs share the cores, where wall time does. 'group' is the whole of search_vector after the
    model (vector search, routing and fusion head, grouping with its catalogue reads,
    calibration); 'database' the catalogue reads alone."""
    import numpy as np

    from shopsearch.embedding.preprocess import decode_query
    from shopsearch.grouping import group_candidates

    emb = svc.embedder
    stages = ("decode", "preprocess", "model", "faiss", "database", "group", "query_encode")
    out: dict[str, list[float]] = {s: [] for s in stages}
    encode_query = getattr(emb, "encode_query", None)
    for data in photos:
        t0 = clock()
        img = decode_query(data, emb)
        t1 = clock()
        x = np.stack([emb.preprocess(img)])
        t2 = clock()
        vec = emb.encode_batch(x)[0]  # the fp32 (catalogue) model
        t3 = clock()
        fetch = min(len(svc.index), max(50, 8 * k))
        scores, ids = svc.index.search(vec[None, :], fetch)
        t4 = clock()
        # what search reads of the catalogue: each image's product (in memory, one generation read)
        # and the live rows of each candidate product's best image
        cands = group_candidates(svc.owners.current(), ids[0], scores[0])
        svc.catalogue.candidate_rows(cands.image_ids.tolist())
        t5 = clock()
        svc.search_vector(vec, k)
        t6 = clock()
        if encode_query is not None:  # preprocess + the query model a search runs (when it has one)
            encode_query([img])
        t7 = clock()
        for name, dt in zip(out, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
            out[name].append(dt * 1000)
    return {name: round(statistics.median(v), 2) for name, v in out.items()}


def request_cpu_ms(client, photos: list[bytes], k: int) -> float:
    """Median CPU ms of this thread per whole POST /api/v1/search (see stage_times' clock)."""
    ms = []
    for data in photos:
        t0 = time.thread_time()
        client.post(f"/api/v1/search?k={k}", data=data, content_type="application/octet-stream")
        ms.append((time.thread_time() - t0) * 1000)
    return round(statistics.median(ms), 2)


def request_times(client, photos: list[bytes], k: int) -> dict[str, float]:
    """Median ms of whole requests through Flask (routing, upload parse, JSON/HTML, headers)."""
    api, page, thumbs = [], [], []
    for data in photos:
        t0 = time.perf_counter()
        r = client.post(f"/api/v1/search?k={k}", data=data, content_type="application/octet-stream")
        api.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.data[:300]
        t0 = time.perf_counter()
        r = client.post("/search", data={"image": (io.BytesIO(data), "q.jpg")}, content_type="multipart/form-data")
        page.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.data[:300]
        import re

        urls = re.findall(r'src="(/images/[^"]+)"', r.get_data(as_text=True))
        t0 = time.perf_counter()
        for u in urls:
            assert client.get(u).status_code == 200
        thumbs.append((time.perf_counter() - t0) * 1000 / max(1, len(urls)))
    return {"api_search": round(statistics.median(api), 2), "results_page": round(statistics.median(page), 2),
            "thumbnail_each_cached": round(statistics.median(thumbs[1:] or thumbs), 2)}


def main() -> int:
    ap = data_dir_parser(__doc__, DEFAULT_GROCERY)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--top", type=int, default=25, help="cProfile rows to keep")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from shopsearch.config import Settings
    from webapp import create_app

    app = create_app({"SETTINGS": Settings.from_env(data_dir=a.data_dir), "RELOAD_CHECK_S": 3600})
    client = app.test_client()
    svc = app.extensions["shopsearch"].get()
    photos = query_photos(a.dataset, a.queries)
    for data in photos[:4]:  # warm-up: oneDNN kernel choice, DB pool, thumbnails made once
        client.post("/api/v1/search", data=data, content_type="application/octet-stream")
    request_times(client, photos[:4], a.k)
    load1 = os.getloadavg()[0]
    stages = stage_times(svc, photos, a.k)
    stages_cpu = stage_times(svc, photos, a.k, clock=time.thread_time)
    requests = request_times(client, photos, a.k)
    requests["api_search_cpu_ms"] = request_cpu_ms(client, photos, a.k)
    prof = cProfile.Profile()
    prof.enable()
    for data in photos:
        client.post(f"/api/v1/search?k={a.k}", data=data, content_type="application/octet-stream")
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(a.top)
    result = {
        "benchmark": "query_profile", "model": svc.manifest.model_name, "vectors": len(svc.index),
        "index_type": svc.manifest.index_type, "queries": len(photos), "k": a.k,
        "stage_ms_median": stages, "stage_cpu_ms_median": stages_cpu, "request_ms_median": requests,
        "torch_threads": __import__("torch").get_num_threads(),
        "query_model": getattr(getattr(svc.embedder, "query_choice", None), "__dict__", None),
        "machine": cpu_block(load1),
        "how": "in process (Flask test client), one query at a time, median over the query photos; "
               "*_cpu_ms: this thread's CPU time (all the work when torch has one thread)",
        "when": utc_now(),
    }
    write_result(result, a.out, echo=True)
    print(buf.getvalue(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
