"""Where the real server spends its CPU per search: `shopsearch serve` (gunicorn, no nginx front)
on a prepared data dir, one client posting Grocery test photos to /api/v1/search, and each
thread of each server process read from /proc before and after (CPU ms per request, by
thread: the gunicorn worker's main thread, its request threads, the feedback writer, the
OpenMP pools of torch and faiss). Optionally py-spy samples the worker meanwhile (--py-spy
FILE: its folded stacks, request threads' Python frames with native frames below them).

Each --variant is NAME=CHECKOUT:WORKERSxTHREADS[,ENV=VALUE...] (CHECKOUT: the code that serves,
as in load_ab.py; ENV: variables the server starts with), run in turns (A B A B ...):

    .venv/bin/python benchmarks/serve_profile.py --data-dir var/demo --requests 200 \\
        --variant default=.:1x4 --variant passive=.:1x4,OMP_WAIT_POLICY=PASSIVE \\
        --out benchmarks/results/serve_profile.json

CPU time, unlike latency, barely moves when other jobs share the cores; the load average
before each phase is recorded with it."""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from load_bench import DEFAULT_GROCERY, grocery_queries, percentile, post, run_clients, wait_healthy  # noqa: E402
from _bench_io import cpu_block, data_dir_parser, utc_now, write_result  # noqa: E402

CLI = [sys.executable, "-c", "from indexer.cli import main; main()"]
TICK = os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    keep, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in keep and pid not in keep:
                keep.add(pid)
                grew = True
    return sorted(keep)


def thread_cpu(pids: list[int]) -> dict[tuple[int, int], float]:
    """(pid, tid) -> CPU seconds (user + system) so far."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                f = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[(pid, int(tid))] = (int(f[11]) + int(f[12])) / TICK
    return out


#: the frames a search's time is broken down by (py-spy function names; TorchScript forms of
#: the model have no Python frames below encode_query)
STAGES = {"upload parse + decode": "require_image", "model (with preprocess)": "TorchEmbedder.encode_query",
          "preprocess": "TorchEmbedder.preprocess", "oneDNN reorders": "ideep::tensor::reorder_if_differ_in",
          "after the model (routing, FAISS, database, fusion, confidence)": "SearchService.search_vector",
          "FAISS + database + grouping": "SearchService._grouped", "routing head": "ClassifierRouter.route",
          "confidence (calibration, density)": "annotate", "feedback log queueing": "log_search",
          "JSON": "result_dict"}


def spy_breakdown(folded: Path, route: str = "search") -> dict[str, float]:
    """Share (%) of the route's samples (request threads inside the Flask view `route`) spent
    under each STAGES frame, from py-spy's raw folded stacks."""
    total, under = 0, {k: 0 for k in STAGES}
    for line in folded.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = {f.split(" (")[0] for f in stack.split(";")}
        if route not in frames:
            continue
        total += int(n)
        for stage, frame in STAGES.items():
            under[stage] += int(n) * (frame in frames)
    return {"samples": total, **{k: round(100 * v / total, 1) for k, v in under.items()}} if total else {}


def run_phase(port: int, queries: list, n_requests: int, concurrency: int, k: int) -> tuple[float, list[float]]:
    lat: list[float] = []
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t0 = time.perf_counter()
            status, _ = post(conn, queries[i % len(queries)][0], k)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
            with lock:
                lat.append((time.perf_counter() - t0) * 1000)
        conn.close()

    return run_clients(client, concurrency), sorted(lat)


def parse_variant(text: str) -> dict:
    name, _, rest = text.partition("=")
    repo, _, rest = rest.rpartition(":")
    shape, *envs = rest.split(",")
    if not name or not repo or "x" not in shape:
        raise SystemExit(f"--variant {text!r}: expected NAME=CHECKOUT:WORKERSxTHREADS[,ENV=VALUE...]")
    workers, threads = (int(v) for v in shape.lower().split("x"))
    return {"name": name, "repo": str(Path(repo).resolve()), "workers": workers, "threads": threads,
            "env": dict(e.split("=", 1) for e in envs if e)}


