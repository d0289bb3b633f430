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


def test_build_report_json_keeps_its_keys_for_scripts():
    from indexer.build import BuildReport, UpdateChanges

    base = ["build_id", "model", "fingerprint", "index_type", "vectors", "embedded", "skipped", "failed", "seconds",
            "images_per_s", "estimated_bytes", "mode"]
    full = BuildReport("b1", "m", "fp", "flat", 3, 3, 0, (), 1.0, 3.0, 10, "full", 3)
    assert list(full.to_dict()) == base + ["trained_on", "rescan"]
    upd = BuildReport("b2", "m", "fp", "flat", 4, 1, 3, ((7, "x.jpg", "truncated"),), 1.0, 1.0, 10, "incremental", 3,
                      update=UpdateChanges("b1", 1, 0, 0, 3, None, 1))
    d = upd.to_dict()
    assert list(d) == base + ["rebuild_reason", "previous_build", "added", "changed", "removed", "unchanged",
                              "trained_on", "added_since_training", "rescan"]
    assert (d["previous_build"], d["added"], d["added_since_training"], d["rescan"]) == ("b1", 1, 1, None)
    assert d["failed"] == [{"image_id": 7, "path": "x.jpg", "reason": "truncated"}]
