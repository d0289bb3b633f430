"""`classify train --views N` on Grocery Store (issue 13): how many synthetic views of each
training image the frozen head trains on, chosen on val only. Train = train + iconic images,
frozen EfficientNet-Lite0 vectors and view vectors from the project's vector cache (what
`classify train` embeds and caches); each row is `train_frozen` without the train+val refit,
scored on val (the figure `classify train` reports as validation).

    .venv/bin/python benchmarks/classify_views_grocerystore.py --views 0,1,2,3,4 \
        --out benchmarks/results/classify_views_grocerystore_val.json

Besides the served coarse top-1 (the coarse head averaged with the fine probabilities summed
per coarse class), each row gives the coarse top-1 read from the summed fine probabilities
alone (`val_coarse_top1_from_fine`). `embed_s`: the time the views not yet cached took.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from shopsearch.classify.data import grocery_split
from shopsearch.classify.labels import LabelSpace
from shopsearch.classify.photo_views import view_vectors
from shopsearch.classify.training import head_probs, train_frozen
from shopsearch.classify.vectors import embed_labelled
from shopsearch.embedders import load_embedder
from shopsearch.images import sha256_file

from _bench_io import grocery_parser, stamped_machine, write_result


def coarse_from_fine(art, xv: np.ndarray, val) -> float:
    """Coarse top-1 of the served fine probabilities summed per coarse class (no coarse head)."""
    labels: LabelSpace = art.labels
    known = [j for j, it in enumerate(val) if it.category in set(labels.fine)]
    pf, _ = head_probs(art, xv[known])
    f2c = np.asarray(labels.fine_to_coarse)
    summed = np.zeros((len(known), len(labels.coarse)), np.float32)
    np.add.at(summed.T, f2c, pf.T)
    truth = f2c[[labels.fine_index(val[j].category) for j in known]]
    return float((summed.argmax(1) == truth).mean())


def main() -> int:
    ap = grocery_parser(__doc__)
    ap.add_argument("--views", default="0,1,2,4")
    ap.add_argument("--c", default=None,
                    help="comma-separated C values for the probe (one value: no cross-validation; "
                         "default: the probe's grid, cross-validated as `classify train` does)")
    ap.add_argument("--first-view", type=int, default=0,
                    help="train on views FIRST..FIRST+N-1 of each image (other draws of the same augmenter: "
                         "how much one draw's luck moves the figure)")
    ap.add_argument("--model", default="efficientnet-lite0",
                    help="the frozen embedder's spec, e.g. efficientnet-lite0@288 (frozen_resolution_grocerystore.py)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    emb = load_embedder(a.model, "cpu")
    train = grocery_split(a.dataset, "train") + grocery_split(a.dataset, "iconic")
    xs, train = embed_labelled(emb, train, a.cache, progress=False)
    xv, val = embed_labelled(emb, grocery_split(a.dataset, "val"), a.cache, progress=False)
    counts = [int(n) for n in a.views.split(",")]
    t = time.time()
    vv, ok = view_vectors(emb, [(i.path, i.sha256 or sha256_file(i.path)) for i in train], a.first_view + max(counts), a.cache,
                          progress=False)
    embed_s = round(time.time() - t, 1)
    grid = tuple(float(c) for c in a.c.split(",")) if a.c else None
    rows = []
    for n in counts:
        t = time.time()
        picked = vv[ok, a.first_view:a.first_view + n]
        views = (picked.reshape(-1, vv.shape[2]), np.repeat(np.flatnonzero(ok), n)) if n else None
        art = train_frozen(xs, train, xv, val, emb.fingerprint, emb.name, refit=False, views=views, c_grid=grid)
        m = art.metrics
        rows.append({"views": n, "first_view": a.first_view, "val_fine_top1": round(m["val"]["fine"]["top1"], 4),
                     "val_coarse_top1": round(m["val"]["coarse"]["top1"], 4),
                     "val_coarse_top1_from_fine": round(coarse_from_fine(art, xv, val), 4),
                     "val_fine_top1_head_only": round(m["knn_vote"]["val_top1_head"], 4),
                     "knn_weight": m["knn_vote"].get("weight"), "C_fine": m["C_fine"], "C_coarse": m["C_coarse"],
                     "cv_fine_top1": None if m["cv_fine_top1"] is None else round(m["cv_fine_top1"], 4), "fit_s": round(time.time() - t, 1)})
        print(rows[-1], flush=True)
    res = {"benchmark": "classify_views", "split": "val", "train": "train+iconic", "model": emb.name,
           "c_grid": list(grid) if grid else "cross-validated (probe's C grid)",
           "train_images": len(train), "val_images": len(val), "embed_s": embed_s, "rows": rows,
           **stamped_machine()}
    write_result(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
