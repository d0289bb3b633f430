"""Iconic-only gallery, frozen EfficientNet-Lite0: what can be added to the served pipeline
(8 shopper views blended at 0.5, centred on the train photos as the unlabelled shopper
sample, 2 rounds of adaptation) without any labelled shopper photo (issue 13). Val only.

Rows: the served pipeline; + flip TTA of the queries; + a head trained on the iconic images
and N synthetic views of each (shopsearch.classify.photo_views, no shopper photo) fused as
similarity + w * log p, its inputs standardised with the training mean or the shopper
sample's; + the best similarity to a product's individual views (moved as the adaptation
moved the product); + a vote of the query's nearest unlabelled shopper photos, each
labelled softly by the served gallery (label propagation through the shopper sample).

Needs the vector cache filled as benchmarks/iconic_piles_grocerystore.py says, plus N views
of each iconic image (embedded here on first use).

    .venv/bin/python benchmarks/iconic_fusion_grocerystore.py --views 4 \
        --out benchmarks/results/iconic_fusion_grocerystore_val.json
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from shopsearch.centring import adapt_gallery, fit_centring
from shopsearch.classify.data import grocery_split
from shopsearch.classify.photo_views import view_vectors
from shopsearch.classify.probe import fit_probe
from shopsearch.classify.vectors import embed_labelled
from shopsearch.embedders import load_embedder
from shopsearch.embedders.base import l2_normalize as n2
from shopsearch.embedding.cache import VectorCache
from shopsearch.evaluation import tta
from shopsearch.evaluation.machine import machine_info
from shopsearch.gallery_aug import VIEW_WEIGHT, views_fingerprint
from shopsearch.images import sha256_file

from _bench_io import grocery_parser, write_result


def _softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    e = np.exp((z - z.max(1, keepdims=True)) / t)
    return e / e.sum(1, keepdims=True)


def main() -> int:
    ap = grocery_parser(__doc__, split=True)
    ap.add_argument("--views", type=int, default=4, help="Synthetic views per iconic image for the head.")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    emb = load_embedder("efficientnet-lite0", "cpu")
    g0, icon = embed_labelled(emb, grocery_split(a.dataset, "iconic"), a.cache, progress=False)
    shop, _ = embed_labelled(emb, grocery_split(a.dataset, "train"), a.cache, progress=False)
    q, qi = embed_labelled(emb, grocery_split(a.dataset, a.split), a.cache, progress=False)
    cats = [i.category for i in icon]
    lab = np.array([cats.index(i.category) for i in qi])
    keys = [i.sha256 or sha256_file(i.path) for i in icon]
    s8 = VectorCache(a.cache, views_fingerprint(emb.fingerprint, 8), emb.dim).get_many(keys)
    views, ok = view_vectors(emb, list(zip([i.path for i in icon], keys)), a.views, a.cache, progress=False)
    assert ok.all(), "an iconic image has no views"
    blended = n2(g0 + VIEW_WEIGHT * n2(s8))
    cen = fit_centring(blended, shop, "lite0", "train")
    gc = adapt_gallery(cen.gallery(blended), cen.query(shop), 2)
    qc = cen.query(q)
    base = qc @ gc.T
    rows: list[dict] = []

    def row(name: str, scores: np.ndarray) -> None:
        order = np.argsort(-scores, 1)
        rows.append({"config": name, "recall@1": round(float((order[:, 0] == lab).mean()), 4),
                     "recall@5": round(float((order[:, :5] == lab[:, None]).any(1).mean()), 4)})
        print(f"{name:<64} {rows[-1]['recall@1']:.4f} {rows[-1]['recall@5']:.4f}", flush=True)

    row("served (8 shopper views w 0.5, centred, adapt 2)", base)
    qkeys = [i.sha256 or sha256_file(i.path) for i in qi]
    mirrored = tta.flipped_cache(emb, a.cache, list(zip([i.path for i in qi], qkeys)), progress=False)
    row("served + TTA", cen.query(tta.combine(q, mirrored.get_many(qkeys))) @ gc.T)
    # a head on the iconic images and their views only (no shopper photo), fused log-linearly
    x = np.vstack([g0, views.reshape(-1, emb.dim)])
    y = np.concatenate([np.arange(len(g0)), np.repeat(np.arange(len(g0)), a.views)])
    t = time.time()
    probe = fit_probe(x, y, len(g0), c_grid=(0.1,))
    head_s = time.time() - t
    for dom, mean in (("training mean", probe.mean), ("shopper-sample mean", shop.mean(0))):
        p = _softmax(((q - mean) / probe.scale) @ probe.weight.T + probe.bias)
        row(f"head alone (C 0.1, {a.views} views, {dom})", p)
        for w in (0.01, 0.03, 0.1):
            row(f"served + head ({dom}) w {w}", base + w * np.log(np.maximum(p, 1e-4)))
    # the product's individual views, moved as adaptation moved the product
    shift = gc - cen.gallery(blended)
    vc = n2((cen.gallery(views.reshape(-1, emb.dim)).reshape(views.shape) + shift[:, None, :]).reshape(-1, emb.dim))
    best_view = np.einsum("qd,gvd->qgv", qc, vc.reshape(views.shape)).max(2)
    for b in (0.25, 0.5):
        row(f"served + {b} x best adapted view similarity", base + b * best_view)
    # label propagation: the query's nearest unlabelled shopper photos vote with the gallery's soft labels
    sc = cen.query(shop)
    soft = _softmax(sc @ gc.T, 0.05)
    near = qc @ sc.T
    for k, tau, beta in ((10, 0.05, 0.1), (20, 0.05, 0.1), (20, 0.1, 0.2)):
        top = np.argpartition(-near, k - 1, axis=1)[:, :k]
        w = _softmax(np.take_along_axis(near, top, 1), tau)
        row(f"served + {beta} x vote of {k} nearest shopper photos (tau {tau})",
            base + beta * np.einsum("qk,qkg->qg", w, soft[top]))
    res = {"benchmark": "iconic_fusion", "split": a.split, "queries": int(len(q)), "products": len(g0),
           "shopper_sample": "train photos (labels unused)", "head_views": a.views, "head_fit_s": round(head_s, 1),
           "rows": rows, "machine": machine_info(),
           "note": "head_fit_s on a loaded shared 2-core machine; recall does not depend on load"}
    write_result(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
