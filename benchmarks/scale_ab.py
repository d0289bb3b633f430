"""Interleaved A/B of two checkouts on one scale-bench catalogue (issue 20): the steps whose
cost should follow the change, not the catalogue, timed in turns (A, B, A, B, ...) so that a
shared machine's load falls on both alike.

Prepares (once, with checkout A) a catalogue of --size products from scale_bench's generated
images: import, seeded vectors injected, a flat first build. Each checkout then works on its
own copy (SQLite: the data folder copied; PostgreSQL: prepared again in its own schema) and its
own image tree (hard links; a file rewritten is replaced, not written through), so B may carry
a migration A lacks and neither sees the other's changed files; B migrates its copy and
imports it once before the rounds. Then per round and checkout:

  noop_build        index build, nothing changed (the rescan stats every file)
  noop_build_dirs   the same with --rescan-scope dirs (checkouts that have it)
  status            index status (quick)
  update_10         10 image files replaced by new pictures (other files each turn), then index update
  reimport          catalogue import of the unchanged manifest
  import            a first import of the manifest into an empty catalogue (a fresh SQLite file or
                    PostgreSQL schema each turn; images on disk, hashing included)

each as wall seconds and as the CPU seconds the command used (user + system; on a shared
machine far less swayed by the other jobs). --steps times some of them only.

    python benchmarks/scale_ab.py --a /tmp/main-copy --b . --size 100000 --scratch /tmp/scale4-ab

Writes
benchmarks/results/scale_ab_<size>_<db>.json with every time, the medians and B/A ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.scale_bench import pg_schema_url, shopsearch_cpu  # noqa: E402
from benchmarks.scale_data import generate, image_path, inject_vectors, seeded_jpeg  # noqa: E402
from shopsearch.evaluation.machine import machine_info  # noqa: E402

STEPS = ("noop_build", "noop_build_dirs", "status", "update_10", "reimport", "import")


#: CPU seconds of each timed command, per checkout and step (filled by `timed`)
CPU: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}


def cli(checkout: Path, data: Path, url: str, *args: str) -> tuple[float, dict | None]:
    wall, _, out = shopsearch_cpu(data, url, *args, checkout=checkout)
    return wall, out


def timed(name: str, step: str, checkout: Path, data: Path, url: str, *args: str) -> tuple[float, dict | None]:
    """cli, its CPU seconds kept in CPU[name][step]."""
    wall, cpu, out = shopsearch_cpu(data, url, *args, checkout=checkout)
    CPU[name].setdefault(step, []).append(cpu)
    return wall, out


def has_dirs_scope(checkout: Path) -> bool:
    return "rescan-scope" in (checkout / "indexer" / "cli" / "index_cmds.py").read_text()


def _replace(path: Path, data: bytes) -> None:
    """Write a new file in place of `path`: a hard-linked twin in the other tree keeps its bytes."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _prepare(name: str, checkout: Path, scratch: Path, manifest: Path, hashes: list[str],
             args: argparse.Namespace, catalogue: bool = True) -> tuple[Path, str, Path, Path]:
    """(data folder, database URL, image tree, manifest) of one checkout's catalogue; without
    `catalogue` (only first imports timed) the image tree and manifest alone."""
    n = args.size
    data = scratch / f"ab_{args.db}_{n}_{name}"
    images, man = scratch / "images", manifest
    if name == "B":  # its own tree of hard links, and a manifest naming it
        images, man = scratch / "images_b", scratch / f"manifest_{n}_b.csv"
        if not args.reuse:
            shutil.rmtree(images, ignore_errors=True)
            subprocess.run(["cp", "-al", str(scratch / "images"), str(images)], check=True)
            man.write_text(manifest.read_text().replace(f"{scratch / 'images'}/", f"{images}/"))
    schema = f"{args.pg_schema}_{n}_{name.lower()}"
    url = f"sqlite:///{data / 'catalogue.db'}" if args.db == "sqlite" else \
        (pg_schema_url(args.pg_url, schema) if not args.reuse else f"{args.pg_url}?options=-csearch_path%3D{schema}")
    if args.reuse or not catalogue:
        return data, url, images, man
    print("preparing", name, flush=True)
    if name == "B" and args.db == "sqlite":
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(scratch / f"ab_{args.db}_{n}_A", data)
        with sqlite3.connect(data / "catalogue.db") as conn:  # A's rows, pointed at B's tree
            conn.execute("UPDATE product_images SET path = replace(path, ?, ?)",
                         (f"{scratch / 'images'}/", f"{images}/"))
    else:
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        cli(checkout, data, url, "catalogue", "import", str(man), "--json")
        inject_vectors(data, hashes)
        cli(checkout, data, url, "index", "build", "--model", "colorhist", "--index", "flat", "--json")
    if name == "B":  # migrated (when B has a newer schema) and imported once by B itself
        cli(checkout, data, url, "catalogue", "import", str(man), "--json")
        cli(checkout, data, url, "index", "build", "--model", "colorhist", "--index", "flat", "--json")
    return data, url, images, man


