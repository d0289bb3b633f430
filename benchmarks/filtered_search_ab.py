"""Filtered vs unfiltered search at scale, two checkouts in turns (issue 20, filtered search).

In-process, through SearchService.search_vector (the web app's and CLI's path), on a
catalogue shaped like scale_bench's (50 leaf categories under 5 departments, prices
1.00-999.99, one image per product) but written straight into the database, and an HNSW
index (the type `auto` picks at 1M) of seeded unit vectors built once and shared by both
checkouts. Like scale_bench's searches, the index carries a 10-image update (those ids
tombstoned in the base and live again in a delta segment). Query vectors are colorhist
embeddings of scale_bench's seeded query images.

Per round and checkout (A, B, A, B, ...; a fresh process each turn, so both see the same
machine state), after one warm-up query per kind, p50/p95 ms of (the kinds interleaved query
by query, so that a change of load falls on every kind alike), in wall-clock time and in this
process's CPU time (`cpu_*`: on a loaded machine far steadier than wall time; PostgreSQL's
server-side work is not in it):

  unfiltered      no filter
  category        one leaf category (2% of the images)
  price           a 10-euro range (about 1%)
  price_nothing   a price no product has
  department      one top-level category (20%: the large-set path)
  price_wide      1-500 euros (50%)

Each checkout searches the index in id order (`--layout-a/-b ids`) or as `index build`
stores it (`grouped`: by category, then price; the step `grouped` writes it from the id-order
index by renumbering the same graph).

`turn --profile` runs one checkout's turn under cProfile (PYTHONPATH=<checkout>) and prints
where the timed queries spent their time.

Every turn also records each query's hit SKUs; the report says whether the two checkouts
returned the same products (exactness of the new path against the old one).

    python benchmarks/filtered_search_ab.py --a /tmp/main-copy --b . --size 1000000 --db sqlite,postgresql
    python benchmarks/filtered_search_ab.py --a /tmp/main-copy --b . --layout-b grouped ...

Writes benchmarks/results/filtered_search_ab_<size>_<dbs><_tag>.json.
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

REPO = Path(__file__).resolve().parents[1]
N_CATEGORIES = 50
MODEL = "colorhist"
KINDS = ("unfiltered", "category", "price", "price_nothing", "department", "price_wide")
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
UPDATED = 10  # images of the 10-image update: tombstoned in the base, live in the delta


def _url(args: argparse.Namespace, db: str) -> str:
    if db == "sqlite":
        return f"sqlite:///{Path(args.scratch) / f'catalogue_{args.size}.db'}"
    sep = "&" if "?" in args.pg_url else "?"
    return f"{args.pg_url}{sep}options=-csearch_path%3D{args.pg_schema}_{args.size}"


# -- preparation (once, with this checkout) ------------------------------------------------------------------

def prepare_catalogue(args: argparse.Namespace, db: str) -> None:
    """Categories, products and images written in bulk (ids 1..n, image i of product i)."""
    sys.path.insert(0, str(REPO))
    from sqlalchemy import text

    from shopsearch.catalogue import db as dbmod
    from shopsearch.catalogue.store import CatalogueStore

    n = args.size
    if db == "postgresql":
        eng = dbmod.make_engine(args.pg_url)
        with eng.begin() as c:
            c.execute(text(f"DROP SCHEMA IF EXISTS {args.pg_schema}_{n} CASCADE"))
            c.execute(text(f"CREATE SCHEMA {args.pg_schema}_{n}"))
        eng.dispose()
    else:
        Path(_url(args, db)[len("sqlite:///"):]).unlink(missing_ok=True)
    store = CatalogueStore.open(_url(args, db))
    cats = [store.ensure_category([f"Dept{c % 5}", f"Cat{c:02d}"]) for c in range(N_CATEGORIES)]
    prices = np.random.default_rng(n).integers(100, 100_000, size=n)
    now = "2026-01-01 00:00:00+00:00"
    products = [(i + 1, f"SKU{i:07d}", f"product {i}", f"{prices[i] / 100:.2f}", "EUR", cats[i % N_CATEGORIES], "{}",
                 now, now) for i in range(n)]
    images = [(i + 1, i + 1, f"/scale/p{i:07d}.jpg", "catalogue", f"{i:064x}", "ok", now) for i in range(n)]
    t0 = time.perf_counter()
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        if db == "postgresql":
            with cur.copy("COPY products (id, sku, title, price, currency, category_id, attributes, created_at, "
                          "updated_at) FROM STDIN") as cp:
                for row in products:
                    cp.write_row(row)
            with cur.copy("COPY product_images (id, product_id, path, role, sha256, status, created_at) "
                          "FROM STDIN") as cp:
                for row in images:
                    cp.write_row(row)
            cur.execute("SELECT setval(pg_get_serial_sequence('products', 'id'), %s)", (n,))
            cur.execute("SELECT setval(pg_get_serial_sequence('product_images', 'id'), %s)", (n,))
            cur.execute("ANALYZE")
        else:
            cur.executemany("INSERT INTO products (id, sku, title, price, currency, category_id, attributes, "
                            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", products)
            cur.executemany("INSERT INTO product_images (id, product_id, path, role, sha256, status, created_at) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", images)
        raw.commit()
    finally:
        raw.close()
    print(f"{db}: {n:,} products written in {time.perf_counter() - t0:.1f} s", flush=True)
    store.close()


def prepare_index(args: argparse.Namespace) -> None:
    """HNSW over seeded unit vectors (ids 1..n), as `index build` makes it at this size, plus
    the 10-image update's tombstones and delta (its new vectors)."""
    sys.path.insert(0, str(REPO))
    import faiss

    from shopsearch.index.segments import new_delta
    from shopsearch.index.sizing import choose_index_type
    from shopsearch.index.vector_index import VectorIndex

    n, dim, scratch = args.size, 384, Path(args.scratch)
    vi = VectorIndex(dim, choose_index_type(n), expected_size=n)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for s in range(0, n, 100_000):
        v = rng.random((min(100_000, n - s), dim), dtype=np.float32)  # non-negative, like histograms
        vi.add(np.arange(s + 1, s + len(v) + 1, dtype=np.int64), v / np.linalg.norm(v, axis=1, keepdims=True))
        print(f"index: {s + len(v):,} vectors, {time.perf_counter() - t0:.0f} s", flush=True)
    faiss.write_index(vi.faiss_index, str(scratch / f"index_{n}.faiss"))
    delta = new_delta(dim)
    v = rng.random((UPDATED, dim), dtype=np.float32)
    delta.add_with_ids(v / np.linalg.norm(v, axis=1, keepdims=True), np.arange(1, UPDATED + 1, dtype=np.int64))
    faiss.write_index(delta, str(scratch / f"delta_{n}.faiss"))
    (scratch / f"index_{n}.json").write_text(json.dumps({"index_type": vi.index_type, "dim": dim, "count": n}))


