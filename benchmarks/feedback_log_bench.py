"""What the feedback log costs a search: API photo searches through the Flask test client
with the log on and off, interleaved (so both see the same machine load), on a generated
catalogue indexed with colorhist. Writes the median and p90 latency of each and their ratio
to benchmarks/results/feedback_log.json (or --out).

    .venv/bin/python benchmarks/feedback_log_bench.py --searches 200
    .venv/bin/python benchmarks/feedback_log_bench.py --database-url postgresql://postgres@127.0.0.1/test
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _bench_io import write_result

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _image(seed: int):
    import numpy as np
    from PIL import Image

    grid = np.random.default_rng(seed).integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((96, 96), Image.NEAREST)


def _prepare(root: Path, products: int, database_url: str | None):
    from click.testing import CliRunner

    from indexer.cli import cli

    (root / "imgs").mkdir(parents=True)
    rows = ["sku,title,category,images"]
    for i in range(products):
        _image(i).save(root / "imgs" / f"{i}.png")
        rows.append(f"S{i},Item {i},Cat{i % 5}/Thing,imgs/{i}.png")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    pre = ["--data-dir", str(root / "data")] + (["--database-url", database_url] if database_url else [])
    for args in (["catalogue", "import", str(root / "m.csv"), "--format", "csv"],
                 ["index", "build", "--model", "colorhist", "--workers", "1"]):
        res = CliRunner().invoke(cli, [*pre, *args], catch_exceptions=False)
        if res.exit_code:
            raise SystemExit(res.output)


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--searches", type=int, default=200, help="searches with the log on (as many with it off)")
    ap.add_argument("--products", type=int, default=200)
    ap.add_argument("--database-url", default=None, help="default: SQLite in a temporary data dir")
    ap.add_argument("--note", default="", help="e.g. 'loaded machine' or 'idle machine', kept in the JSON")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "feedback_log.json")
    args = ap.parse_args(argv)

    from shopsearch.config import Settings
    from shopsearch.evaluation.machine import machine_info
    from webapp import create_app

    with tempfile.TemporaryDirectory(prefix="shopsearch-feedback-bench-") as tmp:
        root = Path(tmp)
        _prepare(root, args.products, args.database_url)
        settings = Settings(data_dir=root / "data", database_url=args.database_url)
        apps = {on: create_app({"SETTINGS": replace(settings, feedback_log=on), "TESTING": True})
                for on in (True, False)}
        clients = {on: a.test_client() for on, a in apps.items()}
        photos = []
        for i in range(32):
            buf = io.BytesIO()
            _image(i % args.products).save(buf, "JPEG", quality=90)
            photos.append(buf.getvalue())
        times: dict[bool, list[float]] = {True: [], False: []}
        for n in range(args.searches + 10):
            for on in ((True, False) if n % 2 else (False, True)):
                t0 = time.perf_counter()
                r = clients[on].post("/api/v1/search", data={"image": (io.BytesIO(photos[n % 32]), "p.jpg")},
                                     content_type="multipart/form-data")
                ms = (time.perf_counter() - t0) * 1000
                assert r.status_code == 200 and (r.get_json()["request_id"] is not None) == on
                if n >= 10:  # the first ten warm up
                    times[on].append(ms)
        apps[True].extensions["shopsearch"].flush_feedback()
        logged = apps[True].extensions["shopsearch"].feedback.counts()["searches"]
        for a in apps.values():
            a.extensions["shopsearch"].close()
    on, off = statistics.median(times[True]), statistics.median(times[False])
    out = {"database": "postgresql" if args.database_url else "sqlite", "searches": args.searches,
           "products": args.products, "logged": logged,
           "median_ms": {"log_on": round(on, 2), "log_off": round(off, 2)},
           "p90_ms": {"log_on": round(_pct(times[True], 0.9), 2), "log_off": round(_pct(times[False], 0.9), 2)},
           "median_ratio_on_off": round(on / off, 3),
           "note": ("interleaved on/off in one run; " + args.note).strip("; "), "machine": machine_info()}
    write_result(out, args.out, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
