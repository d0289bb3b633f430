"""The rescan's stat walk at a million files, in-process and without a database (issue 20):
checkout A's stat snapshot module (the full walk: load the snapshot, stat the folders and
every file) against this checkout's scopes `files`, `auto` (folders and a rolling window) and
`dirs`, on one stored snapshot of --files files in folders of 10,000 (written once, then only
stat'ed: page cache warm). Rounds in turns; wall and CPU seconds (the CPU figure is the
comparable one on a loaded machine).

    python benchmarks/stat_walk_bench.py --a /tmp/main-copy --scratch /tmp/statwalk \\
        --out benchmarks/results/rescan_1m_stat_walk.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from shopsearch.evaluation.machine import machine_info  # noqa: E402

PER_FOLDER = 10_000
SOURCE = "sqlite:///stat-walk"


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _folder(args: tuple[str, int]) -> None:
    root, d = args
    os.makedirs(f"{root}/{d:03d}", exist_ok=True)
    for i in range(PER_FOLDER):
        p = f"{root}/{d:03d}/p{d * PER_FOLDER + i:07d}.jpg"
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(b"x" * (900 + i % 200))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="checkout A (before)")
    ap.add_argument("--scratch", required=True, help="where the files and the snapshot go")
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    a = _module("snapshot_a", Path(args.a) / "shopsearch" / "catalogue" / "stat_snapshot.py")
    b = _module("snapshot_b", REPO / "shopsearch" / "catalogue" / "stat_snapshot.py")
    root, folders = Path(args.scratch) / "files", args.files // PER_FOLDER
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_folder, [(str(root), d) for d in range(folders)]))
    snapfile, cursor = Path(args.scratch) / "stat_snapshot.npz", Path(args.scratch) / "stat_snapshot.cursor"
    rows = []
    for d in range(folders):
        for i in range(PER_FOLDER):
            p = f"{root}/{d:03d}/p{d * PER_FOLDER + i:07d}.jpg"
            st = os.stat(p)
            rows.append((d * PER_FOLDER + i + 1, p, "ok", st.st_size, st.st_mtime_ns))
    snap = b.StatSnapshot.from_rows(rows, 1, SOURCE)
    snap.dir_mtimes = snap.stat_dirs()
    snap.save(snapfile)

    def walk_a() -> int:
        s = a.StatSnapshot.load(snapfile, 1, SOURCE)
        s.stat_dirs()
        return len(s.moved(None, 2))

    def walk_b(scope: str):
        def run() -> int:
            s = b.StatSnapshot.load(snapfile, 1, SOURCE)
            dirs = s.stat_dirs()
            picked = None
            if scope != "files":
                picked = s.in_dirs(dirs != s.dir_mtimes)
                if scope == "auto":
                    window, nxt = s.rolling_window(b.StatSnapshot.load_cursor(cursor))
                    picked = np.union1d(picked, window)
                    b.StatSnapshot.save_cursor(cursor, nxt)
            return len(s.moved(picked, 2))
        return run

    out: dict = {"note": args.note, "files": args.files, "folders": folders, "a": str(args.a), "seconds": {},
                 "load_avg_1m": []}
    for _ in range(args.rounds):
        for name, fn in (("a_files", walk_a), ("b_files", walk_b("files")), ("b_auto", walk_b("auto")),
                         ("b_dirs", walk_b("dirs"))):
            out["load_avg_1m"].append(round(os.getloadavg()[0], 2))
            t0, c0 = time.perf_counter(), time.process_time()
            assert fn() == 0  # nothing changed on disk
            out["seconds"].setdefault(name, []).append({"wall": time.perf_counter() - t0,
                                                        "cpu": time.process_time() - c0})
    out["median_wall_s"] = {k: float(np.median([v["wall"] for v in vs])) for k, vs in out["seconds"].items()}
    out["median_cpu_s"] = {k: float(np.median([v["cpu"] for v in vs])) for k, vs in out["seconds"].items()}
    out["machine"] = machine_info()
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({"median_wall_s": out["median_wall_s"], "median_cpu_s": out["median_cpu_s"]}, indent=1))


if __name__ == "__main__":
    main()