def prepare_grouped(args: argparse.Namespace) -> None:
    """The same index stored as `index build` now stores it (shopsearch/index/layout.py: grouped by
    category, then price): the graph and vectors of index_<n>.faiss renumbered (HNSW
    permute_entries), so both layouts answer from the same graph."""
    sys.path.insert(0, str(REPO))
    import faiss

    from shopsearch.catalogue.store import CatalogueStore
    from shopsearch.index.layout import grouped_order

    n, scratch = args.size, Path(args.scratch)
    t0 = time.perf_counter()
    index = faiss.read_index(str(scratch / f"index_{n}.faiss"))
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    store = CatalogueStore.open(_url(args, "sqlite"), migrate=False)  # same rows in both databases
    perm = grouped_order(ids, store.filter_columns())
    store.close()
    faiss.downcast_index(index.index).permute_entries(perm)
    faiss.copy_array_to_vector(ids[perm], index.id_map)
    index.construct_rev_map()
    faiss.write_index(index, str(scratch / f"index_{n}_grouped.faiss"))
    print(f"grouped layout written in {time.perf_counter() - t0:.0f} s", flush=True)


# -- one turn (run in a fresh process of the checkout under test) -----------------------------------------------

def turn(args: argparse.Namespace) -> None:
    """Searches of every kind through the checkout on sys.path; prints one JSON line."""
    import faiss
    from PIL import Image

    import shopsearch
    from shopsearch.catalogue.store import CatalogueStore
    from shopsearch.embedders import load_embedder
    from shopsearch.index.manifest import IndexManifest
    from shopsearch.index.vector_index import VectorIndex
    from shopsearch.results import SearchFilters
    from shopsearch.search import SearchService

    sys.path.insert(0, str(REPO))
    from benchmarks.scale_bench import seeded_jpeg

    n, scratch = args.size, Path(args.scratch)
    meta = json.loads((scratch / f"index_{n}.json").read_text())
    t0 = time.perf_counter()
    name = f"index_{n}.faiss" if args.layout == "ids" else f"index_{n}_grouped.faiss"
    index = VectorIndex(meta["dim"], meta["index_type"], index=faiss.read_index(str(scratch / name)),
                        delta=faiss.read_index(str(scratch / f"delta_{n}.faiss")),
                        dead=np.arange(1, UPDATED + 1, dtype=np.int64))
    load_s = time.perf_counter() - t0
    emb = load_embedder(MODEL, "cpu", scratch / "models")
    manifest = IndexManifest("ab", MODEL, emb.fingerprint, meta["dim"], n, meta["index_type"], "2026-01-01T00:00:00Z")
    store = CatalogueStore.open(_url(args, args.turn_db), migrate=False)
    svc = SearchService(emb, index, store, manifest)
    rng = np.random.default_rng(1)
    picks = rng.choice(n, args.queries, replace=False)
    vecs = emb.encode_images([Image.open(io.BytesIO(seeded_jpeg(int(i) + 10 ** 8))).convert("RGB") for i in picks])
    leaves = [c.path for c in store.categories() if c.depth == 1]
    depts = [c.path for c in store.categories() if c.depth == 0]
    kinds = {"unfiltered": lambda j: SearchFilters(),
             "category": lambda j: SearchFilters(category=leaves[j % len(leaves)]),
             "price": lambda j: SearchFilters(min_price=100 + j, max_price=110 + j),
             "price_nothing": lambda j: SearchFilters(min_price=10 ** 7),
             "department": lambda j: SearchFilters(category=depts[j % len(depts)]),
             "price_wide": lambda j: SearchFilters(min_price=1, max_price=500)}
    out: dict = {"checkout": str(Path(shopsearch.__file__).parents[1]), "index_load_s": load_s, "search": {}}
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
    names = args.kinds.split(",")
    times: dict[str, list[float]] = {kind: [] for kind in names}
    cpu: dict[str, list[float]] = {kind: [] for kind in names}  # this process's CPU time: far less load-bound
    skus: dict[str, list[list[str]]] = {kind: [] for kind in names}
    first: dict[str, float] = {}
    for kind in names:
        t1 = time.perf_counter()
        svc.search_vector(vecs[0], k=10, filters=kinds[kind](0), routing=False)  # warm: loads columns, caches
        first[kind] = (time.perf_counter() - t1) * 1000
    for j, v in enumerate(vecs):  # kinds interleaved per query: a change of load falls on all of them alike
        for kind in names:
            if prof is not None:
                prof.enable()
            t1, c1 = time.perf_counter(), time.process_time()
            res = svc.search_vector(v, k=10, filters=kinds[kind](j), routing=False)
            times[kind].append((time.perf_counter() - t1) * 1000)
            cpu[kind].append((time.process_time() - c1) * 1000)
            if prof is not None:
                prof.disable()
            skus[kind].append([h.sku for h in res.hits])
    for kind in names:
        t = times[kind]
        out["search"][kind] = {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95)),
                               "mean_ms": float(np.mean(t)), "first_ms": first[kind], "skus": skus[kind],
                               "cpu_p50_ms": float(np.percentile(cpu[kind], 50)),
                               "cpu_p95_ms": float(np.percentile(cpu[kind], 95))}
    store.close()
    if prof is not None:  # where the time of the timed queries went (to stderr)
        import pstats

        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    print("RESULT " + json.dumps(out), flush=True)


