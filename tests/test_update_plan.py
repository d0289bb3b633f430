"""`plan_update`: how `index update` applies the catalogue's changes, case by case."""
from __future__ import annotations

import pytest

from indexer.update_plan import INCREMENTAL, READD, REBUILD, plan_update


def plan(old="flat", target=None, trained=True, can_remove=True, vectors=100, trained_on=100, since=0, drops=0):
    return plan_update(old, target or old, trained, can_remove, vectors, trained_on, since, drops)


@pytest.mark.parametrize("old", ["flat", "hnsw", "ivfpq"])
def test_same_type_and_removable_is_incremental(old):
    p = plan(old, drops=5, since=10)
    assert (p.strategy, p.reason) == (INCREMENTAL, None)


def test_a_new_index_type_is_rebuilt_from_the_cache():
    p = plan("flat", "hnsw", vectors=100_000)
    assert p.strategy == REBUILD and p.reason == "index type flat -> hnsw for 100000 vectors"


def test_ivf_retrains_once_half_its_vectors_arrived_after_training():
    assert plan("ivfpq", trained_on=1000, since=500).strategy == INCREMENTAL  # not more than half
    p = plan("ivfpq", trained_on=1000, since=501, vectors=1501)
    assert p.strategy == REBUILD and p.reason == "501 of 1501 vectors arrived after the ivfpq training"
    assert plan("ivfpq", trained=False, trained_on=1000, since=5000).strategy == INCREMENTAL


@pytest.mark.parametrize("old", ["flat", "hnsw"])
def test_untrained_kinds_never_retrain(old):
    assert plan(old, trained_on=10, since=10_000).strategy == INCREMENTAL


def test_hnsw_cannot_remove_so_drops_rebuild_it():
    p = plan("hnsw", can_remove=False, drops=1)
    assert p.strategy == REBUILD and p.reason == "hnsw cannot remove vectors in place"
    assert plan("hnsw", can_remove=False, drops=0).strategy == INCREMENTAL  # only additions


def test_a_trained_index_that_cannot_remove_keeps_its_training_and_re_adds():
    p = plan("IVF64,PQ16", can_remove=False, drops=3)
    assert p.strategy == READD and p.reason == "IVF64,PQ16 cannot remove vectors in place"
