"""An HNSW build measures how much of the exact neighbourhood its graph finds, widens efSearch
when the size rule falls short, and says so when no width is enough (shopsearch/index/recall_probe.py)."""
from __future__ import annotations

import json

import faiss
import numpy as np
from click.testing import CliRunner

from indexer.build import IndexBuilder
from indexer.build_types import BuildReport
from indexer.cli import cli
from indexer.cli.index_cmds import _print_report
from indexer.status import index_status
from shopsearch.index import IndexStore, recall_probe
from shopsearch.index.recall_probe import PROBE_K, probe_hnsw
from tests.conftest import FakeEmbedder
from shopsearch.catalogue.store import CatalogueStore
from tests.test_index_shrink import _catalogue
from tests.test_indexer_update import _add


def _hnsw(x: np.ndarray) -> faiss.Index:
    index = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    return index


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _exact_recall(index: faiss.Index, x: np.ndarray, pick: np.ndarray, ef: int) -> float:
    """recall@10 (self left out) computed here by brute force: what the probe must report."""
    sims = x[pick] @ x.T
    hits = []
    _, got = index.search(x[pick], PROBE_K + 1, params=faiss.SearchParametersHNSW(efSearch=ef))
    for row, p, s in zip(got, pick, sims):
        s[p] = -np.inf
        truth = set(np.argsort(-s)[:PROBE_K].tolist())
        hits.append(len(truth & set([int(i) for i in row if i != p][:PROBE_K])) / PROBE_K)
    return float(np.mean(hits))


def test_clustered_vectors_keep_the_size_rule():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 32))
    x = _unit(centres[rng.integers(0, 50, 5000)] + 0.3 * rng.standard_normal((5000, 32)))
    probe = probe_hnsw(_hnsw(x), start_ef=128)
    assert probe.reached and probe.ef_search == 128 and probe.tried == ((128, probe.recall_at_10),)
    assert probe.recall_at_10 >= 0.95 and probe.queries == 200


def test_a_walk_too_narrow_is_widened_until_it_finds_the_target():
    rng = np.random.default_rng(1)
    x = _unit(rng.standard_normal((10000, 128)))
    index = _hnsw(x)
    probe = probe_hnsw(index, start_ef=11)
    efs = [ef for ef, _ in probe.tried]
    assert efs[0] == 11 and all(b == 2 * a for a, b in zip(efs, efs[1:]))
    assert probe.tried[0][1] < 0.95 <= probe.recall_at_10 and probe.reached
    assert probe.ef_search == efs[-1] and len(efs) > 1
    # the figures are the real recall of the graph at those widths (same seeded sample)
    pick = np.sort(np.random.default_rng(0).choice(len(x), 200, replace=False))
    for ef, recall in probe.tried:
        assert abs(recall - _exact_recall(index, x, pick, ef)) < 1e-9


def test_vectors_without_structure_are_reported_not_hidden():
    rng = np.random.default_rng(2)
    x = _unit(rng.standard_normal((20000, 128)))
    probe = probe_hnsw(_hnsw(x), start_ef=11, max_ef=32)
    assert not probe.reached and [ef for ef, _ in probe.tried] == [11, 22]
    best = max(r for _, r in probe.tried)
    assert probe.recall_at_10 >= best - 0.01 and probe.recall_at_10 < 0.95
    assert "finds only" in probe.message and "--index flat" in probe.message


def test_no_probe_for_other_types_or_tiny_graphs():
    x = _unit(np.random.default_rng(3).standard_normal((1000, 16)))
    flat = faiss.IndexFlatIP(16)
    flat.add(x)
    assert probe_hnsw(flat, 128) is None
    assert probe_hnsw(_hnsw(x[:40]), 128) is None


def test_an_hnsw_build_records_the_probe_and_its_searches_and_updates_keep_its_width(tmp_path, sqlite_catalogue,
                                                                                   monkeypatch):
    cat = sqlite_catalogue
    for i in range(60):
        _add(cat, tmp_path, i)
    store = IndexStore(tmp_path / "index")
    b = IndexBuilder(FakeEmbedder(), cat, store, tmp_path / "vectors")
    # a target no graph reaches: the build still publishes, at the widest walk tried, and says so
    real = recall_probe.probe_hnsw
    monkeypatch.setattr(recall_probe, "probe_hnsw", lambda index, start: real(index, start, target=1.01, max_ef=256))
    first = b.build(index_type="hnsw", progress=False)
    probe = first.recall_probe
    assert probe is not None and not probe["reached"] and [t[0] for t in probe["tried"]] == [128, 256]
    manifest = store.current_manifest()
    assert manifest.ef_search == probe["ef_search"] and manifest.recall_probe == probe
    assert json.loads((store.build_dir(first.build_id) / "report.json").read_text())["recall_probe"] == probe
    assert index_status(cat, store, deep=False).recall_probe == probe == index_status(cat, store).recall_probe
    index, _ = store.load_current()
    assert index.ef_search == probe["ef_search"]
    # a delta update searches the same graph: same width, same probe; no new probe is reported
    cat.delete_products(["P0"])
    d = b.update(progress=False, index_type="hnsw")
    assert d.strategy == "delta" and d.recall_probe is None
    after = store.current_manifest()
    assert after.build_id != manifest.build_id
    assert (after.ef_search, after.recall_probe) == (manifest.ef_search, manifest.recall_probe)
    assert store.load_current()[0].ef_search == probe["ef_search"]
    flat = b.build(index_type="flat", progress=False, force=True)
    assert flat.recall_probe is None and store.current_manifest().ef_search == 0
    assert index_status(cat, store, deep=False).recall_probe is None


