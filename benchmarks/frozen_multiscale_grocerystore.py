"""Multi-scale frozen Lite0 features on Grocery Store (issue 13): does the fast head, or nearest-
neighbour search, gain when each photo's vector is the mean of the frozen EfficientNet-Lite0's
vectors at two input sizes? Val only; test is never read.

Instance retrieval often describes an image at several scales and sums the descriptors; the
session-30 grid tried one size at a time (`frozen_resolution_grocerystore.py`: 288/0.875 best).
Here train + iconic and val are embedded at each size of --sizes with classify's own code
(embed_labelled, view_vectors: the same cached vectors those scripts use), and per combination
the L2-normalised sum of the sizes' vectors ("mean") and their concatenation ("concat") are
scored like a single size: `train_frozen` (the `classify train` head: probe + kNN vote, chosen
on val, no refit) with 0 and 1 augmented views, fine/coarse top-1 on val, and val recall@1 of
a flat nearest-neighbour search over train + iconic.

    python benchmarks/frozen_multiscale_grocerystore.py --cache /tmp/res-cache --sizes 224,288
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np

from _bench_io import grocery_parser, grocery_train_val_views, nearest_recall_at_1, stamped_machine, write_result


def _unit(x: np.ndarray) -> np.ndarray:
    """L2-normalised along the last axis (view vectors are (images, views, dim))."""
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def main() -> int:
    ap = grocery_parser(__doc__)
    ap.add_argument("--sizes", default="224,288", help="input sides, comma-separated (centre crop 0.875 each)")
    ap.add_argument("--views", default="0,1", help="augmented views per training photo to score")
    ap.add_argument("--c", default="1", help="the probe's C grid ('cv': the probe's cross-validated grid)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    from shopsearch.classify.training import train_frozen
    from shopsearch.embedders.efficientnet import load_efficientnet_lite0

    try:
        sizes = [int(s) for s in a.sizes.split(",")]
        views = [int(n) for n in a.views.split(",")]
        grid = None if a.c == "cv" else tuple(float(c) for c in a.c.split(","))
    except ValueError as e:
        ap.error(f"--sizes and --views take integers, --c numbers or 'cv', comma-separated: {e}")
    if not a.dataset.is_dir():
        ap.error(f"no Grocery Store dataset at {a.dataset}")
    feats: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    train = val = None
    for size in sizes:
        emb = load_efficientnet_lite0("cpu", size=size, crop_pct=0.875)
        t = time.time()
        xs, train, xv, val, vv, ok = grocery_train_val_views(emb, a.dataset, a.cache, max(views))
        feats[size] = (_unit(xs), _unit(xv), _unit(vv), ok)
        print(f"{size}: embedded what was not cached in {time.time() - t:.1f} s", flush=True)

    combos = [(s,) for s in sizes] + [c for r in range(2, len(sizes) + 1) for c in itertools.combinations(sizes, r)]
    rows = []
    for combo in combos:
        for how in (("single",) if len(combo) == 1 else ("mean", "concat")):
            parts = [feats[s] for s in combo]
            join = (lambda xs: _unit(np.sum(xs, axis=0))) if how != "concat" else \
                (lambda xs: _unit(np.concatenate(xs, axis=-1)))
            xs, xv, vv = (join([p[i] for p in parts]) for i in range(3))
            ok_all = np.logical_and.reduce([p[3] for p in parts])
            row = {"sizes": list(combo), "join": how, "dim": int(xs.shape[1]),
                   "val_recall_at_1": round(nearest_recall_at_1(xs, train, xv, val), 4)}
            for n in views:
                extra = (vv[ok_all, :n].reshape(-1, vv.shape[2]), np.repeat(np.flatnonzero(ok_all), n)) if n else None
                m = train_frozen(xs, train, xv, val, f"ms-{how}-{combo}", "efficientnet-lite0", refit=False,
                                 views=extra, c_grid=grid).metrics
                row.update({f"v{n}_fine_top1": round(m["val"]["fine"]["top1"], 4),
                            f"v{n}_coarse_top1": round(m["val"]["coarse"]["top1"], 4),
                            f"v{n}_fine_top1_head_only": round(m["knn_vote"]["val_top1_head"], 4)})
            print(row, flush=True)
            rows.append(row)
    res = {"benchmark": "frozen_multiscale", "split": "val", "train": "train+iconic", "model": "efficientnet-lite0",
           "crop_pct": 0.875, "c_grid": list(grid) if grid else "cross-validated (probe's C grid)", "views": views,
           "train_images": len(train), "val_images": len(val), "rows": rows, **stamped_machine()}
    write_result(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
