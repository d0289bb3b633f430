"""p50/p95 ms per filter kind on a kept scale data dir, for the checkout on PYTHONPATH: run it
once per checkout, in turns, to compare search code on one machine.

    for turn in 1 2; do for co in MAIN_COPY .; do (cd $co && PYTHONPATH=$co python \
        /path/to/benchmarks/search_ab_checkouts.py /tmp/scale32/data_sqlite_1000000); done; done

The measurement is this folder's scale_search.search_latencies (its queries, e.g. the families
catalogue's shopper photos), imported from here after `shopsearch` has been imported from the
checkout under test, so that the older checkout needs none of this folder's code."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import shopsearch  # first: the checkout under test (PYTHONPATH), before main() puts this repo on the path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path, help="a data dir kept by scale_bench.py --keep, e.g. "
                                                "/tmp/scale32/data_sqlite_1000000 (SQLite)")
    ap.add_argument("--queries", type=int, default=200, help="queries per filter kind")
    args = ap.parse_args()
    data_dir = args.data_dir.resolve()
    size = data_dir.name.rsplit("_", 1)[-1]
    if not (data_dir / "catalogue.db").is_file() or not (data_dir / "index").is_dir() or not size.isdigit():
        ap.error(f"{data_dir} is not a kept SQLite scale data dir (data_sqlite_<size> with catalogue.db and index/)")
    sys.path.insert(0, str(HERE.parent))  # this repository's benchmarks package, ahead of the checkout's
    from benchmarks.scale_search import search_latencies

    search = search_latencies(data_dir, f"sqlite:///{data_dir / 'catalogue.db'}", int(size), args.queries)
    print(json.dumps({"code": str(Path(shopsearch.__file__).parents[1]),
                      **{f"{kind}_p50_ms": round(v["p50_ms"], 3) for kind, v in search.items()}}))


if __name__ == "__main__":
    main()
