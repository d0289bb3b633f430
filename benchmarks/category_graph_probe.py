"""Would a graph per category beat the exact float16 scan of a category at 1M? (issue 20)

A category filter on a grouped HNSW index is scored exactly: its run of the base segment is
read from the float16 copy and the best candidates re-scored on float32
(docs/filtered_search.md). An approximate alternative is a small HNSW graph over each large
category's run, walked like the main graph. This probe measures both on a kept scale data dir,
on the same queries, one thread: for --categories leaf categories (the largest first), the
service's own exact path (`VectorIndex.search(..., allowed=)`, 80 images as a page of 10
asks) and, per graph setting (M, efConstruction; float16 codes, the storage the copy uses),
its build time, bytes, and per efSearch the time per query and recall@10 against exact; and
the share of the vectors' variance their first 32-128 principal components hold.

    python benchmarks/category_graph_probe.py /tmp/scale/data_sqlite_1000000 --categories 3
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

from _bench_io import stamped_machine, write_result

HERE = Path(__file__).resolve().parent


def _graph(x: np.ndarray, m: int, efc: int):
    import faiss

    g = faiss.IndexHNSWSQ(x.shape[1], faiss.ScalarQuantizer.QT_fp16, m, faiss.METRIC_INNER_PRODUCT)
    g.hnsw.efConstruction = efc
    g.add(x)
    return g


def _recall(got: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(g[:k].tolist()) & set(t[:k].tolist())) / k for g, t in zip(got, truth)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path, help="a kept scale data dir (scale_bench.py --keep), HNSW build")
    ap.add_argument("--categories", type=int, default=3, help="leaf categories probed, largest first")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--graphs", default="16:40,32:40,32:80", help="M:efConstruction settings, comma-separated")
    ap.add_argument("--ef", default="128,192,256,512", help="efSearch values of the graph walks")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    data_dir = a.data_dir.resolve()
    size = data_dir.name.rsplit("_", 1)[-1]
    if not (data_dir / "catalogue.db").is_file() or not (data_dir / "index").is_dir() or not size.isdigit():
        ap.error(f"{data_dir} is not a kept SQLite scale data dir (data_sqlite_<size> with catalogue.db and index/)")
    try:
        graphs = [tuple(int(v) for v in spec.split(":")) for spec in a.graphs.split(",")]
        efs = [int(e) for e in a.ef.split(",")]
    except ValueError as e:
        ap.error(f"--graphs takes M:efConstruction pairs and --ef integers, comma-separated: {e}")
    if any(len(g) != 2 for g in graphs):
        ap.error("--graphs takes M:efConstruction pairs, e.g. 16:40,32:40")
    sys.path.insert(0, str(HERE.parent))
    import faiss
    from PIL import Image

    from benchmarks.scale_data import catalogue_of, query_jpeg
    from shopsearch.app import open_search_service
    from shopsearch.config import Settings
    from shopsearch.index.exact import flat_storage
    from shopsearch.results import SearchFilters

    faiss.omp_set_num_threads(1)
    settings = Settings.from_env(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'catalogue.db'}",
                                 device="cpu", fp16_scans="on")
    svc = open_search_service(settings, with_router=False)
    index = svc.index
    if index.index_type != "hnsw" or index.half_copy is None:
        ap.error("the serving build must be an HNSW index with a float16 copy (a 1M scale build)")
    flat = flat_storage(faiss.downcast_index(index.faiss_index.index))
    d = int(flat.d)
    xb = faiss.rev_swig_ptr(flat.get_xb(), int(flat.ntotal) * d).reshape(-1, d)
    id_table = faiss.vector_to_array(index.faiss_index.id_map)
    order = np.argsort(id_table)
    n = int(size)
    rng = np.random.default_rng(1)
    picks = rng.choice(n, a.queries, replace=False)
    catalogue = catalogue_of(data_dir.parent)
    vecs = svc.embedder.encode_images([Image.open(io.BytesIO(query_jpeg(int(i), catalogue))).convert("RGB")
                                       for i in picks]).astype(np.float32)
    leaves = [c.path for c in svc.catalogue.categories() if c.depth == 1]
    sets = sorted(((svc.allowed_images.ids_for(SearchFilters(category=p)), p) for p in leaves),
                  key=lambda t: -len(t[0]))[:a.categories]
    # how much of the vectors' variance a few principal directions hold (a seeded 50k sample):
    # whether a reduced first pass could stand in for the full scan
    sample = xb[np.sort(rng.choice(len(xb), min(50_000, len(xb)), replace=False))].astype(np.float64)
    spectrum = np.linalg.eigvalsh(np.cov((sample - sample.mean(0)).T))[::-1]
    pca_share = {str(c): round(float(spectrum[:c].sum() / spectrum.sum()), 3) for c in (32, 64, 96, 128) if c <= d}
    print("variance held by the first principal components:", pca_share, flush=True)
    rows = []
    for allowed, path in sets:
        pos = np.sort(order[np.searchsorted(id_table, allowed, sorter=order)])
        lo, hi = int(pos[0]), int(pos[-1]) + 1
        run = np.ascontiguousarray(xb[lo:hi])
        truth = np.argsort(-(vecs @ run.T), axis=1)[:, :80]
        index.search(vecs[:1], 80, allowed=allowed)  # warm: the position translation, cached
        t = time.perf_counter()
        for v in vecs:
            index.search(v[None], 80, allowed=allowed)
        exact_ms = (time.perf_counter() - t) / len(vecs) * 1e3
        row = {"category": path, "vectors": len(allowed), "contiguous": hi - lo == len(allowed),
               "exact_scan_ms": round(exact_ms, 3), "graphs": []}
        for m, efc in graphs:
            t = time.perf_counter()
            g = _graph(run, m, efc)
            built = time.perf_counter() - t
            links = g.hnsw.neighbors.size() * 4 + g.hnsw.offsets.size() * 8
            entry = {"M": m, "ef_construction": efc, "build_s": round(built, 2),
                     "bytes": int(faiss.downcast_index(g.storage).codes.size() + links), "walks": []}
            for ef in efs:
                params = faiss.SearchParametersHNSW(efSearch=ef)
                t = time.perf_counter()
                got = np.stack([g.search(v[None], 80, params=params)[1][0] for v in vecs])
                ms = (time.perf_counter() - t) / len(vecs) * 1e3
                entry["walks"].append({"ef_search": ef, "ms": round(ms, 3), "recall10": round(_recall(got, truth), 4)})
            print(path, entry, flush=True)
            row["graphs"].append(entry)
        print(row["category"], "exact scan", row["exact_scan_ms"], "ms", flush=True)
        rows.append(row)
    svc.catalogue.close()
    res = {"benchmark": "category_graph_probe", "data_dir": data_dir.name, "vectors": int(flat.ntotal), "dim": d,
           "queries": len(vecs), "k": 80, "threads": 1,
           "pca_variance_share": pca_share,
           "note": ("graph walk: time of the walk alone (no re-scoring on float32, which the exact path's figure "
                    "includes); recall@10 of the walk's order against exact inner product over the category"),
           "rows": rows, **stamped_machine()}
    write_result(res, a.out, echo=a.out is None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
