"""How to fit the confidence (labelled photos or leave-one-out, near-duplicates, features,
unknown-product weight): chosen on the Grocery Store validation photos, quoted once on test.

    python benchmarks/open_set_features.py --dataset ../shared/datasets/grocerystore \
        --out benchmarks/results/open_set_feature_selection_val.json

The open-set protocol of `shopsearch bench recall --open-set 0.2 --calibrate-on val`: a seeded
20% of products removed from the iconic+train gallery; every combination of the first product's
features (shopsearch.confidence.QUERY_FEATURES) and unknown-product weight is fitted on the
validation photos of the kept products and scored on all validation photos out of fold (5 folds
by product), or fitted leave-one-out over the gallery (same-product photos above a similarity
left out too) and scored on all validation photos: AUROC (in vs not in the catalogue) and ECE
(15 bins, in-catalogue photos). The
best on validation (AUROC - 2 ECE) is then scored on the test photos with the fit on all
validation photos. Vectors come from the data dir's vector cache (run bench recall on val and
test first, or this embeds them).

`--fused WEIGHT`: searches fused with a category head (the served probe's recipe) trained on the
kept products' gallery photos only, as `bench recall --fusion on` does; the candidates are then the
labelled fits over every combination of features, those of the category head included."""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from shopsearch.config import Settings
from shopsearch.confidence import HEAD_FEATURES, QUERY_FEATURES
from shopsearch.confidence_fit import LabelledQuery
from shopsearch.embedders import load_embedder
from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.pipeline import WorkItem, embed_items
from shopsearch.evaluation.datasets import load_dataset
from shopsearch.evaluation.machine import machine_info
from shopsearch.evaluation.open_set import OpenSetFusion, OpenSetQuery, evaluate_open_set
from shopsearch.evaluation.runner import probe_head
from shopsearch.images import sha256_file
from shopsearch.index.vector_index import VectorIndex

PRIORS = (0.0, 0.1, 0.2, 0.3)
#: the catalogue-only grid (--catalogue-only): each candidate is one leave-one-out fit of 2,000 searches
CATALOGUE_NEAR_DUPLICATES = (None, 0.9)
CATALOGUE_FEATURES = (("lead", "score"), ("density", "score"), ("density", "lead", "score"),
                      ("density", "lead_mean", "score"))


def _reuse_density_fits() -> None:
    """Every fit of one open set reads the same gallery: its density model is fitted once (the
    candidates differ only in how the confidence reads it)."""
    import shopsearch.confidence_fit as fit

    fitted: dict = {}
    plain = fit.fit_index_density

    def once(index, product_of, *args, **kwargs):
        key = hash(frozenset(product_of.items()))
        if key not in fitted:
            fitted[key] = plain(index, product_of, *args, **kwargs)
        return fitted[key]

    fit.fit_index_density = once
NEAR_DUPLICATES = (None, 0.9, 0.85, 0.8)
LOO_FEATURES = (("score",), ("lead", "score"), ("lead_mean", "score"), ("density", "score"),
                ("density", "lead", "score"), ("density", "lead_mean", "score"))


