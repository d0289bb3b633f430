"""Would batching concurrent queries into one forward pass pay? CPU ms per image of the query
model's forms (query_model.candidates: eager fp32, TorchScript-frozen fp32, and bf16 where the
CPU has it) at batch sizes 1, 2 and 4, in process, on each intra-op thread count asked.

CPU time (time.process_time, all threads of this process) barely moves when other jobs share
the cores, where wall time does; OMP_WAIT_POLICY=PASSIVE is set as `shopsearch serve` sets it.

    .venv/bin/python benchmarks/query_batch_probe.py --threads 1 2 --out benchmarks/results/query_batch_probe.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _bench_io import cpu_block, utc_now, write_result

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    import torch
    from PIL import Image

    from shopsearch.embedders.fold import fold_conv_bn
    from shopsearch.embedders.query_model import candidates
    from shopsearch.embedders.registry import load_embedder

    emb = load_embedder(a.model, "cpu")
    shape = emb.preprocess(Image.new("RGB", (256, 256))).shape
    x = torch.randn((max(a.batches), *shape), generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    # the model queries run: batch norms folded, as TorchEmbedder serves it on a CPU
    forms = candidates(fold_conv_bn(emb.model, x[:2]) or emb.model, x)
    load = os.getloadavg()[0]
    rows = []
    with torch.inference_mode():
        for n in a.threads:
            torch.set_num_threads(n)
            for name, fwd in forms.items():
                for b in a.batches:
                    xb = x[:b].contiguous(memory_format=torch.channels_last)
                    fwd(xb)
                    fwd(xb)
                    ms = []
                    for _ in range(a.repeats):
                        t0 = time.process_time()
                        fwd(xb)
                        ms.append((time.process_time() - t0) * 1000 / b)
                    rows.append({"form": name, "threads": n, "batch": b,
                                 "cpu_ms_per_image": round(statistics.median(ms), 2)})
                    print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "query_batch_probe", "model": a.model, "runs": rows,
              "how": "in process, one forward per timing, median of repeats; CPU ms of all this process's threads",
              "machine": cpu_block(load, a.note), "command": " ".join(["python", *sys.argv]), "when": utc_now()}
    write_result(result, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