def run_turn(checkout: Path, args: argparse.Namespace, db: str, layout: str = "ids") -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1", "SHOPSEARCH_DEVICE": "cpu"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "turn", "--turn-db", db, "--layout", layout,
           "--size", str(args.size),
           "--scratch", args.scratch, "--queries", str(args.queries), "--kinds", args.kinds,
           "--pg-url", args.pg_url, "--pg-schema", args.pg_schema]
    out = subprocess.run(cmd, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"turn in {checkout} failed:\n{out.stderr[-3000:]}")
    res = json.loads(line[len("RESULT "):])
    if Path(res["checkout"]).resolve() != checkout.resolve():
        raise SystemExit(f"turn imported shopsearch from {res['checkout']}, not {checkout}")
    return res


def summary(turns: list[dict], kinds: list[str]) -> dict:
    """Per checkout and kind: the median over turns of each turn's p50 / p95, and the ratio to
    unfiltered of the same turn (median over turns)."""
    out: dict = {}
    for name in ("A", "B"):
        mine = [t for t in turns if t["name"] == name]
        out[name] = {}
        for kind in kinds:
            p50 = [t["search"][kind]["p50_ms"] for t in mine]
            ratio = [t["search"][kind]["p50_ms"] / t["search"]["unfiltered"]["p50_ms"] for t in mine] \
                if "unfiltered" in kinds else []
            out[name][kind] = {"p50_ms": float(np.median(p50)),
                               "p95_ms": float(np.median([t["search"][kind]["p95_ms"] for t in mine])),
                               "cpu_p50_ms": float(np.median([t["search"][kind].get("cpu_p50_ms", np.nan)
                                                              for t in mine])),
                               "cpu_p95_ms": float(np.median([t["search"][kind].get("cpu_p95_ms", np.nan)
                                                              for t in mine])),
                               "x_unfiltered": float(np.median(ratio)) if ratio else None}
    a, b = [t for t in turns if t["name"] == "A"], [t for t in turns if t["name"] == "B"]
    out["same_products"] = {kind: all(x["search"][kind]["skus"] == y["search"][kind]["skus"] for x, y in zip(a, b))
                            for kind in kinds}
    return out


