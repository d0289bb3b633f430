"""How many intra-op threads the served photo searches got (shopsearch/query_threads.py): starts
`shopsearch serve` (nginx in front, WORKERS x THREADS) on a prepared data dir, runs one client,
then N concurrent clients, and reads `shopsearch_search_model_threads` from /metrics after each
phase. A lone search should get every core; concurrent ones one thread each (on 2 cores). The
server runs with SHOPSEARCH_QUERY_THREADS=adaptive unless the environment says otherwise.

    .venv/bin/python benchmarks/query_threads_count.py --data-dir /tmp/speeddemo \\
        --out benchmarks/results/query_threads_count.json
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from load_bench import CLI, DEFAULT_GROCERY, UNLIMITED, free_port, grocery_queries, run_load, wait_healthy  # noqa: E402
from _bench_io import cpu_block, data_dir_parser, utc_now, write_result  # noqa: E402


def thread_counts(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
            if line.startswith("shopsearch_search_model_threads_total{")}


def main() -> int:
    ap = data_dir_parser(__doc__, DEFAULT_GROCERY)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    port = a.port or free_port()
    env = {"SHOPSEARCH_QUERY_THREADS": "adaptive", **os.environ, "HF_HUB_OFFLINE": "1", **UNLIMITED}  # what it counts
    env.pop("SHOPSEARCH_DATABASE_URL", None)
    proc = subprocess.Popen([*CLI, "--data-dir", str(a.data_dir.resolve()), "serve", "--bind", f"127.0.0.1:{port}",
                             "--workers", str(a.workers), "--threads", str(a.threads)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    phases = []
    try:
        wait_healthy(port, proc, 600)
        queries = grocery_queries(a.dataset)
        before = thread_counts(port)
        for clients in (1, a.concurrency):
            load = os.getloadavg()[0]
            elapsed, _, stats = run_load(port, queries, a.duration, clients, 10)
            now = thread_counts(port)
            phases.append({"clients": clients, "searches_by_model_threads": {k: int(now[k] - before.get(k, 0))
                                                                             for k in sorted(now)},
                           "req_per_s": round(sum(s["ok"] for s in stats) / elapsed, 2),
                           "errors": sum(s["errors"] for s in stats), "loadavg_1m_before": round(load, 2)})
            before = now
            print(json.dumps(phases[-1]), flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    result = {"benchmark": "query_threads_count", "server": {"workers": a.workers, "threads": a.threads},
              "phases": phases, "machine": cpu_block(note=a.note),
              "command": "python benchmarks/query_threads_count.py " + " ".join(sys.argv[1:]), "when": utc_now()}
    write_result(result, a.out)
    return 0 if phases and not any(p["errors"] for p in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
