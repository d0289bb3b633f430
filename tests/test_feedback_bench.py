"""Analysts' figures from the feedback log (issue 17, point 2): `shopsearch bench feedback` on
a seeded log whose click-through and reciprocal ranks were worked out by hand, and
`bench recall --from-feedback` replaying confirmed queries against a build."""
from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.cli import cli
from shopsearch.app import open_search_service
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.errors import NoFeedbackError
from shopsearch.feedback import FeedbackStore, LoggedHit, SearchLogEntry, new_request_id
from shopsearch.feedback.replay import replay_confirmed
from shopsearch.config import Settings
from tests.conftest import FakeEmbedder, jitter, make_image
from tests.test_webapp import api_search, app_for, make_site, photo


def _run(args, data_dir, db_url=None, ok=True):
    pre = ["--data-dir", str(data_dir)] + (["--database-url", db_url] if db_url else [])
    res = CliRunner().invoke(cli, [*pre, *args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def _search(store, build, first_category, match, events, when):
    """Ten products P1..P10 shown at ranks 1..10; `events`: (rank, event) in order."""
    cats = [first_category] + ["Other/Thing"] * 9
    e = SearchLogEntry(new_request_id(), build, "m", "fp", "image", "api", np.ones(4, np.float32) / 2,
                       tuple(LoggedHit(r, f"P{r}", r, 1 - r / 20, None, cats[r - 1]) for r in range(1, 11)),
                       {}, match, None)
    store.record_search(e, now=when)
    for i, (rank, event) in enumerate(events):
        store.record_event(e.request_id, f"P{rank}", event, now=when + timedelta(seconds=i + 1))


def test_bench_feedback_figures_on_a_seeded_log(tmp_path, db_url):
    """By hand (S0 is older than --since and left out):
    S1 build A, Fruit/Apple, strong: click@1, confirm@1
    S2 build A, Fruit/Banana, none:  click@3, click@7
    S3 build B, Dairy/Milk, weak:    confirm@2 (no click)
    S4 build B, Fruit/Apple, uncalibrated: click@6, confirm@6 then reject@6 (taken back), reject@1
    CTR@1 = 1/4, CTR@5 = 2/4 (S1, S2), CTR@10 = 3/4 (S1, S2, S4)
    MRR clicked (any of click/confirm/cart/purchase) = (1 + 1/3 + 1/2 + 1/6) / 4 = 0.5
    MRR confirmed = (1 + 1/2) / 2 = 0.75 (S4's confirm was taken back)
    no close match = 1 of the 3 calibrated searches"""
    store = FeedbackStore(CatalogueStore.open(db_url).engine)
    now = datetime.now(timezone.utc)
    _search(store, "A", "Fruit/Apple", "strong", [(1, "click")], now - timedelta(days=40))  # S0
    _search(store, "A", "Fruit/Apple", "strong", [(1, "click"), (1, "confirm")], now - timedelta(days=3))
    _search(store, "A", "Fruit/Banana", "none", [(3, "click"), (7, "click")], now - timedelta(days=2))
    _search(store, "B", "Dairy/Milk", "weak", [(2, "confirm")], now - timedelta(days=2))
    _search(store, "B", "Fruit/Apple", None, [(6, "click"), (6, "confirm"), (6, "reject"), (1, "reject")],
            now - timedelta(days=1))
    store.engine.dispose()
    out = tmp_path / "plots"
    res = _run(["bench", "feedback", "--since", "30d", "--json", "--out", str(out)], tmp_path / "d", db_url)
    rep = json.loads(res.stdout)
    o = rep["overall"]
    assert o["searches"] == 4 and o["ctr"] == {"@1": 0.25, "@5": 0.5, "@10": 0.75}
    assert o["mrr_clicked"] == pytest.approx(0.5) and o["clicked_searches"] == 4
    assert o["mrr_confirmed"] == pytest.approx(0.75) and o["confirmed_searches"] == 2
    assert o["rejected_searches"] == 1
    assert o["no_match"] == pytest.approx(1 / 3) and o["calibrated_searches"] == 3
    a, b = rep["by_build"]["A"], rep["by_build"]["B"]
    assert a["ctr"] == {"@1": 0.5, "@5": 1.0, "@10": 1.0} and b["ctr"] == {"@1": 0.0, "@5": 0.0, "@10": 0.5}
    assert a["mrr_clicked"] == pytest.approx(2 / 3) and b["mrr_clicked"] == pytest.approx(1 / 3)
    assert (a["mrr_confirmed"], b["mrr_confirmed"]) == (1.0, 0.5) and (a["no_match"], b["no_match"]) == (0.5, 0.0)
    fruit, dairy = rep["by_category"]["Fruit"], rep["by_category"]["Dairy"]
    assert fruit["searches"] == 3 and fruit["ctr"]["@1"] == pytest.approx(1 / 3) and fruit["ctr"]["@10"] == 1.0
    assert fruit["mrr_clicked"] == pytest.approx(0.5) and fruit["mrr_confirmed"] == 1.0
    assert dairy == {**dairy, "searches": 1, "mrr_clicked": 0.5, "mrr_confirmed": 0.5, "no_match": 0.0}
    assert sorted(p.name for p in out.iterdir()) == ["by_category.png", "ctr_by_build.png", "feedback.json",
                                                     "mrr_by_build.png"]
    assert (out / "ctr_by_build.png").read_bytes()[:4] == b"\x89PNG"
    everything = json.loads(_run(["bench", "feedback", "--json"], tmp_path / "d", db_url).stdout)
    assert everything["overall"]["searches"] == 5 and everything["since"] is None
    table = _run(["bench", "feedback", "--since", "30d"], tmp_path / "d", db_url).stdout
    assert "CTR@5" in table and "build A" in table and "category Dairy" in table
    bad = _run(["bench", "feedback", "--since", "last tuesday"], tmp_path / "d", db_url, ok=False)
    assert bad.exit_code == 2 and "--since must be like 7d" in bad.output
    pruned = json.loads(_run(["feedback", "prune", "--days", "30", "--json"], tmp_path / "d", db_url).stdout)
    assert pruned == {"removed_searches": 1, "retention_days": 30}  # S0
    assert json.loads(_run(["bench", "feedback", "--json"], tmp_path / "d", db_url).stdout)["overall"] == o


def test_feedback_settings_from_the_environment():
    from shopsearch.errors import ConfigError

    s = Settings.from_env({"SHOPSEARCH_FEEDBACK_LOG": "off", "SHOPSEARCH_FEEDBACK_RETENTION_DAYS": "14"})
    assert (s.feedback_log, s.feedback_retention_days) == (False, 14)
    assert (Settings.from_env({}).feedback_log, Settings.from_env({}).feedback_retention_days) == (True, 90)
    for env, name in (({"SHOPSEARCH_FEEDBACK_LOG": "maybe"}, "SHOPSEARCH_FEEDBACK_LOG"),
                      ({"SHOPSEARCH_FEEDBACK_RETENTION_DAYS": "0"}, "SHOPSEARCH_FEEDBACK_RETENTION_DAYS")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env(env)


def test_replay_confirmed_queries_on_the_build(tmp_path, db_url):
    """Shoppers' photos of products 0..5 searched through the web app, the right one confirmed;
    replaying the stored vectors against the build finds each first."""
    settings = make_site(tmp_path, n=6, database_url=db_url)
    app = app_for(settings)
    c = app.test_client()
    for i in range(6):
        rid = api_search(c, photo(i, seed=50 + i)).get_json()["request_id"]
        r = c.post("/api/v1/feedback", json={"request_id": rid, "sku": f"P{i}", "event": "confirm"})
        assert r.status_code == 201
    assert app.extensions["shopsearch"].flush_feedback()
    store = app.extensions["shopsearch"].feedback
    store.record_search(SearchLogEntry(new_request_id(), "old", "m", "another-model", "image", "api",
                                       np.ones(3, np.float32), (LoggedHit(1, "P0", 0, 0.9),), {}))
    store.record_event(store.searches()[-1].request_id, "P0", "confirm")
    svc = open_search_service(settings, embedder=FakeEmbedder(), with_router=False)
    res = replay_confirmed(svc, store, (1, 5))
    assert res.queries == 6 and res.recall_at == {1: 1.0, 5: 1.0} and res.mrr == 1.0
    assert res.logged_recall_at == {1: 1.0, 5: 1.0} and res.other_models == {"another-model": 1}
    with pytest.raises(NoFeedbackError, match="holds no confirmed query"):
        replay_confirmed(svc, store, since=datetime.now(timezone.utc) + timedelta(hours=1))
    app.extensions["shopsearch"].close()
    elsewhere = FeedbackStore(CatalogueStore.open(f"sqlite:///{tmp_path / 'other.db'}").engine)
    e = SearchLogEntry(new_request_id(), "old", "m", "another-model", "image", "api", np.ones(3, np.float32),
                       (LoggedHit(1, "P0", 0, 0.9),), {})
    elsewhere.record_search(e)
    elsewhere.record_event(e.request_id, "P0", "confirm")
    with pytest.raises(NoFeedbackError, match="only 1 with another-model; their photos are not stored"):
        replay_confirmed(svc, elsewhere)


def test_bench_recall_from_feedback_cli(tmp_path):
    """The CLI end to end on a generated catalogue indexed with colorhist."""
    from webapp import create_app
    from webapp.service import ServiceOverrides

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rows = ["sku,title,category,images"]
    for i in range(6):
        make_image(i).save(imgs / f"{i}.png")
        rows.append(f"S{i},Item {i},Cat{i % 2}/Thing,imgs/{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = tmp_path / "data"
    _run(["catalogue", "import", str(tmp_path / "m.csv"), "--format", "csv"], data)
    _run(["index", "build", "--model", "colorhist", "--workers", "1"], data)
    none = _run(["bench", "recall", "--from-feedback"], data, ok=False)
    assert none.exit_code == 1 and "holds no confirmed query" in none.output
    app = create_app({"SETTINGS": Settings(data_dir=data), "TESTING": True}, ServiceOverrides())
    c = app.test_client()
    for i in range(6):
        buf = io.BytesIO()
        jitter(make_image(i), seed=9 + i).save(buf, "JPEG", quality=92)
        body = api_search(c, buf.getvalue(), k="3").get_json()
        if any(r["sku"] == f"S{i}" for r in body["results"]):
            c.post("/api/v1/feedback", json={"request_id": body["request_id"], "sku": f"S{i}", "event": "confirm"})
    app.extensions["shopsearch"].flush_feedback()
    confirmed = len(app.extensions["shopsearch"].feedback.confirmed_pairs())
    app.extensions["shopsearch"].close()
    rep = json.loads(_run(["bench", "recall", "--from-feedback", "--k", "1,3", "--json"], data).stdout)
    assert rep["queries"] == confirmed >= 5 and rep["fingerprint"].startswith("colorhist")
    assert rep["recall_at"]["3"] == 1.0 and rep["recall_at"] == rep["logged_recall_at"]
    both = _run(["bench", "recall", "--from-feedback", "--dataset", str(tmp_path)], data, ok=False)
    assert both.exit_code == 2 and "exclude each other" in both.output
