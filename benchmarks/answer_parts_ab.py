"""Two parts of a search answer, old form against new in one process, in turns (issue 18):

  cards   the JSON answer's result cards: url_for per card URL (4 per card, and every hit
          serialised twice), against webapp.card_urls' templates (the JSON is checked equal)
  rows    the candidates' live rows: CatalogueStore.products_for_images (whole product and image
          rows, attributes decoded) against candidate_rows (what an answer shows), for the 14 rows
          a k=10 search reads and the ~60 a fused search reads (rows checked equal)
  density the confidence's familiarity: both projections side by side (the form before) against
          the quadratic form with the means' projections (shopsearch.density; values checked close)

CPU ms of this thread per call (time.thread_time), median over repeats, on searches of a
prepared data dir's own catalogue vectors:

    .venv/bin/python benchmarks/answer_parts_ab.py --data-dir /tmp/query10-demo \
        --out benchmarks/results/answer_parts_ab.json
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from _bench_io import cpu_block, data_dir_parser, utc_now, write_result

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _ms(fn, items, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.thread_time()
        for it in items:
            fn(it)
        out.append((time.thread_time() - t0) / len(items) * 1000)
    return out


def url_for_cards(res, k: int) -> dict:
    """The answer as webapp.params built it before the templates."""
    from flask import url_for

    d = res.to_dict()
    cards = []
    for h in res.hits:
        c = h.to_dict()
        c["matched_image"].pop("path", None)
        c["matched_image"].update(thumbnail_url=url_for("images.image", image_id=h.image_id, size=320),
                                  image_url=url_for("images.image", image_id=h.image_id, size=1280))
        c["url"], c["api_url"] = url_for("pages.product", sku=h.sku), url_for("api.product", sku=h.sku)
        cards.append(c)
    d["results"], d["count"], d["k"] = cards, len(res.hits), k
    return d


def two_projection_familiarity(dens):
    """ProductDensity.familiarity as it was served before (one product with both projections)."""
    import numpy as np

    both = np.hstack([dens.proj, dens.proj0]).astype(np.float32)
    means, mean0 = dens.means.astype(np.float32), dens.mean0.astype(np.float32)
    norms, dim = (means * means).sum(1), dens.proj.shape[0]

    def familiarity(x):
        zz = np.atleast_2d(np.asarray(x, np.float32)) @ both
        z, z0 = zz[:, :dim], zz[:, dim:] - mean0
        d = (z * z).sum(1)[:, None] - 2.0 * z @ means.T + norms[None, :] - (z0 * z0).sum(1)[:, None]
        return -(d / dim).astype(np.float64).min(1)
    return familiarity


def paired(a, b, items, rounds: int, repeat: int) -> dict:
    """Median ms of a and b, run in turns."""
    ta, tb = [], []
    for _ in range(rounds):
        ta += _ms(a, items, repeat)
        tb += _ms(b, items, repeat)
    ma, mb = statistics.median(ta), statistics.median(tb)
    return {"old_ms": round(ma, 4), "new_ms": round(mb, 4), "new/old": round(mb / ma, 3)}


def main() -> int:
    ap = data_dir_parser(__doc__, REPO.parent / "shared" / "datasets" / "grocerystore")
    ap.add_argument("--searches", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from shopsearch.config import Settings
    from webapp import create_app
    from webapp.params import result_dict

    app = create_app({"SETTINGS": Settings.from_env(data_dir=a.data_dir), "RELOAD_CHECK_S": 3600})
    svc = app.extensions["shopsearch"].get()
    rng = np.random.default_rng(0)
    ids = svc.owners.current().image_ids
    vecs = [svc.index.reconstruct(int(i)) for i in rng.choice(ids, a.searches, replace=False)]
    results = [svc.search_vector(v, 10) for v in vecs]
    load1 = os.getloadavg()[0]
    out: dict = {}
    with app.test_request_context("/api/v1/search", method="POST"):
        for r in results:
            assert app.json.dumps(url_for_cards(r, 10)) == app.json.dumps(result_dict(r, None, 10))
        out["cards"] = paired(lambda r: url_for_cards(r, 10), lambda r: result_dict(r, None, 10), results,
                              a.rounds, 20)
    cat = svc.catalogue
    for name, n in (("rows_14", 14), ("rows_60", 60)):
        asked = [[int(i) for i in rng.choice(ids, n, replace=False)] for _ in range(a.searches)]
        for c in asked:
            full, slim = cat.products_for_images(c), cat.candidate_rows(c)
            assert sorted(full) == sorted(slim) and all(
                (slim[i].sku, slim[i].price, slim[i].category) == (p.sku, p.price, p.category) for i, (p, _) in full.items())
        out[name] = paired(cat.products_for_images, cat.candidate_rows, asked, a.rounds, 3)
    dens = svc.calibration.density if svc.calibration is not None else None
    if dens is not None:
        before = two_projection_familiarity(dens)
        for v in vecs:
            assert abs(float(before(v)[0]) - float(dens.familiarity(v)[0])) < 1e-5
        out["density"] = paired(before, dens.familiarity, vecs, a.rounds, 20)
    search = statistics.median(_ms(lambda v: svc.search_vector(v, 10), vecs, 5))
    result = {"benchmark": "answer_parts_ab", "model": svc.manifest.model_name, "vectors": len(svc.index),
              "database": cat.engine.dialect.name, "parts": out, "search_vector_cpu_ms": round(search, 3),
              "machine": cpu_block(load1, a.note),
              "how": "one process, old and new form in turns; this thread's CPU ms per call, median over repeats; "
                     "queries are catalogue vectors of the data dir's index",
              "when": utc_now()}
    write_result(result, a.out, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