def profile(v: dict, a: argparse.Namespace, queries: list, round_no: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **v["env"]}
    env.pop("SHOPSEARCH_DATABASE_URL", None)
    proc = subprocess.Popen([*CLI, "--data-dir", str(a.data_dir), "serve", "--front", "none",
                             "--bind", f"127.0.0.1:{a.port}", "--workers", str(v["workers"]),
                             "--threads", str(v["threads"])], cwd=v["repo"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict = {"variant": v["name"], "round": round_no}
    try:
        wait_healthy(a.port, proc, a.startup_timeout)
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=120)
        for i in range(a.warmup):
            post(conn, queries[i % len(queries)][0], a.k)
        conn.close()
        pids = descendants(proc.pid)
        for conc in a.concurrency:
            spy = None
            if a.py_spy and conc == a.concurrency[0] and round_no == 0:
                workers = [p for p in pids if p != proc.pid]
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--native", "--threads",
                                        "--format", "raw", "-r", "200", "-o", f"{a.py_spy}.{v['name']}.txt",
                                        "-p", str(workers[0])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            load = os.getloadavg()[0]
            before = thread_cpu(pids)
            elapsed, lat = run_phase(a.port, queries, a.requests, conc, a.k)
            after = thread_cpu(pids)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
                out["py_spy_pct_of_search"] = spy_breakdown(Path(f"{a.py_spy}.{v['name']}.txt"))
            n = len(lat)
            per_thread = sorted(((round(1000 * (after[key] - before.get(key, 0.0)) / n, 2), key)
                                 for key in after), reverse=True)
            total = sum(ms for ms, _ in per_thread)
            out[f"c{conc}"] = {
                "requests": n, "req_per_s": round(n / elapsed, 2),
                "latency_ms": {"p50": round(percentile(lat, 50), 1), "p90": round(percentile(lat, 90), 1),
                               "mean": round(statistics.mean(lat), 1)},
                "server_cpu_ms_per_request": round(total, 2),
                # the busiest threads (pid/tid, master = gunicorn's arbiter)
                "threads_cpu_ms_per_request": {
                    f"{'master' if pid == proc.pid else 'worker'} {pid}/{tid}{' main' if pid == tid else ''}": ms
                    for ms, (pid, tid) in per_thread[:8] if ms >= 0.05},
                "loadavg_1m_before": round(load, 2)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return out


def main() -> int:
    ap = data_dir_parser(__doc__, DEFAULT_GROCERY)
    ap.add_argument("--variant", action="append", required=True, help="NAME=CHECKOUT:WORKERSxTHREADS[,ENV=VALUE...]")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests", type=int, default=200, help="requests per phase")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--port", type=int, default=5300)
    ap.add_argument("--startup-timeout", type=float, default=600.0)
    ap.add_argument("--py-spy", default="", help="file prefix: py-spy folded stacks of the first round's worker")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.data_dir = a.data_dir.resolve()
    queries = grocery_queries(a.dataset)
    variants = [parse_variant(v) for v in a.variant]
    runs = []
    for r in range(a.rounds):
        for v in variants:
            runs.append(profile(v, a, queries, r))
            print(json.dumps(runs[-1]), flush=True)
    med = {}
    for v in variants:
        mine = [x for x in runs if x["variant"] == v["name"]]
        med[v["name"]] = {f"c{c}_{key}": statistics.median(
            x[f"c{c}"][key] if key != "p50_ms" else x[f"c{c}"]["latency_ms"]["p50"] for x in mine)
            for c in a.concurrency for key in ("server_cpu_ms_per_request", "req_per_s", "p50_ms")}
    result = {"benchmark": "serve_profile", "endpoint": "POST /api/v1/search (gunicorn alone, no nginx)",
              "variants": variants, "rounds": a.rounds, "requests_per_phase": a.requests, "median": med,
              "runs": runs, "machine": cpu_block(note=a.note), "command": " ".join(["python", *sys.argv]),
              "when": utc_now()}
    write_result(result, a.out)
    print(json.dumps(med, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
