"""Category classifier + retrieval on the Grocery Store test split.

Classification: the fine-tuned artefact's head (trained on train+iconic, tuned on val) and a
frozen-backbone baseline head, top-1/top-5 on the 81 fine and 43 coarse classes.
Retrieval: shopper photo (test) -> product, gallery = iconic + train photos (one product
per fine class), recall@1/@5 for the frozen and the fine-tuned embedder, and with category
routing on (the fine-tuned router's filter/top-2/all decisions restrict the gallery, topped
up from the unrestricted ranking like SearchService does).

    SHOPSEARCH_DATA_DIR=var .venv/bin/python benchmarks/classify_grocerystore.py \
        --model finetuned:gs-effnet --out benchmarks/results/classify_grocerystore.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from shopsearch.classify.artefact import load_artefact
from shopsearch.classify.data import grocery_split
from shopsearch.classify.router import Classifier, ClassifierRouter, find_artefact
from shopsearch.classify.training import accuracy_report, train_frozen
from shopsearch.config import Settings
from shopsearch.embedders import load_embedder
from shopsearch.classify.vectors import embed_labelled

REPO = Path(__file__).resolve().parents[1]


def recall(query_vecs, query_cats, gal_vecs, gal_cats, router=None, ks=(1, 5)):
    """Product-level recall@k (a product = a fine category here), optionally routed."""
    sims = query_vecs @ gal_vecs.T
    gal_cats = np.array(gal_cats)
    hits = {k: 0 for k in ks}
    routing = {"filter": 0, "top2": 0, "all": 0}
    for qi in range(len(query_vecs)):
        order = np.argsort(-sims[qi])
        ranked = list(dict.fromkeys(gal_cats[order]))  # best image per product
        if router is not None:
            pred, allowed = router.route(query_vecs[qi])
            routing[pred.routing] += 1
            if allowed is not None:
                inside = [c for c in ranked if c in allowed]
                ranked = inside + [c for c in ranked if c not in allowed]
        for k in ks:
            hits[k] += query_cats[qi] in ranked[:k]
    n = len(query_vecs)
    out = {f"recall@{k}": hits[k] / n for k in ks}
    if router is not None:
        out["routing"] = {k: v / n for k, v in routing.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="finetuned:gs-effnet")
    ap.add_argument("--base", default="efficientnet-lite0")
    ap.add_argument("--dataset", default=str(REPO.parent / "shared" / "datasets" / "grocerystore"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "classify_grocerystore.json"))
    args = ap.parse_args()
    settings = Settings.from_env(device="cpu")
    t0 = time.time()
    train = grocery_split(Path(args.dataset), "train") + grocery_split(Path(args.dataset), "iconic")
    val = grocery_split(Path(args.dataset), "val")
    test = grocery_split(Path(args.dataset), "test")
    cache = settings.vector_cache_dir
    result: dict = {"dataset": args.dataset, "train_images": len(train), "val_images": len(val),
                    "test_images": len(test), "machine": platform.machine(), "device": "cpu"}
    vecs = {}
    for key, spec in (("frozen", args.base), ("finetuned", args.model)):
        emb = load_embedder(spec, "cpu")
        g, g_items = embed_labelled(emb, train, cache)
        v, v_items = embed_labelled(emb, val, cache)
        q, q_items = embed_labelled(emb, test, cache)
        vecs[key] = (emb, g, g_items, v, v_items, q, q_items)
    # classification
    emb, g, g_items, v, v_items, q, q_items = vecs["finetuned"]
    path = find_artefact(settings, emb)
    clf = Classifier.for_embedder(load_artefact(path), emb)
    pf, pc = clf.probs(q)
    y = np.array([clf.labels.fine_index(i.category) for i in q_items])
    result["finetuned"] = {"model": args.model, "fingerprint": emb.fingerprint, "artefact": str(path),
                           "thresholds": clf.artefact.thresholds.to_dict(),
                           "val": clf.artefact.metrics.get("val"), "training": {
                               k: clf.artefact.metrics.get(k) for k in ("best_epoch", "seconds", "config")},
                           "test": accuracy_report(pf, pc, y, clf.labels)}
    emb0, g0, g0_items, v0, v0_items, q0, q0_items = vecs["frozen"]
    art0 = train_frozen(g0, g0_items, v0, v0_items, emb0.fingerprint, emb0.name)
    clf0 = Classifier(art0)
    pf0, pc0 = clf0.probs(q0)
    y0 = np.array([clf0.labels.fine_index(i.category) for i in q0_items])
    result["frozen_head"] = {"model": args.base, "fingerprint": emb0.fingerprint,
                             "test": accuracy_report(pf0, pc0, y0, clf0.labels), "val": art0.metrics.get("val")}
    # retrieval
    cats = lambda items: [i.category for i in items]  # noqa: E731
    result["retrieval"] = {
        "gallery": "iconic + train photos", "queries": "test photos",
        "frozen": recall(q0, cats(q0_items), g0, cats(g0_items)),
        "finetuned": recall(q, cats(q_items), g, cats(g_items)),
        "finetuned_routed": recall(q, cats(q_items), g, cats(g_items), ClassifierRouter(clf)),
        "frozen_routed_by_frozen_head": recall(q0, cats(q0_items), g0, cats(g0_items), ClassifierRouter(clf0)),
    }
    result["seconds"] = round(time.time() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({"finetuned_test": {k: result["finetuned"]["test"][k] for k in ("fine", "coarse")},
                      "frozen_test": {k: result["frozen_head"]["test"][k] for k in ("fine", "coarse")},
                      "retrieval": result["retrieval"]}, indent=1))


if __name__ == "__main__":
    main()
