"""Which compact copy an exact filtered scan should read: float16 (served), bfloat16 or 8-bit,
measured on a kept scale data dir (issue 20; shopsearch/index/half_copy.py).

A large filtered set (a category at 1M: 20,000 vectors) is scanned on a copy of the vectors and
only its best k + MARGIN are scored again on float32. A copy pays off twice: fewer bytes to read
per scan, and few enough near-ties within twice its error bound that the scan does not fall back
to float32. For each format this measures both:

  cold scan    p50 ms of FAISS's scanner over a 20,000-vector range at a random place (another
               range each time: what a shop's category filters do), one thread
  warm scan    the same range again and again (in cache: the decoding cost alone)
  bound        the largest score error the format allows for a unit query: float16 2^-10 (the
               served copy's half_copy.ERROR) and bfloat16 2^-7 of the largest norm (relative rounding, doubled); 8-bit the largest
               measured reconstruction error |decode(encode(x)) - x| (uniform range)
  fallback     share of category-filtered shopper-photo queries (the scale benchmark's: 10
               products, so the best 80 images) whose copy holds more than MARGIN vectors within
               twice the bound of its 80th score: those are scored on float32 after the scan

    .venv/bin/python benchmarks/scan_copy_formats.py /tmp/scale33/data_sqlite_1000000 \\
        --out benchmarks/results/scan_copy_formats_1m_families_xeon_amx.json
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
RANGE = 20_000
#: the images a search for 10 products asks the index for (shopsearch/search.py: 8 x k)
K = 80
FORMATS = ("fp32", "fp16", "bf16", "sq8")


def _copy(faiss, xb: np.ndarray, fmt: str):
    qt = {"fp16": faiss.ScalarQuantizer.QT_fp16, "bf16": faiss.ScalarQuantizer.QT_bf16,
          "sq8": faiss.ScalarQuantizer.QT_8bit_uniform}[fmt]
    sq = faiss.IndexScalarQuantizer(xb.shape[1], qt, faiss.METRIC_INNER_PRODUCT)
    sq.train(np.ascontiguousarray(xb[::max(1, len(xb) // 100_000)]))
    for a in range(0, len(xb), 65536):
        sq.add(np.ascontiguousarray(xb[a:a + 65536]))
    return sq


def _bound(sq, xb: np.ndarray, fmt: str) -> float:
    max_norm = float(max(np.sqrt(np.einsum("ij,ij->i", xb[a:a + 65536], xb[a:a + 65536]).max())
                         for a in range(0, len(xb), 65536)))
    if fmt == "fp16":
        from shopsearch.index.half_copy import ERROR

        return ERROR * max_norm  # what the served copy assumes
    if fmt == "bf16":
        return 2.0 ** -7 * max_norm
    err = 0.0
    for a in range(0, len(xb), 65536):
        block = np.ascontiguousarray(xb[a:a + 65536])
        err = max(err, float(np.sqrt(((sq.sa_decode(sq.sa_encode(block)) - block) ** 2).sum(1)).max()))
    return err


def _scan_ms(faiss, sq, xb: np.ndarray, starts: np.ndarray, qs: np.ndarray, fmt: str) -> float:
    times = []
    if fmt == "fp32":
        for s0, q in zip(starts, qs):
            t = time.perf_counter()
            faiss.knn(q[None], xb[s0:s0 + RANGE], K, metric=faiss.METRIC_INNER_PRODUCT)
            times.append(time.perf_counter() - t)
        return float(np.median(times) * 1000)
    from shopsearch.index.half_copy import MARGIN

    codes = faiss.rev_swig_ptr(sq.codes.data(), sq.codes.size())
    size = int(sq.code_size)
    scanner = sq.sq.select_InvertedListScanner(faiss.METRIC_INNER_PRODUCT, None, False, None, False)
    kk = K + MARGIN
    for s0, q in zip(starts, qs):
        scores, found = np.full(kk, -3e38, np.float32), np.full(kk, -1, np.int64)
        ids = np.arange(s0, s0 + RANGE, dtype=np.int64)
        row = np.ascontiguousarray(q)
        scanner.set_query(faiss.swig_ptr(row))
        t = time.perf_counter()
        scanner.scan_codes(RANGE, faiss.swig_ptr(codes[int(s0) * size:]), faiss.swig_ptr(ids), faiss.swig_ptr(scores),
                           faiss.swig_ptr(found), kk)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def _category_queries(data_dir: Path, n: int, queries: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(query vector, positions of its category's vectors) for the scale benchmark's category searches."""
    from PIL import Image

    from shopsearch.app import open_search_service
    from shopsearch.config import Settings
    from shopsearch.results import SearchFilters

    sys.path.insert(0, str(HERE.parent))  # the repository: its benchmarks package
    from benchmarks.scale_data import catalogue_of, query_jpeg
    settings = Settings.from_env(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'catalogue.db'}",
                                 device="cpu", fp16_scans="off")
    svc = open_search_service(settings, with_router=False)
    picks = np.random.default_rng(1).choice(n, queries, replace=False)
    catalogue = catalogue_of(data_dir.parent)
    vecs = svc.embedder.encode_images([Image.open(io.BytesIO(query_jpeg(int(i), catalogue))).convert("RGB")
                                       for i in picks])
    cats = [c.path for c in svc.catalogue.categories() if c.depth == 1]
    import faiss

    id_map = faiss.vector_to_array(svc.index.faiss_index.id_map)
    order = np.argsort(id_map)
    out = []
    for j, v in enumerate(vecs):
        ids = svc.allowed_images.ids_for(SearchFilters(category=cats[j % len(cats)]))
        out.append((np.ascontiguousarray(v, dtype=np.float32),
                    np.sort(order[np.searchsorted(id_map[order], ids)])))
    svc.catalogue.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", type=Path, help="a SQLite data dir kept by scale_bench.py --keep")
    ap.add_argument("--queries", type=int, default=200, help="category queries for the fallback share")
    ap.add_argument("--scans", type=int, default=60, help="cold ranges scanned per format")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    data_dir = args.data_dir.resolve()
    if not (data_dir / "catalogue.db").is_file() or not (data_dir / "index").is_dir():
        ap.error(f"{data_dir} is not a kept SQLite scale data dir (catalogue.db and index/)")
    import faiss

    from shopsearch.index.exact import flat_storage
    from shopsearch.index.half_copy import MARGIN
    from shopsearch.index.store import IndexStore

    index, _ = IndexStore(data_dir / "index").load_current()
    flat = flat_storage(faiss.downcast_index(index.faiss_index.index))
    if flat is None or flat.ntotal < 2 * RANGE:
        ap.error("the served index keeps no flat float vectors of at least 40,000 rows")
    n, d = int(flat.ntotal), int(flat.d)
    xb = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, n - RANGE, args.scans)
    qs = np.ascontiguousarray(xb[rng.integers(0, n, args.scans)])
    cat_queries = _category_queries(data_dir, n, args.queries)
    rows = []
    for fmt in FORMATS:
        sq = _copy(faiss, xb, fmt) if fmt != "fp32" else None
        cold = _scan_ms(faiss, sq, xb, starts, qs, fmt)
        warm = _scan_ms(faiss, sq, xb, np.full(args.scans, starts[0]), qs, fmt)
        row = {"format": fmt, "bytes_per_vector": 4 * d if sq is None else int(sq.code_size),
               "cold_scan_ms": round(cold, 3), "warm_scan_ms": round(warm, 3)}
        if sq is not None:
            bound = _bound(sq, xb, fmt)
            codes = faiss.rev_swig_ptr(sq.codes.data(), sq.codes.size()).reshape(n, -1)
            decoded: dict[tuple[int, int], np.ndarray] = {}  # per category: the copy's vectors, decoded once
            falls = 0
            for q, pos in cat_queries:
                key = (int(pos[0]), len(pos)) if len(pos) else (-1, 0)
                if key not in decoded:
                    decoded[key] = sq.sa_decode(np.ascontiguousarray(codes[pos]))
                approx = np.sort(decoded[key] @ q)[::-1]
                line = approx[min(K, len(approx)) - 1] - 2 * bound * float(np.linalg.norm(q))
                falls += int(len(approx) > K + MARGIN and approx[K + MARGIN - 1] >= line)
            row.update(bound_unit_query=round(bound, 6), fallback_share=round(falls / len(cat_queries), 4))
        rows.append(row)
        print(row, flush=True)
        decoded = {}
        del sq
    write_result({"benchmark": "scan_copy_formats", **stamped_machine(), "data": str(data_dir), "vectors": n,
                  "dim": d, "range": RANGE, "k": K, "margin": MARGIN, "category_queries": len(cat_queries),
                  "rows": rows}, args.out)


if __name__ == "__main__":
    main()
