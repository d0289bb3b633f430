"""A frozen-backbone head on a Grocery Store subset (runs when ../shared holds the dataset)."""
from __future__ import annotations

import numpy as np
import pytest

from shopsearch.classify.data import grocery_split
from shopsearch.classify.labels import LabelSpace
from shopsearch.classify.router import Classifier
from shopsearch.classify.training import train_frozen
from shopsearch.classify.vectors import embed_labelled
from shopsearch.embedders import load_embedder
from tests.conftest import GROCERY, needs_grocery

# a small head fit and a dozen images through the backbone: one intra-op thread (tests/conftest.py says why)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: one fine class from each of six coarse classes
CLASSES = ["Fruit/Banana", "Fruit/Kiwi", "Vegetables/Carrots", "Vegetables/Cucumber",
           "Packages/Milk/Arla-Standard-Milk", "Packages/Juice/Tropicana-Apple-Juice"]


def _subset(split: str, per_class: int) -> list:
    items = [i for i in grocery_split(GROCERY, split) if i.category in CLASSES]
    return [i for c in CLASSES for i in [x for x in items if x.category == c][:per_class]]


@needs_grocery
def test_levels_match_the_dataset():
    import csv

    rows = [r for r in csv.reader(open(GROCERY / "dataset" / "classes.csv")) if r[1].strip().isdigit()]
    labels = LabelSpace.from_paths(i.category for i in grocery_split(GROCERY, "iconic"))
    assert len(labels.fine) == 81 and len(labels.coarse) == len({r[3] for r in rows}) == 43
    for r in rows:  # every fine class sits in the coarse class the dataset gives it
        cat = r[4].strip().lstrip("/").split("/")[1:-1]
        assert labels.coarse[labels.coarse_index("/".join(cat))].split("/")[-1] == r[2]


@needs_grocery
def test_frozen_head_on_a_subset(tmp_path):
    emb = load_embedder("efficientnet-lite0", "cpu")
    train = _subset("train", 8) + [i for i in grocery_split(GROCERY, "iconic") if i.category in CLASSES]
    x, train = embed_labelled(emb, train, tmp_path / "vectors", progress=False)
    xv, val = embed_labelled(emb, _subset("val", 3), tmp_path / "vectors", progress=False)
    xt, test = embed_labelled(emb, _subset("test", 5), tmp_path / "vectors", progress=False)
    art = train_frozen(x, train, xv, val, emb.fingerprint, emb.name, epochs=150)
    pf, pc = Classifier.for_embedder(art, emb).probs(xt)
    truth = np.array([art.labels.fine_index(i.category) for i in test])
    assert len(test) == 30 and (pf.argmax(1) == truth).mean() >= 0.8
