"""The nearest-neighbour vote mixed with the frozen head (shopsearch.classify.knn): chosen on
validation, kept in the artefact, used by every reader of the classifier's probabilities."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shopsearch.classify.artefact import artefact_path, load_artefact
from shopsearch.classify.data import LabelledImage
from shopsearch.classify.knn import KnnVote
from shopsearch.classify.router import Classifier
from shopsearch.classify.training import train_frozen, with_serving_choices

# small head fits: one intra-op thread (tests/conftest.py says why)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

CATS = ["Fruit/Apple", "Fruit/Pear", "Dairy/Milk", "Dairy/Cheese"]


def _two_sided(n_per: int, seed: int, dim: int = 16) -> tuple[np.ndarray, list[LabelledImage]]:
    """Each category photographed from two sides: two clusters on opposite sides of the
    origin, which no single hyperplane per class captures and neighbours do."""
    centres = 3.0 * np.random.default_rng(0).normal(size=(len(CATS), dim))
    rng = np.random.default_rng(seed)
    xs, items = [], []
    for c, cat in enumerate(CATS):
        side = np.where(np.arange(n_per) % 2 == 0, 1.0, -1.0)[:, None]
        xs.append(side * centres[c] + rng.normal(size=(n_per, dim)))
        items += [LabelledImage(f"img{seed}_{c}_{j}.png", cat) for j in range(n_per)]
    x = np.concatenate(xs).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), items


def _top1(art, x, items) -> float:
    truth = np.array([art.labels.fine_index(i.category) for i in items])
    return float((Classifier(art).probs(x)[0].argmax(1) == truth).mean())


def test_the_vote_is_chosen_where_the_head_cannot_separate_and_is_served(tmp_path):
    x, items = _two_sided(30, seed=1)
    xv, val = _two_sided(16, seed=2)
    xt, test = _two_sided(16, seed=3)
    art = train_frozen(x, items, xv, val, "fp", "fake")
    info = art.metrics["knn_vote"]
    assert art.knn is not None and info["weight"] > 0
    # the served vote is over train + val, as the refitted head
    assert info["vectors"] == len(x) and len(art.knn["vectors"]) == len(x) + len(xv)
    assert art.metrics["val"]["fine"]["top1"] > info["val_top1_head"] + 0.1
    head_alone = replace(art, knn=None)
    assert _top1(art, xt, test) > _top1(head_alone, xt, test) + 0.1 and _top1(art, xt, test) > 0.9
    pf, pc = Classifier(art).probs(xt)
    np.testing.assert_allclose(pf.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pc.sum(1), 1.0, atol=1e-5)
    back = load_artefact(art.save(artefact_path(tmp_path, art.fingerprint)))
    np.testing.assert_allclose(Classifier(back).probs(xt)[0], pf, atol=1e-3)  # vectors stored as float16


def test_vote_probabilities_and_mixture():
    g = np.eye(4, dtype=np.float32)
    vote = KnnVote(g, np.array([0, 1, 2, 2]), 3, k=2, temperature=0.05, weight=0.5)
    p = vote.probs(np.array([[0.0, 0.0, 1.0, 0.9]], np.float32))
    assert p.shape == (1, 3) and p[0].argmax() == 2 and np.isclose(p.sum(), 1.0)
    head_f, head_c = np.array([[0.6, 0.3, 0.1]]), np.array([[0.9, 0.1]])
    f, c = vote.mix(head_f, head_c, np.array([[0.0, 0.0, 1.0, 0.9]], np.float32), [0, 0, 1])
    assert np.isclose(f.sum(), 1.0) and np.isclose(c.sum(), 1.0) and c[0, 1] > head_c[0, 1]
    off = KnnVote(g, np.array([0, 1, 2, 2]), 3, k=2, temperature=0.05, weight=0.0)
    assert off.mix(head_f, head_c, g[:1], [0, 0, 1])[0] is head_f


def test_a_finetuned_models_serving_choices_are_made_on_val_over_its_vectors():
    """A fine-tuned model's trained head (here: one that cannot separate two-sided classes) gets
    the vote, fusion weight and thresholds from val, as a frozen head does; the head's own
    figure is kept beside the served one."""
    x, items = _two_sided(30, seed=1)
    xv, val = _two_sided(16, seed=2)
    xt, test = _two_sided(16, seed=3)
    trained = replace(train_frozen(x, items, xv, val, "fp", "fake"), knn=None, kind="finetuned",
                      metrics={"val": {"fine": {"top1": 0.5}}, "best_epoch": 3})
    served = with_serving_choices(trained, x, items, xv, val)
    assert served.kind == "finetuned" and served.metrics["best_epoch"] == 3
    assert served.metrics["val_head"] == {"fine": {"top1": 0.5}} and served.knn is not None
    assert served.metrics["knn_vote"]["weight"] > 0 and len(served.knn["vectors"]) == len(x) + len(xv)
    assert served.metrics["val"]["fine"]["top1"] > served.metrics["knn_vote"]["val_top1_head"] + 0.1
    assert _top1(served, xt, test) > _top1(trained, xt, test) + 0.1
    assert "fusion_val_precision_at_1" in served.metrics and served.thresholds.fusion >= 0
    # the frozen-head warning is judged again on the served figure: withdrawn when the vote lifts
    # it near the frozen head's, kept when it is still far below
    served_top1 = served.metrics["val"]["fine"]["top1"]
    for reference, warned in ((served_top1 + 0.02, False), (served_top1 + 0.2, True)):
        was = replace(trained, metrics={**trained.metrics, "frozen_val_top1": reference, "warnings": ["far below"]})
        again = with_serving_choices(was, x, items, xv, val)
        assert bool(again.metrics["warnings"]) is warned
        assert again.metrics["warnings"] != ["far below"]  # never the head-alone text kept as it was
    # photos of classes the model does not know are ignored; no val photos: nothing changes
    other = [LabelledImage(i.path, "Toys/Ball") for i in val]
    assert with_serving_choices(trained, x, items, xv, other) is trained
