"""Category classifier: heads, artefacts, thresholds, routing and tagging on generated data."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from indexer.build import IndexBuilder
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.classify.artefact import (FORMAT_VERSION, ClassifierArtefact, artefact_path, load_artefact)
from shopsearch.classify.data import LabelledImage, catalogue_images, stratified_holdout
from shopsearch.classify.head import CategoryHead
from shopsearch.classify.labels import LabelSpace, coarse_path
from shopsearch.classify.router import Classifier, ClassifierRouter, load_router_for
from shopsearch.classify.tagging import tag_products
from shopsearch.classify.thresholds import NEVER, RoutingThresholds, choose_thresholds
from shopsearch.classify.training import train_frozen
from shopsearch.classify.vectors import embed_labelled
from shopsearch.config import Settings
from shopsearch.errors import ClassifierError
from shopsearch.index import IndexStore
from shopsearch.search import SearchService
from tests.conftest import FakeEmbedder, jitter, make_image, sha

CATS = ["Fruit/Apple/Granny-Smith", "Fruit/Apple/Pink-Lady", "Fruit/Banana", "Dairy/Milk/Oat", "Dairy/Yoghurt"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_label_space_levels():
    labels = LabelSpace.from_paths(CATS + ["Fruit/Banana"])
    assert labels.fine == tuple(sorted(CATS))
    assert labels.coarse == ("Dairy/Milk", "Dairy/Yoghurt", "Fruit/Apple", "Fruit/Banana")
    assert labels.coarse[labels.coarse_index("Fruit/Apple/Pink-Lady")] == "Fruit/Apple"
    assert coarse_path("Fruit/Banana") == "Fruit/Banana"
    assert LabelSpace.from_dict(labels.to_dict()) == labels
    with pytest.raises(ClassifierError):
        labels.fine_index("Fruit/Kiwi")
    with pytest.raises(ClassifierError):
        LabelSpace.from_paths(["Only/One"])


def _clusters(n_per: int, seed: int, spread: float = 0.35) -> tuple[np.ndarray, list[LabelledImage]]:
    """Gaussian clusters in 24-d, one per category, centres fixed across seeds."""
    centres = np.random.default_rng(0).normal(size=(len(CATS), 24))
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + spread * rng.normal(size=(n_per, 24)) for c in centres]).astype(np.float32)
    items = [LabelledImage(f"img{seed}_{i}_{j}.png", cat) for i, cat in enumerate(CATS) for j in range(n_per)]
    return x / np.linalg.norm(x, axis=1, keepdims=True), items


@pytest.fixture(scope="module")
def trained(one_torch_thread) -> ClassifierArtefact:
    """One head on separable clusters, shared by the tests that only read it (frozen artefact)."""
    x, items = _clusters(20, seed=1)
    xv, val = _clusters(10, seed=2)
    return train_frozen(x, items, xv, val, "fp-a", "fake-a", epochs=80, seed=0)


def test_head_learns_separable_classes(trained):
    art = trained
    xt, test = _clusters(10, seed=3)
    pf, pc = Classifier(art).probs(xt)
    truth = np.array([art.labels.fine_index(i.category) for i in test])
    assert (pf.argmax(1) == truth).mean() == 1.0
    assert (pc.argmax(1) == np.array(art.labels.fine_to_coarse)[truth]).mean() == 1.0
    assert art.metrics["val"]["fine"]["top1"] == 1.0 and art.metrics["val"]["samples"] == 50
    # separable validation data: routing filters on (nearly) every query
    assert art.thresholds.filter < 1.0 and art.thresholds.val_filter_rate > 0.9


def test_served_head_is_refitted_on_train_plus_val():
    """Validation chooses C, thresholds and the fusion weight and its figures are those of the
    train-only head; the head served is then fitted on train + val with the same settings."""
    x, items = _clusters(20, seed=1)
    xv, val = _clusters(10, seed=2, spread=0.9)  # noisy val: adding it must move the weights
    only = train_frozen(x, items, xv, val, "fp-a", "fake-a", refit=False)
    both = train_frozen(x, items, xv, val, "fp-a", "fake-a")
    assert "refit" not in only.metrics and only.metrics["train_samples"] == 100
    assert both.metrics["refit"] == "train+val" and both.metrics["train_samples"] == 150
    assert both.thresholds == only.thresholds and both.metrics["val"] == only.metrics["val"]
    assert both.metrics["C_fine"] == only.metrics["C_fine"]
    assert not torch.allclose(both.head_state["fine.weight"], only.head_state["fine.weight"])
    xt, test = _clusters(10, seed=3)
    truth = np.array([both.labels.fine_index(i.category) for i in test])
    assert (Classifier(both).probs(xt)[0].argmax(1) == truth).mean() == 1.0


def test_artefact_round_trip_and_refusals(trained, tmp_path):
    art = trained
    path = art.save(artefact_path(tmp_path, art.fingerprint))
    back = load_artefact(path)
    assert (back.fingerprint, back.labels, back.thresholds, back.kind) == (art.fingerprint, art.labels,
                                                                          art.thresholds, "head")
    x, _ = _clusters(3, seed=5)
    np.testing.assert_allclose(Classifier(back).probs(x)[0], Classifier(art).probs(x)[0], atol=1e-6)
    # another embedder's vectors are refused with a clear error
    with pytest.raises(ClassifierError, match="fingerprint"):
        ClassifierRouter.from_artefact(path, FakeEmbedder())
    # the same weights run in bf16 are the same vectors (a fine-tuned model's fp32-trained head,
    # built and served in bf16 on a bf16 CPU), either way round; int8 or other weights are not
    for a, b in ((art.fingerprint, art.fingerprint + "+bf16"), (art.fingerprint + "+bf16", art.fingerprint)):
        replace(art, fingerprint=a).check_fingerprint(b)
    for other in (art.fingerprint + "+int8:cabc", art.fingerprint + "x+bf16"):
        with pytest.raises(ClassifierError, match="fingerprint"):
            art.check_fingerprint(other)
    # another format version, or a damaged file, is refused
    d = torch.load(path, weights_only=True)
    d["format_version"] = FORMAT_VERSION + 1
    torch.save(d, tmp_path / "future.pt")
    with pytest.raises(ClassifierError, match="format version"):
        load_artefact(tmp_path / "future.pt")
    (tmp_path / "broken.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ClassifierError, match="cannot read"):
        load_artefact(tmp_path / "broken.pt")
    with pytest.raises(ClassifierError, match="no classifier"):
        load_artefact(tmp_path / "missing.pt")


def test_choose_thresholds_meets_target_exactly():
    # 10 confident correct answers (p=0.9), then 10 at p=0.6 of which 5 are wrong
    probs = np.zeros((20, 3))
    probs[:10] = [0.9, 0.05, 0.05]
    probs[10:] = [0.6, 0.3, 0.1]
    y = np.array([0] * 15 + [1] * 5)  # the wrong ones' truth is the runner-up
    th = choose_thresholds(probs, y, target=0.9)
    assert th.filter == pytest.approx(0.9)  # 0.6 would give 15/20 = 75% precision
    assert th.top2 == pytest.approx(0.9)  # all ten p=0.6 rows have the truth in their top two
    assert th.val_filter_rate == 0.5 and th.val_top2_rate == 0.5
    never = choose_thresholds(np.full((10, 2), 0.5), np.array([0, 1] * 5), target=0.9)
    assert never.filter == NEVER and never.decide(0.99, 1.0) == "top2" or never.top2 == NEVER


def _router(thresholds: RoutingThresholds) -> ClassifierRouter:
    """A head whose probabilities are known in closed form: logits = 10 * unit vector."""
    labels = LabelSpace.from_paths(["A/x", "A/y", "B/z"])
    head = CategoryHead(3, 3, len(labels.coarse), scale=10.0)
    with torch.no_grad():
        head.fine.weight.copy_(torch.eye(3))
        head.fine.bias.zero_()
    art = ClassifierArtefact("fp", "fake", labels, head.config, head.state_dict(), thresholds)
    return ClassifierRouter(Classifier(art))


def test_router_filter_top2_all():
    router = _router(RoutingThresholds(filter=0.9, top2=0.9))
    pred, allowed = router.route(np.array([1.0, 0, 0]))
    p1 = math.exp(10) / (math.exp(10) + 2)
    assert allowed == ("A/x",) and pred.routing == "filter" and pred.confidence == pytest.approx(p1, rel=1e-5)
    assert pred.category == "A/x" and [c for c, _ in pred.alternatives] == ["A/y", "B/z"]
    pred, allowed = router.route(np.array([0, 1.0, 1.0]) / math.sqrt(2))
    assert pred.routing == "top2" and set(allowed) == {"A/y", "B/z"}
    pred, allowed = router.route(np.ones(3) / math.sqrt(3))
    assert pred.routing == "all" and allowed is None and pred.confidence == pytest.approx(1 / 3, rel=1e-5)
    # thresholds that never fire leave every search unrestricted
    assert _router(RoutingThresholds()).route(np.array([1.0, 0, 0]))[1] is None


def _shop(tmp_path, catalogue):
    """Products of five categories, each image a jittered copy of its category's pattern;
    P-u* have no category, P-wrong has a merchant category unlike its pictures."""
    def img(cat_i: int, seed: int):
        p = tmp_path / f"c{cat_i}_{seed}.png"
        jitter(make_image(cat_i), seed=seed, amount=25).save(p)
        return ImageRecord(str(p), sha256=sha(p))

    for i, cat in enumerate(CATS):
        for j in range(4):
            catalogue.upsert_product(ProductRecord(sku=f"P{i}-{j}", title=cat, category_path=tuple(cat.split("/")),
                                                   images=(img(i, 10 * j + i), img(i, 10 * j + i + 500))))
        catalogue.upsert_product(ProductRecord(sku=f"P-u{i}", title="unknown", images=(img(i, 900 + i),)))
    catalogue.upsert_product(ProductRecord(sku="P-wrong", title="mislabelled", category_path=("Dairy", "Yoghurt"),
                                           images=(img(0, 999),)))


def test_tagging_predicts_and_never_overwrites_merchant(tmp_path, catalogue):
    _shop(tmp_path, catalogue)
    emb = FakeEmbedder()
    items = catalogue_images(catalogue)
    assert len(items) == 41 and all(i.sha256 for i in items)
    train, val = stratified_holdout(items, 0.25)
    x, train = embed_labelled(emb, train, tmp_path / "vectors", progress=False, workers=1)
    xv, val = embed_labelled(emb, val, tmp_path / "vectors", progress=False, workers=1)
    art = train_frozen(x, train, xv, val, emb.fingerprint, emb.name, epochs=100)
    clf = Classifier.for_embedder(art, emb)
    report = tag_products(catalogue, emb, clf, tmp_path / "vectors", progress=False)
    assert report.tagged == 5 and report.merchant == 21
    for i, cat in enumerate(CATS):
        p = catalogue.get_product(f"P-u{i}")
        assert (p.predicted_category, p.category, p.category_source) == (cat, cat, "predicted")
        assert 0 < p.predicted_confidence <= 1
    wrong = catalogue.get_product("P-wrong")
    assert (wrong.category, wrong.category_source, wrong.predicted_category) == ("Dairy/Yoghurt", "merchant", None)
    # a second run leaves predicted products alone unless asked to retag
    again = tag_products(catalogue, emb, clf, tmp_path / "vectors", progress=False)
    assert (again.tagged, again.already_predicted) == (0, 5)
    assert tag_products(catalogue, emb, clf, tmp_path / "vectors", retag=True, progress=False).tagged == 5
    with pytest.raises(ClassifierError):
        tag_products(catalogue, FakeEmbedder(salt="other"), clf, tmp_path / "vectors", progress=False)


def test_search_routes_to_predicted_category(tmp_path, sqlite_catalogue):
    _shop(tmp_path, sqlite_catalogue)
    emb = FakeEmbedder()
    settings = Settings(data_dir=tmp_path / "data")
    assert load_router_for(settings, emb) is None  # no classifier yet: no routing
    x, items = embed_labelled(emb, catalogue_images(sqlite_catalogue), tmp_path / "vectors", False, 1)
    art = train_frozen(x, items, x, items, emb.fingerprint, emb.name, epochs=100)
    art.save(artefact_path(settings.classifier_dir, emb.fingerprint))
    router = load_router_for(settings, emb)
    assert router is not None and router.thresholds == art.thresholds
    store = IndexStore(tmp_path / "index")
    IndexBuilder(emb, sqlite_catalogue, store, tmp_path / "vectors").build(progress=False, workers=1)
    index, manifest = store.load_current()
    svc = SearchService(emb, index, sqlite_catalogue, manifest, router=router)
    query = jitter(make_image(2), seed=4242, amount=25)  # a banana photo
    res = svc.search_image(query, k=3)
    assert res.predicted_category.category == "Fruit/Banana" and res.predicted_category.routing == "filter"
    assert [h.category for h in res.hits] == ["Fruit/Banana"] * 3
    assert res.to_dict()["predicted_category"]["category"] == "Fruit/Banana"
    # routed lists are topped up from the whole catalogue when the category runs short
    assert len(svc.search_image(query, k=8).hits) == 8
    off = svc.search_image(query, k=3, routing=False)
    assert off.predicted_category is None


def test_one_query_runs_the_head_once_for_routing_fusion_and_confidence():
    router = _router(RoutingThresholds(filter=0.9, top2=0.9, fusion=0.5))
    calls = []
    real = router.classifier.head.forward
    router.classifier.head.forward = lambda x: calls.append(len(x)) or real(x)
    a, b = np.array([1.0, 0, 0], np.float32), np.array([0, 1.0, 0], np.float32)
    router.route(a)
    boost, probs = router.category_boost(a), router.category_probs(a)
    assert calls == [1]
    assert probs["A/x"] == pytest.approx(math.exp(10) / (math.exp(10) + 2), rel=1e-5)
    assert boost["A/x"] > boost["B/z"]
    router.route(b)  # another query: asked again, and answered for it
    assert calls == [1, 1] and router.category_probs(b)["A/y"] > 0.99
    router.category_probabilities(np.stack([a, b]))  # batches are not kept
    router.category_probabilities(np.stack([a, b]))
    assert calls == [1, 1, 2, 2]
