"""bf16 against fp32 on this CPU, end to end (JPEG files to vectors in a fresh VectorCache),
interleaved in one process so that both see the same machine load:

    fp32      the model as loaded (`MODEL`)
    bf16      `MODEL+bf16`: weights converted to bfloat16 once at load (TorchEmbedder)
    autocast  the previous bf16 path, for comparison: fp32 weights under torch.autocast(bf16)
              (every weight cast again on every batch)

Rounds run fp32, bf16, autocast, fp32, bf16, autocast, ...; each figure is the median over
rounds, with CPU seconds per image and minor page faults per image (the per-batch weight
casts show up there), the load average before each run, and the ratio bf16/fp32.

    .venv/bin/python benchmarks/bf16_bench.py --model openclip:ViT-B-32 --images 128 --rounds 2
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

from _bench_io import utc_now, write_result

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _usage() -> tuple[float, int]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, me.ru_minflt + kids.ru_minflt


def autocast_embedder(model: str):
    """An fp32 embedder whose forwards run under bf16 autocast (the path before weights were converted)."""
    import torch

    from shopsearch.embedders import load_embedder

    emb = load_embedder(model, "cpu")

    @contextlib.contextmanager
    def inference():
        with torch.inference_mode(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            yield

    emb._inference = inference  # noqa: SLF001 - a benchmark-only stand-in for the old code path
    return emb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="openclip:ViT-B-32")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None, help="default: tuned (as index build)")
    ap.add_argument("--no-autocast", action="store_true", help="skip the autocast comparison")
    ap.add_argument("--int8", action="store_true",
                    help="also MODEL+int8 (needs `shopsearch model quantize` run on SHOPSEARCH_DATA_DIR first)")
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. idle or loaded)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from shopsearch.evaluation.machine import cpu_model
    from shopsearch.embedders.precision import best_precision
    from shopsearch.evaluation.throughput import DEFAULT_GROCERY, grocery_jpegs, pipeline_run, warm_up
    from shopsearch.embedders import load_embedder
    from shopsearch.config import available_cpus

    load_before = [round(x, 2) for x in os.getloadavg()]
    paths = grocery_jpegs(a.images, Path(os.environ.get("SHOPSEARCH_GROCERY_DIR", DEFAULT_GROCERY)))
    if not paths:
        raise SystemExit("no Grocery Store photos found (set SHOPSEARCH_GROCERY_DIR)")
    for p in paths:
        p.read_bytes()  # page cache: no run pays the first read
    variants = {"fp32": load_embedder(a.model, "cpu"), "bf16": load_embedder(f"{a.model}+bf16", "cpu")}
    if not a.no_autocast:
        variants["autocast"] = autocast_embedder(a.model)
    if a.int8:
        from shopsearch.config import Settings

        variants["int8"] = load_embedder(f"{a.model}+int8", "cpu", Settings.from_env().models_dir)
    for emb in variants.values():
        warm_up(emb, paths, 16)  # the pipeline's batch: int8 compiles for it here, untimed
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory(prefix="bf16-bench-") as tmp:
        for r in range(a.rounds):
            for name, emb in variants.items():
                load = os.getloadavg()[0]
                c0, f0 = _usage()
                secs, cfg, _ = pipeline_run(emb, paths, Path(tmp) / f"{name}-{r}", a.batch_size, None, "auto", "off")
                c1, f1 = _usage()
                runs[name].append({"images_per_s": round(len(paths) / secs, 2), "seconds": round(secs, 2),
                                   "cpu_s_per_image": round((c1 - c0) / len(paths), 4),
                                   "minor_faults_per_image": round((f1 - f0) / len(paths)),
                                   "batch_size": cfg.batch_size, "loadavg_1m_before": round(load, 2)})
                print(f"round {r} {name}: {len(paths) / secs:.2f} img/s (load {load:.2f})", flush=True)
    med = {k: statistics.median(x["images_per_s"] for x in v) for k, v in runs.items()}
    cpu = {k: round(statistics.median(x["cpu_s_per_image"] for x in v), 4) for k, v in runs.items()}
    result = {
        "benchmark": "bf16_vs_fp32_cpu", "model": a.model, "images": len(paths),
        "source": "grocerystore photos (train, then test)", "rounds": a.rounds,
        "order": "interleaved in one process: " + ", ".join(variants) + " per round",
        "median_images_per_s": {k: round(v, 2) for k, v in med.items()},
        "ratio_bf16_over_fp32": round(med["bf16"] / med["fp32"], 2),
        **({"ratio_bf16_over_autocast": round(med["bf16"] / med["autocast"], 2)} if "autocast" in med else {}),
        **({"ratio_int8_over_fp32": round(med["int8"] / med["fp32"], 2)} if "int8" in med else {}),
        "note": a.note,
        #: CPU time barely depends on how many other jobs share the cores: the steadier ratio
        "median_cpu_s_per_image": cpu,
        "ratio_cpu_s_per_image_fp32_over_bf16": round(cpu["fp32"] / cpu["bf16"], 2),
        "runs": runs,
        "machine": {"cpu": cpu_model(), "cpus": available_cpus(), "bf16_cpu": best_precision("cpu") == "bf16",
                    "loadavg_before": load_before,
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "note": ("load average above the core count: compare the ratios, measured in one run, "
                             "rather than the absolute figures" if os.getloadavg()[0] > available_cpus()
                             else "machine otherwise idle (load average below the core count)")},
        "when": utc_now(),
    }
    write_result(result, a.out, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
