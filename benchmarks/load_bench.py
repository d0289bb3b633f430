"""Bounded load run against `shopsearch serve` (gunicorn) on loopback: POST /api/v1/search.

Builds (or reuses) a catalogue + index in its own data dir: the Grocery Store catalogue
(iconic images + the train split's shopper photos as references) when the dataset is
present, else generated images. Starts the server, warms it up, then runs a fixed-duration
closed-loop load with N client threads (keep-alive http.client, 127.0.0.1 only), and
writes requests/s and latency percentiles to benchmarks/results/load_search.json.

    .venv/bin/python benchmarks/load_bench.py --duration 20 --concurrency 4 --workers 2 --threads 2

--sequential S first measures S seconds of one client (latency without queueing) on the same
server; --server-repo serves another checkout's code (before/after comparisons in one session);
--no-prepare reuses the data dir's catalogue and index as they are.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_GROCERY = Path(os.environ.get("SHOPSEARCH_GROCERY_DIR", REPO.parent / "shared" / "datasets" / "grocerystore"))
CLI = [sys.executable, "-c", "from indexer.cli import main; main()"]


#: the load comes from one address: the nginx front's per-client limits (429) would refuse most of it
UNLIMITED = {"SHOPSEARCH_CLIENT_SEARCH_RATE": "0", "SHOPSEARCH_CLIENT_MAX_CONNECTIONS": "0"}


def grocery_queries(dataset: Path) -> list[tuple[bytes, str]]:
    """64 test-split photos (fixed seed) and the SKU each should find (its fine class)."""
    lines = (dataset / "dataset" / "test.txt").read_text().splitlines()
    rng = random.Random(0)
    picks = rng.sample([ln.split(",")[0].strip() for ln in lines if ln.strip()], 64)
    return [((dataset / "dataset" / p).read_bytes(), Path(p).parent.name) for p in picks]


def shopsearch(data_dir: Path, *args: str, capture: bool = True) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("SHOPSEARCH_DATABASE_URL", None)
    out = subprocess.run([*CLI, "--data-dir", str(data_dir), *args], cwd=REPO, env=env, check=True,
                         stdout=subprocess.PIPE if capture else None, text=True)
    return out.stdout or ""


def prepare_catalogue(data_dir: Path, dataset: Path, model: str, split: str) -> tuple[str, list[tuple[bytes, str]]]:
    """Import + index (idempotent: the vector cache makes reruns quick); returns (source, queries)."""
    if (dataset / "dataset" / "classes.csv").is_file():
        args = ["catalogue", "import", str(dataset), "--format", "grocerystore", "--json"]
        if split != "none":
            args += ["--reference-split", split]
        shopsearch(data_dir, *args)
        shopsearch(data_dir, "index", "build", "--model", model, "--json")
        return f"grocerystore iconic + {split} references", grocery_queries(dataset)
    from PIL import Image  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    root = data_dir / "generated"
    queries = []
    for i in range(300):
        rng = np.random.default_rng(i)
        img = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((256, 256), Image.NEAREST)
        p = root / f"cat{i % 10}" / f"item_{i:04d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            img.save(p, quality=90)
        if i < 64:
            import io  # noqa: PLC0415

            buf = io.BytesIO()
            img.rotate(3).save(buf, "JPEG", quality=85)
            queries.append((buf.getvalue(), f"cat{i % 10}/item_{i:04d}"))
    shopsearch(data_dir, "catalogue", "import", str(root), "--format", "imagefolder", "--json")
    shopsearch(data_dir, "index", "build", "--model", model, "--json")
    return "generated 300 images", queries


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(conn: http.client.HTTPConnection, body: bytes, k: int) -> tuple[int, bytes]:
    conn.request("POST", f"/api/v1/search?k={k}", body=body, headers={"Content-Type": "application/octet-stream"})
    r = conn.getresponse()
    return r.status, r.read()


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/v1/healthz")
            r = conn.getresponse()
            body = json.loads(r.read())
            conn.close()
            if r.status == 200 and body.get("index_loaded"):  # /healthz is liveness: 200 before the index too
                return body
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become healthy")


def run_load(port: int, queries: list[tuple[bytes, str]], duration: float, concurrency: int, k: int):
    stop_at = time.monotonic() + duration
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    stats = [{"ok": 0, "errors": 0, "correct": 0, "status": {}} for _ in range(concurrency)]

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = n
        while time.monotonic() < stop_at:
            body, expected = queries[i % len(queries)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                status, data = post(conn, body, k)
            except (OSError, http.client.HTTPException):
                stats[n]["errors"] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            ms = (time.perf_counter() - t0) * 1000
            stats[n]["status"][status] = stats[n]["status"].get(status, 0) + 1
            if status == 200:
                stats[n]["ok"] += 1
                lat[n].append(ms)
                hits = json.loads(data)["results"]
                stats[n]["correct"] += bool(hits) and hits[0]["sku"] == expected
            else:
                stats[n]["errors"] += 1
        conn.close()

    elapsed = run_clients(client, concurrency)
    return elapsed, [x for per in lat for x in per], stats


def run_clients(client, concurrency: int) -> float:
    """Runs client(0) .. client(concurrency - 1), each in its own thread, to the end: the wall seconds."""
    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by process `root` and all its descendants:
    unlike requests/s, CPU time per request barely moves when other jobs share the cores."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    keep, total, grew = {root}, 0.0, True
    while grew:
        grew = False
        for pid, (ppid, _) in stats.items():
            if ppid in keep and pid not in keep:
                keep.add(pid)
                grew = True
    return sum(stats[p][1] for p in keep if p in stats)


def percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    idx = min(len(sorted_vals) - 1, max(0, int(round(q / 100 * (len(sorted_vals) - 1)))))
    return sorted_vals[idx]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=REPO / "var" / "load-bench")
    ap.add_argument("--dataset", type=Path, default=DEFAULT_GROCERY)
    ap.add_argument("--reference-split", default="train", choices=["none", "train", "val"])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of measured load")
    ap.add_argument("--warmup", type=int, default=8, help="requests before measuring")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads (closed loop)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--sequential", type=float, default=0.0, help="seconds of one client measured first")
    ap.add_argument("--server-repo", type=Path, default=REPO, help="checkout whose code serves")
    ap.add_argument("--no-prepare", action="store_true", help="use the data dir's catalogue and index as they are")
    ap.add_argument("--port", type=int, default=0, help="port the server listens on (0: any free one)")
    ap.add_argument("--startup-timeout", type=float, default=180.0, help="seconds the server may take to load")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "load_search.json")
    a = ap.parse_args()

    t_prep = time.perf_counter()
    if a.no_prepare:
        source, queries = f"grocerystore iconic + {a.reference_split} references (prepared earlier)", \
            grocery_queries(a.dataset)
    else:
        source, queries = prepare_catalogue(a.data_dir.resolve(), a.dataset, a.model, a.reference_split)
    prep_s = time.perf_counter() - t_prep
    port = a.port or free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **UNLIMITED}
    env.pop("SHOPSEARCH_DATABASE_URL", None)
    proc = subprocess.Popen([*CLI, "--data-dir", str(a.data_dir.resolve()), "serve", "--bind", f"127.0.0.1:{port}",
                             "--workers", str(a.workers), "--threads", str(a.threads)],
                            cwd=a.server_repo.resolve(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    sequential = None
    try:
        t_start = time.perf_counter()
        health = wait_healthy(port, proc, a.startup_timeout)
        startup_s = time.perf_counter() - t_start
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(a.warmup):
            post(conn, queries[i % len(queries)][0], a.k)
        conn.close()
        if a.sequential > 0:
            load_seq = os.getloadavg()[0]
            cpu0 = tree_cpu_s(proc.pid)
            s_elapsed, s_lat, s_stats = run_load(port, queries, a.sequential, 1, a.k)
            s_cpu = tree_cpu_s(proc.pid) - cpu0
            s_lat.sort()
            sequential = {"duration_s": round(s_elapsed, 2), "requests_ok": s_stats[0]["ok"],
                          "requests_per_s": round(s_stats[0]["ok"] / s_elapsed, 2),
                          "latency_ms": {"p50": round(percentile(s_lat, 50), 1), "p95": round(percentile(s_lat, 95), 1),
                                         "p99": round(percentile(s_lat, 99), 1)},
                          "loadavg_1m_before": round(load_seq, 2),
                          "server_cpu_ms_per_request": round(1000 * s_cpu / max(1, s_stats[0]["ok"]), 1)}
        load1 = os.getloadavg()[0]
        cpu0 = tree_cpu_s(proc.pid)
        elapsed, lat, stats = run_load(port, queries, a.duration, a.concurrency, a.k)
        server_cpu = tree_cpu_s(proc.pid) - cpu0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    lat.sort()
    ok = sum(s["ok"] for s in stats)
    status: dict[str, int] = {}
    for s in stats:
        for code, n in s["status"].items():
            status[str(code)] = status.get(str(code), 0) + n
    result = {
        "benchmark": "load_search", "endpoint": "POST /api/v1/search", "k": a.k,
        "catalogue": source, "model": health["model"], "vectors": health["vectors"],
        "index_type": health["index_type"], "build_id": health["build_id"],
        "server": {"kind": "gunicorn gthread (shopsearch serve)", "workers": a.workers,
                   "threads": a.threads, "startup_s": round(startup_s, 2)},
        "client": {"concurrency": a.concurrency, "duration_s": round(elapsed, 2), "query_photos": len(queries),
                   "keep_alive": True},
        "requests_ok": ok, "errors": sum(s["errors"] for s in stats), "status_counts": status,
        "requests_per_s": round(ok / elapsed, 2),
        "server_cpu_ms_per_request": round(1000 * server_cpu / ok, 1) if ok else None,
        "latency_ms": {"p50": round(percentile(lat, 50), 1), "p95": round(percentile(lat, 95), 1),
                       "p99": round(percentile(lat, 99), 1), "mean": round(sum(lat) / len(lat), 1) if lat else None,
                       "max": round(lat[-1], 1) if lat else None},
        "top1_correct_rate": round(sum(s["correct"] for s in stats) / ok, 3) if ok else None,
        "sequential": sequential, "server_repo": str(a.server_repo.resolve()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_1m_before": round(load1, 2)},
        "prepare_s": round(prep_s, 1),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, a.out)
    print(json.dumps(result, indent=2))
    if proc.returncode not in (0, -signal.SIGTERM):
        print(f"warning: server exited with {proc.returncode}: {err[-2000:]}", file=sys.stderr)
    return 0 if ok and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
