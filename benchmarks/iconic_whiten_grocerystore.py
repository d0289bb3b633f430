"""Iconic-only gallery, frozen EfficientNet-Lite0: whitening both domains with a map fitted on the
unlabelled shopper sample (shopsearch.centring.whitening_matrix), on top of what `index build`
served (8 shopper views blended at 0.5, centred, 2 rounds of adaptation), chosen without test (issue 13).

Two checks: the val photos as queries (the train photos the shopper sample, labels unused), and
the train photos as queries of their own where the pipeline does not use them: the train photos
split in two halves at random (seeds 0 and 1), one half the shopper sample, the other the queries,
both ways; the mean of the four recall@1 figures. Rows: the served pipeline; whitening before the
adaptation, as a part of the centring (shrink 50-200: what a build stores) or after it (shrink 10);
32 shopper views instead of 8; a CSLS hubness correction instead (score - 0.25 * mean similarity of
the product to its 50 nearest shopper photos); the served and the chosen one with flip TTA.

Stage 1 (`--extract`, slow on a CPU): the iconic, train and val vectors through the vector cache,
the mirrored val and train photos' vectors, and 32 shopper views of each iconic image one by one
(the generator `index build` uses, same per-image seeds). Stage 2: the rows.

  python benchmarks/iconic_whiten_grocerystore.py --extract --work var/iconic_whiten
  python benchmarks/iconic_whiten_grocerystore.py --work var/iconic_whiten \
      --out benchmarks/results/iconic_whiten_grocerystore_val.json
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shopsearch.centring import adapt_gallery, fit_centring, whitening_matrix  # noqa: E402
from shopsearch.embedders.base import l2_normalize as n2  # noqa: E402
from _bench_io import grocery_parser, stamped_machine, write_result  # noqa: E402
from iconic_views_grocerystore import view_vectors_one_by_one  # noqa: E402

VIEWS = 32


def extract(root: Path, cache_root: Path, work: Path) -> None:
    from shopsearch.classify.data import grocery_split
    from shopsearch.classify.vectors import embed_labelled
    from shopsearch.embedders.registry import load_embedder
    from shopsearch.evaluation import tta
    from shopsearch.images import sha256_file

    emb = load_embedder("efficientnet-lite0", "cpu")
    work.mkdir(parents=True, exist_ok=True)
    for s in ("iconic", "val", "train"):
        v, keep = embed_labelled(emb, grocery_split(root, s), cache_root, progress=False)
        keys = [k.sha256 or sha256_file(k.path) for k in keep]
        np.savez(work / f"base_{s}.npz", v=v, cat=np.array([k.category for k in keep]),
                 path=np.array([k.path for k in keep]), sha=np.array(keys))
        if s != "iconic":
            flipped = tta.flipped_cache(emb, cache_root, list(zip([k.path for k in keep], keys)), progress=False)
            np.save(work / f"flip_{s}.npy", flipped.get_many(keys))
    views = view_vectors_one_by_one(emb, grocery_split(root, "iconic"), VIEWS)
    np.save(work / f"views_served{VIEWS}.npy", views)


def analyse(work: Path) -> dict:
    from shopsearch.evaluation.tta import combine

    z = {s: np.load(work / f"base_{s}.npz") for s in ("iconic", "train", "val")}
    g0, gcat = z["iconic"]["v"], list(z["iconic"]["cat"])
    shop, shoplab = z["train"]["v"], np.array([gcat.index(c) for c in z["train"]["cat"]])
    val, vallab = z["val"]["v"], np.array([gcat.index(c) for c in z["val"]["cat"]])
    flip = {s: np.load(work / f"flip_{s}.npy") for s in ("train", "val")}
    views = np.load(work / f"views_served{VIEWS}.npy")

    def scores(q, sample, n=8, shrink=0.0, order="before", csls=0.0):
        g = n2(g0 + 0.5 * n2(views[:, :n].mean(1)))
        c = fit_centring(g, sample, "lite0", "sample")
        if shrink and order == "before":  # what a build stores: DomainCentring.with_adaptation
            c = c.with_whitening(sample, shrink)
        gc, sc, qc = c.gallery(g), c.query(sample), c.query(q)
        gc = adapt_gallery(gc, sc, 2)
        if shrink and order == "after":
            w = whitening_matrix(sc, shrink)
            gc, sc, qc = n2(gc @ w), n2(sc @ w), n2(qc @ w)
        s = qc @ gc.T
        return s - csls * np.sort(sc @ gc.T, 0)[-50:].mean(0) if csls else s

    def r1(s, lab):
        return float((s.argmax(1) == lab).mean())

    def row(name, tta=False, **kw):
        qv = combine(val, flip["val"]) if tta else val
        s = scores(qv, shop, **kw)
        order = np.argsort(-s, 1)
        halves = []
        for seed in (0, 1):
            p = np.random.default_rng(seed).permutation(len(shop))
            a, b = np.sort(p[: len(p) // 2]), np.sort(p[len(p) // 2:])
            for smp, qs in ((a, b), (b, a)):
                q = combine(shop[qs], flip["train"][qs]) if tta else shop[qs]
                halves.append(r1(scores(q, shop[smp], **kw), shoplab[qs]))
        out = {"config": name + (" + TTA" if tta else ""), "val_recall@1": round(r1(s, vallab), 4),
               "val_recall@5": round(float((order[:, :5] == vallab[:, None]).any(1).mean()), 4),
               "train_halves_recall@1": round(float(np.mean(halves)), 4)}
        print(f"{out['config']:<58} {out['val_recall@1']:.4f} {out['val_recall@5']:.4f} "
              f"{out['train_halves_recall@1']:.4f}", flush=True)
        return out

    rows = [row("served (8 views, centred, adapt 2)")]
    for shrink in (50, 100, 200):
        rows.append(row(f"whitened before adaptation, shrink {shrink}", shrink=shrink))
    rows.append(row("whitened after adaptation, shrink 10", shrink=10, order="after"))
    rows.append(row("whitened before, shrink 100, 32 views", shrink=100, n=VIEWS))
    rows.append(row("served + CSLS 0.25", csls=0.25))
    rows.append(row("served (8 views, centred, adapt 2)", True))
    rows.append(row("whitened before adaptation, shrink 100", True, shrink=100))
    return {"benchmark": "iconic_whiten", "split": "val, and train halves as queries", "val_queries": int(len(val)),
            "products": int(len(g0)), "shopper_sample": "train photos (labels unused); half of them for the halves",
            "rows": rows, **stamped_machine()}


def main() -> int:
    ap = grocery_parser(__doc__)
    ap.add_argument("--extract", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("var/iconic_whiten"))
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.extract:
        extract(a.dataset, a.cache, a.work)
        return 0
    write_result(analyse(a.work), a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
