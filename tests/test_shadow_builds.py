"""Shadow builds (issue 17, point 4): built beside the serving build without serving it,
compared on a labelled set and on confirmed queries, promoted, rolled back."""
from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
from click.testing import CliRunner

from indexer.cli import cli
from shopsearch.adapter.train import save_pairs
from shopsearch.embedders import load_embedder
from shopsearch.index import IndexStore
from tests.conftest import jitter, make_image


def _cli(data_dir, *args, db_url: str | None = None):
    """The CLI on `data_dir`, its catalogue in `db_url` (default: SQLite inside the data dir)."""
    base = ["--data-dir", str(data_dir)] + (["--database-url", db_url] if db_url else [])
    return CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)


def _labelled_set(tmp_path, n: int = 6):
    """products.csv (two photos per product) + queries.csv of jittered shopper photos."""
    (tmp_path / "imgs").mkdir()
    (tmp_path / "q").mkdir()
    with open(tmp_path / "products.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sku", "title", "category", "images"])
        for i in range(n):
            make_image(i).save(tmp_path / "imgs" / f"a{i}.png")
            jitter(make_image(i), seed=50 + i, amount=40).save(tmp_path / "imgs" / f"b{i}.png")
            w.writerow([f"S{i}", f"Thing {i}", "Things", f"imgs/a{i}.png|imgs/b{i}.png"])
    rows = []
    for i in range(n):
        for j in range(2):
            jitter(make_image(i), seed=10 * i + j, amount=60).save(tmp_path / "q" / f"q{i}_{j}.png")
            rows.append(f"q/q{i}_{j}.png,S{i}")
    (tmp_path / "queries.csv").write_text("image,sku\n" + "\n".join(rows) + "\n")
    return tmp_path / "products.csv"


def test_shadow_build_promote_rollback(tmp_path, db_url):
    """On SQLite and PostgreSQL."""
    data = tmp_path / "data"
    products = _labelled_set(tmp_path)
    assert _cli(data, "catalogue", "import", str(products), db_url=db_url).exit_code == 0
    res = _cli(data, "index", "promote", db_url=db_url)
    assert res.exit_code == 1 and "no shadow build" in res.output
    first = json.loads(_cli(data, "index", "build", "--model", "colorhist", "--json", db_url=db_url).stdout)
    shadow = json.loads(_cli(data, "index", "build", "--model", "colorhist", "--shadow", "--json",
                             db_url=db_url).stdout)
    store = IndexStore(data / "index")
    assert store.current_id() == first["build_id"] and store.shadow_id() == shadow["build_id"]
    listing = {b["build_id"]: b
               for b in json.loads(_cli(data, "index", "list", "--json", db_url=db_url).stdout)["builds"]}
    assert listing[shadow["build_id"]]["shadow"] and not listing[shadow["build_id"]]["current"]
    # later builds never prune the staged shadow (the store keeps the 2 newest otherwise)
    for _ in range(3):
        assert _cli(data, "index", "build", "--model", "colorhist", "--force", db_url=db_url).exit_code == 0
    assert store.build_dir(shadow["build_id"]).is_dir() and store.shadow_id() == shadow["build_id"]
    serving = store.current_id()
    promoted = json.loads(_cli(data, "index", "promote", "--json", db_url=db_url).stdout)
    assert promoted["build_id"] == shadow["build_id"] and promoted["previous_build"] == serving
    assert store.current_id() == shadow["build_id"] and store.shadow_id() is None
    back = json.loads(_cli(data, "index", "rollback", "--json", db_url=db_url).stdout)
    assert back["build_id"] == serving and back["previous_build"] == shadow["build_id"] and store.previous_id() == shadow["build_id"]


def test_compare_json_on_a_tiny_labelled_set(tmp_path):
    data = tmp_path / "data"
    _labelled_set(tmp_path)
    assert _cli(data, "catalogue", "import", str(tmp_path / "products.csv")).exit_code == 0
    assert _cli(data, "index", "build", "--model", "colorhist").exit_code == 0
    res = _cli(data, "index", "compare", "--dataset", str(tmp_path), "--json")
    assert res.exit_code == 1 and "no shadow build" in res.output and res.output.rstrip().endswith("[index_not_found]")
    if importlib.util.find_spec("shopsearch.feedback") is None:  # without the feedback log: said, nothing done
        res = _cli(data, "adapter", "train", "--from-feedback")
        assert res.exit_code == 1 and "--pairs FILE" in res.output
    # confirmed queries: the shopper photos' colorhist vectors, confirmed on their product
    emb = load_embedder("colorhist", "cpu")
    from PIL import Image

    qpaths = sorted((tmp_path / "q").glob("*.png"))
    vecs = emb.encode_images([Image.open(p).convert("RGB") for p in qpaths])
    skus = [f"S{p.stem[1:].split('_')[0]}" for p in qpaths]
    save_pairs(tmp_path / "pairs.npz", vecs, skus, emb.fingerprint)
    save_pairs(tmp_path / "other.npz", vecs[:3], skus[:3], "some-other-model")
    trained = _cli(data, "adapter", "train", "--pairs", str(tmp_path / "pairs.npz"), "--shadow", "--steps", "30",
                   "--json")
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["pairs_used"] == len(qpaths)

    out = tmp_path / "cmp"
    res = _cli(data, "index", "compare", "--dataset", str(tmp_path), "--layout", "manifest",
               "--pairs", str(tmp_path / "pairs.npz"), "--json", "--out", str(out))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    photos, feedback = doc["comparisons"]
    assert photos["source"] == "photos" and photos["queries"] == len(qpaths) and photos["skipped"] == 0
    assert feedback["source"] == "feedback" and feedback["queries"] == len(qpaths)
    for c in (photos, feedback):
        assert c["serving"]["build_id"] == doc["serving"] and c["shadow"]["build_id"] == doc["shadow"]
        assert 0 <= c["serving"]["recall"]["@1"] <= c["serving"]["recall"]["@5"] <= 1
        assert c["serving"]["latency_ms"]["p50"] > 0 and c["shadow"]["latency_ms"]["p50"] > 0
        assert c["disagreements"] == len(c["disagreeing_queries"])
        assert c["agreement@1"] == round(1 - c["disagreements"] / c["queries"], 4)
        for d in c["disagreeing_queries"]:
            assert d["serving_top"] != d["shadow_top"]
    # the photos embedded by the model and the stored vectors replayed are the same queries
    assert photos["serving"]["recall"] == feedback["serving"]["recall"]
    rows = list(csv.DictReader(open(out / "disagreements.csv")))
    assert len(rows) == photos["disagreements"] + feedback["disagreements"]
    assert "recall@1" in (out / "compare.md").read_text() and json.loads((out / "compare.json").read_text()) == doc
    # queries logged by another model cannot be replayed: said, not scored
    res = _cli(data, "index", "compare", "--pairs", str(tmp_path / "other.npz"))
    assert res.exit_code == 0 and "3 of 3 feedback queries skipped" in res.output
