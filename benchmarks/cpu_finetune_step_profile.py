"""Where a CPU fine-tune step's time goes (issue 13): the data side (decode + augmentation of a
batch, as a DataLoader worker runs it: one torch thread) against the model side (forward,
backward and AdamW step of EfficientNet-Lite0 + head at the CPU recipe's 224 px, batch 32,
first two blocks frozen), in fp32 and in bf16 autocast, interleaved in one process.

CPU-seconds come from getrusage (all threads of this process); on a loaded machine they
include the intra-op threads' spinning, so compare the variants of one run, not runs.

    .venv/bin/python benchmarks/cpu_finetune_step_profile.py --dataset ../shared/datasets/grocerystore \
        --out benchmarks/results/cpu_finetune_step_profile_xeon_amx_loaded.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shopsearch.classify.data import read_labelled  # noqa: E402
from shopsearch.classify.finetune_config import recipe_for  # noqa: E402
from shopsearch.classify.head import CategoryHead  # noqa: E402
from shopsearch.classify.labels import LabelSpace  # noqa: E402
from shopsearch.classify.transforms import train_transform  # noqa: E402
from shopsearch.embedders.finetuned import imagenet_backbone  # noqa: E402
from shopsearch.evaluation.machine import cpu_has_bf16, machine_info  # noqa: E402
from shopsearch.images import load_image  # noqa: E402


def usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt


def timed(fn) -> dict[str, float]:
    c0, s0, f0 = usage()
    w0 = time.perf_counter()
    fn()
    c1, s1, f1 = usage()
    return {"cpu_s": round(c1 - c0, 3), "sys_s": round(s1 - s0, 3), "wall_s": round(time.perf_counter() - w0, 3),
            "minor_faults": f1 - f0}


def freeze(net: torch.nn.Module, n: int) -> None:
    for m in [net.conv_stem, net.bn1, *list(net.blocks)[:n]]:
        m.requires_grad_(False)
        m.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads for the model side")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    cfg = recipe_for("cpu")
    items = read_labelled(f"grocerystore:{Path(a.dataset).resolve()}:train+iconic")
    labels = LabelSpace.from_paths(i.category for i in items)
    rng = np.random.default_rng(0)
    batch = [items[i].path for i in rng.choice(len(items), cfg.batch_size, replace=False)]
    tf = train_transform(cfg.img_size, cfg.min_scale, cfg.augment)
    out: dict = {"what": "per-step CPU cost of the CPU fine-tune recipe, data side vs model side", "batch": cfg.batch_size,
                 "img_size": cfg.img_size, "frozen_blocks": cfg.frozen_blocks, "rounds": a.rounds, "data": {}, "model": {}}

    torch.set_num_threads(1)  # what a DataLoader worker runs with
    imgs = [load_image(p) for p in batch]
    out["image_sizes"] = sorted({im.size for im in imgs})
    data = {"decode": lambda: [load_image(p) for p in batch], "augment": lambda: [tf(im) for im in imgs]}
    for _ in range(a.rounds):
        for k, fn in data.items():
            out["data"].setdefault(k, []).append(timed(fn))

    torch.set_num_threads(a.threads or len(os.sched_getaffinity(0)))
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size).contiguous(memory_format=torch.channels_last)
    yf = torch.randint(0, len(labels.fine), (cfg.batch_size,))
    yc = torch.tensor([labels.fine_to_coarse[int(f)] for f in yf])
    steps = {}
    for prec in ("fp32", "bf16") if cpu_has_bf16() else ("fp32",):
        net = imagenet_backbone(None).to(memory_format=torch.channels_last)
        head = CategoryHead(1280, len(labels.fine), len(labels.coarse), dropout=0.2)
        freeze(net, cfg.frozen_blocks)
        net.train()
        freeze(net, cfg.frozen_blocks)
        opt = torch.optim.AdamW([{"params": [p for p in net.parameters() if p.requires_grad]},
                                 {"params": list(head.parameters())}], lr=1e-4)

        def step(net=net, head=head, opt=opt, bf16=prec == "bf16") -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                feats = net(x)
            lf, lc = head(feats.float())
            loss = F.cross_entropy(lf, yf) + F.cross_entropy(lc, yc)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step()  # untimed: lazy initialisation, kernel choice
        steps[prec] = step
    for _ in range(a.rounds):  # interleaved: a load change hits every variant alike
        for prec, fn in steps.items():
            out["model"].setdefault(prec, []).append(timed(fn))
            print(prec, out["model"][prec][-1], flush=True)
    med = {f"{side}.{k}": float(np.median([r["cpu_s"] for r in v])) for side in ("data", "model") for k, v in out[side].items()}
    out["median_cpu_s_per_batch"] = {k: round(v, 3) for k, v in med.items()}
    if "model.bf16" in med:
        out["ratio_cpu_s_bf16_over_fp32"] = round(med["model.bf16"] / med["model.fp32"], 2)
    out["data_share_of_fp32_step"] = round((med["data.decode"] + med["data.augment"])
                                           / (med["data.decode"] + med["data.augment"] + med["model.fp32"]), 3)
    out["model_threads"] = torch.get_num_threads()
    out["machine"] = {**machine_info(), "bf16_cpu": cpu_has_bf16()}
    print(json.dumps(out, indent=2))
    return write(out, a.out)


def write(result: dict, path: str | None) -> int:
    """The JSON to `path` (when given); the exit status."""
    if path:
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
