"""p50 ms of SearchService.search_vector per filter kind on a kept scale data dir, for the
checkout on PYTHONPATH (run it once per checkout, in turns, to compare code on one machine).

    for turn in 1 2; do for co in MAIN_COPY .; do (cd $co && PYTHONPATH=$co python \
        /path/to/benchmarks/search_ab_checkouts.py /tmp/scale32/data_sqlite_1000000); done; done

The queries are the families catalogue's shopper photos (benchmarks/scale_data.py, loaded
from this file's folder so that the older checkout needs none of it)."""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("scale_data_here", HERE / "scale_data.py")
scale_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scale_data)

import shopsearch  # noqa: E402
from shopsearch.app import open_search_service  # noqa: E402
from shopsearch.config import Settings  # noqa: E402
from shopsearch.results import SearchFilters  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path, help="a kept scale data dir of the families catalogue, e.g. "
                                                "/tmp/scale32/data_sqlite_1000000")
    data_dir = ap.parse_args().data_dir
    n = int(data_dir.name.rsplit("_", 1)[-1])
    settings = Settings.from_env(data_dir=data_dir, database_url=f"sqlite:///{data_dir}/catalogue.db", device="cpu")
    svc = open_search_service(settings, with_router=False)
    picks = np.random.default_rng(1).choice(n, 200, replace=False)
    vecs = svc.embedder.encode_images([Image.open(io.BytesIO(scale_data.query_jpeg(int(i), "families"))).convert("RGB")
                                       for i in picks])
    cats = [c.path for c in svc.catalogue.categories() if c.depth == 1]
    depts = [c.path for c in svc.catalogue.categories() if c.depth == 0]
    kinds = {"unfiltered": lambda j: SearchFilters(),
             "category": lambda j: SearchFilters(category=cats[j % len(cats)]),
             "price": lambda j: SearchFilters(min_price=100 + j, max_price=110 + j),
             "department": lambda j: SearchFilters(category=depts[j % len(depts)])}
    out: dict = {"code": str(Path(shopsearch.__file__).parents[1])}
    for kind, make in kinds.items():
        svc.search_vector(vecs[0], k=10, filters=make(0), routing=False)
        times = []
        for j, v in enumerate(vecs):
            t0 = time.perf_counter()
            svc.search_vector(v, k=10, filters=make(j), routing=False)
            times.append((time.perf_counter() - t0) * 1000)
        out[f"{kind}_p50_ms"] = round(float(np.median(times)), 3)
    svc.catalogue.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
