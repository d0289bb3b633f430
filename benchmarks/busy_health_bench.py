"""Liveness while the server is busy: /healthz probed every half second (2 s timeout, as an
orchestrator's probe) while N clients upload heavy photos to /api/v1/search without pause, against
`shopsearch serve` with its defaults (nginx in front, 2 workers x 2 search slots) run from a
checkout: run it once per checkout, in turns, to compare.

    for turn in 1 2; do for co in /tmp/main_head .; do python benchmarks/busy_health_bench.py \\
        --checkout $co --data-dir var --clients 8 --tag $(basename $co); done; done

Each client sends its next upload as soon as the last is answered, and waits the Retry-After
(2 s) after a 503 busy, as a well-behaved client does. The heavy photo is generated: a 6000 x 6000 RGBA PNG of one colour (152 KB to send, ~0.7 s of a
core to decode), the upload an adversarial probe used to starve the health checks. Prints one
JSON line per run and, with --out, writes it."""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from _bench_io import stamped_machine, write_result


#: the load comes from one address: the nginx front's per-client limits (429) would refuse most of it
UNLIMITED = {"SHOPSEARCH_CLIENT_SEARCH_RATE": "0", "SHOPSEARCH_CLIENT_MAX_CONNECTIONS": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _heavy_photo(path: Path) -> bytes:
    if not path.is_file():
        from PIL import Image

        Image.new("RGBA", (6000, 6000), (10, 200, 30, 255)).save(path)
    return path.read_bytes()


def _get(url: str, timeout: float) -> tuple[str, float]:
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            code = str(r.status)
    except urllib.error.HTTPError as e:
        code = str(e.code)
    except OSError:
        code = "timeout"
    return code, time.perf_counter() - t0


def _post(url: str, body: bytes) -> str:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return str(r.status)
    except urllib.error.HTTPError as e:
        return str(e.code)
    except OSError:
        return "error"


def _group_rss_mb(pgid: int) -> float:
    """Resident memory of every process of the server's process group (gunicorn, its workers, nginx)."""
    out = subprocess.run(["ps", "-o", "rss=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return round(sum(int(x) for x in out.split()) / 1024, 1)


def run(checkout: Path, data_dir: Path, clients: int, seconds: float, photo: bytes) -> dict:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1", **UNLIMITED}
    for var in ("SHOPSEARCH_WORKERS", "SHOPSEARCH_THREADS", "SHOPSEARCH_FRONT"):
        env.pop(var, None)
    server = subprocess.Popen([sys.executable, "-c", "from indexer.cli import main; main()", "--data-dir", str(data_dir),
                               "serve", "--bind", f"127.0.0.1:{port}"], cwd=checkout, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _get(base + "/healthz", 2)[0] != "200":
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server under {checkout} did not start")
            time.sleep(0.5)
        stop = threading.Event()
        searches: Counter[str] = Counter()

        def client() -> None:
            while not stop.is_set():
                code = _post(base + "/api/v1/search?k=5", photo)
                searches[code] += 1
                if code == "503":  # busy: a client that honours Retry-After (2 s)
                    stop.wait(2)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(2)  # every client has a request in flight
        probes = []
        t_end = time.monotonic() + seconds
        t_start = time.monotonic()
        while time.monotonic() < t_end:
            probes.append(_get(base + "/healthz", 2))
            time.sleep(0.5)
        elapsed = time.monotonic() - t_start
        stop.set()
        for t in threads:
            t.join()
        rss_mb = _group_rss_mb(server.pid)  # what the server kept after the burst
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
    ms = [round(s * 1000, 1) for _, s in probes]
    return {"checkout": str(checkout), "clients": clients, "seconds": round(elapsed, 1),
            "healthz": dict(Counter(c for c, _ in probes)), "healthz_p50_ms": statistics.median(ms),
            "healthz_worst_ms": max(ms), "searches": dict(searches),
            "searches_per_s": round(sum(searches.values()) / (elapsed + 2), 2), "server_rss_mb_after": rss_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", type=Path, required=True, help="the repository copy whose `serve` runs")
    ap.add_argument("--data-dir", type=Path, required=True, help="a data dir with an index (e.g. make demo's var)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--photo", type=Path, default=Path("/tmp/shopsearch_busy_6000.png"),
                    help="the heavy photo (generated there when missing)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not (args.checkout / "indexer").is_dir():
        ap.error(f"{args.checkout} is not a ShopSearch checkout (no indexer/)")
    if not (args.data_dir / "index").is_dir():
        ap.error(f"{args.data_dir} has no index/ (build one first: make demo, or shopsearch index build)")
    if args.clients < 1 or args.seconds <= 0:
        ap.error("--clients must be at least 1 and --seconds above 0")
    row = {"tag": args.tag, **run(args.checkout.resolve(), args.data_dir.resolve(), args.clients, args.seconds,
                                  _heavy_photo(args.photo))}
    print(json.dumps(row))
    if args.out:
        write_result({"benchmark": "busy_health", **stamped_machine(), "row": row}, args.out)


if __name__ == "__main__":
    main()
