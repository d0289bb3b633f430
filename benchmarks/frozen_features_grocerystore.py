"""Richer frozen features for the fast head (issue 13): does pooling Lite0 differently, or
concatenating earlier stages, or mirroring the photo, lift the logistic probe's fine top-1?

No backbone training. One forward pass per view gives every pooling at once: the embedder's
average pool of the last feature map (`avg`), GeM (p=3) of it (`gem`), its max (`max`), and
the average pools of the last two blocks before the 1x1 head conv (`b7`: 320-d, `b6`: 192-d).
Each part is L2-normalised, parts concatenated; the probe (shopsearch.classify.probe) is fitted
on train + iconic at a fixed C and scored on val (plain, and the unit mean with the mirrored
photo, per part). Test is never read.

    python benchmarks/frozen_features_grocerystore.py extract --dataset ../shared/datasets/grocerystore \
        --cache /tmp/frozen-features val:orig,flip iconic:orig train:orig
    python benchmarks/frozen_features_grocerystore.py eval --cache /tmp/frozen-features \
        --out benchmarks/results/frozen_features_grocerystore_val.json avg gem avg+b7 gem+b7 avg+b6+b7 gem+b6+b7
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

PARTS = ("avg", "gem", "b7", "b6", "max")


def extract(dataset: Path, cache: Path, specs: list[str]) -> None:
    from PIL import ImageOps

    from shopsearch.classify.data import grocery_split
    from shopsearch.embedders import load_embedder
    from shopsearch.embedding.preprocess import decode_query

    emb = load_embedder("efficientnet-lite0", "cpu")
    net = emb.model.net.eval()
    views = {"orig": lambda im: emb.transform(im), "flip": lambda im: emb.transform(ImageOps.mirror(im))}
    caps: dict[str, torch.Tensor] = {}
    net.blocks[-1].register_forward_hook(lambda m, i, o: caps.__setitem__("b7", o))
    net.blocks[-2].register_forward_hook(lambda m, i, o: caps.__setitem__("b6", o))
    cache.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        split, _, names = spec.partition(":")
        chosen = names.split(",") if names else list(views)
        items = grocery_split(dataset, split)
        out: dict[str, list[np.ndarray]] = {f"{v}_{p}": [] for v in chosen for p in PARTS}
        for s in range(0, len(items), 32):
            ims = [decode_query(i.path, emb).convert("RGB") for i in items[s:s + 32]]
            for v in chosen:
                x = torch.stack([views[v](im) for im in ims]).contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    f = net.forward_features(x)
                    got = {"avg": f.mean((2, 3)), "gem": f.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3),
                           "max": f.amax((2, 3)), "b7": caps["b7"].mean((2, 3)), "b6": caps["b6"].mean((2, 3))}
                for p, a in got.items():
                    out[f"{v}_{p}"].append(a.numpy().astype(np.float16))
        np.savez(cache / f"feat_{split}.npz", cats=np.array([i.category for i in items]),
                 **{k: np.concatenate(v) for k, v in out.items()})


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def evaluate(cache: Path, kinds: list[str], c: float, out: Path | None) -> None:
    from shopsearch.classify.probe import fit_probe
    from shopsearch.evaluation.machine import machine_info

    tr, ic, va = (dict(np.load(cache / f"feat_{s}.npz")) for s in ("train", "iconic", "val"))
    cats = sorted(set(tr["cats"]) | set(ic["cats"]))
    idx = {k: i for i, k in enumerate(cats)}
    y = np.array([idx[k] for k in np.concatenate([tr["cats"], ic["cats"]])])
    yv = np.array([idx[k] for k in va["cats"]])
    rows = []
    for kind in kinds:
        parts = kind.split("+")
        t0 = time.perf_counter()
        x = np.vstack([np.hstack([_unit(d[f"orig_{p}"]) for p in parts]) for d in (tr, ic)])
        probe = fit_probe(x, y, len(cats), c_grid=(c,))
        plain = np.hstack([_unit(va[f"orig_{p}"]) for p in parts])
        mirrored = np.hstack([_unit(_unit(va[f"orig_{p}"]) + _unit(va[f"flip_{p}"])) for p in parts])
        row = {"features": kind, "dim": int(x.shape[1]), "C": c,
               "val_top1": float((probe.logits(plain).argmax(1) == yv).mean()),
               "val_top1_tta": float((probe.logits(mirrored).argmax(1) == yv).mean()),
               "fit_seconds": round(time.perf_counter() - t0, 1)}
        print(row, flush=True)
        rows.append(row)
    if out is not None:
        out.write_text(json.dumps({"benchmark": "frozen_features_grocerystore", "split": "val",
                                   "train": "train+iconic", "val_images": int(len(yv)), "rows": rows,
                                   "machine": machine_info()}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--dataset", type=Path, required=True)
    e.add_argument("--cache", type=Path, required=True)
    e.add_argument("splits", nargs="+", help="SPLIT[:view,view] with views orig, flip")
    v = sub.add_parser("eval")
    v.add_argument("--cache", type=Path, required=True)
    v.add_argument("--c", type=float, default=1.0, help="the probe's C (cross-validation picks 1.0 for avg)")
    v.add_argument("--out", type=Path, default=None)
    v.add_argument("kinds", nargs="+")
    a = ap.parse_args()
    torch.set_num_threads(1)  # the probe is small: one thread wastes nothing on a shared machine
    if a.cmd == "extract":
        extract(a.dataset, a.cache, a.splits)
    else:
        evaluate(a.cache, a.kinds, a.c, a.out)


if __name__ == "__main__":
    main()
