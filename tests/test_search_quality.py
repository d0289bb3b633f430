"""SearchService's per-query quality switches: re-ranking, test-time augmentation, fusion."""
from __future__ import annotations

import numpy as np

from shopsearch.rerank import parse_rerank
from shopsearch.results import CategoryPrediction
from tests.conftest import jitter, make_image
from tests.test_search import indexed  # noqa: F401 - the fixture


class _Router:
    """A router sure that every query is milk, with a fusion weight."""

    fusion_weight = 0.5

    def route(self, vector):
        return CategoryPrediction("Dairy/Milk", 0.9, routing="all"), None

    def category_boost(self, vector):
        return {"Dairy/Milk": 0.0, "Fruit/Apple": -2.0, "Fruit/Banana": -2.0, "": -3.0}


def test_rerank_per_query_keeps_the_right_product_first(indexed):  # noqa: F811
    svc, _ = indexed
    for opts in ("qe", "kr", "qe+kr=5,depth=20"):
        for i in range(12):
            res = svc.search_image(jitter(make_image(i), seed=i), k=5, rerank=parse_rerank(opts))
            skus = [h.sku for h in res.hits]
            assert skus[0] == f"P{i}" and len(set(skus)) == 5
            assert all(a.score >= b.score for a, b in zip(res.hits, res.hits[1:]))


def test_tta_embeds_the_photo_and_its_mirror(indexed, monkeypatch):  # noqa: F811
    svc, _ = indexed
    batches = []
    real = svc.embedder.encode_images
    monkeypatch.setattr(svc.embedder, "encode_images", lambda imgs: batches.append(len(imgs)) or real(imgs))
    res = svc.search_image(make_image(3), k=3, tta=True)
    assert batches == [2] and res.hits[0].sku == "P3"
    svc.search_image(make_image(3), k=3)
    assert batches == [2, 1]  # the service default stays off


def test_fusion_reorders_by_category_instead_of_filtering(indexed):  # noqa: F811
    svc, _ = indexed
    svc.router = _Router()
    apple = make_image(0)
    plain = svc.search_image(apple, k=4, fusion=False)
    assert plain.hits[0].sku == "P0" and plain.predicted_category.routing == "all"
    fused = svc.search_image(apple, k=4, fusion=True)
    assert fused.predicted_category.routing == "fused"
    assert [h.category for h in fused.hits] == ["Dairy/Milk"] * 4  # the boosted category first
    more = svc.search_image(apple, k=12, fusion=True)
    assert {h.sku for h in more.hits} == {f"P{i}" for i in range(12)}  # nothing hidden
    assert np.all(np.diff([h.score for h in more.hits]) <= 0)


def test_fusion_is_the_default_and_a_setting_turns_it_off():
    """A shop gets fusion without asking (once a head exists); SHOPSEARCH_FUSION=off turns it off,
    and a value that is neither on nor off is refused, naming the variable."""
    import pytest

    from shopsearch.config import Settings
    from shopsearch.errors import ConfigError

    assert Settings.from_env({}).fusion is True and Settings().fusion is True
    assert Settings.from_env({"SHOPSEARCH_FUSION": "off"}).fusion is False
    assert Settings.from_env({"SHOPSEARCH_FUSION": " On "}).fusion is True
    assert Settings.from_env({}).tta is False and Settings.from_env({"SHOPSEARCH_TTA": "1"}).tta is True
    with pytest.raises(ConfigError, match="SHOPSEARCH_FUSION"):
        Settings.from_env({"SHOPSEARCH_FUSION": "maybe"})


def test_fused_results_are_calibrated_on_their_plain_similarities(indexed):  # noqa: F811
    """Fusion re-orders products by a category bonus; a calibration fitted on plain similarity
    scores the plain similarities of the products in the order shown, not the fused scores,
    and a first product that fusion lifted over a more similar one gets a lower confidence."""
    from shopsearch.confidence import RAW_SCORING, Calibration

    class Lifting(_Router):
        def category_boost(self, vector):
            return {**super().category_boost(vector), "Dairy/Milk": 1.0}

    svc, _ = indexed
    svc.router = Lifting()
    svc.calibration = Calibration(True, top1=(8.0, 4.0, -4.0), hit=(8.0, 4.0, -4.0), scoring=RAW_SCORING)
    apple = make_image(0)
    plain = svc.search_image(apple, k=4, fusion=False)
    fused = svc.search_image(apple, k=4, fusion=True)
    assert fused.predicted_category.routing == "fused" and fused.hits[0].sku != "P0"
    assert fused.calibration["status"] != "uncalibrated" and fused.confidence is not None
    sims = [h.similarity for h in fused.hits]
    assert [round(h.score - 1.0, 5) for h in fused.hits] == [round(s, 5) for s in sims]
    assert fused.confidence == svc.calibration.confidence(sims)[0]
    assert fused.confidence < plain.confidence  # milk first, though the apple photo is most like P0
    assert fused.hits[0].to_dict()["similarity"] == round(sims[0], 6)
    assert plain.hits[0].similarity is None and plain.hits[0].to_dict()["similarity"] == round(plain.hits[0].score, 6)
