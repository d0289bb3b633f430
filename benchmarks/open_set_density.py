"""Which out-of-distribution score tells photos of products a shop sells from photos of products it
does not, on the Grocery Store validation photos only (the open set of `bench recall --open-set 0.2`:
a seeded 20% of products removed from the iconic+train gallery). Each detector reads only what a
shop has, the kept products' gallery photos: the nearest photo's similarity (kNN, k = 1 is the
search score; Sun et al. 2022), the category head trained on them (maximum probability, maximum
logit, energy), and class-conditional Gaussians over them with one shared covariance
(Mahalanobis, Lee et al. 2018; relative Mahalanobis against one Gaussian of the whole gallery,
Ren et al. 2021), for several shrinkages (shopsearch.density). Raw AUROC, in vs not in the
catalogue; the winner becomes the `density` feature of the confidence.

    python benchmarks/open_set_density.py --dataset ../shared/datasets/grocerystore \
        --out benchmarks/results/open_set_density_val.json"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from shopsearch.classify.probe import fit_probe
from shopsearch.density import fit_density
from shopsearch.evaluation.machine import machine_info
from shopsearch.evaluation.open_set import auroc

sys.path.insert(0, str(Path(__file__).parent))
from open_set_features import cached_vectors  # noqa: E402 - the same vector cache as the feature selection
from _bench_io import utc_now, write_result  # noqa: E402

SHRINKAGES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def main() -> None:
    from shopsearch.config import Settings
    from shopsearch.embedders import load_embedder
    from shopsearch.embedding.cache import VectorCache
    from shopsearch.evaluation.datasets import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    settings = Settings.from_env()
    emb = load_embedder(a.model, settings.device, settings.models_dir)
    cache = VectorCache(settings.vector_cache_dir, emb.fingerprint, emb.dim)
    val = load_dataset(a.dataset, "grocerystore", "iconic+train", "val")
    gallery = [(p.sku, im.path, "/".join(p.category_path or ())) for p in val.products for im in p.images]
    vecs = cached_vectors([g for _, g, _ in gallery] + [q.path for q in val.queries], emb, cache)
    products = sorted({s for s, _, _ in gallery}, key=str)
    rng = np.random.default_rng(a.seed)  # the products evaluate_open_set removes
    removed = {products[i] for i in rng.choice(len(products), int(round(a.fraction * len(products))),
                                                replace=False).tolist()}
    kept = [(s, g, c) for s, g, c in gallery if s not in removed and g in vecs]
    g = np.stack([vecs[p] for _, p, _ in kept]).astype(np.float64)
    skus = [s for s, _, _ in kept]
    queries = [q for q in val.queries if q.path in vecs]
    x = np.stack([vecs[q.path] for q in queries]).astype(np.float64)
    inside = np.array([q.sku not in removed for q in queries])
    sims = np.sort(x @ g.T, axis=1)[:, ::-1]
    scores = {f"knn_k{k}": sims[:, k - 1] for k in (1, 5, 10, 20)}
    columns = sorted({c for _, _, c in kept})
    probe = fit_probe(g.astype(np.float32), np.array([columns.index(c) for _, _, c in kept]), len(columns))
    z = probe.logits(x.astype(np.float32)).astype(np.float64)
    top = z.max(1)
    energy = top + np.log(np.exp(z - top[:, None]).sum(1))
    scores.update({"head_max_probability": np.exp(top - energy), "head_max_logit": top, "head_energy": energy})
    for s in SHRINKAGES:
        dens = fit_density(g, skus, shrinkage=s)
        scores[f"relative_mahalanobis_s{s:g}"] = dens.familiarity(x)
        d = dens.relative_distances(x)
        z0 = x @ dens.proj0 - dens.mean0
        scores[f"mahalanobis_s{s:g}"] = -(d + (z0 * z0).sum(1)[:, None] / x.shape[1]).min(1)
    rows = [{"detector": k, "val_auroc": round(auroc(v, inside), 4),
             "mean_in": round(float(v[inside].mean()), 4), "mean_out": round(float(v[~inside].mean()), 4)}
            for k, v in scores.items()]
    for r in rows:
        print(r, file=sys.stderr)
    out = {"benchmark": "open_set_density_val", "dataset": "grocerystore", "model": emb.name, "split": "val",
           "fraction": a.fraction, "seed": a.seed, "queries_in": int(inside.sum()), "queries_out": int((~inside).sum()),
           "gallery": "iconic+train photos of the kept products", "detectors": rows,
           "chosen": max(rows, key=lambda r: r["val_auroc"]), "note": a.note, "machine": machine_info(),
           "recorded": utc_now()}
    write_result(out, a.out, echo=True)


if __name__ == "__main__":
    main()
