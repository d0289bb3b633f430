"""`--engine ray` against `--engine local` on the same images, in one run:
written to benchmarks/results/ray_engine_<model>.json.

    .venv/bin/python benchmarks/ray_bench.py                                 # efficientnet-lite0, 384 JPEGs
    .venv/bin/python benchmarks/ray_bench.py --model colorhist --images 1024  # the engines' overheads alone

Three measurements, each embedding the same JPEGs into an empty vector cache:

1. local: `embed_items` (the local engine's pipeline, its tuned defaults);
2. ray, local instance: `embed_on_ray` on a Ray started on this machine with every CPU
   (what `--engine ray` does without --ray-address); the overhead ratio is the local
   engine's images/s over this one's (1.0: no overhead), 1 and 2 alternated `--repeats` times;
3. cluster scaling: a ray.cluster_utils.Cluster on this machine with one, then two worker
   nodes of one CPU each (a head without CPUs coordinates).

Times run from the call to the last vector written, model loading in the Ray actors and
Ray Data's start-up included, connecting to Ray excluded. The machine may be shared:
`load_avg_1m` and `uptime` are recorded beside the figures."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SHOPSEARCH_COMPILE", "off")

from shopsearch.evaluation.throughput import synthetic_jpegs  # noqa: E402
from shopsearch.embedders import load_embedder  # noqa: E402
from shopsearch.embedding.cache import VectorCache  # noqa: E402
from shopsearch.embedding.pipeline import WorkItem, embed_items  # noqa: E402
from shopsearch.embedding.preprocess import split_preprocess  # noqa: E402
from shopsearch.evaluation.machine import machine_info  # noqa: E402


def _items(paths: list[Path]) -> list[WorkItem]:
    return [WorkItem(hashlib.sha256(p.read_bytes()).hexdigest(), str(p), i) for i, p in enumerate(paths)]


def _local(model: str, items: list[WorkItem], cache: Path) -> dict:
    emb = load_embedder(model, "cpu")
    t0 = time.perf_counter()
    rep = embed_items(emb, items, VectorCache(cache, emb.fingerprint, emb.dim), progress=False)
    s = time.perf_counter() - t0
    return {"engine": "local", "images": len(items), "embedded": rep.embedded, "seconds": round(s, 3),
            "images_per_s": round(rep.embedded / s, 2)}


def _ray(model: str, items: list[WorkItem], cache: Path, label: str, batch_size: int | None) -> dict:
    import functools

    import ray

    from shopsearch.embedding.ray_pipeline import embed_on_ray, size_for

    emb = load_embedder(model, "cpu")
    resources = ray.cluster_resources()
    sizing = size_for(resources, batch_size)
    folder = VectorCache(cache, emb.fingerprint, emb.dim).dir
    t0 = time.perf_counter()
    rep = embed_on_ray(items, functools.partial(load_embedder, model, "cpu"),
                       split_preprocess(emb) or emb.preprocess, folder, sizing, progress=False)
    s = time.perf_counter() - t0
    return {"engine": "ray", "cluster": label, "cpus": resources.get("CPU"), "actors": sizing.actors,
            "batch_size": sizing.batch_size, "images": len(items), "embedded": rep.embedded,
            "failed": len(rep.failed), "seconds": round(s, 3), "images_per_s": round(rep.embedded / s, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--size", default="640x480", help="JPEG size WxH")
    ap.add_argument("--batch-size", type=int, default=None, help="Ray actors' batch (default: sized by the cluster)")
    ap.add_argument("--store-mb", type=int, default=150, help="object store per Ray node (MiB)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="local and local-Ray runs, alternated (a shared machine's load moves between runs)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import ray
    from ray.cluster_utils import Cluster

    w, h = (int(x) for x in args.size.split("x"))
    store = args.store_mb * 2**20
    with tempfile.TemporaryDirectory(prefix="ray_bench_") as tmp:
        tmpd = Path(tmp)
        items = _items(synthetic_jpegs(args.images, tmpd / "jpegs", (w, h)))
        runs = []
        ray.init(num_cpus=os.cpu_count(), object_store_memory=store, include_dashboard=False, log_to_driver=False)
        for r in range(args.repeats):  # each run into an empty cache
            runs.append(_local(args.model, items, tmpd / f"local-{r}"))
            print(json.dumps(runs[-1]), flush=True)
            runs.append(_ray(args.model, items, tmpd / f"ray-local-{r}", "local instance", args.batch_size))
            print(json.dumps(runs[-1]), flush=True)
        ray.shutdown()
        for nodes in (1, 2):
            c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": store})
            for _ in range(nodes):
                c.add_node(num_cpus=1, object_store_memory=store)
            c.wait_for_nodes()
            ray.init(address=c.address, log_to_driver=False)
            try:
                runs.append(_ray(args.model, items, tmpd / f"ray-{nodes}", f"{nodes} worker node(s) x 1 CPU",
                                 args.batch_size))
                print(json.dumps(runs[-1]), flush=True)
            finally:
                ray.shutdown()
                c.shutdown()
    local = statistics.median(r["images_per_s"] for r in runs if r["engine"] == "local")
    ray_local = statistics.median(r["images_per_s"] for r in runs if r.get("cluster") == "local instance")
    one, two = runs[-2:]
    out = {
        "benchmark": "ray_engine", "model": args.model, "images": args.images, "image_size": args.size,
        "ray_version": ray.__version__, "machine": machine_info(),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "gpu": "none on this machine: the GPU actor path (one GPU per actor) was not measured",
        # > 1: the Ray engine is slower than the local one on the same images (medians of the runs)
        "overhead_ratio_local_over_ray": round(local / ray_local, 3),
        "scaling_2_nodes_over_1": round(two["images_per_s"] / one["images_per_s"], 3),
        "runs": runs,
    }
    path = args.out or ROOT / "benchmarks" / "results" / f"ray_engine_{args.model.replace(':', '-').replace('/', '-')}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("overhead_ratio_local_over_ray", "scaling_2_nodes_over_1", "uptime")}))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
