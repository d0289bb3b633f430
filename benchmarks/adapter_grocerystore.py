"""The feedback adapter on Grocery Store, by simulation (issue 17).

The val photos play logged shopper queries, each confirmed on its true product; the gallery
is iconic + train photos (as in the quality benchmark, benchmarks/configs/quality_grocerystore.toml);
the test photos are the unseen queries. Hyperparameters (lam, steps) are chosen on val only:
the adapter is trained with the catalogue and one half of val, scored on the other half
(and the halves swapped); the chosen setting is then trained on catalogue + all of val and
scored once on test. Recall@1 is product-level (best image per product), exact search.

    SHOPSEARCH_DATA_DIR=var .venv/bin/python benchmarks/adapter_grocerystore.py \
        --out benchmarks/results/adapter_grocerystore.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from shopsearch.adapter.train import AdapterOptions, save_pairs, top1_recall, train_adapter, train_adapter_path
from shopsearch.classify.data import grocery_split
from shopsearch.classify.vectors import embed_labelled
from shopsearch.config import Settings
from shopsearch.embedders import load_embedder
from shopsearch.evaluation.machine import machine_info

REPO = Path(__file__).resolve().parents[1]
LAMS = (0.1, 1.0, 10.0)
STEPS = (50, 100, 200)


def _default_dataset() -> Path:
    """shared/ beside the checkout (or beside the worktrees' folder)."""
    options = [base / "shared" / "datasets" / "grocerystore" for base in (REPO.parent, REPO.parent.parent)]
    return next((p for p in options if p.is_dir()), options[0])


def _halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--dataset", default=str(_default_dataset()),
                    help="the Grocery Store dataset folder")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "adapter_grocerystore.json"))
    ap.add_argument("--workers", type=int, default=None, help="decoding workers while embedding")
    ap.add_argument("--lams", type=float, nargs="+", default=list(LAMS), help="lam values tried on val")
    ap.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="step counts tried on val")
    ap.add_argument("--pairs-out", default=None,
                    help="Also save the val photos as confirmed pairs (.npz) for `shopsearch adapter train --pairs` "
                         "on a catalogue imported from this dataset")
    ap.add_argument("--test-limit", type=int, default=None,
                    help="Score at most this many test photos, evenly spread over the split (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads while training (1 on a busy machine)")
    args = ap.parse_args()
    settings = Settings.from_env(device="cpu")
    root = Path(args.dataset)
    emb = load_embedder(args.model, "cpu")
    cache = settings.vector_cache_dir
    t0 = time.perf_counter()
    g, g_items = embed_labelled(emb, grocery_split(root, "iconic") + grocery_split(root, "train"), cache,
                                workers=args.workers)
    v, v_items = embed_labelled(emb, grocery_split(root, "val"), cache, workers=args.workers)
    test = grocery_split(root, "test")
    if args.test_limit and len(test) > args.test_limit:
        test = [test[int(i)] for i in np.unique(np.linspace(0, len(test) - 1, args.test_limit).astype(int))]
    q, q_items = embed_labelled(emb, test, cache, workers=args.workers)
    embed_s = time.perf_counter() - t0
    if args.pairs_out:  # the catalogue importer names each product by its fine class
        save_pairs(Path(args.pairs_out), v, [i.category.rsplit("/", 1)[-1] for i in v_items], emb.fingerprint)
    gs, vs, qs = ([i.category for i in items] for items in (g_items, v_items, q_items))

    # model selection on val only: two-fold over val halves, one run per (lam, fold) with
    # the adapter taken at each step count
    a, b = _halves(len(v))
    scores: dict[tuple[float, int], list[float]] = {}
    for lam in args.lams:
        opts = AdapterOptions(lam=lam, steps=max(args.steps), threads=args.threads)
        for fit, held in ((a, b), (b, a)):
            t_run = time.perf_counter()
            snaps, _ = train_adapter_path(g, gs, emb.fingerprint, v[fit], [vs[i] for i in fit], opts, args.steps)
            for steps, ad in snaps.items():
                scores.setdefault((lam, steps), []).append(top1_recall(g, gs, v[held], [vs[i] for i in held], ad))
            print(f"lam {lam}: one fold in {time.perf_counter() - t_run:.0f} s", flush=True)
    grid = [{"lam": lam, "steps": steps, "val_recall@1": round(float(np.mean(s)), 4)}
            for (lam, steps), s in sorted(scores.items())]
    for row in grid:
        print(row, flush=True)
    val_before = float(np.mean([top1_recall(g, gs, v[h], [vs[i] for i in h]) for h in (a, b)]))
    best = max(grid, key=lambda r: (r["val_recall@1"], -r["steps"]))
    opts = AdapterOptions(lam=best["lam"], steps=best["steps"], threads=args.threads)
    adapter, report = train_adapter(g, gs, emb.fingerprint, v, vs, opts)
    catalogue_only, _ = train_adapter(g, gs, emb.fingerprint, None, (), opts)
    before = top1_recall(g, gs, q, qs)
    after = top1_recall(g, gs, q, qs, adapter)
    result = {
        "dataset": str(root), "model": emb.name, "fingerprint": emb.fingerprint,
        "protocol": "gallery iconic+train; confirmed queries = val photos on their true product; test photos "
                    "scored; lam/steps chosen by two-fold recall@1 over val halves",
        "gallery_images": len(g), "confirmed_queries": len(v), "test_queries": len(q),
        "test_photos_in_split": len(grocery_split(root, "test")),
        "test_recall@1_before": round(before, 4), "test_recall@1_after": round(after, 4),
        "test_recall@1_catalogue_only_adapter": round(top1_recall(g, gs, q, qs, catalogue_only), 4),
        "val_recall@1_before": round(val_before, 4), "chosen": best, "grid": grid,
        "train": report.to_dict(), "embed_seconds": round(embed_s, 1),
        "machine": {**machine_info(), "load_avg_1m": round(os.getloadavg()[0], 2)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"test recall@1 {before:.4f} -> {after:.4f} (adapter trained in {report.seconds:.1f} s)")


if __name__ == "__main__":
    main()
