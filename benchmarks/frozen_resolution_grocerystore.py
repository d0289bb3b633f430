"""The frozen EfficientNet-Lite0's input preprocessing on Grocery Store (issue 13): does the fast
head gain when the same ImageNet weights see the photo larger (FixRes: EfficientNets often score
better a little above their training resolution) or whole (crop_pct 1.0 keeps the border the
default 0.875 centre crop throws away)? Val only; test is never read.

Each variant is `load_efficientnet_lite0(size=S, crop_pct=P)` (timm's eval transform with that
input side and centre-crop share; the fingerprint names both, so each variant has its own
vectors in the project's VectorCache). Per variant: train + iconic and val are embedded with
classify's own code (embed_labelled; view_vectors for the augmented views), then
`train_frozen` (the `classify train` head: probe + kNN vote + fusion chosen on val, no
train+val refit) is fitted with 0 views (deterministic) and 1 view (the served default; the
same augmenter draw for every variant, only the preprocessing differs) and scored on val:
fine and coarse top-1 (`vN_...`: N views; `_head_only`: the probe without the kNN vote).
`val_recall_at_1`: the fine class of each val photo's nearest
train+iconic image by cosine (the product `bench recall` ranks first with a flat index).

Throughput: the same decoded val photos embedded by every variant in turns (encode_images,
batch 32, preprocessing included), img/s and the ratio to 224/0.875 within the run.

    python benchmarks/frozen_resolution_grocerystore.py --cache /tmp/res-cache --views 0 --c 1 \\
        --variants 224:0.875,224:1.0,256:0.875,256:1.0,288:0.875:0/1,288:1.0,320:0.875,320:1.0
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from _bench_io import grocery_parser, grocery_train_val_views, nearest_recall_at_1, stamped_machine, write_result


def _variants(text: str, views: list[int]) -> list[tuple[int, float, list[int]]]:
    """SIZE:CROP[:N/N...] entries, ','-separated (N: the view counts of that variant, default --views)."""
    out = []
    for part in text.split(","):
        size, crop, counts = (part.split(":") + ["", ""])[:3]
        out.append((int(size), float(crop or 0.875), [int(n) for n in counts.split("/")] if counts else views))
    return out


def _throughput(embs: dict, dataset: Path, n: int, rounds: int) -> dict:
    from shopsearch.classify.data import grocery_split
    from shopsearch.embedding.preprocess import decode_query

    base = next(iter(embs.values()))
    ims = [decode_query(i.path, base).convert("RGB") for i in grocery_split(dataset, "val")[:n]]
    times: dict[str, list[float]] = {k: [] for k in embs}
    for emb in embs.values():  # warm-up
        emb.encode_images(ims[:32])
    for _ in range(rounds):
        for k, emb in embs.items():
            t = time.perf_counter()
            for s in range(0, len(ims), 32):
                emb.encode_images(ims[s:s + 32])
            times[k].append(time.perf_counter() - t)
    ref = min(times[next(iter(embs))])
    return {k: {"img_per_s_loaded": round(len(ims) / min(v), 1), "speed_vs_first": round(ref / min(v), 2)}
            for k, v in times.items()}


def main() -> int:
    ap = grocery_parser(__doc__)
    ap.add_argument("--variants", default="224:0.875,224:1.0,256:1.0,288:1.0,288:0.875,320:1.0",
                    help="SIZE:CROP_PCT[:N/N],... (the first is the reference of the throughput ratios; "
                         "N/N: that variant's view counts instead of --views)")
    ap.add_argument("--views", default="0,1")
    ap.add_argument("--c", default="1", help="the probe's C grid, comma-separated ('cv': the probe's own "
                                             "cross-validated grid, as `classify train`)")
    ap.add_argument("--throughput-images", type=int, default=96)
    ap.add_argument("--throughput-rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    from shopsearch.classify.training import train_frozen
    from shopsearch.embedders.efficientnet import load_efficientnet_lite0

    views = [int(n) for n in a.views.split(",")]
    grid = None if a.c == "cv" else tuple(float(c) for c in a.c.split(","))
    rows, embs = [], {}
    for size, crop, counts in _variants(a.variants, views):
        key = f"{size}:{crop}"
        emb = embs[key] = load_efficientnet_lite0("cpu", size=size, crop_pct=crop)
        t = time.time()
        xs, train, xv, val, vv, ok = grocery_train_val_views(emb, a.dataset, a.cache, max(counts))
        embed_s = round(time.time() - t, 1)
        row = {"spec": f"efficientnet-lite0@{size}/{crop}", "size": size, "crop_pct": crop,
               "resize_shorter_to": int(size / crop),
               "val_recall_at_1": round(nearest_recall_at_1(xs, train, xv, val), 4)}
        print(f"{key}: embedded what was not cached in {embed_s} s", flush=True)
        for n in counts:
            extra = (vv[ok, :n].reshape(-1, vv.shape[2]), np.repeat(np.flatnonzero(ok), n)) if n else None
            m = train_frozen(xs, train, xv, val, emb.fingerprint, emb.name, refit=False, views=extra,
                             c_grid=grid).metrics
            row.update({f"v{n}_fine_top1": round(m["val"]["fine"]["top1"], 4),
                        f"v{n}_coarse_top1": round(m["val"]["coarse"]["top1"], 4),
                        f"v{n}_fine_top1_head_only": round(m["knn_vote"]["val_top1_head"], 4),
                        f"v{n}_knn_weight": m["knn_vote"].get("weight"), f"v{n}_C_fine": m["C_fine"]})
        print(row, flush=True)
        rows.append(row)
    speed = _throughput(embs, a.dataset, a.throughput_images, a.throughput_rounds) if a.throughput_images else {}
    for row in rows:
        row.update(speed.get(f"{row['size']}:{row['crop_pct']}", {}))
    res = {"benchmark": "frozen_resolution", "split": "val", "train": "train+iconic", "model": "efficientnet-lite0",
           "c_grid": list(grid) if grid else "cross-validated (probe's C grid)", "views": views,
           "train_images": len(train), "val_images": len(val), "rows": rows,
           "throughput_note": (f"{a.throughput_images} val photos decoded once, encode_images in batches of 32, "
                               f"variants in turns, best of {a.throughput_rounds} rounds; loaded shared 2-core machine"),
           **stamped_machine()}
    write_result(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
