"""OpenMP wait policy A/B for bulk embedding (issue 18): `shopsearch bench throughput` (Grocery
Store photos to saved vectors, our pipeline only) run in turns with OMP_WAIT_POLICY empty (the
OpenMP runtime's default, as every command ran before the CLI's entry point set PASSIVE itself:
threads spin a while at each barrier) and PASSIVE (threads sleep), each in a fresh process, so
that every ratio comes from one sitting.

    .venv/bin/python benchmarks/omp_wait_ab.py --rounds 2 --images 2048 \\
        --out benchmarks/results/omp_wait_ab_lite0_xeon_amx_idle.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._bench_io import cpu_block, utc_now, write_result  # noqa: E402

VARIANTS = {"default": "", "passive": "PASSIVE"}  # "": set, so the CLI leaves it, and ignored by OpenMP


def run_once(policy: str, model: str, images: int) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", "from indexer.cli import main; main()", "bench", "throughput", "--model", model,
           "--images", str(images), "--no-naive", "--compile", "off", "--json"]
    load = os.getloadavg()[0]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    return {"images_per_s": r["images_per_s"], "cpu_s_per_image": r["cpu_s_per_image"], "precision": r["precision"],
            "batch_size": r["batch_size"], "workers": r["workers"], "loadavg_1m_before": round(load, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(a.rounds):
        for name, policy in VARIANTS.items():
            runs[name].append(run_once(policy, a.model, a.images))
            print(name, runs[name][-1], flush=True)
    med = {name: {k: round(statistics.median(r[k] for r in rs), 4) for k in ("images_per_s", "cpu_s_per_image")}
           for name, rs in runs.items()}
    result = {
        "benchmark": "omp_wait_ab", "model": a.model, "images": a.images, "rounds": a.rounds,
        "what": "shopsearch bench throughput (Grocery photos, our pipeline, --compile off) with OMP_WAIT_POLICY "
                "empty (the OpenMP runtime's default) vs PASSIVE, fresh process each, in turns",
        "runs": runs, "median": med,
        "ratio_images_per_s_passive_over_default": round(med["passive"]["images_per_s"] / med["default"]["images_per_s"], 3),
        "ratio_cpu_s_default_over_passive": round(med["default"]["cpu_s_per_image"] / med["passive"]["cpu_s_per_image"], 3),
        "machine": cpu_block(load0, a.note or None), "when": utc_now(),
    }
    write_result(result, a.out, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
