"""Pins the metric definitions of shopsearch.evaluation.metrics on hand-made rankings."""
from __future__ import annotations

import math

import pytest

from shopsearch.evaluation.metrics import (
    QueryOutcome, average_precision_at, gate_failures, ndcg_at, parse_ks, parse_thresholds, percentiles,
    precision_at, recall_at, reciprocal_rank, summarize,
)

L2 = math.log2


def test_single_relevant_product_at_rank_3():
    ranking, rel = ["a", "b", "c", "d", "e"], {"c"}
    assert [recall_at(ranking, rel, k) for k in (1, 2, 3, 5)] == [0.0, 0.0, 1.0, 1.0]
    assert precision_at(ranking, rel, 1) == 0.0
    assert precision_at(ranking, rel, 3) == pytest.approx(1 / 3)
    assert precision_at(ranking, rel, 5) == pytest.approx(1 / 5)
    assert average_precision_at(ranking, rel, 2) == 0.0
    assert average_precision_at(ranking, rel, 5) == pytest.approx(1 / 3)  # = 1/rank with one relevant
    assert reciprocal_rank(ranking, rel) == pytest.approx(1 / 3)
    assert ndcg_at(ranking, rel, 5) == pytest.approx(1 / L2(4))  # ideal DCG is 1/log2(2) = 1
    assert ndcg_at(ranking, rel, 2) == 0.0


def test_no_relevant_item_in_top_k_or_anywhere():
    ranking, rel = ["a", "b", "c"], {"z"}
    for k in (1, 3, 10):
        assert recall_at(ranking, rel, k) == 0.0
        assert precision_at(ranking, rel, k) == 0.0
        assert average_precision_at(ranking, rel, k) == 0.0
        assert ndcg_at(ranking, rel, k) == 0.0
    assert reciprocal_rank(ranking, rel) == 0.0
    assert reciprocal_rank([], rel) == 0.0


def test_several_relevant_products_category_mode():
    # relevant: x, y, z (3 products of the query's category); ranking hits at ranks 1, 3 and 4
    ranking, rel = ["x", "a", "y", "z", "b"], {"x", "y", "z"}
    assert recall_at(ranking, rel, 1) == 1.0  # "found one of them"
    assert precision_at(ranking, rel, 2) == pytest.approx(1 / 2)
    assert precision_at(ranking, rel, 5) == pytest.approx(3 / 5)
    # AP@5 = (1/1 + 2/3 + 3/4) / min(3, 5)
    assert average_precision_at(ranking, rel, 5) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # AP@2: only rank 1 counts, normalised by min(3, 2) = 2
    assert average_precision_at(ranking, rel, 2) == pytest.approx(1 / 2)
    dcg5 = 1 / L2(2) + 1 / L2(4) + 1 / L2(5)
    idcg5 = 1 / L2(2) + 1 / L2(3) + 1 / L2(4)
    assert ndcg_at(ranking, rel, 5) == pytest.approx(dcg5 / idcg5)
    # k=2: ideal has 2 relevant slots
    assert ndcg_at(ranking, rel, 2) == pytest.approx((1 / L2(2)) / (1 / L2(2) + 1 / L2(3)))
    assert reciprocal_rank(ranking, rel) == 1.0


def test_perfect_ranking_scores_one_everywhere():
    ranking, rel = ["x", "y", "a"], {"x", "y"}
    assert average_precision_at(ranking, rel, 10) == pytest.approx(1.0)
    assert ndcg_at(ranking, rel, 10) == pytest.approx(1.0)
    assert ndcg_at(ranking, rel, 1) == pytest.approx(1.0)
    assert average_precision_at(ranking, rel, 1) == pytest.approx(1.0)


def test_k_larger_than_the_list():
    ranking, rel = ["a", "b"], {"b"}
    assert recall_at(ranking, rel, 10) == 1.0
    assert precision_at(ranking, rel, 10) == pytest.approx(1 / 10)  # denominator stays k
    assert average_precision_at(ranking, rel, 10) == pytest.approx(1 / 2)
    assert ndcg_at(ranking, rel, 10) == pytest.approx(1 / L2(3))
    assert recall_at([], rel, 5) == 0.0 and precision_at([], rel, 5) == 0.0


def test_k_must_be_positive():
    with pytest.raises(ValueError):
        recall_at(["a"], {"a"}, 0)


def test_summarize_averages_the_same_rankings_and_breaks_down_per_category():
    outcomes = [
        QueryOutcome("q1", ("p1", "p2", "p3"), frozenset({"p1"}), "Fruit"),   # rank 1
        QueryOutcome("q2", ("p1", "p2", "p3"), frozenset({"p3"}), "Fruit"),   # rank 3
        QueryOutcome("q3", ("p4", "p5"), frozenset({"p9"}), "Dairy"),         # miss
        QueryOutcome("q4", ("p1",), frozenset(), "Dairy"),                    # unanswerable
    ]
    s = summarize(outcomes, [5, 1, 1])
    assert s.ks == (1, 5)
    assert s.queries == 3 and s.unanswerable == 1
    assert s.recall_at == {1: pytest.approx(1 / 3), 5: pytest.approx(2 / 3)}
    assert s.precision_at[1] == pytest.approx(1 / 3)
    assert s.precision_at[5] == pytest.approx((1 / 5 + 1 / 5 + 0) / 3)
    assert s.map_at[5] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert s.mrr == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert s.ndcg_at[5] == pytest.approx((1 + 1 / L2(4) + 0) / 3)
    assert set(s.per_category) == {"Fruit", "Dairy"}
    assert s.per_category["Fruit"]["queries"] == 2
    assert s.per_category["Fruit"]["recall_at"] == {1: pytest.approx(0.5), 5: pytest.approx(1.0)}
    assert s.per_category["Dairy"]["queries"] == 1 and s.per_category["Dairy"]["recall_at"][5] == 0.0


def test_summarize_of_nothing_is_zero_not_an_error():
    s = summarize([], [1])
    assert s.queries == 0 and s.recall_at == {1: 0.0} and s.mrr == 0.0


def test_percentiles():
    p = percentiles(range(1, 101))
    assert p["p50"] == pytest.approx(50.5) and p["p95"] == pytest.approx(95.05) and p["p99"] == pytest.approx(99.01)
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}


def test_parsers_and_gate():
    assert parse_ks("10, 1,5,5") == (1, 5, 10)
    for bad in ("", "a", "0,5", "-1"):
        with pytest.raises(ValueError):
            parse_ks(bad)
    assert parse_thresholds("1=0.85,5=0.97") == {1: 0.85, 5: 0.97}
    for bad in ("1", "x=0.5", "1=1.5", "0=0.5", ""):
        with pytest.raises(ValueError):
            parse_thresholds(bad)
    fails = gate_failures({"A": {1: 0.9, 5: 0.96}, "B": {1: 0.8}}, {1: 0.85, 5: 0.97})
    assert fails == ["A: recall@5 = 0.9600 < minimum 0.9700", "B: recall@1 = 0.8000 < minimum 0.8500",
                     "B: recall@5 was not measured (minimum 0.9700)"]
    assert gate_failures({"A": {1: 0.85, 5: 0.97}}, {1: 0.85, 5: 0.97}) == []  # the minimum itself passes
