"""Which features of a fused search tell a right first product from a wrong one, on validation
photos only (5 folds by product): the serving build and head of a data dir (the demo's: the head was
trained on the catalogue and never saw a val photo) and its fusion weight.

    SHOPSEARCH_DATA_DIR=var python benchmarks/confidence_fused_features.py ../shared/datasets/grocerystore

Prints one JSON line (benchmarks/results/confidence_fused_features_val.json holds a run)."""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from shopsearch.app import embedder_for_index, open_catalogue, open_index_store, serving_fusion
from shopsearch.config import Settings
from shopsearch.confidence_fit import calibrate_index, ranked_as_served
from shopsearch.evaluation.datasets import load_dataset
from shopsearch.evaluation.open_set import auroc, ece
from shopsearch.labelled_photos import load_labelled_photos

FOLDS = 5
CANDIDATES = (("score",), ("lead_mean", "score"), ("lead", "score"), ("head", "score"), ("head_log", "score"),
              ("head", "lead_mean", "score"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="Grocery Store root (its val photos are used)")
    a = ap.parse_args()
    settings = Settings.from_env()
    store = open_index_store(settings)
    index, _ = store.load_current()
    catalogue = open_catalogue(settings)
    embedder = embedder_for_index(settings, store)
    fusion = serving_fusion(settings, embedder, catalogue)
    if fusion is None:
        sys.exit("this data dir's search does not fuse a category head (train one: shopsearch classify train)")
    product_of = {im.id: im.product_id for im in catalogue.indexable_images()}
    val = load_dataset(a.dataset, "grocerystore", "iconic", "val").queries
    photos = load_labelled_photos([(Path(q.path), q.sku) for q in val], embedder, catalogue,
                                  settings.vector_cache_dir, progress=False).queries
    products = sorted({q.product for q in photos})
    fold = {p: i % FOLDS for i, p in enumerate(np.random.default_rng(0).permutation(products))}
    out = {"fusion_weight": fusion.weight, "photos": len(photos), "candidates": []}
    for names in CANDIDATES:
        conf, ok = [], []
        for f in range(FOLDS):
            fit = calibrate_index(index, product_of, {}, labelled=[q for q in photos if fold[q.product] != f],
                                  fusion=fusion, query_feature_names=names)
            held = [q for q in photos if fold[q.product] == f]
            vecs = np.stack([q.vector for q in held])
            scores, ids = index.search(vecs, 64)
            for q, sc, nb, pr in zip(held, scores, ids, fusion.probabilities(vecs)):
                ranked, head = ranked_as_served(sc, nb, product_of, set(), 5, fusion, pr)
                conf.append(fit.confidence([s for _, s in ranked], head)[0])
                ok.append(ranked[0][0] == q.product)
        c, y = np.array(conf), np.array(ok)
        row = {"features": list(names), "val_auroc_right_vs_wrong": round(auroc(c, y), 4),
               "val_ece": round(ece(c, y), 4), "top1": round(float(y.mean()), 4)}
        out["candidates"].append(row)
        print(row, file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
