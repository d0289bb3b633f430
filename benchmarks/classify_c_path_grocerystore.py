"""The frozen head's regularisation above the CV grid's edge, and flip TTA of the photos it
classifies, on Grocery Store val (issue 13). `classify train` chose C = 1.0, the top of its
grid (shopsearch.classify.probe.C_GRID): would a weaker penalty do better? Each row is the
fine probe fitted on train + iconic (+ N synthetic views per image) at one C of a warm-started
path (shopsearch.classify.probe.regularisation_path), scored on val alone and mixed with the
nearest-neighbour vote chosen on val (as `classify train` does). `--tta`: each val photo is
the unit mean of its and its mirror image's vectors (`classify eval --tta on`).

    .venv/bin/python benchmarks/classify_c_path_grocerystore.py --views 0 --c 0.3,1,3,10,30 \
        --out benchmarks/results/classify_c_path_grocerystore_val.json
    .venv/bin/python benchmarks/classify_c_path_grocerystore.py --views 0 --c 1 --tta \
        --out benchmarks/results/classify_tta_grocerystore_val.json
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from shopsearch.classify.data import grocery_split
from shopsearch.classify.knn import choose_vote
from shopsearch.classify.labels import LabelSpace
from shopsearch.classify.photo_views import view_vectors
from shopsearch.classify.probe import regularisation_path
from shopsearch.classify.vectors import embed_labelled
from shopsearch.embedders import load_embedder
from shopsearch.evaluation import tta
from shopsearch.evaluation.machine import machine_info
from shopsearch.images import sha256_file

from _bench_io import grocery_parser, write_result


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def main() -> int:
    ap = grocery_parser(__doc__)
    ap.add_argument("--views", type=int, default=0)
    ap.add_argument("--c", default="0.3,1,3,10,30", help="The path's C values.")
    ap.add_argument("--tta", action="store_true", help="Val photos averaged with their mirror images.")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    emb = load_embedder("efficientnet-lite0", "cpu")
    xs, train = embed_labelled(emb, grocery_split(a.dataset, "train") + grocery_split(a.dataset, "iconic"), a.cache,
                               progress=False)
    xv, val = embed_labelled(emb, grocery_split(a.dataset, "val"), a.cache, progress=False)
    labels = LabelSpace.from_paths(i.category for i in train)
    yf = np.array([labels.fine_index(i.category) for i in train])
    yv = np.array([labels.fine_index(i.category) for i in val])
    if a.tta:
        keys = [i.sha256 or sha256_file(i.path) for i in val]
        mirrored = tta.flipped_cache(emb, a.cache, list(zip([i.path for i in val], keys)), progress=False)
        xv = tta.combine(xv, mirrored.get_many(keys))
    x, y = xs, yf
    if a.views:
        vv, ok = view_vectors(emb, [(i.path, i.sha256 or sha256_file(i.path)) for i in train], a.views, a.cache,
                              progress=False)
        x = np.vstack([xs, vv[ok].reshape(-1, xs.shape[1])])
        y = np.concatenate([yf, np.repeat(yf[ok], a.views)])
    t = time.time()
    probes = regularisation_path(x, y, len(labels.fine), tuple(float(c) for c in a.c.split(",")))
    fit_s = time.time() - t
    rows = []
    for p in probes:
        pr = _softmax(p.logits(xv))
        vote, _ = choose_vote(xv, yv, pr, xs, yf, len(labels.fine))
        mixed = (1 - vote.weight) * pr + vote.weight * vote.probs(xv)
        rows.append({"C": p.c, "val_fine_top1_head": round(float((pr.argmax(1) == yv).mean()), 4),
                     "val_fine_top1": round(float((mixed.argmax(1) == yv).mean()), 4), "knn_weight": vote.weight})
        print(rows[-1], flush=True)
    res = {"benchmark": "classify_c_path", "split": "val", "train": "train+iconic", "model": emb.name,
           "views": a.views, "tta": a.tta, "train_samples": int(len(y)), "val_images": len(val), "rows": rows,
           "path_fit_s": round(fit_s, 1), "machine": machine_info(),
           "note": "path_fit_s: the whole warm-started path, fine level only, on a loaded shared machine"}
    write_result(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
