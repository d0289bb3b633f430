"""Which features of a fused search tell a right first product from a wrong one, on validation
photos only (5 folds by product): the serving build and head of a data dir (the demo's: the head was
trained on the catalogue and never saw a val photo) and its fusion weight.

    SHOPSEARCH_DATA_DIR=var python benchmarks/confidence_fused_features.py ../shared/datasets/grocerystore

Prints one JSON line (benchmarks/results/confidence_fused_features_val.json holds a run)."""
import json
import sys

import numpy as np
from shopsearch.config import Settings
from shopsearch.app import open_catalogue, open_index_store, embedder_for_index, serving_fusion
from shopsearch.confidence_fit import LabelledQuery, calibrate_index, ranked_as_served
from shopsearch.evaluation.datasets import load_dataset
from shopsearch.evaluation.open_set import auroc, ece
from shopsearch.labelled_photos import load_labelled_photos
from pathlib import Path

s = Settings.from_env()
store = open_index_store(s); index, man = store.load_current(); cat = open_catalogue(s)
emb = embedder_for_index(s, store); fusion = serving_fusion(s, emb, cat)
imgs = cat.indexable_images(); product_of = {im.id: im.product_id for im in imgs}
val = load_dataset(sys.argv[1], "grocerystore", "iconic", "val").queries
qs = list(load_labelled_photos([(Path(q.path), q.sku) for q in val], emb, cat, s.vector_cache_dir, progress=False).queries)
prods = sorted({q.product for q in qs}); rng = np.random.default_rng(0)
fold = {p: i % 5 for i, p in enumerate(rng.permutation(prods))}
out = {"fusion_weight": fusion.weight, "photos": len(qs), "candidates": []}
for names in (("score",), ("lead_mean", "score"), ("lead", "score"), ("head", "score"), ("head_log", "score"), ("head", "lead_mean", "score")):
    conf, ok = [], []
    for f in range(5):
        fit = calibrate_index(index, product_of, {}, labelled=[q for q in qs if fold[q.product] != f], fusion=fusion,
                              query_feature_names=names)
        test = [q for q in qs if fold[q.product] == f]
        vecs = np.stack([q.vector for q in test]); sc, nb = index.search(vecs, 64)
        for q, a, b, pr in zip(test, sc, nb, fusion.probabilities(vecs)):
            r, h = ranked_as_served(a, b, product_of, set(), 5, fusion, pr)
            conf.append(fit.confidence([x for _, x in r], h)[0]); ok.append(r[0][0] == q.product)
    conf, ok = np.array(conf), np.array(ok)
    row = {"features": list(names), "val_auroc_right_vs_wrong": round(auroc(conf, ok), 4), "val_ece": round(ece(conf, ok), 4),
           "top1": round(float(ok.mean()), 4)}
    out["candidates"].append(row); print(row, flush=True)
print(json.dumps(out))