def test_an_adapted_hnsw_build_is_probed_too(tmp_path, sqlite_catalogue):
    from indexer.adapter_build import catalogue_vectors, publish_adapted
    from shopsearch.adapter.model import Adapter

    cat = sqlite_catalogue
    for i in range(60):
        _add(cat, tmp_path, i)
    store = IndexStore(tmp_path / "index")
    fake = FakeEmbedder()
    b = IndexBuilder(fake, cat, store, tmp_path / "vectors")
    vectors = catalogue_vectors(b, progress=False, workers=1)
    adapter = Adapter(np.eye(vectors.vectors.shape[1], dtype=np.float32), fake.fingerprint)
    build_id = publish_adapted(b, adapter, vectors, index_type="hnsw")
    manifest = store.current_manifest()
    assert manifest.build_id == build_id and manifest.index_type == "hnsw"
    probe = manifest.recall_probe
    assert probe and probe["queries"] > 0 and manifest.ef_search == probe["ef_search"] >= 128
    assert json.loads((store.build_dir(build_id) / "report.json").read_text())["recall_probe"] == probe
    assert store.load_current()[0].ef_search == probe["ef_search"]
    flat_id = publish_adapted(b, adapter, vectors, index_type="flat")
    assert store.current_manifest().build_id == flat_id and store.current_manifest().recall_probe == {}


def test_index_status_quotes_the_serving_builds_probe(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    cat = CatalogueStore.open(f"sqlite:///{data / 'catalogue.db'}")
    _catalogue(cat, tmp_path / "imgs", 80)
    cat.close()
    runner = CliRunner()
    base = ["--data-dir", str(data), "index"]
    built = runner.invoke(cli, base + ["build", "--model", "colorhist", "--index", "hnsw", "--json"])
    assert built.exit_code == 0, built.output
    probe = json.loads(built.stdout)["recall_probe"]
    assert probe is not None and probe["queries"] > 0
    status = runner.invoke(cli, base + ["status"])
    assert status.exit_code == 0, status.output
    line = [ln for ln in status.output.splitlines() if ln.startswith("search: ")]
    assert len(line) == 1 and "HNSW" in line[0] and f"efSearch {probe['ef_search']}" in line[0]
    assert f"{probe['recall_at_10']:.3f}" in line[0] or f"{probe['recall_at_10']:.0%}" in line[0]
    assert json.loads(runner.invoke(cli, base + ["status", "--json"]).stdout)["recall_probe"] == probe
    flat = runner.invoke(cli, base + ["build", "--model", "colorhist", "--index", "flat", "--force", "--json"])
    assert flat.exit_code == 0, flat.output
    assert "search: " not in runner.invoke(cli, base + ["status"]).output
    assert json.loads(runner.invoke(cli, base + ["status", "--json"]).stdout)["recall_probe"] is None


def test_the_build_line_quotes_the_probe_and_warns_when_the_graph_misses(capsys):
    base = dict(build_id="b1", model="m", fingerprint="f", index_type="hnsw", vectors=100, embedded=100, reused=0,
                failed=(), seconds=1.0, images_per_s=100.0)
    ok = {"ef_search": 128, "recall_at_10": 0.981, "reached": True, "target": 0.95, "queries": 200,
          "tried": [[128, 0.981]]}
    _print_report(BuildReport(**base, recall_probe=ok), as_json=False)
    out = capsys.readouterr()
    assert "HNSW recall@10 0.981 of exact at efSearch 128" in out.out and "warning" not in out.err
    bad = {**ok, "ef_search": 1024, "recall_at_10": 0.31, "reached": False, "tried": [[128, 0.1], [1024, 0.31]]}
    _print_report(BuildReport(**base, recall_probe=bad), as_json=False)
    out = capsys.readouterr()
    assert "warning: HNSW finds only 31% of the exact 10 nearest neighbours even at efSearch 1024" in out.err
    # an adapted full build (no update) prints its line (it raised UnboundLocalError on `u`)
    _print_report(BuildReport(**base, adapt_rounds=2), as_json=False)
    assert "catalogue adapted to the shopper photos (2 rounds)" in capsys.readouterr().out
    _print_report(BuildReport(**base, recall_probe=bad), as_json=True)
    assert json.loads(capsys.readouterr().out)["recall_probe"] == bad
