"""Downscaled copy of the Grocery Store train/val splits + iconic images (and the ImageNet
EfficientNet-Lite0 weights in fp16) small enough to carry to a remote GPU for fine-tuning:

    .venv/bin/python benchmarks/classify_prepare_data.py --out .gsdata --short-side 288 --quality 72
    # on the GPU machine, from the repo root:
    PYTHONPATH=. python3 -m indexer.finetune_main --train grocerystore:.gsdata:train+iconic \
        --val grocerystore:.gsdata:val --weights .gsdata/effnet_lite0_imagenet_fp16.pth --out gs-effnet.pt \
        --name gs-effnet --device cuda --img-size 288 --epochs 50 --patience 20 --workers 7 --preload
    # back here:
    .venv/bin/shopsearch classify install gs-effnet.pt --name gs-effnet
"""
from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _one(rel: str, src: Path, dst: Path, side: int, quality: int) -> None:
    out = dst / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    im = Image.open(src / rel).convert("RGB")
    r = side / min(im.size)
    if r < 1:
        im = im.resize((round(im.width * r), round(im.height * r)), Image.BICUBIC)
    im.save(out, quality=quality)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=str(REPO.parent / "shared" / "datasets" / "grocerystore" / "dataset"))
    ap.add_argument("--out", default=str(REPO / ".gsdata"))
    ap.add_argument("--short-side", type=int, default=288)
    ap.add_argument("--quality", type=int, default=72)
    ap.add_argument("--splits", default="train,val")
    args = ap.parse_args()
    src, dst = Path(args.dataset), Path(args.out)
    rels = [line.split(",")[0].strip() for s in args.splits.split(",")
            for line in (src / f"{s}.txt").read_text().splitlines() if line.strip()]
    rels += [str(p.relative_to(src)) for p in (src / "iconic-images-and-descriptions").rglob("*.jpg")]
    with ProcessPoolExecutor(2) as ex:
        list(ex.map(partial(_one, src=src, dst=dst, side=args.short_side, quality=args.quality), rels, chunksize=64))
    for f in ("train.txt", "val.txt", "test.txt", "classes.csv"):
        (dst / f).write_bytes((src / f).read_bytes())
    from shopsearch.embedders.efficientnet import weights_file

    sd = torch.load(weights_file(), map_location="cpu", weights_only=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()},
               dst / "effnet_lite0_imagenet_fp16.pth")
    print(f"{len(rels)} images -> {dst}")


if __name__ == "__main__":
    main()
