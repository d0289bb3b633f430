"""Large filtered scans on one thread or two (SHOPSEARCH_SCAN_THREADS=1 against the default),
alone and on a busy machine, on a kept scale data dir (issue 20; shopsearch/index/half_copy.py).

A category at 1M is scanned in two halves at once when the copy's scan thread is free. Alone,
that should about halve the scan; with every core busy (here: as many processes as cores, each
searching categories back to back, as a loaded web server's workers do), a split gains nothing
and would cost throughput, so the copy stops splitting while its splits wait for a core. For
each setting, in turns, this measures:

  alone     p50 ms of SearchService.search_vector, one process: unfiltered, and category with
            the scans on one thread and on two, interleaved query by query (one process, so
            drift and memory placement cancel); run under each setting
  busy      searches/s of category searches, `--processes` processes at once for `--seconds`,
            all together, and the share of their scans that were split

    .venv/bin/python benchmarks/scan_threads_ab.py /tmp/s40/data_sqlite_1000000 \\
        --out benchmarks/results/scan_threads_ab_1m_families_sqlite_xeon_amx.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks._bench_io import stamped_machine, write_result  # noqa: E402

SETTINGS = ("1", "0")  # one thread; the default (two where there are two cores)


def _service(data_dir: Path):
    from shopsearch.app import open_search_service
    from shopsearch.config import Settings

    settings = Settings.from_env(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'catalogue.db'}",
                                 device="cpu")
    return open_search_service(settings, with_router=False)


def _queries(svc, data_dir: Path, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    from PIL import Image

    from benchmarks.scale_data import catalogue_of, query_jpeg

    picks = np.random.default_rng(seed).choice(len(svc.index), n, replace=False)  # one image per product
    catalogue = catalogue_of(data_dir.parent)
    vecs = svc.embedder.encode_images([Image.open(io.BytesIO(query_jpeg(int(i), catalogue))).convert("RGB")
                                       for i in picks])
    return vecs, [c.path for c in svc.catalogue.categories() if c.depth == 1]


def _splits(svc) -> list[int]:
    """Counts the copy's split scans into the returned one-item list (a counter, patched in)."""
    half = svc.index.half_copy
    count = [0]
    if half is None:
        return count
    real = half.judge_split

    def counted(cpu_s: float, wall_s: float) -> None:
        count[0] += 1
        real(cpu_s, wall_s)

    half.judge_split = counted
    return count


def alone(data_dir: Path, queries: int) -> dict:
    """This process alone: p50 ms unfiltered, and category with the copy's scans on one thread and
    on two, interleaved query by query (each first in turn: one process, one memory placement,
    so drift and page placement cancel), and the share of two-thread scans that were split."""
    from shopsearch.results import SearchFilters

    svc = _service(data_dir)
    vecs, cats = _queries(svc, data_dir, queries, 1)
    half = svc.index.half_copy
    splits = _splits(svc)
    times: dict[str, list[float]] = {"unfiltered": [], "category_1": [], "category_2": []}

    def timed(kind: str, v: np.ndarray, f: SearchFilters) -> None:
        t0 = time.perf_counter()
        svc.search_vector(v, k=10, filters=f, routing=False)
        times[kind].append((time.perf_counter() - t0) * 1000)

    svc.search_vector(vecs[0], k=10, filters=SearchFilters(category=cats[0]), routing=False)  # warm
    splits[0] = 0
    for j, v in enumerate(vecs):
        timed("unfiltered", v, SearchFilters())
        f = SearchFilters(category=cats[j % len(cats)])
        for threads in ((1, 2) if j % 2 else (2, 1)):
            if half is not None:
                half.threads = threads
            timed(f"category_{threads}", v, f)
    out = {f"{kind}_p50_ms": float(np.median(t)) for kind, t in times.items()}
    out["category_2_split_share"] = splits[0] / len(vecs)
    return out


def busy(data_dir: Path, seconds: float, start_at: float) -> dict:
    """This process, one of several started together: category searches back to back from
    `start_at` for `seconds`."""
    from shopsearch.results import SearchFilters

    svc = _service(data_dir)
    vecs, cats = _queries(svc, data_dir, 100, os.getpid())
    splits = _splits(svc)
    while time.time() < start_at:
        time.sleep(0.005)
    done, end = 0, time.time() + seconds
    while time.time() < end:
        svc.search_vector(vecs[done % len(vecs)], k=10, filters=SearchFilters(category=cats[done % len(cats)]),
                          routing=False)
        done += 1
    return {"searches": done, "splits": splits[0]}


def _child(mode: str, data_dir: Path, setting: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "SHOPSEARCH_SCAN_THREADS": setting}
    return subprocess.Popen([sys.executable, __file__, str(data_dir), "--child", mode, *extra], env=env,
                            stdout=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"a measuring process failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", type=Path, help="a scale data dir kept by benchmarks/scale_bench.py --keep (SQLite)")
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--queries", type=int, default=200, help="queries per kind, alone")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 2, help="processes at once, busy")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of searching, busy")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.child:
        mode, data = args.child[0], args.data_dir
        res = alone(data, int(args.child[1])) if mode == "alone" else busy(data, float(args.child[1]),
                                                                           float(args.child[2]))
        print(json.dumps(res))
        return 0
    data_dir = args.data_dir.resolve()
    if not (data_dir / "catalogue.db").is_file():
        ap.error(f"{data_dir} holds no catalogue.db (a SQLite scale data dir)")
    rows = []
    for turn in range(1, args.turns + 1):
        for setting in SETTINGS if turn % 2 else SETTINGS[::-1]:  # each first in turn
            time.sleep(5)  # the last processes' memory given back
            load = os.getloadavg()[0]
            row = {"turn": turn, "scan_threads": setting, "load_avg_1m_before": round(load, 2),
                   **_result(_child("alone", data_dir, setting, str(args.queries)))}
            start_at = time.time() + 30  # every process loaded the index before the clock starts
            procs = [_child("busy", data_dir, setting, str(args.seconds), str(start_at))
                     for _ in range(args.processes)]
            parts = [_result(p) for p in procs]
            searches = sum(p["searches"] for p in parts)
            row.update(busy_searches_per_s=searches / args.seconds,
                       busy_split_share=sum(p["splits"] for p in parts) / max(searches, 1))
            print(json.dumps(row), flush=True)
            rows.append(row)
    write_result({"benchmark": "scan_threads_ab", **stamped_machine(), "data": str(data_dir),
                  "processes": args.processes, "seconds": args.seconds, "queries": args.queries, "rows": rows},
                 args.out, echo=args.out is None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
