"""`plan_update`: how a build or `index update` applies the catalogue's changes, case by case."""
from __future__ import annotations

import pytest

from indexer.update_plan import (
    COMPACT_FRACTION,
    COMPACT_MIN_ENTRIES,
    DELTA,
    READD,
    REBUILD,
    UP_TO_DATE,
    Changes,
    ServingIndex,
    plan_update,
)


def plan(old="flat", target=None, trained=False, base=100_000, dead=0, delta=0, trained_on=100_000, since=0,
         added=0, changed=0, removed=0, force=False):
    serving = ServingIndex(old, trained, base, dead, delta, trained_on, since)
    vectors = base - dead + delta + added - removed
    return plan_update(serving, Changes(added, changed, removed, vectors, target or old), force)


@pytest.mark.parametrize("old", ["flat", "hnsw", "ivfflat", "ivfpq"])
def test_nothing_changed_is_up_to_date(old):
    p = plan(old, trained=old.startswith("ivf"), dead=7, delta=3)
    assert (p.strategy, p.reason, p.dead, p.delta) == (UP_TO_DATE, None, 7, 3)


@pytest.mark.parametrize("old", ["flat", "hnsw", "ivfflat", "ivfpq"])
def test_a_small_change_is_a_delta_on_every_type(old):
    p = plan(old, trained=old.startswith("ivf"), added=2, changed=5, removed=3, dead=10, delta=4)
    assert (p.strategy, p.reason) == (DELTA, None)
    assert (p.dead, p.delta) == (10 + 5 + 3, 4 + 2 + 5)  # a change is a tombstone plus a delta entry


def test_tombstones_past_the_threshold_compact():
    limit = int(COMPACT_FRACTION * 100_000)
    assert plan("hnsw", dead=limit - 10, removed=10).strategy == DELTA
    p = plan("hnsw", dead=limit - 10, removed=11)
    assert p.strategy == REBUILD and p.reason == f"{limit + 1} tombstoned of 100000 base vectors passed the compaction threshold"


def test_a_delta_past_the_threshold_compacts():
    limit = int(COMPACT_FRACTION * 100_000)
    p = plan("flat", delta=limit, added=1)
    assert p.strategy == REBUILD and "delta" in p.reason


def test_small_catalogues_keep_their_delta_up_to_the_minimum():
    assert plan("hnsw", base=10, removed=9).strategy == DELTA  # 90% dead but cheap either way
    assert plan("hnsw", base=10, dead=COMPACT_MIN_ENTRIES, removed=1).strategy == REBUILD


def test_a_trained_ivf_index_compacts_keeping_its_training():
    p = plan("ivfpq", trained=True, dead=30_000, removed=1)
    assert p.strategy == READD


def test_a_new_index_type_is_rebuilt_from_the_cache():
    p = plan("flat", "hnsw", base=100_000, added=1)
    assert p.strategy == REBUILD and p.reason == "index type flat -> hnsw for 100001 vectors"
    assert plan("flat", "hnsw").strategy == REBUILD  # even with nothing else changed


def test_ivf_retrains_once_half_its_vectors_arrived_after_training():
    assert plan("ivfpq", trained=True, trained_on=1000, base=1000, since=499, added=1).strategy == DELTA
    p = plan("ivfpq", trained=True, trained_on=1000, base=1000, since=500, added=1)
    assert p.strategy == REBUILD and p.reason.startswith("501 of ") and "after the ivfpq training" in p.reason


@pytest.mark.parametrize("old", ["flat", "hnsw"])
def test_untrained_kinds_never_retrain(old):
    assert plan(old, trained_on=10, since=10_000, added=1).strategy == DELTA


@pytest.mark.parametrize("old,trained,want", [("hnsw", False, REBUILD), ("flat", False, REBUILD),
                                              ("ivfflat", True, READD)])
def test_force_compacts(old, trained, want):
    p = plan(old, trained=trained, force=True)
    assert (p.strategy, p.reason) == (want, "forced")


def test_build_report_json_keeps_its_keys_for_scripts():
    from indexer.build import BuildReport, UpdateChanges
    from indexer.build_types import SegmentCounts

    base = ["build_id", "model", "fingerprint", "index_type", "vectors", "embedded", "reused", "failed", "seconds",
            "images_per_s", "estimated_bytes", "mode"]
    tail = ["up_to_date", "strategy", "segments", "adapt_rounds", "shopper_views", "recall_probe"]  # new keys go last
    full = BuildReport("b1", "m", "fp", "flat", 3, 3, 0, (), 1.0, 3.0, 10, "full", 3)
    assert list(full.to_dict()) == base + ["trained_on", "rescan"] + tail
    upd = BuildReport("b2", "m", "fp", "flat", 4, 1, 3, ((7, "x.jpg", "truncated"),), 1.0, 1.0, 10, "delta", 3,
                      update=UpdateChanges("b1", 1, 0, 0, 3, None, 1), strategy=DELTA,
                      segments=SegmentCounts(3, 1, 0))
    d = upd.to_dict()
    assert list(d) == base + ["rebuild_reason", "previous_build", "added", "changed", "removed", "unchanged",
                              "trained_on", "added_since_training", "rescan"] + tail
    assert (d["previous_build"], d["added"], d["added_since_training"], d["rescan"]) == ("b1", 1, 1, None)
    assert d["failed"] == [{"image_id": 7, "path": "x.jpg", "reason": "truncated"}]
    assert (d["up_to_date"], d["strategy"], d["segments"]) == (False, DELTA, {"base": 3, "delta": 1, "dead": 0})


def test_build_options_are_one_frozen_value():
    import dataclasses

    from indexer.build_types import resolve_options
    from indexer.build_types import BuildOptions

    o = BuildOptions(index_type="hnsw")
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.force = True  # type: ignore[misc]
    assert resolve_options(o, {"progress": False}) == BuildOptions(index_type="hnsw", progress=False)
    assert resolve_options(None, {}) == BuildOptions()
