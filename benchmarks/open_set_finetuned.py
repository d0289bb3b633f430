"""The open set (issue 16) with a CPU fine-tuned model that never saw the removed products.

`bench recall --open-set F --seed S` removes a seeded share of the Grocery Store's products
from the gallery. A model fine-tuned on every product has learnt the removed ones too, so
its open-set figures flatter it. This script:

1. draws the same products `bench recall --open-set F --seed S` removes
   (shopsearch.evaluation.open_set.products_removed);
2. writes an ImageFolder tree of symbolic links to the kept products' train+iconic photos
   (training) and val photos (validation), under --tree (scratch, outside the repository);
3. fine-tunes on it with the CPU recipe (`classify train --finetune`, what a shop would type);
4. runs `bench recall --open-set F --seed S` with that model, by default and with
   `--calibrate-on val`, and writes each run's JSON to --out-dir.

    .venv/bin/python benchmarks/open_set_finetuned.py --dataset ../shared/datasets/grocerystore \
        --data-dir /tmp/var --tree /tmp/open-set-kept --out-dir benchmarks/results

`--artefact PATH` takes a model fine-tuned on that tree elsewhere (a GPU machine:
benchmarks/gpu_finetune_session.sh) instead of step 3: `classify install`, then `classify tune`
on the tree's train and val photos (the serving choices `classify train --finetune` makes at its
end). `--skip-train` reuses an installed model of that name; `--model finetuned:OTHER --skip-train`
scores another model (e.g. one fine-tuned on all products: label it as having seen them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_finetune_grocerystore import shopsearch  # noqa: E402 - the same timed `shopsearch ... --json` step


def removed_products(dataset: Path, fraction: float, seed: int) -> tuple[list[str], set[str]]:
    """The products `bench recall --open-set FRACTION --seed SEED` removes, and their categories."""
    from shopsearch.evaluation.datasets import category_of, load_dataset
    from shopsearch.evaluation.open_set import products_removed

    products = load_dataset(dataset, "grocerystore").products
    removed = products_removed([p.sku for p in products], fraction, seed)
    return sorted(removed), {category_of(p) for p in products if p.sku in removed}


def kept_items(dataset: Path, removed_categories: set[str]):
    """(name under the tree, LabelledImage) of the kept products' photos: train/<category>/... for
    train+iconic, val/<category>/... for val."""
    from shopsearch.classify.data import grocery_split

    for part, splits in (("train", ("train", "iconic")), ("val", ("val",))):
        for split in splits:
            for item in grocery_split(dataset, split):
                if item.category not in removed_categories:
                    yield f"{part}/{item.category}/{split}-{Path(item.path).name}", item


def kept_tree(dataset: Path, tree: Path, fraction: float, seed: int) -> dict:
    """Symlink the kept products' photos into tree/train (train+iconic) and tree/val; the draw."""
    removed, categories = removed_products(dataset, fraction, seed)
    counts = {"train": 0, "val": 0}
    for name, item in kept_items(dataset, categories):
        link = tree / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(item.path)
        counts[name.split("/", 1)[0]] += 1
    return {"removed_products": removed, "images": counts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="the Grocery Store dataset folder")
    ap.add_argument("--data-dir", default="var", help="shopsearch data folder (vector cache, models)")
    ap.add_argument("--tree", required=True, help="scratch folder for the kept products' ImageFolder links")
    ap.add_argument("--fraction", type=float, default=0.2, help="--open-set share of products removed")
    ap.add_argument("--seed", type=int, default=0, help="--open-set seed")
    ap.add_argument("--name", default="gs-cpu-kept", help="the kept-products model's name (finetuned:NAME)")
    ap.add_argument("--model", default=None, help="score this model instead (with --skip-train)")
    ap.add_argument("--skip-train", action="store_true", help="the model is already installed")
    ap.add_argument("--artefact", default=None, help="a model fine-tuned on the tree elsewhere: installed and tuned")
    ap.add_argument("--tag", default=None, help="result file tag (default: the model's name)")
    ap.add_argument("--note", default="", help="recorded with the results (e.g. what the model saw)")
    ap.add_argument("--out-dir", default=None, help="write open_set_finetuned_<tag>[_labelled_val].json here")
    a = ap.parse_args(argv)
    if a.artefact and not Path(a.artefact).is_file():
        ap.error(f"--artefact {a.artefact}: no such file")

    from shopsearch.evaluation.machine import machine_info

    ds = Path(a.dataset).resolve()
    data_dir = Path(a.data_dir).resolve()
    draw = kept_tree(ds, Path(a.tree).resolve(), a.fraction, a.seed)
    model = a.model or f"finetuned:{a.name}"
    trained = None
    tree = Path(a.tree).resolve()
    if a.artefact:
        shopsearch(data_dir, "classify", "install", str(Path(a.artefact).resolve()), "--name", a.name)
        out, secs, load = shopsearch(data_dir, "classify", "tune", "--model", model, "--train",
                                     f"imagefolder:{tree / 'train'}", "--val", f"imagefolder:{tree / 'val'}")
        from shopsearch.classify.artefact import load_artefact

        m = load_artefact(data_dir / "models" / f"{a.name}.pt").metrics
        trained = {"trained_elsewhere": True, "seconds": m.get("seconds"), "tune_seconds": round(secs, 1),
                   "config": m.get("config"), "best_epoch": m.get("best_epoch"), "weights_kept": m.get("weights"),
                   "val_fine_top1": (m.get("val_head") or m.get("val") or {}).get("fine", {}).get("top1"),
                   "warnings": m.get("warnings", [])}
    elif not a.skip_train:
        out, secs, load = shopsearch(data_dir, "classify", "train", "--finetune", "--name", a.name,
                                     "--train", f"imagefolder:{tree / 'train'}", "--val", f"imagefolder:{tree / 'val'}")
        m = out["metrics"]
        trained = {"seconds": round(secs, 1), "load_avg_1m_before": round(load, 2), "fine_classes": out["fine_classes"],
                   "best_epoch": m.get("best_epoch"), "weights_kept": m.get("weights"),
                   "val_fine_top1": m.get("val", {}).get("fine", {}).get("top1"), "warnings": m.get("warnings", [])}
    tag = a.tag or model.split(":")[-1]
    for suffix, extra in (("", []), ("_labelled_val", ["--calibrate-on", "val"])):
        args = ["bench", "recall", "--dataset", str(ds), "--model", model, "--open-set", str(a.fraction),
                "--seed", str(a.seed), "--latency-samples", "0", *extra]
        r, secs, load = shopsearch(data_dir, *args)
        o = r["open_set"]
        row = {"benchmark": "open_set_finetuned", "command": "shopsearch " + " ".join(args), "model": model,
               "note": a.note, "draw": draw, "training": trained, "recall_at": r["recall_at"],
               "auroc": o["auroc"], "ece": o["ece"], "top1_accuracy_in_catalogue": o["top1_accuracy_in_catalogue"],
               "open_set": o, "seconds": round(secs, 1), "load_avg_1m_before": round(load, 2),
               "machine": machine_info()}
        text = json.dumps(row, indent=2)
        print(f"{model}{suffix}: AUROC {o['auroc']} ECE {o['ece']} top-1 in catalogue "
              f"{o['top1_accuracy_in_catalogue']} recall@1 {r['recall_at'].get('1')}", file=sys.stderr)
        if a.out_dir:
            Path(a.out_dir, f"open_set_finetuned_{tag}{suffix}.json").write_text(text + "\n")
        else:
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
