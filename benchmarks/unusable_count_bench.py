"""The quick `index status`' COUNT of unusable images on PostgreSQL at a million image rows,
with and without migration 0006's partial index (issue 20): a scratch table shaped like
product_images (all usable, as in a healthy catalogue) in a schema of its own, dropped after.

    python benchmarks/unusable_count_bench.py --pg-url postgresql://postgres@127.0.0.1:5432/test \\
        --schema bench_count --out benchmarks/results/unusable_count_pg_1m.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shopsearch.evaluation.machine import machine_info  # noqa: E402

COUNT = "SELECT count(*) FROM product_images WHERE status <> 'ok'"


def timed(conn: psycopg.Connection, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        conn.execute(COUNT).fetchone()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--schema", default="bench_count")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with psycopg.connect(args.pg_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {args.schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {args.schema}")
        conn.execute(f"SET search_path = {args.schema}")
        try:
            conn.execute("CREATE TABLE product_images AS SELECT g::bigint AS id, g AS product_id, "
                         "'/srv/images/' || (g / 10000) || '/p' || g || '.jpg' AS path, 'catalogue' AS role, "
                         "md5(g::text) || md5(g::text) AS sha256, 32 AS width, 32 AS height, 1000::bigint AS file_size, "
                         "1700000000000000000::bigint AS file_mtime_ns, 'ok'::varchar(20) AS status, NULL::text AS error "
                         "FROM generate_series(1, %s) g" % int(args.rows))
            conn.execute("ALTER TABLE product_images ADD PRIMARY KEY (id)")
            conn.execute("ANALYZE product_images")
            scan = timed(conn, args.rounds)
            conn.execute("CREATE INDEX ix_product_images_unusable ON product_images (id) WHERE status <> 'ok'")
            conn.execute("ANALYZE product_images")
            partial = timed(conn, args.rounds)
        finally:
            conn.execute(f"DROP SCHEMA IF EXISTS {args.schema} CASCADE")
    res = {"note": args.note, "rows": args.rows, "rounds": args.rounds,
           "median_ms": {"sequential_scan": statistics.median(scan) * 1000,
                         "partial_index": statistics.median(partial) * 1000},
           "ms": {"sequential_scan": [t * 1000 for t in scan], "partial_index": [t * 1000 for t in partial]},
           "load_avg_1m": round(os.getloadavg()[0], 2), "machine": machine_info()}
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res["median_ms"]))


if __name__ == "__main__":
    main()