def first_import(name: str, checkout: Path, scratch: Path, manifest: Path, args: argparse.Namespace) -> float:
    """One timed import of the whole manifest into an empty catalogue; its wall seconds."""
    data = scratch / f"ab_{args.db}_{args.size}_{name}_import"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    url = f"sqlite:///{data / 'catalogue.db'}" if args.db == "sqlite" else \
        pg_schema_url(args.pg_url, f"{args.pg_schema}_{args.size}_{name.lower()}_import")
    t, rep = timed(name, "import", checkout, data, url, "catalogue", "import", str(manifest), "--json")
    assert rep and rep.get("products_created") == args.size, rep
    shutil.rmtree(data, ignore_errors=True)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="checkout A (before)")
    ap.add_argument("--b", default=str(REPO), help="checkout B (after)")
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql"])
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--pg-schema", default="scale_ab")
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reuse", action="store_true", help="the catalogue of an earlier run is still there")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--note", default="")
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated steps to time (default: all)")
    ap.add_argument("--first-file", type=int, default=100,
                    help="the first product whose picture update_10 replaces (another run: pictures not yet cached)")
    args = ap.parse_args()
    a, b, n = Path(args.a).resolve(), Path(args.b).resolve(), args.size
    steps = set(args.steps.split(","))
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    manifest, hashes = generate(scratch, n, 2)
    side = {name: _prepare(name, checkout, scratch, manifest, hashes, args, catalogue=not steps <= {"import"})
            for name, checkout in (("A", a), ("B", b))}
    if args.reuse and not steps <= {"import"}:  # files an earlier run changed or restored: taken in, untimed
        for name, checkout in (("A", a), ("B", b)):
            cli(checkout, side[name][0], side[name][1], "index", "update", "--index", "flat", "--json")
    times: dict[str, dict[str, list[float]]] = {"A": {s: [] for s in STEPS}, "B": {s: [] for s in STEPS}}
    loads: list[float] = []
    turn = 0
    for rnd in range(args.rounds):
        for name, checkout in (("A", a), ("B", b)) if rnd % 2 == 0 else (("B", b), ("A", a)):
            data, url, images, man = side[name]
            loads.append(os.getloadavg()[0])
            base = ["--model", "colorhist", "--index", "flat", "--json"]
            if "noop_build" in steps:
                t, rep = timed(name, "noop_build", checkout, data, url, "index", "build", *base)
                assert rep and rep.get("up_to_date"), rep
                times[name]["noop_build"].append(t)
            if "noop_build_dirs" in steps and has_dirs_scope(checkout):
                times[name]["noop_build_dirs"].append(timed(name, "noop_build_dirs", checkout, data, url, "index",
                                                            "build", *base, "--rescan-scope", "dirs")[0])
            if "status" in steps:
                times[name]["status"].append(timed(name, "status", checkout, data, url, "index", "status",
                                                   "--json")[0])
            if "update_10" in steps:
                for i in range(10):  # new pictures, other files each turn
                    j = args.first_file + turn * 10 + i
                    _replace(image_path(images, j), seeded_jpeg(10 ** 9 + j))
                turn += 1
                t, rep = timed(name, "update_10", checkout, data, url, "index", "update", "--index", "flat", "--json")
                assert rep and rep.get("embedded") == 10, rep
                times[name]["update_10"].append(t)
            if "reimport" in steps:
                times[name]["reimport"].append(timed(name, "reimport", checkout, data, url, "catalogue", "import",
                                                     str(man), "--json")[0])
            if "import" in steps:
                times[name]["import"].append(first_import(name, checkout, scratch, man, args))
            print(rnd, name, {k: round(v[-1], 2) for k, v in times[name].items() if v},
                  "cpu", {k: round(v[-1], 2) for k, v in CPU[name].items()}, flush=True)
    for j in range(args.first_file, args.first_file + turn * 10):  # the pictures back as generated
        for _, _, images, _ in side.values():
            _replace(image_path(images, j), seeded_jpeg(j))
    med = {k: {s: float(np.median(v)) for s, v in t.items() if v} for k, t in times.items()}
    ratio = {s: med["B"][s] / med["A"][s] for s in STEPS if s in med["A"] and s in med["B"]}
    cpu_med = {k: {s: float(np.median(v)) for s, v in t.items() if v} for k, t in CPU.items()}
    cpu_ratio = {s: cpu_med["B"][s] / cpu_med["A"][s] for s in STEPS if s in cpu_med["A"] and s in cpu_med["B"]}
    only = "" if steps >= set(STEPS) else "_" + "_".join(s for s in STEPS if s in steps)
    out = Path(args.out) / f"scale_ab_{n}_{args.db}{only}.json"
    out.parent.mkdir(parents=True, exist_ok=True)  # a missing folder lost a whole PostgreSQL run once
    out.write_text(json.dumps({"note": args.note, "size": n, "db": args.db, "a": str(a), "b": str(b),
                               "rounds": args.rounds, "seconds": times, "median_s": med, "ratio_b_over_a": ratio,
                               "cpu_seconds": CPU, "cpu_median_s": cpu_med, "cpu_ratio_b_over_a": cpu_ratio,
                               "load_avg_1m": {"min": min(loads), "max": max(loads)},
                               "machine": machine_info()}, indent=2))
    print(json.dumps({"median_s": med, "ratio_b_over_a": ratio, "cpu_ratio_b_over_a": cpu_ratio}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
