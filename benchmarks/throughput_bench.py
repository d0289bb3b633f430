"""Embedding throughput: our pipeline vs the naive loop, written to
benchmarks/results/throughput_<model>_<device>.json.

    .venv/bin/python benchmarks/throughput_bench.py --model efficientnet-lite0
    .venv/bin/python benchmarks/throughput_bench.py --model openclip:ViT-B-32 --images 256
    python3 benchmarks/throughput_bench.py --model openclip:ViT-B-32 --device cuda --images 8192 \\
        --source synthetic --size 640x480 --repeats 2          # on a GPU machine
    SHOPSEARCH_DATA_DIR=var .venv/bin/python benchmarks/throughput_bench.py --precision int8   # CPU int8:
        # needs the calibration `shopsearch --data-dir var model quantize` wrote

The same figure is printed by `shopsearch bench throughput --json`."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shopsearch.config import Settings  # noqa: E402
from shopsearch.evaluation.throughput import run_throughput  # noqa: E402

GROCERY = Path(os.environ.get("SHOPSEARCH_GROCERY_DIR", Path(__file__).resolve().parents[2] / "shared" / "datasets"
                              / "grocerystore"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    ap.add_argument("--source", default="auto")
    ap.add_argument("--size", default="1600x1200", help="synthetic JPEG size WxH")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--executor", default="auto")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--work-dir", default=None, help="keep generated images here between runs")
    ap.add_argument("--out", default=None, help="result file (default benchmarks/results/throughput_<model>_<device>.json)")
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. the machine's load)")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.lower().split("x"))
    t0 = time.time()
    r = run_throughput(a.model, a.device, images=a.images, precision=a.precision, source=a.source,
                       batch_size=a.batch_size, workers=a.workers, executor=a.executor, naive=not a.no_naive,
                       work_dir=Path(a.work_dir) if a.work_dir else None, repeats=a.repeats, synthetic_size=(w, h),
                       compile=a.compile, grocery=GROCERY, settings=Settings.from_env())
    out = r.to_dict() | {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
                         "repeats": a.repeats, "note": a.note,
                         "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("SHOPSEARCH_")},
                         "command": "python benchmarks/throughput_bench.py " + " ".join(sys.argv[1:])}
    path = Path(a.out) if a.out else (Path(__file__).resolve().parent / "results" /
                                      f"throughput_{re.sub(r'[^A-Za-z0-9.+-]+', '-', a.model)}_{r.device.split(':')[0]}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
