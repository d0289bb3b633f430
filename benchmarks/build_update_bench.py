"""Work proportional to the change: a generated catalogue (one small seeded PNG per product,
the `colorhist` model so that embedding does not dominate) imported, re-imported unchanged,
indexed, built again with nothing changed, and updated after 10 images changed (4 photos
replaced on disk, 3 products deleted, 3 added).

    python benchmarks/build_update_bench.py --products 20000 --index hnsw \
        --out benchmarks/results/build_update_20k.json

Runs against whichever checkout is on the path (the same script times main and a branch);
fields a checkout's reports lack are null."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _image(seed: int) -> Image.Image:
    grid = np.random.default_rng(seed).integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((24, 24), Image.NEAREST)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=20_000)
    ap.add_argument("--index", default="hnsw", help="index type of the builds (auto picks flat below 100k)")
    ap.add_argument("--database-url", default=None, help="default: a SQLite file in the work folder")
    ap.add_argument("--workdir", default=None, help="default: a temporary folder, removed afterwards")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--label", default=None, help="which checkout this is (e.g. main), stored in the results")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from indexer.build import IndexBuilder
    from shopsearch.catalogue.importers import import_catalogue
    from shopsearch.catalogue.readers import RowProblem, read_source
    from shopsearch.catalogue.records import ImageRecord, ProductRecord
    from shopsearch.catalogue.store import CatalogueStore
    from shopsearch.embedders import load_embedder
    from shopsearch.evaluation.machine import machine_info
    from shopsearch.images import sha256_file
    from shopsearch.index.store import IndexStore

    tmp = tempfile.TemporaryDirectory() if a.workdir is None else None
    work = Path(a.workdir or tmp.name)
    imgs = work / "imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    rows = ["sku,title,price,category,image"]
    for i in range(a.products):
        p = imgs / f"{i}.png"
        if not p.exists():
            _image(i).save(p)
        rows.append(f"S{i},Product {i},{i % 500}.99,Cat{i % 50},imgs/{i}.png")
    manifest = work / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")

    cat = CatalogueStore.open(a.database_url or f"sqlite:///{work / 'catalogue.db'}")

    def do_import():
        problems: list[RowProblem] = []
        return import_catalogue(cat, read_source(manifest, "csv", problems), problems, workers=2, progress=False)

    res: dict = {"checkout": a.label, "products": a.products, "index_type": a.index,
                 "loadavg_1m": os.getloadavg()[0]}
    first_import, res["import_s"] = _timed(do_import)
    again, res["reimport_unchanged_s"] = _timed(do_import)
    res["reimport_images_decoded"] = getattr(again, "images_decoded", None)
    emb = load_embedder("colorhist", "cpu")
    store = IndexStore(work / "index")
    b = IndexBuilder(emb, cat, store, work / "vectors")
    first, res["first_build_s"] = _timed(lambda: b.build(index_type=a.index, progress=False, workers=2))
    noop, res["noop_build_s"] = _timed(lambda: b.build(index_type=a.index, progress=False, workers=2))
    res["noop_up_to_date"] = getattr(noop, "up_to_date", None)
    res["noop_new_build"] = noop.build_id != first.build_id
    for i in range(4):  # photos replaced on disk
        _image(1_000_000 + i).save(imgs / f"{i}.png")
    cat.delete_products([f"S{i}" for i in range(4, 7)])
    for i in range(a.products, a.products + 3):
        p = imgs / f"{i}.png"
        _image(i).save(p)
        cat.upsert_product(ProductRecord(f"S{i}", f"Product {i}", images=(ImageRecord(str(p), sha256=sha256_file(p)),)))
    upd, res["update_10_images_s"] = _timed(lambda: b.update(index_type=a.index, progress=False, workers=2))
    res["update_strategy"] = getattr(upd, "strategy", None) or upd.mode
    res["update_embedded"] = upd.embedded
    res["update_vectors"] = upd.vectors
    res["loadavg_1m_end"] = os.getloadavg()[0]
    res["machine"] = {**machine_info(), "load_avg_1m": res["loadavg_1m_end"]}
    cat.close()
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
