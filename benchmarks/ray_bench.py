"""`--engine ray` against `--engine local` on the same images, in one run:
written to benchmarks/results/ray_engine_<model>.json.

    .venv/bin/python benchmarks/ray_bench.py                                 # efficientnet-lite0, 384 JPEGs
    .venv/bin/python benchmarks/ray_bench.py --model colorhist --images 1024  # the engines' overheads alone

Three measurements, each embedding the same JPEGs into an empty vector cache:

1. local: `embed_items` (the local engine's pipeline, its tuned defaults);
2. ray, local instance: `embed_on_ray` on a Ray started on this machine with every CPU
   (what `--engine ray` does without --ray-address), sized as `--engine ray` sizes it (on
   CPUs: fused decode + embed actors); with --two-stage also the two-stage pipeline (decode
   tasks feeding one actor, what a GPU cluster runs) for comparison. 1 and 2 alternate
   `--repeats` times, so a shared machine's load hits every engine alike;
3. cluster scaling: a ray.cluster_utils.Cluster on this machine with one, then two worker
   nodes of one CPU each (a head without CPUs coordinates).

Each Ray run reports its start-up apart (`startup_s`: from the call until the first actor
held its model: Ray Data planning, actor processes, model loading) and two rates:
`images_per_s` (start-up included, from the call to the last vector written) and
`steady_images_per_s` (start-up excluded; the local engine's model is loaded before its
clock starts too, `model_load_s`). Connecting to Ray is excluded. Overhead ratios are the
local engine's images/s over the Ray engine's (1.0: no overhead; medians of the repeats).
The machine may be shared: `uptime` is recorded beside the figures."""
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
from shopsearch.embedding.ray_pipeline import RaySizing  # noqa: E402
from shopsearch.evaluation.machine import machine_info  # noqa: E402


def _items(paths: list[Path]) -> list[WorkItem]:
    return [WorkItem(hashlib.sha256(p.read_bytes()).hexdigest(), str(p), i) for i, p in enumerate(paths)]


#: the two-stage pipeline as --engine ray ran it on 2 CPUs before the fused CPU actors
TWO_STAGE = RaySizing(actors=1, batch_size=64, gpus_per_actor=0.0, cpus_per_actor=0.5, cpus_per_decode_task=0.5,
                      decode_batch=32, fused=False)


def _local(model: str, items: list[WorkItem], cache: Path) -> dict:
    t0 = time.perf_counter()
    emb = load_embedder(model, "cpu")
    loaded = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep = embed_items(emb, items, VectorCache(cache, emb.fingerprint, emb.dim), progress=False)
    s = time.perf_counter() - t0
    return {"engine": "local", "images": len(items), "embedded": rep.embedded, "seconds": round(s, 3),
            "model_load_s": round(loaded, 3), "images_per_s": round(rep.embedded / s, 2),
            "steady_images_per_s": round(rep.embedded / s, 2)}


def _ray(model: str, items: list[WorkItem], cache: Path, label: str, batch_size: int | None,
         sizing: RaySizing | None = None) -> dict:
    import functools

    import ray

    from shopsearch.embedding.ray_pipeline import alive_node_cpus, embed_on_ray, size_for

    emb = load_embedder(model, "cpu")
    resources = ray.cluster_resources()
    sizing = sizing or size_for(resources, batch_size, node_cpus=alive_node_cpus())
    folder = VectorCache(cache, emb.fingerprint, emb.dim).dir
    t0 = time.perf_counter()
    rep = embed_on_ray(items, functools.partial(load_embedder, model, "cpu"),
                       split_preprocess(emb) or emb.preprocess, folder, sizing, progress=False)
    s = time.perf_counter() - t0
    return {"engine": "ray", "cluster": label, "pipeline": "fused" if sizing.fused else "two-stage",
            "cpus": resources.get("CPU"), "actors": sizing.actors, "cpus_per_actor": sizing.cpus_per_actor,
            "batch_size": sizing.batch_size, "images": len(items), "embedded": rep.embedded,
            "failed": len(rep.failed), "seconds": round(s, 3), "startup_s": round(rep.startup_s, 3),
            "images_per_s": round(rep.embedded / s, 2), "steady_images_per_s": round(rep.steady_images_per_s, 2)}


def _ratio(runs: list[dict], select, key: str) -> float | None:
    """Median local images/s over the median of the selected Ray runs' (None: no such run)."""
    local = [r[key] for r in runs if r["engine"] == "local"]
    ray_runs = [r[key] for r in runs if select(r)]
    if not local or not ray_runs or not statistics.median(ray_runs):
        return None
    return round(statistics.median(local) / statistics.median(ray_runs), 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--size", default="640x480", help="JPEG size WxH")
    ap.add_argument("--batch-size", type=int, default=None, help="Ray actors' batch (default: sized by the cluster)")
    ap.add_argument("--store-mb", type=int, default=150, help="object store per Ray node (MiB)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="local and local-Ray runs, alternated (a shared machine's load moves between runs)")
    ap.add_argument("--two-stage", action="store_true",
                    help="also run the two-stage pipeline (decode tasks + one actor) on the local instance")
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 node cluster runs")
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
        # "local": a new instance even where another Ray runs on this machine (as `--engine ray` does)
        ray.init(address="local", num_cpus=os.cpu_count(), object_store_memory=store, include_dashboard=False,
                 log_to_driver=False)
        for r in range(args.repeats):  # each run into an empty cache
            runs.append(_local(args.model, items, tmpd / f"local-{r}"))
            print(json.dumps(runs[-1]), flush=True)
            runs.append(_ray(args.model, items, tmpd / f"ray-local-{r}", "local instance", args.batch_size))
            print(json.dumps(runs[-1]), flush=True)
            if args.two_stage:
                runs.append(_ray(args.model, items, tmpd / f"ray-two-{r}", "local instance", args.batch_size,
                                 TWO_STAGE))
                print(json.dumps(runs[-1]), flush=True)
        ray.shutdown()
        for nodes in () if args.no_scaling else (1, 2):
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
    def fused(r: dict) -> bool:
        return r.get("cluster") == "local instance" and r["pipeline"] == "fused"

    def two_stage(r: dict) -> bool:
        return r.get("cluster") == "local instance" and r["pipeline"] == "two-stage"

    scaling = [r for r in runs if r.get("cluster", "").endswith("CPU")]
    out = {
        "benchmark": "ray_engine", "model": args.model, "images": args.images, "image_size": args.size,
        "ray_version": ray.__version__, "machine": machine_info(),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "gpu": "none on this machine: the GPU actor path (one GPU per actor) was not measured",
        # > 1: the Ray engine is slower than the local one on the same images (medians of the runs)
        "overhead_ratio_local_over_ray": _ratio(runs, fused, "images_per_s"),
        "overhead_ratio_steady": _ratio(runs, fused, "steady_images_per_s"),
        "ray_startup_s_median": statistics.median(r["startup_s"] for r in runs if fused(r)),
        "overhead_ratio_two_stage": _ratio(runs, two_stage, "images_per_s"),
        "overhead_ratio_two_stage_steady": _ratio(runs, two_stage, "steady_images_per_s"),
        "scaling_2_nodes_over_1": (round(scaling[1]["images_per_s"] / scaling[0]["images_per_s"], 3)
                                   if len(scaling) == 2 else None),
        "runs": runs,
    }
    path = args.out or ROOT / "benchmarks" / "results" / f"ray_engine_{args.model.replace(':', '-').replace('/', '-')}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k.startswith(("overhead", "ray_startup", "scaling", "uptime"))}))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