def table_rows(db: str, s: dict, kinds: list[str]) -> list[dict]:
    """One row per database and kind (RESULTS.md renders these as the table)."""
    return [{"db": db, "search": kind, "A_p50_ms": round(s["A"][kind]["p50_ms"], 3),
             "B_p50_ms": round(s["B"][kind]["p50_ms"], 3),
             "B/A": round(s["B"][kind]["p50_ms"] / s["A"][kind]["p50_ms"], 3) if s["A"][kind]["p50_ms"] else None,
             "A_x_unfiltered": s["A"][kind]["x_unfiltered"] and round(s["A"][kind]["x_unfiltered"], 2),
             "B_x_unfiltered": s["B"][kind]["x_unfiltered"] and round(s["B"][kind]["x_unfiltered"], 2),
             "A_p95_ms": round(s["A"][kind]["p95_ms"], 3), "B_p95_ms": round(s["B"][kind]["p95_ms"], 3),
             "A_cpu_p50_ms": round(s["A"][kind]["cpu_p50_ms"], 3), "B_cpu_p50_ms": round(s["B"][kind]["cpu_p50_ms"], 3),
             "cpu_B/A": round(s["B"][kind]["cpu_p50_ms"] / s["A"][kind]["cpu_p50_ms"], 3)
             if s["A"][kind]["cpu_p50_ms"] else None,
             "A_cpu_p95_ms": round(s["A"][kind]["cpu_p95_ms"], 3), "B_cpu_p95_ms": round(s["B"][kind]["cpu_p95_ms"], 3),
             "same_products": s["same_products"][kind]} for kind in kinds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", nargs="?", default="ab", choices=("ab", "prepare", "grouped", "turn"))
    ap.add_argument("--a", default=None, help="checkout A (before); B is --b")
    ap.add_argument("--b", default=str(REPO))
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--db", default="sqlite,postgresql")
    ap.add_argument("--scratch", default="/tmp/filtered_search_ab")
    ap.add_argument("--pg-url", default=os.environ.get("SHOPSEARCH_TEST_PG_URL", DEFAULT_PG))
    ap.add_argument("--pg-schema", default="filtered_ab", help="PostgreSQL schema is <this>_<size>")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--skip-prepare", action="store_true", help="reuse the scratch's catalogue and index")
    ap.add_argument("--turn-db", default="sqlite", help="with the step turn: the database searched")
    ap.add_argument("--layout", default="ids", choices=("ids", "grouped"),
                    help="with the step turn: the index stored in id order, or grouped (index build's layout)")
    ap.add_argument("--layout-a", default="ids", choices=("ids", "grouped"), help="checkout A's index layout")
    ap.add_argument("--layout-b", default="ids", choices=("ids", "grouped"), help="checkout B's index layout")
    ap.add_argument("--profile", action="store_true", help="with the step turn: cProfile of the timed queries")
    ap.add_argument("--note", default="")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    dbs = [d.strip() for d in args.db.split(",")]
    if args.step == "turn":
        return turn(args)
    if args.step == "grouped":
        return prepare_grouped(args)
    if args.step == "prepare" or not args.skip_prepare:
        if not (Path(args.scratch) / f"index_{args.size}.json").is_file():
            prepare_index(args)
        for db in dbs:
            prepare_catalogue(args, db)
        if "grouped" in (args.layout_a, args.layout_b):
            prepare_grouped(args)
        if args.step == "prepare":
            return
    sys.path.insert(0, str(REPO))
    from shopsearch.evaluation.machine import machine_info

    kinds = args.kinds.split(",")
    checkouts = {"A": Path(args.a).resolve(), "B": Path(args.b).resolve()} if args.a else {"B": Path(args.b).resolve()}
    tag = f"_{args.tag}" if args.tag else ""
    path = Path(args.out) / f"filtered_search_ab_{args.size}_{'_'.join(dbs)}{tag}.json"
    result: dict = {"note": args.note, "machine": machine_info(), "cpus": os.cpu_count(), "size": args.size,
                    "checkouts": {k: str(v) for k, v in checkouts.items()}, "queries": args.queries,
                    "layouts": {"A": args.layout_a, "B": args.layout_b}, "runs": {}}
    for db in dbs:
        turns: list[dict] = []
        for r in range(args.rounds):
            for name, checkout in checkouts.items():
                load = round(os.getloadavg()[0], 2)
                res = run_turn(checkout, args, db, args.layout_a if name == "A" else args.layout_b)
                turns.append({"name": name, "round": r, "load_avg_1m": load, **res})
                print(db, r, name, {k: (round(v["p50_ms"], 2), round(v["cpu_p50_ms"], 2))
                                    for k, v in res["search"].items()}, flush=True)
        result["runs"][db] = {"summary": summary(turns, kinds) if len(checkouts) == 2 else None, "turns": turns}
        for t in turns:  # compared above; too bulky to keep
            for v in t["search"].values():
                v.pop("skus")
        if len(checkouts) == 2:
            result["table"] = [row for d, r in result["runs"].items() for row in table_rows(d, r["summary"], kinds)]
        path.write_text(json.dumps(result, indent=1))
    print(json.dumps({db: r["summary"] for db, r in result["runs"].items()}, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
