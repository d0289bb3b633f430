"""The Grocery Store photos a GPU fine-tune reads (train, val, iconic: the dataset's own files,
unchanged), the open-set tree of the kept products (relative links into them) and the ImageNet
EfficientNet-Lite0 weights, packed in tarballs that each fit one call of the device tool (it
carries 64 MiB a call, counted in disk blocks, the working tree included), for
benchmarks/gpu_finetune_session.sh:

    .venv/bin/python benchmarks/classify_prepare_data.py --dataset ../shared/datasets/grocerystore --out .gs

It prints the device calls: each but the last unpacks its part into .gs (and /tmp/gsx, in case
the machine drops ignored files between calls); the last one unpacks its part, merges and runs
the session. `.gs/` is git-ignored, so that only `carry` moves it.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
from pathlib import Path

#: what goes to the GPU machine: the test photos stay here (the evaluation runs on the CPU)
DATASET_PARTS = ("train", "val", "iconic-images-and-descriptions", "train.txt", "val.txt", "classes.csv")


def members(dataset: Path) -> list[tuple[Path, str]]:
    """(source file, name in the archive) for every dataset file the fine-tunes read."""
    out = []
    for part in DATASET_PARTS:
        src = dataset / part
        files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
        out += [(f, f"dataset/{f.relative_to(dataset).as_posix()}") for f in files]
    return out


def kept_links(dataset: Path, fraction: float, seed: int) -> list[tuple[str, str]]:
    """(link name, relative target) of the open-set kept-products tree (kept/train, kept/val)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from open_set_finetuned import kept_items, removed_products  # noqa: E402 - the draw `bench recall --open-set` makes

    links = []
    for name, item in kept_items(dataset, removed_products(dataset, fraction, seed)[1]):
        target = f"dataset/{Path(item.path).resolve().relative_to(dataset.resolve()).as_posix()}"
        links.append((f"kept/{name}", os.path.relpath(target, os.path.dirname(f"kept/{name}"))))
    return links


def pack(files: list[tuple[Path, str]], links: list[tuple[str, str]], out: Path, part_bytes: int) -> list[Path]:
    """Tarballs out/part1.tar, part2.tar, ... of at most about part_bytes each (links go last)."""
    parts: list[Path] = []
    tar, size = None, 0
    for src, name in files:
        cost = -(-src.stat().st_size // 512) * 512 + 512  # data blocks + header
        if tar is None or size + cost > part_bytes:
            if tar is not None:
                tar.close()
            parts.append(out / f"part{len(parts) + 1}.tar")
            tar, size = tarfile.open(parts[-1], "w"), 0
        tar.add(src, arcname=name)
        size += cost
    assert tar is not None
    for name, target in links:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, target
        tar.addfile(info, io.BytesIO(b""))
    tar.close()
    return parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="the Grocery Store dataset folder")
    ap.add_argument("--out", default=".gs", help="where the tarballs go (git-ignored)")
    ap.add_argument("--part-mb", type=float, default=50.0, help="size of each tarball (the tree travels beside it)")
    ap.add_argument("--fraction", type=float, default=0.2, help="--open-set share of products removed")
    ap.add_argument("--seed", type=int, default=0, help="--open-set seed")
    a = ap.parse_args(argv)

    from shopsearch.embedders.efficientnet import weights_file

    dataset = Path(a.dataset).resolve()
    dataset = dataset / "dataset" if (dataset / "dataset" / "classes.csv").exists() else dataset
    if not (dataset / "classes.csv").is_file():
        ap.error(f"{a.dataset} is not the Grocery Store dataset (no classes.csv in it or in its dataset/ folder)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    files = members(dataset) + [(Path(weights_file()), "lite0.pth")]
    parts = pack(files, kept_links(dataset, a.fraction, a.seed), out, int(a.part_mb * 1e6))
    for i, p in enumerate(parts, 1):
        unpack = f"mkdir -p .gs /tmp/gsx && tar xf {p} -C .gs && tar xf {p} -C /tmp/gsx"
        run = (" && cp -rn /tmp/gsx/. .gs/ && bash benchmarks/gpu_finetune_session.sh $OUT"
               if i == len(parts) else "")
        print(f"device call {i}: carry [\"{p}\"] ({p.stat().st_size / 1e6:.1f} MB): {unpack}{run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
