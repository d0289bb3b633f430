"""Where EfficientNet-Lite0's CPU time per photo goes, stage by stage, on one intra-op thread:

    decode     JPEG file to RGB PIL image, as the pipeline decodes it (PIL draft at the model's size)
    resize     the PIL steps of the split preprocess (resize shorter side to 256, centre crop 224)
    normalise  uint8 batch to the normalised float NCHW tensor (SplitPreprocess.finish), per photo
    model      the image tower per photo at each batch size: fp32 and bf16 eager (batch norms folded,
               channels-last), optionally int8 (needs a calibration) and torch.compile'd forms

Each figure is this thread's CPU time (time.thread_time) per photo, best of --rounds, the
forms timed in turns: with one thread all the work is this thread's, and CPU time barely moves
when other jobs share the cores, where wall time does. Writes JSON with the CPU and load average.

    .venv/bin/python benchmarks/lite0_cpu_profile.py --out benchmarks/results/lite0_cpu_profile_xeon_amx_loaded.json
    SHOPSEARCH_DATA_DIR=/tmp/demo .venv/bin/python benchmarks/lite0_cpu_profile.py --int8 --compiled   # minutes more
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from _bench_io import cpu_block, utc_now, write_result

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def best_cpu_ms(fn, per: int, rounds: int) -> float:
    """Best of `rounds` CPU ms of this thread per item, after one untimed call."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return round(best * 1000 / per, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batches", default="1,8,16,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--int8", action="store_true", help="also +int8 (calibration in SHOPSEARCH_DATA_DIR/models)")
    ap.add_argument("--compiled", action="store_true", help="also torch.compile'd bf16 (minutes of compilation)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from shopsearch.config import Settings
    from shopsearch.embedders import load_embedder
    from shopsearch.embedding.items import decode_source
    from shopsearch.embedding.preprocess import split_preprocess
    from shopsearch.evaluation.throughput import DEFAULT_GROCERY, grocery_jpegs

    load_before = round(os.getloadavg()[0], 2)
    paths = grocery_jpegs(a.images, Path(os.environ.get("SHOPSEARCH_GROCERY_DIR", DEFAULT_GROCERY)))
    if not paths:
        raise SystemExit("no Grocery Store photos found (set SHOPSEARCH_GROCERY_DIR)")
    fp32 = load_embedder("efficientnet-lite0", "cpu")
    split = split_preprocess(fp32)
    assert split is not None
    n = len(paths)
    images: list = []
    pixels: list = []
    stages = {
        "decode": best_cpu_ms(lambda: images.__setitem__(slice(None), [decode_source(str(p), split.draft_size)
                                                                        for p in paths]), n, a.rounds),
        "resize_crop": best_cpu_ms(lambda: pixels.__setitem__(slice(None), [split(im) for im in images]), n, a.rounds),
    }
    batch = np.stack(pixels[:16])
    stages["normalise"] = best_cpu_ms(lambda: split.finish(batch), 16, a.rounds)
    x = split.finish(batch)
    forms = {"fp32": fp32, "bf16": load_embedder("efficientnet-lite0+bf16", "cpu")}
    if a.int8:
        forms["int8"] = load_embedder("efficientnet-lite0+int8", "cpu", Settings.from_env().models_dir)
    sizes = [int(b) for b in a.batches.split(",")]
    inputs = {b: torch.cat([x] * (b // 16 + 1))[:b] for b in sizes}
    model: dict[str, dict[int, float]] = {name: {} for name in forms}
    for name, emb in forms.items():
        if name == "int8":  # int8 exists compiled only: one graph per batch size, compiled at its first call
            emb.compile(max(sizes))
    if a.compiled:
        comp = load_embedder("efficientnet-lite0+bf16", "cpu")
        comp.compile(max(sizes))
        forms["bf16-compiled"] = comp
        model["bf16-compiled"] = {}
    for _ in range(2):  # in turns: both rounds see the same machine
        for name, emb in forms.items():
            for b in sizes:
                if name in ("int8", "bf16-compiled") and b != max(sizes):
                    continue  # compiled for the largest batch: smaller ones would be padded or run eager
                ms = best_cpu_ms(lambda: emb.encode_tensor(inputs[b]), b, a.rounds)
                model[name][b] = min(model[name].get(b, ms), ms)
    best_model = min(v for m in model.values() for v in m.values())
    result = {
        "benchmark": "lite0_cpu_profile", "images": n, "torch_threads": 1,
        "stage_cpu_ms_per_image": stages, "model_cpu_ms_per_image": model,
        "pipeline_cpu_ms_per_image_best": round(sum(stages.values()) + best_model, 2),
        "images_per_s_bound_2_cores": round(2000 / (sum(stages.values()) + best_model), 1),
        "how": "time.thread_time per photo on one torch thread, best of rounds, forms in turns; the bound assumes "
               "two cores fully used with no threading overhead",
        "machine": cpu_block(load_before), "when": utc_now(),
    }
    write_result(result, a.out, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
