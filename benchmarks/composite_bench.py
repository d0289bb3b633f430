"""Several products in one photo: seeded composites of 2-4 Grocery Store test photos on one
canvas (scaled, on a plain or a cluttered ground). For each composite, the share of its
products found in the top 5 of some region (objects=auto, shopsearch.regions) against the
top 5 of the whole-image search of the same composite.

    python benchmarks/composite_bench.py --dataset ../shared/datasets/grocerystore \
        --composites 120 --out benchmarks/results/composite_regions_grocerystore.json

The gallery is the default recall protocol's (iconic + train photos), indexed with the
frozen model through the indexer (so the build is calibrated as a shop's would be);
vectors come from the data dir's cache when present."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from indexer.build import IndexBuilder
from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.readers import read_source
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.confidence import load_calibration
from shopsearch.embedders import load_embedder
from shopsearch.evaluation.datasets import load_dataset
from shopsearch.evaluation.machine import machine_info
from shopsearch.images import load_image
from shopsearch.index.store import IndexStore
from shopsearch.regions import find_objects, region_skus
from shopsearch.search import SearchService

CANVAS = (1280, 960)


def _background(rng: np.random.Generator, kind: str) -> Image.Image:
    if kind == "plain":
        tone = rng.integers(200, 250, size=3)
        return Image.new("RGB", CANVAS, tuple(int(t) for t in tone))
    # cluttered: random coloured blocks at two scales, like a busy table or shelf
    coarse = rng.integers(40, 220, size=(6, 8, 3), dtype=np.uint8)
    fine = rng.integers(-40, 40, size=(48, 64, 3))
    base = np.asarray(Image.fromarray(coarse).resize((64, 48), Image.NEAREST), dtype=np.int16) + fine
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize(CANVAS, Image.NEAREST)


def make_composite(photos: list[Image.Image], rng: np.random.Generator, kind: str) -> Image.Image:
    """Photos scaled into the cells of a 2x2 grid (random cell, size and offset) on a ground."""
    canvas = _background(rng, kind)
    cw, ch = CANVAS[0] // 2, CANVAS[1] // 2
    cells = rng.permutation(4)[: len(photos)]
    for photo, cell in zip(photos, cells):
        scale = rng.uniform(0.6, 0.9)
        im = photo.copy()
        im.thumbnail((int(cw * scale), int(ch * scale)))
        x0 = (cell % 2) * cw + int(rng.integers(0, cw - im.width + 1))
        y0 = (cell // 2) * ch + int(rng.integers(0, ch - im.height + 1))
        canvas.paste(im, (x0, y0))
    return canvas


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="../shared/datasets/grocerystore")
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--composites", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default="var", help="Its vectors/ cache is reused (and filled).")
    ap.add_argument("--out", default=None, help="Write the JSON here too.")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    emb = load_embedder(a.model, "cpu")
    root = Path(a.dataset)
    queries = load_dataset(str(root), "grocerystore", None, "test").queries
    with tempfile.TemporaryDirectory(prefix="composite-bench-") as tmp:
        cat = CatalogueStore.open(f"sqlite:///{tmp}/catalogue.db")
        problems: list = []
        import_catalogue(cat, read_source(root, "grocerystore", problems, "train"), problems, workers=2,
                         progress=False)
        store = IndexStore(Path(tmp) / "index")
        build = IndexBuilder(emb, cat, store, Path(a.data_dir) / "vectors").build(progress=False, index_type="flat")
        index, manifest = store.load_current()
        cal = load_calibration(store.build_dir(build.build_id), build.build_id)
        svc = SearchService(emb, index, cat, manifest, calibration=cal)
        skus = {p.sku for p in cat.products()}
        by_sku: dict[str, list[str]] = {}
        for q in queries:
            if q.sku in skus:
                by_sku.setdefault(q.sku, []).append(q.path)
        rng = np.random.default_rng(a.seed)
        rows = []
        t_whole = t_regions = 0.0
        for n in range(a.composites):
            kind = "plain" if n % 2 == 0 else "cluttered"
            count = int(rng.integers(2, 5))
            chosen = [str(s) for s in rng.choice(sorted(by_sku), count, replace=False)]
            photos = [load_image(str(rng.choice(by_sku[s]))) for s in chosen]
            img = make_composite(photos, rng, kind)
            t0 = time.perf_counter()
            whole = {h.sku for h in svc.search_image(img, k=5).hits}
            t1 = time.perf_counter()
            regions = find_objects(svc, img, max_objects=4, k=5)
            t2 = time.perf_counter()
            t_whole, t_regions = t_whole + t1 - t0, t_regions + t2 - t1
            found = region_skus(regions, 5) | whole  # the page shows the whole photo's list too
            rows.append({"background": kind, "products": count,
                         "whole_found": len(whole & set(chosen)) / count,
                         "regions_only_found": len(region_skus(regions, 5) & set(chosen)) / count,
                         "regions_or_whole_found": len(found & set(chosen)) / count,
                         "regions": len(regions),
                         "regions_first_right": sum(r.result.hits[0].sku in chosen for r in regions)})
            print(f"\r{n + 1}/{a.composites}", end="", file=sys.stderr)
        print(file=sys.stderr)
        cat.close()

    def share(key: str, pick=lambda r: True) -> float:
        sel = [r[key] for r in rows if pick(r)]
        return round(float(np.mean(sel)), 4) if sel else None

    out = {
        "benchmark": "composite_regions", "dataset": "grocerystore", "model": emb.name,
        "gallery": "iconic+train", "composites": a.composites, "seed": a.seed, "canvas": list(CANVAS),
        "top_k": 5, "max_objects": 4,
        "calibration": cal.describe(),
        "share_found_top5": {
            "whole_image": share("whole_found"),
            "regions": share("regions_only_found"),
            "regions_plus_whole": share("regions_or_whole_found"),
        },
        "by_background": {kind: {"whole_image": share("whole_found", lambda r, k=kind: r["background"] == k),
                                 "regions": share("regions_only_found", lambda r, k=kind: r["background"] == k)}
                          for kind in ("plain", "cluttered")},
        "by_products": {str(c): {"whole_image": share("whole_found", lambda r, c=c: r["products"] == c),
                                 "regions": share("regions_only_found", lambda r, c=c: r["products"] == c)}
                        for c in (2, 3, 4)},
        "regions_per_composite": share("regions"),
        "seconds_per_composite": {"whole_image": round(t_whole / a.composites, 3),
                                  "objects_auto": round(t_regions / a.composites, 3)},
        "machine": machine_info(),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
