"""Iconic-only gallery, frozen EfficientNet-Lite0: pile views (several copies of the product
in rows, shopsearch.gallery_aug.pile_view) beside the single-product shopper views the index
build blends in (issue 13). Chosen on val only. The rows are the build's pipeline (blend,
centring on the train photos as the unlabelled shopper sample, 2 rounds of adaptation) with
the views' mean made of 8 shopper views, 8 pile views, or both, at blend weight w; last, the
8 shopper views with the unlabelled shopper sample grown by one synthetic view of each train
photo (`classify train --views`' view 0, shopsearch.classify.photo_views).

Needs the project's vector cache filled: base vectors (classify/bench runs), the 8 shopper
views' means (`+shopper8`, as bench recall makes them) and `--piles` (8 pile views per iconic
image, embedded here on first use and kept in var/iconic_pile8.npy).

    .venv/bin/python benchmarks/iconic_piles_grocerystore.py --split val \
        --out benchmarks/results/iconic_piles_grocerystore_val.json
    .venv/bin/python benchmarks/iconic_piles_grocerystore.py --split test \
        --only "8 shopper views w 0.5, sample + 1 view per photo, adapt 3" \
        --out benchmarks/results/iconic_piles_grocerystore_test.json
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from shopsearch.centring import adapt_gallery, fit_centring
from shopsearch.classify.photo_views import view_fingerprint
from shopsearch.classify.data import grocery_split
from shopsearch.classify.vectors import embed_labelled
from shopsearch.embedders import load_embedder
from shopsearch.embedders.base import l2_normalize as n2
from shopsearch.embedding.cache import VectorCache
from shopsearch.gallery_aug import pile_view, seed_of
from shopsearch.images import load_image, sha256_file

from _bench_io import grocery_parser, stamped_machine, write_result

PILES = Path("var/iconic_pile8.npy")


def piles(emb, items) -> np.ndarray:
    if PILES.is_file():
        return np.load(PILES)
    out = []
    for it in items:
        img = load_image(it.path)
        img.thumbnail((512, 512))
        rng = random.Random(seed_of(sha256_file(it.path)) + 1)
        out.append(emb.encode_images([pile_view(img, rng) for _ in range(8)]))
    np.save(PILES, np.stack(out))
    return np.stack(out)


def main() -> int:
    ap = grocery_parser(__doc__, split=True)
    ap.add_argument("--only", help="Score only the row with this config name (the one val chose, on test).")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    emb = load_embedder("efficientnet-lite0", "cpu")
    icon = grocery_split(a.dataset, "iconic")
    g0, icon = embed_labelled(emb, icon, a.cache, progress=False)
    shop, _ = embed_labelled(emb, grocery_split(a.dataset, "train"), a.cache, progress=False)
    q, qi = embed_labelled(emb, grocery_split(a.dataset, a.split), a.cache, progress=False)
    cats = [i.category for i in icon]
    lab = np.array([cats.index(i.category) for i in qi])
    keys = [sha256_file(i.path) for i in icon]
    s8 = VectorCache(a.cache, f"{emb.fingerprint}+shopper8", emb.dim).get_many(keys)
    p8 = piles(emb, icon)

    def rec(views: np.ndarray | None, w: float, adapt: int = 2, sample: np.ndarray = shop) -> dict:
        g = g0 if views is None else n2(g0 + w * n2(views))
        c = fit_centring(g, sample, "x", "train")
        gc = c.gallery(g)
        gc = adapt_gallery(gc, c.query(sample), adapt) if adapt else gc
        order = np.argsort(-(c.query(q) @ gc.T), 1)
        return {"recall@1": round(float((order[:, 0] == lab).mean()), 4),
                "recall@5": round(float((order[:, :5] == lab[:, None]).any(1).mean()), 4)}

    rows = [{"config": "centred + adapt 2", **rec(None, 0)}]
    for w in (0.25, 0.5, 1.0):
        rows.append({"config": f"8 shopper views w {w}", **rec(s8, w)})
        for k in (4, 8):
            rows.append({"config": f"{k} pile views w {w}", **rec(p8[:, :k].mean(1), w)})
            rows.append({"config": f"8 shopper + {k} pile views (mean of all) w {w}",
                         **rec((8 * s8 + p8[:, :k].sum(1)) / (8 + k), w)})
            rows.append({"config": f"8 shopper + {k} pile views (halves) w {w}",
                         **rec(n2(s8) + n2(p8[:, :k].mean(1)), w)})
    tr = grocery_split(a.dataset, "train")
    v0 = VectorCache(a.cache, view_fingerprint(emb.fingerprint, 0), emb.dim)
    have = [i for i in tr if sha256_file(i.path) in v0]
    if have:
        grown = np.vstack([shop, v0.get_many([sha256_file(i.path) for i in have])])
        for adapt in (2, 3):
            rows.append({"config": f"8 shopper views w 0.5, sample + 1 view per photo, adapt {adapt}",
                         **rec(s8, 0.5, adapt, grown)})
    rows = [r for r in rows if a.only is None or r["config"] == a.only]
    for r in rows:
        print(f"{r['config']:<52} {r['recall@1']:.4f} {r['recall@5']:.4f}", flush=True)
    res = {"benchmark": "iconic_piles", "split": a.split, "queries": int(len(q)), "products": len(g0),
           "shopper_sample": "train photos (labels unused)", "rows": rows,
           **stamped_machine()}
    write_result(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