def cached_vectors(paths: list[str], emb, cache: VectorCache) -> dict[str, np.ndarray]:
    keys = {p: sha256_file(p) for p in paths}
    embed_items(emb, [WorkItem(k, p) for p, k in keys.items()], cache, progress=sys.stderr.isatty())
    return {p: cache.get_many([k])[0] for p, k in keys.items() if k in cache}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, help="Grocery Store root")
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--note", default=None, help="Free text stored with the results (machine load, findings).")
    ap.add_argument("--val-only", action="store_true", help="Choose on validation; no test figures.")
    ap.add_argument("--only", default=None, metavar="FEATURES:PRIOR[,...]",
                    help="Score just these labelled candidates (e.g. lead_mean+score:0.1, chosen by an earlier "
                         "--val-only run; several separated by commas) on val, then the best on val on test.")
    ap.add_argument("--catalogue-only", action="store_true",
                    help="Also choose the catalogue-only fallback (leave-one-out over the gallery, no labelled "
                         "photos) on val, and score the chosen one on test beside the labelled fit.")
    ap.add_argument("--fused", type=float, default=None, metavar="WEIGHT",
                    help="Fuse a head trained on the kept products with this weight (the served router's).")
    a = ap.parse_args()
    settings = Settings.from_env()
    _reuse_density_fits()
    emb = load_embedder(a.model, settings.device, settings.models_dir)
    cache = VectorCache(settings.vector_cache_dir, emb.fingerprint, emb.dim)
    val, test = (load_dataset(a.dataset, "grocerystore", "iconic+train", s) for s in ("val", "test"))
    gallery = [(p.sku, im.path) for p in val.products for im in p.images]
    finals = () if a.val_only else tuple(test.queries)
    vecs = cached_vectors([g for _, g in gallery] + [q.path for q in val.queries + finals], emb, cache)
    gallery = [(s, g) for s, g in gallery if g in vecs]
    index = VectorIndex(emb.dim, "flat", expected_size=len(gallery))
    index.add(np.arange(len(gallery), dtype=np.int64), np.stack([vecs[g] for _, g in gallery]))
    product_of = {i: s for i, (s, _) in enumerate(gallery)}
    hash_of = {i: sha256_file(g) for i, (_, g) in enumerate(gallery)}  # identical copies left out of leave-one-out

    def queries(d):
        return [OpenSetQuery(vecs[q.path], frozenset({q.sku})) for q in d.queries if q.path in vecs]

    labelled = [LabelledQuery(vecs[q.path], q.sku) for q in val.queries if q.path in vecs]
    fusion = None
    if a.fused is not None:
        category_of = {p.sku: "/".join(p.category_path or ()) for p in val.products}
        heads: dict[int, tuple] = {}  # one head per gallery (the kept products): trained once, reused

        def train(vectors, categories):
            key = hash(tuple(categories))
            if key not in heads:
                heads[key] = probe_head(vectors, categories)
            return heads[key]

        fusion = OpenSetFusion(train, a.fused, category_of)
    rows = []
    names_pool = sorted(QUERY_FEATURES) if fusion else sorted(set(QUERY_FEATURES) - HEAD_FEATURES)
    combos = [c for n in range(1, len(names_pool) + 1) for c in itertools.combinations(names_pool, n)]
    grid = [(names, prior) for names in combos for prior in (PRIORS if not fusion else (0.1, 0.2))]
    if a.only:
        grid = [(tuple(sorted(c.split(":")[0].split("+"))), float(c.split(":")[1])) for c in a.only.split(",")]
    for names, prior in grid:
        if len(HEAD_FEATURES & set(names)) > 1:
            continue  # one reading of the head at a time
        r = evaluate_open_set(index, product_of, hash_of, queries(val), a.fraction, a.seed, labelled=labelled,
                              labelled_are_queries=True, query_features=names, unknown_prior=prior, fusion=fusion)
        rows.append({"source": "labelled", "features": list(names), "unknown_prior": prior,
                     "val_auroc": r.auroc, "val_ece": r.ece})
        print(f"{'+'.join(names):28s} prior {prior:.1f}  val AUROC {r.auroc:.4f}  ECE {r.ece:.4f}", file=sys.stderr)
    # leave-one-out over the gallery: the fit never sees a validation photo
    loo_rows = []
    near_grid, loo_grid = ((CATALOGUE_NEAR_DUPLICATES, CATALOGUE_FEATURES) if a.catalogue_only else
                           (NEAR_DUPLICATES if fusion is None and not a.only else (), LOO_FEATURES))
    for near in near_grid:
        for names in loo_grid:
            for prior in (0.1,):  # each leave-one-out fit searches 2,000 photos: a smaller grid
                r = evaluate_open_set(index, product_of, hash_of, queries(val), a.fraction, a.seed,
                                      query_features=names, unknown_prior=prior, near_duplicate=near)
                loo_rows.append({"source": "leave-one-out", "near_duplicate": near, "features": list(names),
                                 "unknown_prior": prior, "val_auroc": r.auroc, "val_ece": r.ece})
                print(f"loo {near} {'+'.join(names):24s} prior {prior:.1f}  val AUROC {r.auroc:.4f}  ECE {r.ece:.4f}",
                      file=sys.stderr)
    best = max(rows + ([] if a.catalogue_only else loo_rows), key=lambda r: r["val_auroc"] - 2 * r["val_ece"])
    catalogue = max(loo_rows, key=lambda r: r["val_auroc"] - 2 * r["val_ece"]) if loo_rows else None
    rows += loo_rows
    print(f"chosen on val: {best}; catalogue-only: {catalogue}", file=sys.stderr)
    if a.val_only:
        return
    baseline = evaluate_open_set(index, product_of, hash_of, queries(test), a.fraction, a.seed, fusion=fusion,
                                 density=False)  # the catalogue-only fit before the density model joined it
    chosen = evaluate_open_set(index, product_of, hash_of, queries(test), a.fraction, a.seed,
                               labelled=labelled if best["source"] == "labelled" else (),
                               query_features=best["features"], unknown_prior=best["unknown_prior"],
                               near_duplicate=best.get("near_duplicate"), fusion=fusion)
    out = {"benchmark": "open_set_feature_selection", "dataset": "grocerystore", "model": emb.name,
           "fusion_weight": a.fused, "head": "probe on the kept products' gallery photos" if fusion else None,
           "fraction": a.fraction, "seed": a.seed, "criterion": "val AUROC - 2 * val ECE (5 folds by product)",
           "candidates": rows, "chosen": best,
           "test": {"chosen": {"auroc": chosen.auroc, "ece": chosen.ece, "method": chosen.calibration.method,
                               "samples": chosen.calibration.samples, "none_below": chosen.calibration.none_below,
                               "match_shares": chosen.match_shares,
                               "top1_accuracy_in_catalogue": chosen.top1_accuracy_in},
                    "leave_one_out_baseline": {"auroc": baseline.auroc, "ece": baseline.ece,
                                               "method": baseline.calibration.method}},
           "note": a.note, "machine": machine_info(), "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if catalogue is not None:  # what a shop without labelled photos gets, as `index build` fits it
        fallback = evaluate_open_set(index, product_of, hash_of, queries(test), a.fraction, a.seed,
                                     query_features=catalogue["features"], unknown_prior=catalogue["unknown_prior"],
                                     near_duplicate=catalogue.get("near_duplicate"), fusion=fusion)
        out["chosen_catalogue_only"] = catalogue
        out["test"]["catalogue_only"] = {"auroc": fallback.auroc, "ece": fallback.ece,
                                         "method": fallback.calibration.method,
                                         "features": list(fallback.calibration.query_features),
                                         "samples": fallback.calibration.samples,
                                         "none_below": fallback.calibration.none_below,
                                         "match_shares": fallback.match_shares}
    text = json.dumps(out, indent=2)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
