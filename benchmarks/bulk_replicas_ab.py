"""Bulk embedding on a few cores, A/B in turns (issue 18): `shopsearch bench throughput`
(Grocery Store photos to saved vectors, our pipeline only, compile off) with

    threads         the previous default: one model on all intra-op threads, decode threads beside it
    replicas-eager  one single-threaded replica of the eager model per core (replicas.py), fusion off
    replicas        the same with the oneDNN-fused model (TorchEmbedder.fuse), at each --batches size

each in a fresh process, the variants in turns so that every ratio comes from one sitting.
Then, in this process, the vectors of the new default (replicas, fused) against the previous
default's on the same photos: the worst cosine per photo.

    .venv/bin/python benchmarks/bulk_replicas_ab.py --rounds 2 --images 2048 \\
        --out benchmarks/results/bulk_replicas_ab_lite0_xeon_amx_loaded.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._bench_io import cpu_block, utc_now, write_result  # noqa: E402

NO_FUSION = "import shopsearch.embedders.torch_base as t; t.TorchEmbedder.fuse = lambda self, batch_size: False; "


def variants(batches: list[int]) -> dict[str, tuple[str, str, int | None]]:
    """name -> (python prelude, executor, batch size or None for the tuned default)."""
    out = {"threads": ("", "thread", None), "replicas-eager": (NO_FUSION, "replicas", None)}
    out |= {f"replicas-b{b}": ("", "replicas", b) for b in batches}
    return out


def run_once(prelude: str, executor: str, batch: int | None, model: str, images: int, precision: str) -> dict:
    cmd = [sys.executable, "-c", prelude + "from indexer.cli import main; main()", "bench", "throughput",
           "--model", model, "--images", str(images), "--precision", precision, "--no-naive", "--compile", "off",
           "--executor", executor, "--json"] + (["--batch-size", str(batch)] if batch else [])
    load = os.getloadavg()[0]
    out = subprocess.run(cmd, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                         check=True).stdout
    r = json.loads(out)
    return {"images_per_s": r["images_per_s"], "cpu_s_per_image": r["cpu_s_per_image"], "precision": r["precision"],
            "batch_size": r["batch_size"], "workers": r["workers"], "executor": r["executor"],
            "loadavg_1m_before": round(load, 2)}


def cosine_check(model: str, precision: str, images: int, batch: int) -> dict:
    """Worst and median cosine per photo: replicas (fused, `batch`) against the previous default."""
    import numpy as np

    from shopsearch.embedders import load_embedder
    from shopsearch.embedders.precision import with_precision
    from shopsearch.embedding.cache import VectorCache
    from shopsearch.embedding.pipeline import WorkItem, embed_items
    from shopsearch.evaluation.throughput import DEFAULT_GROCERY, grocery_jpegs

    paths = grocery_jpegs(images, Path(os.environ.get("SHOPSEARCH_GROCERY_DIR", REPO / DEFAULT_GROCERY)))
    if not paths:
        raise SystemExit("no Grocery Store photos found (set SHOPSEARCH_GROCERY_DIR)")
    emb = load_embedder(with_precision(model, precision, "cpu"), "cpu")
    items = [WorkItem(f"{i:064x}", str(p)) for i, p in enumerate(paths)]
    vecs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, executor, b in (("threads", "thread", None), ("replicas", "replicas", batch)):
            cache = VectorCache(Path(tmp) / name, emb.fingerprint, emb.dim)
            embed_items(emb, items, cache, batch_size=b, progress=False, executor=executor, compile="off")
            vecs[name] = cache.get_many([it.key for it in items])
    cos = np.sum(vecs["threads"] * vecs["replicas"], axis=1)
    return {"images": len(items), "min": round(float(cos.min()), 6), "median": round(float(np.median(cos)), 6),
            "fingerprint": emb.fingerprint}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batches", default="8,16", help="replica batch sizes to time (fused)")
    ap.add_argument("--no-cosine", action="store_true")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    vs = variants([int(b) for b in a.batches.split(",")])
    runs: dict[str, list[dict]] = {name: [] for name in vs}
    for _ in range(a.rounds):
        for name, (prelude, executor, batch) in vs.items():
            runs[name].append(run_once(prelude, executor, batch, a.model, a.images, a.precision))
            print(name, runs[name][-1], flush=True)
    med = {name: {k: round(statistics.median(r[k] for r in rs), 4) for k in ("images_per_s", "cpu_s_per_image")}
           for name, rs in runs.items()}
    base = med["threads"]
    result = {
        "benchmark": "bulk_replicas_ab", "model": a.model, "images": a.images, "rounds": a.rounds,
        "what": "shopsearch bench throughput (Grocery photos, our pipeline, --compile off) per executor, fresh "
                "process each, in turns: threads = previous default, replicas = single-threaded model replicas "
                "per core (eager or oneDNN-fused)",
        "runs": runs, "median": med,
        "ratio_images_per_s_over_threads": {n: round(m["images_per_s"] / base["images_per_s"], 3) for n, m in med.items()},
        "ratio_cpu_s_threads_over": {n: round(base["cpu_s_per_image"] / m["cpu_s_per_image"], 3) for n, m in med.items()},
        "machine": cpu_block(load0, a.note or None), "when": utc_now(),
    }
    if not a.no_cosine:
        result["cosine_replicas_vs_threads"] = cosine_check(a.model, runs["threads"][0]["precision"], a.images,
                                                            int(a.batches.split(",")[0]))
    write_result(result, a.out, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
