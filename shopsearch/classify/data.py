"""Labelled images for training and evaluation: from the catalogue (merchant categories),
from an ImageFolder tree, or from a Grocery Store split. Torch-free."""
from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from shopsearch.errors import ManifestError

if TYPE_CHECKING:  # the catalogue needs SQLAlchemy; the device training entry point must not
    from shopsearch.catalogue.store import CatalogueStore

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass(frozen=True)
class LabelledImage:
    path: str
    category: str  # fine category path, e.g. "Fruit/Apple/Granny-Smith"
    sha256: str | None = None


def _grocery_root(root: Path) -> Path:
    root = Path(root)
    ds = root / "dataset" if (root / "dataset" / "classes.csv").is_file() else root
    if not (ds / "classes.csv").is_file():
        raise ManifestError(f"{root} does not look like the Grocery Store dataset (no classes.csv)")
    return ds


def grocery_classes(root: Path) -> dict[int, tuple[str, str]]:
    """fine class id -> (category path as the importer makes it, iconic image path)."""
    ds = _grocery_root(root)
    out = {}
    with open(ds / "classes.csv", newline="") as f:
        for row in csv.reader(f):
            if len(row) < 5 or not row[1].strip().isdigit():
                continue
            iconic = row[4].strip().lstrip("/")
            cat = Path(iconic).parent.relative_to("iconic-images-and-descriptions").as_posix()
            out[int(row[1])] = (cat, str(ds / iconic))
    return out


def grocery_split(root: Path, split: str) -> list[LabelledImage]:
    """A Grocery Store split ('train', 'val', 'test') or 'iconic' (one image per class)."""
    ds = _grocery_root(root)
    classes = grocery_classes(ds)
    if split == "iconic":
        return [LabelledImage(icon, cat) for _, (cat, icon) in sorted(classes.items())]
    split_file = ds / f"{split}.txt"
    if not split_file.is_file():
        raise ManifestError(f"no split file {split_file}")
    items = []
    for line in split_file.read_text().splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) >= 2 and parts[0]:
            items.append(LabelledImage(str(ds / parts[0]), classes[int(parts[1])][0]))
    return items


def imagefolder(root: Path) -> list[LabelledImage]:
    """root/<category>/.../<image>: the category is the image's folder path under root."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root} is not a directory")
    items = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and len(p.relative_to(root).parts) >= 2:
            items.append(LabelledImage(str(p), p.parent.relative_to(root).as_posix()))
    return items


def read_labelled(spec: str) -> list[LabelledImage]:
    """'grocerystore:ROOT:SPLIT[+SPLIT...]' or 'imagefolder:ROOT' (or a bare ImageFolder path)."""
    kind, colon, rest = spec.partition(":")
    if colon and kind == "grocerystore":
        root, _, splits = rest.rpartition(":")
        if not root:
            raise ManifestError(f"{spec!r}: expected grocerystore:ROOT:SPLIT (train, val, test or iconic)")
        return [it for s in splits.split("+") for it in grocery_split(Path(root), s)]
    if colon and kind == "imagefolder":
        return imagefolder(Path(rest))
    return imagefolder(Path(spec))


def catalogue_images(store: "CatalogueStore") -> list[LabelledImage]:
    """Every decodable image of every product whose category the merchant gave."""
    items = []
    for prod in store.products():
        if prod.category_source != "merchant" or not prod.category:
            continue
        items += [LabelledImage(i.path, prod.category, i.sha256) for i in prod.images if i.status == "ok"]
    return items


def stratified_holdout(items: Sequence[LabelledImage], fraction: float, seed: int = 0
                       ) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Split off ~`fraction` of each category for validation: at least one photo of every category
    with two or more (where the fraction of a small category rounds to none: 5 photos at 0.1), never
    a category's last photo; nothing at all when `fraction` is 0. Only a catalogue whose every
    category has a single photo gets no validation photo from a positive fraction."""
    by_cat: dict[str, list[LabelledImage]] = defaultdict(list)
    for it in items:
        by_cat[it.category].append(it)
    rng = random.Random(seed)
    train, val = [], []
    for cat in sorted(by_cat):
        group = sorted(by_cat[cat], key=lambda i: i.path)
        rng.shuffle(group)
        share = int(round(len(group) * fraction))
        n_val = min(len(group) - 1, max(share, 1 if fraction > 0 else 0))
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def no_validation_warning(val_samples: int, val: Sequence[LabelledImage], val_spec: str | None,
                          val_fraction: float) -> str | None:
    """Why the classifier was trained without validation photos, and what that turns off; None
    when it had some."""
    if val_samples > 0:
        return None
    if val_spec:
        why = "--val gave no usable photo of a category trained on"
    elif val_fraction <= 0:
        why = "--val-fraction is 0"
    elif not val:
        why = "every category has a single photo, and a category's only photo is kept for training"
    else:
        why = f"none of the {len(val)} held-out photos could be used"
    return (f"no validation photos ({why}): routing thresholds and the fusion weight were not chosen, so "
            "searches are not narrowed to the predicted category and it is not fused into the ranking; "
            "add a second photo to categories, or pass --val")
