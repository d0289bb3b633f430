"""glibc's allocator and a CPU fine-tune step (issue 13's memory churn): by default every
activation over the mmap threshold (at most 32 MiB; a batch of 32 at 224 px has many) is
mapped and unmapped each step, so the step pays hundreds of thousands of page faults in
system time. MALLOC_MMAP_MAX_=0 with a 1 GiB MALLOC_TRIM_THRESHOLD_ keeps that memory in
the heap (no code change: glibc's own environment variables). One training step (fp32,
the CPU recipe's 224 px, batch 32, first two blocks frozen) per process, after one untimed
step; the variants alternate process by process.

    .venv/bin/python benchmarks/cpu_finetune_malloc_ab.py --pairs 2 \
        --out benchmarks/results/cpu_finetune_malloc_ab_xeon_amx_loaded.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"default": {}, "heap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**30)}}

STEP = r"""
import json, resource, time, torch, torch.nn.functional as F
from shopsearch.classify.head import CategoryHead
from shopsearch.embedders.finetuned import imagenet_backbone
torch.manual_seed(0)
net = imagenet_backbone(None).to(memory_format=torch.channels_last)
head = CategoryHead(1280, 43, 17, dropout=0.2)
frozen = [net.conv_stem, net.bn1, *list(net.blocks)[:2]]
for m in frozen:
    m.requires_grad_(False)
net.train()
for m in frozen:
    m.eval()
opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad] + list(head.parameters()), lr=1e-4)
x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
yf, yc = torch.randint(0, 43, (32,)), torch.randint(0, 17, (32,))
def step():
    lf, lc = head(net(x))
    loss = F.cross_entropy(lf, yf) + F.cross_entropy(lc, yc)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
step()
r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
step()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 3),
                  "sys_s": round(r1.ru_stime - r0.ru_stime, 3), "minor_faults": r1.ru_minflt - r0.ru_minflt,
                  "wall_s": round(time.perf_counter() - w0, 2), "max_rss_mib": r1.ru_maxrss // 1024}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from shopsearch.evaluation.machine import machine_info

    runs: dict[str, list[dict]] = {k: [] for k in VARIANTS}
    for _ in range(a.pairs):
        for name, env in VARIANTS.items():
            r = subprocess.run([sys.executable, "-c", STEP], capture_output=True, text=True, cwd=REPO,
                               env={**os.environ, **env}, check=True)
            runs[name].append({**json.loads(r.stdout.strip().splitlines()[-1]), "load_avg_1m": round(os.getloadavg()[0], 2)})
            print(name, runs[name][-1], flush=True)
    mean = {k: {m: round(sum(r[m] for r in v) / len(v), 3) for m in ("cpu_s", "sys_s", "minor_faults", "wall_s")}
            for k, v in runs.items()}
    out = {"what": "one fp32 CPU fine-tune step (224 px, batch 32) with glibc's default allocator settings vs "
                   "MALLOC_MMAP_MAX_=0 + MALLOC_TRIM_THRESHOLD_=1 GiB", "variants": VARIANTS, "runs": runs,
           "mean": mean, "machine": machine_info()}
    print(json.dumps(mean, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
