"""More readings of a search for the confidence, chosen on the Grocery Store validation photos only
(the open set of `bench recall --open-set 0.2`, fused with a head trained on the kept products, as
benchmarks/open_set_features.py --fused 0.5): the margin between the first two products (plain
and fused), the head's top probability, its agreement with retrieval's first product and its
entropy, the label entropy and first product's share of the 10 nearest photos, the mirrored
photo's first product and score (test-time augmentation), and the familiarity of the photo's and
its mirror's mean vector, each beside the served score + density (+ head). Each photo of a kept
product also enters the fit with its product left out (an unknown product, weight 0.1), as
shopsearch.confidence_fit does; scored out of fold (5 folds by product).

    SHOPSEARCH_DATA_DIR=/tmp/trust5 python benchmarks/confidence_more_features.py \
        --dataset ../shared/datasets/grocerystore --out benchmarks/results/confidence_more_features_val.json"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from shopsearch.confidence import fit_logistic
from shopsearch.confidence_fit import without_category
from shopsearch.evaluation.open_set import auroc, ece

sys.path.insert(0, str(Path(__file__).parent))
from open_set_features import cached_vectors  # noqa: E402 - the same vector cache as the feature selection
from _bench_io import utc_now, write_result  # noqa: E402

WEIGHT, PRIOR, FOLDS = 0.5, 0.1, 5
NEW = ("lead", "lead_mean", "head", "head_max", "head_agree", "head_ratio", "fused_lead", "knn_share",
       "knn_entropy", "flip_agree", "flip_score", "flip_cos", "tta_density", "h_entropy")


def readings(q, qf, own, g, gsku, probs, col, cat_of, dens) -> dict:
    """One photo's candidate features (`own`: its product left out, None: the catalogue as it is)."""
    keep = np.ones(len(g), bool) if own is None else gsku != own

    def fused_best(v):
        sims = g @ v
        order = np.argsort(-np.where(keep, sims, -9))[:64]
        pr = probs(v[None])[0]
        pr = pr if own is None else without_category(pr, col.get(cat_of[own]))
        best: dict = {}
        for i in order:
            best.setdefault(gsku[i], float(sims[i]))
        h = {p: pr[col[cat_of[p]]] if cat_of[p] in col else 1 / len(col) for p in best}
        ranked = sorted(best, key=lambda p: -(best[p] + WEIGHT * np.log(max(h[p], 1e-4))))
        return ranked, best, h, pr, order

    ps, best, h, pr, order = fused_best(q)
    fps, fbest, _, _, _ = fused_best(qf)
    sc = np.array([best[p] for p in ps])
    fz = sc + WEIGHT * np.log(np.maximum([h[p] for p in ps], 1e-4))
    top = ps[0]
    k10 = [gsku[i] for i in order[:10]]
    _, cnt = np.unique(k10, return_counts=True)
    pk = cnt / cnt.sum()
    mean = (q + qf) / np.linalg.norm(q + qf)
    return dict(top=top, score=sc[0], lead=sc[0] - sc[1], lead_mean=sc[0] - sc[1:5].mean(), head=h[top],
                head_max=pr.max(), head_agree=float(np.argmax(pr) == col.get(cat_of[top], -1)),
                head_ratio=h[top] / pr.max(), fused_lead=fz[0] - fz[1],
                density=float(dens.familiarity(q, without=own)[0]), knn_share=float(np.mean([x == top for x in k10])),
                knn_entropy=float(-(pk * np.log(pk)).sum()), flip_agree=float(fps[0] == top),
                flip_score=float((g @ qf)[keep & (gsku == top)].max()), flip_cos=float(q @ qf),
                tta_density=float(dens.familiarity(mean, without=own)[0]), h_entropy=float(-(pr * np.log(pr + 1e-12)).sum()))


