"""Iconic-only gallery, frozen EfficientNet-Lite0: which way of using synthetic shopper views
(shopsearch/gallery_aug.py) to choose for `index build` (issue 13). Chosen on val only.

Stage 1 (`--extract`, slow on a CPU): the vectors of the iconic, train (the unlabelled shopper
sample), val and test photos through the project's vector cache, and 16 shopper views of each
iconic image kept one by one (the first N are the views `shopper_views=N` averages: same
generator, same per-image seeds). Stage 2 (seconds): recall@1/5 on `--split` (val) of the
gallery as plain, centred, adapted, and blended with the mean of N views at weight w
(N 4/8/16, w 0.25-2), views centred on the shopper mean instead, each view a vector of its
own with the product scored by its best vector (max), and adaptation rounds/keep.

  python benchmarks/iconic_views_grocerystore.py --dataset ../shared/datasets/grocerystore --extract
  python benchmarks/iconic_views_grocerystore.py --split val \
      --out benchmarks/results/iconic_views_grocerystore_val.json
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shopsearch.centring import adapt_gallery, fit_centring  # noqa: E402
from shopsearch.embedders.base import l2_normalize as n2  # noqa: E402
from _bench_io import grocery_parser, utc_now, write_result  # noqa: E402

WORK = Path("var/iconic_views")
VIEWS = 16


def extract(root: Path, cache_root: Path) -> None:
    from shopsearch.classify.data import grocery_split
    from shopsearch.classify.vectors import embed_labelled
    from shopsearch.embedders.registry import load_embedder

    emb = load_embedder("efficientnet-lite0", "cpu")
    WORK.mkdir(parents=True, exist_ok=True)
    for s in ("iconic", "val", "train", "test"):
        v, keep = embed_labelled(emb, grocery_split(root, s), cache_root, progress=False)
        np.savez(WORK / f"base_{s}.npz", v=v, cat=np.array([k.category for k in keep]),
                 path=np.array([k.path for k in keep]))
    np.save(WORK / f"views_v{VIEWS}.npy", view_vectors_one_by_one(emb, grocery_split(root, "iconic"), VIEWS))


def view_vectors_one_by_one(emb, items, n: int) -> np.ndarray:
    """(images, n, dim): the vectors of `n` shopper views of each catalogue image, kept one by
    one (the first N are the views `shopper_views=N` averages: same generator, same seeds)."""
    from shopsearch.gallery_aug import seed_of, shopper_view
    from shopsearch.images import load_image, sha256_file

    clutter = []
    for it in random.Random(0).sample(items, k=24):  # as shopper_view_vectors picks them
        im = load_image(it.path)
        im.thumbnail((256, 256))
        clutter.append(im)
    out = []
    for it in items:
        img = load_image(it.path)
        img.thumbnail((512, 512))
        rng = random.Random(seed_of(it.sha256 or sha256_file(it.path)))
        out.append(emb.encode_images([shopper_view(img, rng, clutter) for _ in range(n)]))
    return np.stack(out)


def analyse(split: str) -> dict:
    ic, tr, q = (np.load(WORK / f"base_{s}.npz") for s in ("iconic", "train", split))
    g0, shop, queries = ic["v"], tr["v"], q["v"]
    gcat = list(ic["cat"])
    lab = np.array([gcat.index(c) for c in q["cat"]])
    views = np.load(WORK / f"views_v{VIEWS}.npy")
    products = len(g0)

    def rec(scores, owner=None):
        if owner is not None:
            scores = np.stack([scores[:, owner == j].max(1) for j in range(products)], 1)
        order = np.argsort(-scores, 1)
        return {"recall@1": round(float((order[:, 0] == lab).mean()), 4),
                "recall@5": round(float((order[:, :5] == lab[:, None]).any(1).mean()), 4)}

    def run(n=8, w=0.5, agg="mean", adapt=2, centre=True, keep=0.5):
        owner = None
        if agg == "mixc" and n:
            c = fit_centring(g0, shop, "x", "train")
            g = n2(c.gallery(g0) + w * c.query(n2(views[:, :n].mean(1))))
            g = adapt_gallery(g, c.query(shop), adapt, keep=keep) if adapt else g
            return rec(c.query(queries) @ g.T)
        if agg == "max" and n:
            g = np.concatenate([g0, views[:, :n].reshape(-1, g0.shape[1])])
            owner = np.concatenate([np.arange(products), np.repeat(np.arange(products), n)])
        else:
            g = n2(g0 + w * n2(views[:, :n].mean(1))) if n else g0
        if not centre:
            return rec(queries @ g.T, owner)
        c = fit_centring(g, shop, "x", "train")
        gc = c.gallery(g)
        gc = adapt_gallery(gc, c.query(shop), adapt, keep=keep) if adapt else gc
        return rec(c.query(queries) @ gc.T, owner)

    rows = [{"config": "plain", **run(n=0, centre=False, adapt=0)},
            {"config": "centred", **run(n=0, adapt=0)}, {"config": "centred + adapt 2", **run(n=0)}]
    for n in (4, 8, 16):
        for w in (0.25, 0.5, 1.0, 2.0):
            rows.append({"config": f"views {n} mean w {w} + centred + adapt 2", **run(n=n, w=w)})
            rows.append({"config": f"views {n} mean w {w} + centred", **run(n=n, w=w, adapt=0)})
    for n in (8, 16):
        for w in (0.5, 1.0, 2.0):
            rows.append({"config": f"views {n} centred on the shopper mean w {w} + adapt 2", **run(n=n, w=w, agg="mixc")})
    for n in (4, 8, 16):
        rows.append({"config": f"views {n} as vectors of their own (max) + centred + adapt 2", **run(n=n, agg="max")})
    for a in (1, 2, 3):
        for keep in (0.4, 0.5, 0.6):
            rows.append({"config": f"views 8 mean w 0.5 + centred + adapt {a} keep {keep}", **run(adapt=a, keep=keep)})
    return {"split": split, "queries": int(len(queries)), "products": products, "shopper_sample": int(len(shop)),
            "rows": rows, "machine": {"cpu": "2-core Intel Xeon (AMX, AVX512-BF16), shared",
                                      "load_avg_1m": round(os.getloadavg()[0], 2),
                                      "recorded_at": utc_now()}}


def main() -> int:
    ap = grocery_parser(__doc__, split=True)
    ap.add_argument("--extract", action="store_true")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.extract:
        extract(a.dataset, a.cache)
        return 0
    res = analyse(a.split)
    for r in res["rows"]:
        print(f"{r['config']:<62} {r['recall@1']:.3f} {r['recall@5']:.3f}")
    write_result(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
