"""Scale benchmark (issue 20): a growing shop, from 10k to 1M products, on SQLite and PostgreSQL.

For each size it generates a seeded catalogue in a scratch folder outside the repository
(one small JPEG per product, 50 leaf categories, prices 1.00-999.99, a CSV manifest; by
default products in families of look-alike variants, searched with shoppers' photos of them:
benchmarks/scale_data.py, `--catalogue`),
then drives the product the way a merchandiser would, through the `shopsearch` CLI:

  import                 catalogue import of the manifest (images on disk, hashing included)
  first build            index build --model colorhist (auto index type: flat < 100k <= hnsw)
  no-op build            the same build again, nothing changed (default rescan scope auto: folders,
                         the files of folders that moved, a rolling window of 1/16 of the files)
  no-op build, files     the same with --rescan-scope files (every file stat'ed: the full check)
  10-image update        10 image files replaced by new pictures (written beside, renamed over, as
                         uploaders and rsync do), then index update with the default options
  re-import unchanged    catalogue import of the same manifest again
  index status           index status (the quick check) and index status --deep

Each is the wall time of the command as a user runs it, process start included; `cli_start`
(`shopsearch db current`) is that fixed start-up cost, to subtract when comparing the work.

and searches in-process through the composition root (shopsearch.app.open_search_service),
query vectors embedded beforehand: p50/p95 of unfiltered, category (one leaf of 50), price
(about 1% of products), a price range that matches nothing and department (one of the 5
top-level categories, 20%: the large-set path of docs/filtered_search.md). Every figure comes with its
growth factor from the smallest size run. From --synthetic-from products up (default 1M)
the build does not embed: the images' colorhist vectors are computed beforehand in worker
processes, outside the build's pipeline, and written into the vector cache under each
image's content hash (what the builder looks up), so the build finds them all. They are the
vectors the build would compute (bit-identical), so every size searches the same kind of
data; `--vectors uniform` writes the seeded uniform unit vectors of the runs before session 31
instead (nearly equidistant points: a harder, unrealistic graph walk at 1M).

    .venv/bin/python benchmarks/scale_bench.py --sizes 10000,100000 --db sqlite,postgresql
    .venv/bin/python benchmarks/scale_bench.py --sizes 1000000 --db sqlite --scratch /data/scale --keep
    .venv/bin/python benchmarks/scale_bench.py --sizes 1000000 --db sqlite --scratch /data/scale --rerun \
        --tag rerun_xeon_idle   # the no-op builds, update and status again on the kept data dir
    .venv/bin/python benchmarks/scale_bench.py --sizes 1000000 --db sqlite --scratch /data/scale --search-only

Writes benchmarks/results/scale_<sizes>_<dbs>.json and prints a markdown table for
benchmarks/RESULTS.md. Generated images are reused across runs (same seed, same bytes).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.scale_data import (MODEL, CATALOGUES, catalogue_of, generate, image_path,  # noqa: E402
                                   inject_vectors, product_jpeg, seeded_jpeg)
from benchmarks.scale_report import growth, markdown  # noqa: E402
from benchmarks.scale_search import search_latencies  # noqa: E402
from shopsearch.evaluation.machine import machine_info  # noqa: E402

CLI = [sys.executable, "-c", "from indexer.cli import main; main()"]
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
#: what --rerun times again on a kept data dir: the steps whose cost should follow the change
RERUN_STEPS = ("cli_start", "noop_build", "noop_build_files", "update_10", "status", "status_deep")


# -- driving the product --------------------------------------------------------------------------------

#: 1-minute load average when each step started (other jobs on a shared machine slow every figure)
LOAD: dict[str, float] = {}


def shopsearch(data_dir: Path, db_url: str, *args: str, checkout: Path = REPO) -> tuple[float, dict | None]:
    """Run one CLI command of `checkout`; (wall seconds, its --json output when it printed one)."""
    wall, _, out = shopsearch_cpu(data_dir, db_url, *args, checkout=checkout)
    return wall, out


def shopsearch_cpu(data_dir: Path, db_url: str, *args: str,
                   checkout: Path = REPO) -> tuple[float, float, dict | None]:
    """shopsearch, plus the CPU seconds (user + system) the command used: on a shared machine
    far less swayed by the other jobs than its wall time."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SHOPSEARCH_DEVICE": "cpu"}
    LOAD[" ".join(a for a in args if not a.startswith(("/", "-")))] = round(os.getloadavg()[0], 2)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([*CLI, "--data-dir", str(data_dir), "--database-url", db_url, *args], cwd=checkout,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        raise SystemExit(f"{checkout}: shopsearch {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    try:
        return wall, cpu, json.loads(out.stdout)
    except ValueError:
        return wall, cpu, None


def pg_schema_url(base: str, name: str) -> str:
    """A URL whose search_path is a fresh schema `name` (dropped first)."""
    from sqlalchemy import text

    from shopsearch.catalogue import db as dbmod

    eng = dbmod.make_engine(base)
    with eng.begin() as c:
        c.execute(text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
        c.execute(text(f"CREATE SCHEMA {name}"))
    eng.dispose()
    return _schema_url(base, name)


def _schema_url(base: str, name: str) -> str:
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{name}"


def run_one(scratch: Path, n: int, db: str, pg_url: str, queries: int, synthetic: bool, workers: int,
            schema: str = "scale", save: Callable[[dict], None] = lambda run: None,
            build_only: bool = False, vectors: str = "computed", catalogue: str = "families") -> dict:
    manifest, hashes = generate(scratch, n, workers, catalogue)
    _restore(scratch)  # a run stopped during its update leaves new pictures behind
    data_dir = scratch / f"data_{db}_{n}"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    url = f"sqlite:///{data_dir / 'catalogue.db'}" if db == "sqlite" else pg_schema_url(pg_url, f"{schema}_{n}")
    LOAD.clear()
    res: dict = {"size": n, "db": db, "catalogue": catalogue, "synthetic_vectors": vectors if synthetic else False,
                 "complete": False, "seconds": {}, "detail": {}, "load_avg_1m": LOAD}
    sec = res["seconds"]
    # what any command pays before its work (interpreter, imports, database check): part of every figure below
    sec["cli_start"], _ = shopsearch(data_dir, url, "db", "current")
    save(res)  # a run stopped later keeps the steps done so far
    sec["import"], rep = shopsearch(data_dir, url, "catalogue", "import", str(manifest), "--json")
    save(res)  # a run stopped later keeps the steps done so far
    res["detail"]["import_products_per_s"] = n / sec["import"]
    if synthetic:
        inject_vectors(data_dir, hashes, scratch / "images" if vectors == "computed" else None, workers)
    return finish(scratch, n, data_dir, url, manifest, queries, res, save, build_only=build_only)


def finish(scratch: Path, n: int, data_dir: Path, url: str, manifest: Path, queries: int, res: dict,
           save: Callable[[dict], None], index_type: str = "auto", rerun: bool = False,
           build_only: bool = False) -> dict:
    """The steps after the import: builds, update, re-import, status, searches (`rerun`: the
    no-op builds, the update and the status of a data dir built earlier, nothing else;
    `build_only`: the first build and nothing after it, a data dir for --search-only)."""
    sec = res["seconds"]
    itype = [] if index_type == "auto" else ["--index", index_type]
    if not rerun:
        sec["first_build"], rep = shopsearch(data_dir, url, "index", "build", "--model", MODEL, *itype, "--json")
        save(res)  # a run stopped later keeps the steps done so far
        res["detail"]["index_type"] = (rep or {}).get("index_type")
        res["detail"]["first_build_embedded"] = (rep or {}).get("embedded")  # 0 with synthetic vectors
        if build_only:
            res["complete"] = True
            return res
    sec["noop_build"], rep = shopsearch(data_dir, url, "index", "build", "--model", MODEL, *itype, "--json")
    res["detail"]["noop_build_up_to_date"] = (rep or {}).get("up_to_date")
    res["detail"]["noop_rescan_s"] = ((rep or {}).get("rescan") or {}).get("seconds")
    res["detail"]["noop_files_checked"] = ((rep or {}).get("rescan") or {}).get("files_checked")
    res["detail"]["index_type"] = (rep or {}).get("index_type")
    save(res)  # a run stopped later keeps the steps done so far
    # the full check: every file stat'ed (what sees a file rewritten in place at once: README)
    sec["noop_build_files"], rep = shopsearch(data_dir, url, "index", "build", "--model", MODEL, *itype,
                                              "--rescan-scope", "files", "--json")
    res["detail"]["noop_build_files_up_to_date"] = (rep or {}).get("up_to_date")
    res["detail"]["noop_files_rescan_s"] = ((rep or {}).get("rescan") or {}).get("seconds")
    save(res)  # a run stopped later keeps the steps done so far
    # a rerun: other pictures than earlier runs (new bytes, not in the vector cache yet)
    first = 10 * (1 + int(time.time()) % max(1, n // 10 - 1)) if rerun else 0
    for i in range(first, first + 10):  # 10 pictures replaced: new bytes, same paths
        _replace(image_path(scratch / "images", i), seeded_jpeg(10 ** 9 + n + i))
    sec["update_10"], rep = shopsearch(data_dir, url, "index", "update", *itype, "--json")
    res["detail"]["update_strategy"] = (rep or {}).get("strategy")
    res["detail"]["update_rescan_s"] = ((rep or {}).get("rescan") or {}).get("seconds")
    res["detail"]["update_embedded"] = (rep or {}).get("embedded")
    save(res)  # a run stopped later keeps the steps done so far
    if not rerun:
        sec["reimport_unchanged"], _ = shopsearch(data_dir, url, "catalogue", "import", str(manifest), "--json")
        save(res)  # a run stopped later keeps the steps done so far
    sec["status"], st = shopsearch(data_dir, url, "index", "status", "--json")
    res["detail"]["status_up_to_date"] = (st or {}).get("up_to_date")
    save(res)  # a run stopped later keeps the steps done so far
    sec["status_deep"], _ = shopsearch(data_dir, url, "index", "status", "--deep", "--json")
    save(res)  # a run stopped later keeps the steps done so far
    _restore(scratch, range(first, first + 10))  # the next size or run starts from the same files
    if rerun:  # the generated pictures back in the index: the data dir stays as it was
        shopsearch(data_dir, url, "index", "update", *itype, "--json")
        res["load_avg_1m"] = dict(LOAD)
        res["complete"] = True
        return res
    LOAD["search"] = round(os.getloadavg()[0], 2)
    res["search"] = search_latencies(data_dir, url, n, queries)
    res["load_avg_1m"] = dict(LOAD)
    res["disk_bytes"] = sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file())
    res["complete"] = True
    return res


def _replace(path: Path, data: bytes) -> None:
    """Written beside and renamed over: the folder's mtime moves, as with uploaders and rsync."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _restore(scratch: Path, picks: range = range(10)) -> None:
    catalogue = catalogue_of(scratch)
    for i in picks:
        path = image_path(scratch / "images", i)
        original = product_jpeg(i, catalogue)
        if path.is_file() and path.read_bytes() != original:
            _replace(path, original)


def rerun(scratch: Path, n: int, db: str, pg_url: str, schema: str, index_type: str,
          save: Callable[[dict], None]) -> dict:
    """RERUN_STEPS on the data dir (and PostgreSQL schema) that an earlier run kept."""
    data_dir = scratch / f"data_{db}_{n}"
    if not (data_dir / "index").is_dir():
        raise SystemExit(f"{data_dir}: no kept data dir (run once with --keep)")
    url = f"sqlite:///{data_dir / 'catalogue.db'}" if db == "sqlite" else _schema_url(pg_url, f"{schema}_{n}")
    LOAD.clear()
    res: dict = {"size": n, "db": db, "synthetic_vectors": None, "complete": False, "rerun": True, "seconds": {},
                 "detail": {}, "load_avg_1m": LOAD}
    shopsearch(data_dir, url, "db", "upgrade")  # a newer checkout's migrations: untimed
    shopsearch(data_dir, url, "index", "update", *([] if index_type == "auto" else ["--index", index_type]))
    res["seconds"]["cli_start"], _ = shopsearch(data_dir, url, "db", "current")
    return finish(scratch, n, data_dir, url, scratch / f"manifest_{n}.csv", 0, res, save, index_type, rerun=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated product counts")
    ap.add_argument("--db", default="sqlite,postgresql", help="sqlite, postgresql or both, comma-separated")
    ap.add_argument("--pg-url", default=os.environ.get("SHOPSEARCH_TEST_PG_URL", DEFAULT_PG),
                    help="PostgreSQL database to use (a fresh schema scale_<size> is made in it)")
    ap.add_argument("--pg-schema", default="scale", help="PostgreSQL schemas are named <this>_<size>")
    ap.add_argument("--scratch", default=str(Path(tempfile.gettempdir()) / "shopsearch_scale"),
                    help="generated images, manifests and data dirs (outside the repository)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--queries", type=int, default=50, help="queries per search kind")
    ap.add_argument("--synthetic-from", type=int, default=1_000_000,
                    help="from this many products up, inject seeded vectors instead of embedding")
    ap.add_argument("--workers", type=int, default=2, help="processes generating images (and computing vectors)")
    ap.add_argument("--catalogue", choices=CATALOGUES, default="families",
                    help="families: products in families of look-alike variants, searched with shoppers' photos "
                         "of them (clustered, like real catalogues); noise: independent random pictures and "
                         "queries (the runs before session 31). One kind per --scratch folder")
    ap.add_argument("--vectors", choices=("computed", "uniform"), default="computed",
                    help="from --synthetic-from up: the images' colorhist vectors computed outside the build "
                         "(the vectors a build would compute), or seeded uniform unit vectors (runs before "
                         "session 31: no ANN graph walks them well, and they are unlike the smaller sizes')")
    ap.add_argument("--keep", action="store_true", help="keep the data dirs (images are always kept)")
    ap.add_argument("--note", default="", help="free text stored in the JSON, e.g. 'loaded machine'")
    ap.add_argument("--tag", default="", help="appended to the result file's name, e.g. xeon_loaded "
                                              "(scale_<sizes>_<dbs>_<tag>.json)")
    ap.add_argument("--resume", action="store_true",
                    help="finish the incomplete run of the result file (its data dir is kept): every step "
                         "after its import, with --index-type")
    ap.add_argument("--index-type", default="auto", help="with --resume or --rerun: the builds' index type")
    ap.add_argument("--rerun", action="store_true",
                    help="time again, on the data dirs an earlier run kept (--keep), only the steps that should "
                         "follow the change: " + ", ".join(RERUN_STEPS))
    ap.add_argument("--search-only", action="store_true",
                    help="only the searches, on the data dirs an earlier run kept (--keep): "
                         "scale_<sizes>_<dbs>_<tag>_search.json")
    ap.add_argument("--build-only", action="store_true",
                    help="import and first build only, data dirs kept (implies --keep): a data dir for "
                         "--search-only, without the 10-image update the full run searches")
    ap.add_argument("--size-first", action="store_true",
                    help="every database at one size before the next size (a run stopped early keeps "
                         "the smaller sizes of both databases)")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    dbs = [d.strip() for d in args.db.split(",")]
    if bad := [d for d in dbs if d not in ("sqlite", "postgresql")]:
        ap.error(f"unknown --db {bad}; use sqlite, postgresql")
    scratch = Path(args.scratch).resolve()
    if scratch.is_relative_to(REPO):
        ap.error("--scratch must be outside the repository")
    scratch.mkdir(parents=True, exist_ok=True)
    generating = not (args.search_only or args.rerun or args.resume)
    if generating and (scratch / "images").is_dir() and catalogue_of(scratch) != args.catalogue:
        ap.error(f"{scratch} holds the {catalogue_of(scratch)!r} catalogue's pictures; use another --scratch "
                 f"for --catalogue {args.catalogue}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"_{args.tag}" if args.tag else ""
    path = out / f"scale_{'_'.join(str(s) for s in sizes)}_{'_'.join(dbs)}{tag}.json"
    runs: list[dict] = []
    order = [(db, n) for n in sizes for db in dbs] if args.size_first else [(db, n) for db in dbs for n in sizes]

    def save(partial: dict | None = None) -> None:
        # written after every step: a run that fails or is stopped keeps what was measured
        done = runs + ([partial] if partial is not None else [])
        growth(done)
        path.write_text(json.dumps({"note": args.note, "machine": machine_info(), "cpus": os.cpu_count(),
                                    "model": MODEL, "runs": done}, indent=2))

    if args.resume:
        earlier = json.loads(path.read_text())
        runs[:] = earlier["runs"]
        args.note = earlier.get("note", "")
        partial = next(r for r in runs if not r.get("complete"))
        runs.remove(partial)
        db, n = partial["db"], partial["size"]
        data_dir = scratch / f"data_{db}_{n}"
        url = f"sqlite:///{data_dir / 'catalogue.db'}" if db == "sqlite" else \
            _schema_url(args.pg_url, f"{args.pg_schema}_{n}")
        partial["seconds"] = {k: v for k, v in partial["seconds"].items() if k in ("cli_start", "import")}
        partial["resumed"] = {"after": "import", "index_type": args.index_type}
        partial["detail"]["import_products_per_s"] = n / partial["seconds"]["import"]
        LOAD.clear()
        LOAD.update(partial.get("load_avg_1m") or {})
        partial["load_avg_1m"] = LOAD
        print(f"== resuming {db} {n:,} products after the import, index type {args.index_type}", flush=True)
        runs.append(finish(scratch, n, data_dir, url, scratch / f"manifest_{n}.csv", args.queries, partial, save,
                           args.index_type))
        order = []
        save()
    if args.search_only:
        path = path.with_name(path.stem + "_search.json")
        for db, n in order:
            data_dir = scratch / f"data_{db}_{n}"
            if not data_dir.is_dir():
                ap.error(f"{data_dir} is missing: run the size with --keep first")
            url = f"sqlite:///{data_dir / 'catalogue.db'}" if db == "sqlite" else \
                _schema_url(args.pg_url, f"{args.pg_schema}_{n}")
            print(f"== searches, {db} {n:,} products", flush=True)
            load = {"search": round(os.getloadavg()[0], 2)}
            runs.append({"size": n, "db": db, "complete": True, "seconds": {}, "detail": {}, "load_avg_1m": load,
                         "search": search_latencies(data_dir, url, n, args.queries)})
            save()
        order = []
    if args.rerun:
        for db, n in order:
            print(f"== rerun: {db} {n:,} products", flush=True)
            runs.append(rerun(scratch, n, db, args.pg_url, args.pg_schema, args.index_type, save))
            save()
        order = []
    for db, n in order:
        print(f"== {db} {n:,} products", flush=True)
        t0 = time.perf_counter()
        runs.append(run_one(scratch, n, db, args.pg_url, args.queries, n >= args.synthetic_from, args.workers,
                            args.pg_schema, save, args.build_only, args.vectors, args.catalogue))
        runs[-1]["total_s"] = time.perf_counter() - t0
        print(json.dumps(runs[-1]["seconds"]), flush=True)
        if not (args.keep or args.build_only):
            shutil.rmtree(scratch / f"data_{db}_{n}", ignore_errors=True)
        save()
    print(markdown(runs))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