def evaluate(rows: list[dict], fold_of: dict, names: tuple[str, ...]) -> dict:
    def x(rs):
        return np.array([[float(r[n]) for n in names] for r in rs])

    conf, inside, ok = [], [], []
    for f in range(FOLDS):
        fit = [r for r in rows if fold_of[r["sku"]] != f]
        pos, lo = [r for r in fit if not r["lo"] and r["inside"]], [r for r in fit if r["lo"]]
        y = np.array([r["right"] for r in pos] + [0] * len(lo), float)
        w = np.ones(len(y))
        w[len(pos):] = PRIOR / (1 - PRIOR) * len(pos) / max(1, len(lo))
        coef = fit_logistic(x(pos + lo), y, weight=w)
        held = [r for r in rows if not r["lo"] and fold_of[r["sku"]] == f]
        z = x(held) @ coef[:-1] + coef[-1]
        conf += list(np.clip(1 / (1 + np.exp(-np.clip(z, -40, 40))), 0.01, 0.99))
        inside += [r["inside"] for r in held]
        ok += [r["right"] and r["inside"] for r in held]
    c, i, k = map(np.array, (conf, inside, ok))
    return {"features": list(names), "prior": PRIOR, "val_auroc": round(auroc(c, i), 4),
            "val_auroc_right": round(auroc(c, k), 4), "val_ece": round(ece(c[i], k[i]), 4)}


def main() -> None:
    from shopsearch.config import Settings
    from shopsearch.density import fit_density
    from shopsearch.embedders import load_embedder
    from shopsearch.embedding.cache import VectorCache
    from shopsearch.evaluation.datasets import load_dataset
    from shopsearch.evaluation.machine import machine_info
    from shopsearch.evaluation.runner import probe_head
    from shopsearch.evaluation.tta import flipped_cache
    from shopsearch.images import sha256_file

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    settings = Settings.from_env()
    emb = load_embedder("efficientnet-lite0", settings.device, settings.models_dir)
    val = load_dataset(a.dataset, "grocerystore", "iconic+train", "val")
    gal = [(p.sku, im.path) for p in val.products for im in p.images]
    cat_of = {p.sku: "/".join(p.category_path or ()) for p in val.products}
    vecs = cached_vectors([g for _, g in gal] + [q.path for q in val.queries],
                          emb, VectorCache(settings.vector_cache_dir, emb.fingerprint, emb.dim))
    flips = flipped_cache(emb, settings.vector_cache_dir, [(q.path, sha256_file(q.path)) for q in val.queries],
                          progress=False)
    gal = [(s, g) for s, g in gal if g in vecs]
    products = sorted({s for s, _ in gal}, key=str)
    rng = np.random.default_rng(0)  # the products and folds evaluate_open_set draws
    removed = {products[i] for i in rng.choice(len(products), int(round(0.2 * len(products))), replace=False).tolist()}
    fold_of = {p: i % FOLDS for i, p in enumerate(rng.permutation(np.array(products, dtype=object)).tolist())}
    kept = [(s, g) for s, g in gal if s not in removed]
    g = np.stack([vecs[p] for _, p in kept]).astype(np.float32)
    gsku = np.array([s for s, _ in kept])
    probs, cols = probe_head(g, [cat_of[s] for s in gsku])
    col = {c: j for j, c in enumerate(cols)}
    dens = fit_density(g, list(gsku))
    rows = []
    for q in (q for q in val.queries if q.path in vecs):
        x = vecs[q.path].astype(np.float32)
        xf = flips.get_many([sha256_file(q.path)])[0].astype(np.float32)
        r = readings(x, xf, None, g, gsku, probs, col, cat_of, dens)
        rows.append(r | {"sku": q.sku, "inside": q.sku not in removed, "right": r["top"] == q.sku, "lo": False})
        if q.sku not in removed:
            rows.append(readings(x, xf, q.sku, g, gsku, probs, col, cat_of, dens)
                        | {"sku": q.sku, "inside": False, "right": False, "lo": True})
    cands = [evaluate(rows, fold_of, (n,)) for n in NEW + ("score", "density")]
    for base in (("density", "score"), ("density", "score", "head")):
        cands += [evaluate(rows, fold_of, base)] + [evaluate(rows, fold_of, base + (n,)) for n in NEW if n not in base]
    key = lambda r: r["val_auroc"] - 2 * r["val_ece"]  # noqa: E731
    out = {"benchmark": "confidence_more_features_val", "dataset": "grocerystore", "model": emb.name,
           "split": "val (5 folds by product, out of fold)", "fraction": 0.2, "seed": 0, "fusion_weight": WEIGHT,
           "head": "probe on the kept products' gallery photos",
           "criterion": "val AUROC (in vs not in the catalogue) - 2 * val ECE; val_auroc_right: first product "
                        "right vs not, all photos", "candidates": sorted(cands, key=lambda r: -key(r)),
           "chosen": max(cands, key=key), "note": a.note, "machine": machine_info(),
           "recorded": utc_now()}
    write_result(out, a.out, echo=True)


if __name__ == "__main__":
    main()
