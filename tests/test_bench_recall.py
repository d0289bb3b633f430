"""The recall benchmark end to end on generated datasets with exact ground truth."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from shopsearch.errors import ConfigError
from shopsearch.evaluation.configs import BenchConfig, parse_config
from shopsearch.evaluation.datasets import load_dataset
from shopsearch.evaluation.metrics import QueryOutcome, summarize
from shopsearch.evaluation.runner import RunOptions, run_benchmark
from shopsearch.results import CategoryPrediction
from tests.conftest import FakeEmbedder, jitter, make_image

# product name -> category path; product i looks like make_image(i)
PRODUCTS = [("Golden", ("Fruit", "Apple")), ("Granny", ("Fruit", "Apple")), ("Cavendish", ("Fruit", "Banana")),
            ("Oatly", ("Packages", "Oat-Milk")), ("Arla", ("Packages", "Milk")), ("Garant", ("Packages", "Milk"))]
HARD = [(0, 3), (4, 5)]  # (shows product a, labelled as product b): a wrong top-1 by construction


def make_grocery(root: Path) -> Path:
    """A miniature Grocery Store tree: iconic image, 2 train and 3 test photos per product,
    plus two mislabelled test photos (HARD)."""
    ds = root / "dataset"
    rows, splits = [], {"train": [], "test": []}
    for i, (name, cat) in enumerate(PRODUCTS):
        folder = Path("iconic-images-and-descriptions", *cat, name)
        (ds / folder).mkdir(parents=True)
        make_image(i).save(ds / folder / f"{name}_Iconic.png")
        (ds / folder / f"{name}_Description.txt").write_text(f"{name} description")
        rows.append([name, i, cat[-1], i // 2, f"/{folder}/{name}_Iconic.png", f"/{folder}/{name}_Description.txt"])
        for split, n in (("train", 2), ("test", 3)):
            d = ds / split / Path(*cat, name)
            d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                rel = Path(split, *cat, name, f"{name}_{j:03d}.png")
                jitter(make_image(i), seed=1000 * i + j + (500 if split == "test" else 0), amount=8).save(ds / rel)
                splits[split].append(f"{rel.as_posix()}, {i}, {i // 2}")
    for a, b in HARD:
        name, cat = PRODUCTS[b]
        rel = Path("test", *cat, name, f"{name}_hard.png")
        jitter(make_image(a), seed=77 + a, amount=8).save(ds / rel)
        splits["test"].append(f"{rel.as_posix()}, {b}, {b // 2}")
    with open(ds / "classes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Class Name (str)", "Class ID (int)", "Coarse Class Name (str)", "Coarse Class ID (int)",
                    "Iconic Image Path (str)", "Product Description Path (str)"])
        w.writerows(rows)
    for split, lines in splits.items():
        (ds / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def oracle_rankings(ds, emb: FakeEmbedder) -> list[QueryOutcome]:
    """Independent brute force: cosine to every gallery image, best image per product."""
    from PIL import Image

    gal = [(p.sku, im.path) for p in ds.products for im in p.images]
    gv = emb.encode_images([Image.open(path).convert("RGB") for _, path in gal])
    out = []
    for q in ds.queries:
        s = gv @ emb.encode_images([Image.open(q.path).convert("RGB")])[0]
        best: dict[str, float] = {}
        for (sku, _), score in zip(gal, s):
            best[sku] = max(best.get(sku, -9.0), float(score))
        ranking = tuple(sorted(best, key=lambda k: -best[k]))[:10]
        out.append(QueryOutcome(q.path, ranking, ds.relevant(q), "/".join(q.category.split("/")[:2])))
    return out


@pytest.fixture
def grocery(tmp_path):
    return make_grocery(tmp_path / "grocery")


def _run(root, configs, tmp_path, emb, layout="grocerystore", router=None, **opts):
    return run_benchmark(lambda g: load_dataset(root, layout, g), configs, tmp_path / "vectors",
                         embedder_for=lambda spec: emb, router_for=lambda e: router,
                         options=RunOptions(ks=(1, 5, 10), workers=1, progress=False, **opts))


def test_grocery_protocol_matches_an_independent_oracle(grocery, tmp_path):
    emb = FakeEmbedder()
    ds = load_dataset(grocery, "grocerystore")
    assert (len(ds.products), ds.gallery_images, len(ds.queries)) == (6, 6 * 3, 6 * 3 + 2)
    iconic = load_dataset(grocery, "grocerystore", gallery="iconic")
    assert iconic.gallery_images == 6 and all(len(p.images) == 1 for p in iconic.products)
    [res] = _run(grocery, [BenchConfig("fake")], tmp_path, emb, latency_samples=4)
    s = res.summary
    assert s.queries == 20 and s.unanswerable == 0 and res.gallery_vectors == 18
    assert s.recall_at[1] == pytest.approx(18 / 20)  # every jittered photo finds its product; HARD ones cannot
    want = summarize(oracle_rankings(ds, emb), (1, 5, 10))
    for metric in ("recall_at", "precision_at", "map_at", "ndcg_at"):
        assert getattr(s, metric) == pytest.approx(getattr(want, metric)), metric
    assert s.mrr == pytest.approx(want.mrr)
    assert s.per_category.keys() == want.per_category.keys() == {"Fruit/Apple", "Fruit/Banana", "Packages/Oat-Milk",
                                                                 "Packages/Milk"}
    assert s.per_category["Packages/Milk"]["recall_at"][1] == pytest.approx(6 / 7)
    # rankings are per product: no product twice
    assert all(len(o.ranking) == len(set(o.ranking)) == 6 for o in res.outcomes)
    lat = res.latency_ms
    assert lat["embed_samples"] == 4 and lat["search_samples"] == 20 and lat["total_includes_embed"]
    assert 0 < lat["search"]["p50"] <= lat["search"]["p99"] and lat["p50"] == lat["total"]["p50"]
    assert res.build.images == 18 and res.build.embedded == 18 and res.build.images_per_s > 0


def test_embeddings_are_computed_once_per_model_and_cached(grocery, tmp_path):
    emb = FakeEmbedder()
    configs = [BenchConfig("fake", "flat"), BenchConfig("fake", "hnsw"), BenchConfig("fake", "flat", gallery="iconic")]
    results = _run(grocery, configs, tmp_path, emb, latency_samples=0)
    assert emb.calls == 18 + 20  # every distinct gallery and query image embedded exactly once
    flat, hnsw, iconic = results
    assert flat.summary.recall_at == pytest.approx(hnsw.summary.recall_at)
    assert iconic.gallery_vectors == 6 and iconic.summary.queries == flat.summary.queries
    again = _run(grocery, configs[:1], tmp_path, emb, latency_samples=0)[0]
    assert emb.calls == 38  # a rerun reads the vector cache
    assert again.build.embedded == 0 and again.build.reused == 18 and again.build.images_per_s is None
    assert again.summary.recall_at == pytest.approx(flat.summary.recall_at)


class WrongAisleRouter:
    """Always sends the query to Packages/Milk: search must then list those products first."""

    def route(self, vector):
        return CategoryPrediction("Packages/Milk", 0.9, routing="filter"), ("Packages/Milk",)


def test_category_routing_goes_through_the_search_service(grocery, tmp_path):
    emb = FakeEmbedder()
    off, on = _run(grocery, [BenchConfig("fake"), BenchConfig("fake", routing=True)], tmp_path, emb,
                   router=WrongAisleRouter(), latency_samples=0)
    assert off.summary.recall_at[1] == pytest.approx(0.9)
    # only queries labelled Arla/Garant (3 + 3 + the HARD one labelled Garant) can be right at rank 1
    assert on.summary.recall_at[1] == pytest.approx(6 / 20)
    assert on.summary.recall_at[10] == off.summary.recall_at[10]  # routing tops up: nothing hidden
    with pytest.raises(ConfigError, match="no trained category router"):
        _run(grocery, [BenchConfig("fake", routing=True)], tmp_path, emb, router=None)


def make_imagefolder(root: Path, classes: int = 4, per_class: int = 10, split: bool = False) -> Path:
    for c in range(classes):
        for j in range(per_class):
            sub = ("test" if j % 5 == 0 else "train") if split else ""
            d = root / sub / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            jitter(make_image(c), seed=100 * c + j, amount=8).save(d / f"img{j:02d}.png")
    return root


@pytest.mark.parametrize("split", [False, True])
def test_imagefolder_relevance_is_category_match(tmp_path, split):
    root = make_imagefolder(tmp_path / "tree", split=split)
    ds = load_dataset(root, "imagefolder")
    assert ds.relevance == "category" and len(ds.products) + len(ds.queries) == 40
    if split:
        assert (ds.gallery_protocol, ds.queries_protocol, len(ds.queries)) == ("train", "test", 8)
    [res] = _run(root, [BenchConfig("fake")], tmp_path, FakeEmbedder(), layout="imagefolder", latency_samples=0)
    s = res.summary
    assert s.recall_at[1] == 1.0 and s.mrr == 1.0
    rel_sizes = [len(ds.relevant(q)) for q in ds.queries]
    # classes are far apart: the first |R| products are exactly the query's class
    for k in (1, 5, 10):
        assert s.precision_at[k] == pytest.approx(np.mean([min(r, k) / k for r in rel_sizes]))
        assert s.map_at[k] == pytest.approx(1.0) and s.ndcg_at[k] == pytest.approx(1.0)
    assert set(s.per_category) == {f"class{c}" for c in range(4)}


def test_manifest_layout(tmp_path, image_dir):
    paths = image_dir(5)
    with open(tmp_path / "products.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sku", "title", "category", "images"])
        for i, p in enumerate(paths):
            w.writerow([f"SKU{i}", f"Product {i}", "Home > Mugs" if i < 3 else "Home > Plates", f"imgs/{p.name}"])
    qdir = tmp_path / "q"
    qdir.mkdir()
    rows = []
    for i in range(5):
        jitter(make_image(i), seed=9 + i, amount=6).save(qdir / f"q{i}.png")
        rows.append([f"q/q{i}.png", f"SKU{i}"])
    rows.append(["q/q0.png", "SKU-NOT-IN-CATALOGUE"])
    (tmp_path / "queries.csv").write_text("image,sku\n" + "\n".join(",".join(r) for r in rows) + "\n")
    ds = load_dataset(tmp_path, "manifest")
    assert len(ds.products) == 5 and len(ds.queries) == 6
    [res] = _run(tmp_path, [BenchConfig("fake")], tmp_path, FakeEmbedder(), layout="manifest", latency_samples=0)
    assert res.summary.queries == 5 and res.summary.unanswerable == 1 and res.summary.recall_at[1] == 1.0
    assert set(res.summary.per_category) == {"Home/Mugs", "Home/Plates"}


def test_config_parsing(tmp_path):
    d = BenchConfig("efficientnet-lite0")
    [c] = parse_config("model=colorhist,index=hnsw,routing=on,ef_search=32", d)
    assert (c.model, c.index, c.routing, c.ef_search) == ("colorhist", "hnsw", True, 32)
    toml = tmp_path / "c.toml"
    toml.write_text('[[config]]\nname="a"\nindex="flat"\n\n[[config]]\nindex="ivfpq"\nnprobe=8\nrouting=false\n')
    a, b = parse_config(str(toml), d)
    assert (a.label, a.model, b.index, b.nprobe) == ("a", "efficientnet-lite0", "ivfpq", 8)
    for bad in ("modle=x", "routing=maybe", "nprobe=0", "index"):
        with pytest.raises(ConfigError):
            parse_config(bad, d)


# -- the CLI (colorhist: a real, model-free embedder) --------------------------------
def _cli(args, tmp_path):
    from indexer.cli import cli

    return CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "data"), "bench", "recall", *args])


def test_cli_json_table_gate_and_outputs(grocery, tmp_path):
    base = ["--dataset", str(grocery), "--model", "colorhist", "--latency-samples", "2", "--workers", "1"]
    r = _cli(base + ["--json"], tmp_path)
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)  # exactly one JSON object
    for key in ("recall_at", "precision_at", "map_at", "mrr", "ndcg_at", "per_category", "latency_ms", "queries",
                "gallery", "model", "index"):
        assert key in obj, key
    assert set(obj["recall_at"]) == {"1", "5", "10"} and {"p50", "p95", "p99"} <= set(obj["latency_ms"])
    assert (obj["queries"], obj["gallery"], obj["model"], obj["index"]) == (20, 18, "colorhist", "flat")
    assert obj["index_factory"] == "Flat" and obj["dataset"]["gallery"] == "iconic+train"
    r1 = obj["recall_at"]["1"]
    assert 0.5 <= r1 <= 0.9  # the two HARD queries can never be right at rank 1

    out = tmp_path / "report"
    r = _cli(base + ["--config", "index=flat", "--config", "index=hnsw", "--config", "gallery=iconic",
                     "--json", "--out", str(out), "--min-recall", f"1={r1}"], tmp_path)
    assert r.exit_code == 0, r.output
    multi = json.loads(r.stdout)
    assert [c["index"] for c in multi["configs"]] == ["flat", "hnsw", "flat"]
    assert multi["configs"][2]["gallery"] == 6 and multi["configs"][0]["recall_at"]["1"] == r1
    assert json.loads((out / "results.json").read_text()) == multi
    assert "| recall@1 |" in (out / "report.md").read_text()
    for png in ("recall_at_k.png", "per_category_recall.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert multi["configs"][0]["gallery_build"]["reused"] == 18  # the data dir's vector cache was reused
    r = _cli(base + ["--json", "--no-cache", "--latency-samples", "0"], tmp_path)
    fresh = json.loads(r.stdout)["gallery_build"]
    assert (fresh["embedded"], fresh["reused"]) == (18, 0) and fresh["images_per_s"] > 0

    r = _cli(base + ["--min-recall", "1=0.95,5=0.5"], tmp_path)
    assert r.exit_code == 1
    assert "recall@1 =" in r.stderr and "< minimum 0.9500" in r.stderr and "recall@5" not in r.stderr
    assert "recall@1" in r.stdout  # the table is still printed

    r = _cli(base + ["--category-routing", "on"], tmp_path)
    assert r.exit_code == 2 and "no trained category router" in r.output


def test_cli_imagefolder_and_bad_input(tmp_path):
    root = make_imagefolder(tmp_path / "tree")
    r = _cli(["--dataset", str(root), "--layout", "imagefolder", "--model", "colorhist", "--json",
              "--latency-samples", "0", "--workers", "1"], tmp_path)
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["dataset"]["relevance"] == "category" and obj["recall_at"]["1"] > 0.9
    r = _cli(["--dataset", str(root), "--layout", "imagefolder", "--k", "0"], tmp_path)
    assert r.exit_code == 2 and "positive" in r.output
    r = _cli(["--dataset", str(root), "--layout", "imagefolder", "--config", "bogus=1"], tmp_path)
    assert r.exit_code == 2 and "unknown key" in r.output


def test_cli_open_set(grocery, tmp_path):
    """--open-set: seeded product removal, AUROC/ECE in --json, the precision/coverage PNG with --out."""
    base = ["--dataset", str(grocery), "--model", "colorhist", "--latency-samples", "0", "--workers", "1"]
    out = tmp_path / "report"
    r = _cli(base + ["--open-set", "0.34", "--json", "--out", str(out)], tmp_path)
    assert r.exit_code == 0, r.output
    o = json.loads(r.stdout)["open_set"]
    assert o["removed_products"] == 2 and o["kept_products"] == 4 and o["ece_bins"] == 15
    assert o["queries_in_catalogue"] + o["queries_not_in_catalogue"] == 20
    assert 0 <= o["auroc"] <= 1 and 0 <= o["ece"] <= 1 and o["precision_coverage"]
    assert (out / "precision_coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = json.loads(_cli(base + ["--open-set", "0.34", "--json"], tmp_path).stdout)["open_set"]
    assert again["auroc"] == o["auroc"]  # seeded
    other = json.loads(_cli(base + ["--open-set", "0.34", "--seed", "3", "--json"], tmp_path).stdout)["open_set"]
    assert other["removed_products"] == 2
    assert _cli(base + ["--open-set", "1.5"], tmp_path).exit_code == 2


def test_cli_iconic_gallery_with_adaptation(grocery, tmp_path):
    """`--adapt N` reports the iconic-gallery figure of an adapted build (centred vectors only)."""
    base = ["--dataset", str(grocery), "--model", "colorhist", "--latency-samples", "0", "--workers", "1",
            "--gallery", "iconic", "--json"]
    r = _cli(base + ["--centre", "on", "--adapt", "2"], tmp_path)
    assert r.exit_code == 0, r.output
    q = json.loads(r.stdout)["quality"]
    assert (q["centre"], q["adapt"]) == (True, 2) and q["centring"]["query_vectors"] > 0
    r = _cli(base + ["--adapt", "2"], tmp_path)
    assert r.exit_code == 2 and "--centre on" in r.output
