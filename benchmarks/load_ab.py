"""Before/after (and server configurations) side by side: benchmarks/load_bench.py run in
turns, A B A B ..., on one prepared data dir, so that every ratio comes from one session.

Each variant is a checkout whose code serves (`--server-repo`) and a gunicorn configuration
(workers x threads; torch threads per worker = cores / workers unless TORCH given):

    .venv/bin/python benchmarks/load_ab.py --data-dir /tmp/speeddemo \\
        --variant before=/tmp/shopsearch-base:1x4 --variant after=.:1x4 --variant after-2x2=.:2x2 \\
        --rounds 2 --duration 15 --sequential 15 --out benchmarks/results/load_search_ab.json

A variant is NAME=CHECKOUT:WORKERSxTHREADS[:TORCH][:KEY=VALUE...] (KEY=VALUE: the server's
environment, e.g. SHOPSEARCH_QUERY_THREADS=adaptive). The data dir must hold a built index
(`shopsearch --data-dir DIR demo --no-serve --model efficientnet-lite0` makes one).
Writes every run, each variant's medians over its rounds, and the load averages."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_variant(text: str) -> dict:
    name, _, rest = text.partition("=")
    parts = rest.split(":")
    env = dict(p.split("=", 1) for p in parts[2:] if "=" in p)  # KEY=VALUE parts: the server's environment
    parts = [p for p in parts if "=" not in p]
    if not name or len(parts) not in (2, 3) or "x" not in parts[1]:
        raise SystemExit(f"--variant {text!r}: expected NAME=CHECKOUT:WORKERSxTHREADS[:TORCH][:KEY=VALUE...]")
    workers, threads = (int(v) for v in parts[1].lower().split("x"))
    return {"name": name, "repo": str(Path(parts[0]).resolve()), "workers": workers, "threads": threads,
            "torch_threads": int(parts[2]) if len(parts) == 3 else None, "env": env}


def run_one(v: dict, a: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "load_bench.py"), "--data-dir", str(a.data_dir), "--no-prepare",
           "--dataset", str(a.dataset), "--server-repo", v["repo"], "--workers", str(v["workers"]),
           "--threads", str(v["threads"]), "--concurrency", str(a.concurrency), "--duration", str(a.duration),
           "--sequential", str(a.sequential), "--port", str(a.port),
           "--startup-timeout", str(a.startup_timeout), "--out", str(out)]
    env = {**os.environ, **v.get("env", {})}
    if v["torch_threads"]:
        env["SHOPSEARCH_TORCH_THREADS"] = str(v["torch_threads"])
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0 and not out.is_file():
        return {"variant": v["name"], "errors": "run failed (server not healthy?): no figures"}
    r = json.loads(out.read_text())
    seq = r.get("sequential") or {}
    return {"variant": v["name"], "seq_p50_ms": seq.get("latency_ms", {}).get("p50"),
            "seq_p99_ms": seq.get("latency_ms", {}).get("p99"), "seq_req_per_s": seq.get("requests_per_s"),
            "seq_server_cpu_ms_per_request": seq.get("server_cpu_ms_per_request"),
            "seq_loadavg_1m": seq.get("loadavg_1m_before"),
            f"c{a.concurrency}_req_per_s": r["requests_per_s"], f"c{a.concurrency}_p50_ms": r["latency_ms"]["p50"],
            f"c{a.concurrency}_p99_ms": r["latency_ms"]["p99"],
            f"c{a.concurrency}_server_cpu_ms_per_request": r["server_cpu_ms_per_request"],
            f"c{a.concurrency}_loadavg_1m": r["machine"]["loadavg_1m_before"],
            "top1_correct_rate": r["top1_correct_rate"], "errors": r["errors"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, default=Path(os.environ.get(
        "SHOPSEARCH_GROCERY_DIR", REPO.parent / "shared" / "datasets" / "grocerystore")))
    ap.add_argument("--variant", action="append", required=True, help="NAME=CHECKOUT:WORKERSxTHREADS[:TORCH][:KEY=VALUE...]")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--sequential", type=float, default=15.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--port", type=int, default=0, help="port each server listens on in turn (0: any free one)")
    ap.add_argument("--startup-timeout", type=float, default=180.0, help="seconds a server may take to load")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "load_search_ab.json")
    a = ap.parse_args()
    variants = [parse_variant(v) for v in a.variant]
    from shopsearch.evaluation.machine import cpu_model

    # the servers and their clients load the cores themselves during the phases: whether other jobs
    # shared the machine is read from the load average before the first server starts
    load_before = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    runs = []
    with tempfile.TemporaryDirectory(prefix="load-ab-") as tmp:
        for r in range(a.rounds):
            for v in variants:
                row = run_one(v, a, Path(tmp) / f"{v['name']}-{r}.json") | {"round": r}
                runs.append(row)
                print(json.dumps(row), flush=True)
    keys = list(dict.fromkeys(k for x in runs for k in x if k not in ("variant", "round", "errors")))
    medians = {v["name"]: {k: round(statistics.median(x[k] for x in runs if x["variant"] == v["name"]
                                                       and x.get(k) is not None), 2)
                           for k in keys if any(x.get(k) is not None for x in runs if x["variant"] == v["name"])}
               for v in variants}
    loads = [x[k] for x in runs for k in x if k.endswith("loadavg_1m") and x[k] is not None]
    result = {
        "benchmark": "load_search_ab", "endpoint": "POST /api/v1/search",
        "what": "benchmarks/load_bench.py per variant, in turns (round by round), one data dir",
        "variants": variants, "rounds": a.rounds, "duration_s": a.duration, "sequential_s": a.sequential,
        "concurrency": a.concurrency, "runs": runs, "median": medians,
        "machine": {"cpu": cpu_model(), "cpus": cpus, "loadavg_1m_before": round(load_before, 2),
                    "loadavg_1m_range": [min(loads), max(loads)], "loaded": load_before > cpus,
                    "note": a.note or ("other jobs shared the cores before the run started: compare variants "
                                       "within the run" if load_before > cpus else "")},
        "command": "python benchmarks/load_ab.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
