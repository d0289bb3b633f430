"""Calibrated confidence and the open-set metrics, on synthetic scores with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from shopsearch.confidence import (Calibration, annotate, capped, category_mass, features, fit_logistic,
                                   load_calibration, save_calibration)
from shopsearch.confidence_fit import Samples, collect_samples, fit_calibration
from shopsearch.evaluation.open_set import (OpenSetQuery, auroc, ece, evaluate_open_set, precision_coverage,
                                           products_removed)
from shopsearch.index.vector_index import VectorIndex
from shopsearch.results import ProductHit, SearchResult


def _sig(z):
    return 1 / (1 + np.exp(-z))


def test_logistic_fit_recovers_known_probabilities():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(20000, 2))
    true_w = np.array([6.0, 10.0, -5.0])
    y = rng.uniform(size=len(x)) < _sig(x @ true_w[:2] + true_w[2])
    w = fit_logistic(x, y)
    assert np.allclose(w, true_w, atol=0.6)
    grid = rng.uniform(0, 1, size=(200, 2))
    assert np.max(np.abs(_sig(grid @ w[:2] + w[2]) - _sig(grid @ true_w[:2] + true_w[2]))) < 0.04


def _synthetic_samples(n: int, seed: int = 1, unknown: bool = True) -> Samples:
    """Top score s1 ~ U(0.3, 0.9); the first product is right with probability sigmoid(12 s1 + 20 gap - 8)."""
    rng = np.random.default_rng(seed)
    ranked, correct, left_out = [], [], []
    for _ in range(n):
        s1 = rng.uniform(0.3, 0.9)
        s2 = s1 - rng.uniform(0, 0.2)
        p = _sig(12 * s1 + 20 * (s1 - s2) - 8)
        right = bool(rng.uniform() < p)
        ranked.append((s1, s2, s2 - 0.05))
        correct.append((right, not right, False))
        left_out.append((s1 - 0.25, s1 - 0.26, s1 - 0.3))
    return Samples(tuple(ranked), tuple(correct), tuple(left_out) if unknown else ())


def test_fitted_confidence_is_calibrated_on_fresh_synthetic_data():
    cal = fit_calibration(_synthetic_samples(6000, unknown=False), build_id="b1")
    assert cal.fitted and cal.samples == 6000
    fresh = _synthetic_samples(4000, seed=7)
    conf = [cal.confidence(r)[0] for r in fresh.ranked]
    truth = [_sig(12 * r[0] + 20 * (r[0] - r[1]) - 8) for r in fresh.ranked]
    assert np.max(np.abs(np.array(conf) - np.array(truth))) < 0.05
    assert ece(conf, [c[0] for c in fresh.correct]) < 0.03
    # products left out of the catalogue enter as wrong answers: confidence drops where they lie
    cal = fit_calibration(_synthetic_samples(6000), build_id="b1")
    assert cal.confidence((0.45, 0.44))[0] < _sig(12 * 0.45 + 20 * 0.01 - 8)
    # the 'none' threshold sits at the top decile of unknown products' confidence, within its range
    assert 0.1 <= cal.none_below <= 0.45
    assert cal.match(0.95) == "strong" and cal.match(cal.none_below - 0.01) == "none"
    assert cal.match((cal.none_below + cal.strong_at) / 2) == "weak"


def test_too_few_samples_is_a_stated_fallback():
    cal = fit_calibration(_synthetic_samples(5))
    assert not cal.fitted and "at least" in cal.reason
    res = annotate(SearchResult((ProductHit("a", "A", 0.9, 1, "p"),), "m", "b"), cal)
    assert res.confidence is None and res.match is None
    assert res.to_dict()["calibration"]["status"] == "uncalibrated"
    assert res.to_dict()["results"][0]["calibrated_score"] is None


def test_annotate_sets_confidence_match_and_per_hit_scores(tmp_path):
    cal = fit_calibration(_synthetic_samples(3000), build_id="b1")
    hits = (ProductHit("a", "A", 0.88, 1, "p"), ProductHit("b", "B", 0.6, 2, "p"), ProductHit("c", "C", 0.55, 3, "p"))
    d = annotate(SearchResult(hits, "m", "b1"), cal).to_dict()
    assert d["match"] == "strong" and d["confidence"] > 0.9
    assert d["results"][0]["calibrated_score"] == d["confidence"]
    assert d["results"][1]["calibrated_score"] < d["results"][0]["calibrated_score"]
    low = annotate(SearchResult((ProductHit("a", "A", 0.35, 1, "p"), ProductHit("b", "B", 0.34, 2, "p")), "m", "b1"), cal)
    assert low.match == "none"
    save_calibration(tmp_path, cal)
    assert load_calibration(tmp_path, "b1") == cal
    assert not load_calibration(tmp_path, "another-build").fitted
    (tmp_path / "calibration.json").write_text("{not json")
    assert "unreadable" in load_calibration(tmp_path).reason


def test_per_product_chances_never_rise_down_the_list():
    """A fused ranking can put a product with a plainer similarity above a more similar one: its
    chance is then shown no lower than the one below it (the page's percentages follow its order)."""
    cal = fit_calibration(_synthetic_samples(3000), build_id="b1")
    hits = tuple(ProductHit(s, s, sc, i, "p") for i, (s, sc) in enumerate([("a", 0.5), ("b", 0.3), ("c", 0.45),
                                                                           ("d", 0.2), ("e", 0.4)]))
    shown = [h.calibrated for h in annotate(SearchResult(hits, "m", "b1"), cal).hits]
    assert all(b <= a for a, b in zip(shown, shown[1:])), shown


def test_a_category_filter_caps_the_confidence_by_the_heads_mass_inside_it():
    """A familiar photo (a banana) searched among the milk: the calibration, fitted on unfiltered
    searches, would call the first carton a possible match; the head says the photo's product is
    not in the filter, so the confidence is at most that mass."""
    probs = {"Fruit/Banana": 0.97, "Packages/Milk/Arla": 0.01, "Packages/Milk/Oatly": 0.005, "": 1 / 3}
    assert category_mass(probs, "Packages/Milk") == pytest.approx(0.015)
    assert category_mass(probs, "/Fruit/") == pytest.approx(0.97)
    assert category_mass(probs, "Toys") is None  # a category the head never learnt: it cannot tell
    cal = fit_calibration(_synthetic_samples(3000), build_id="b1")
    hits = (ProductHit("a", "A", 0.88, 1, "p"), ProductHit("b", "B", 0.6, 2, "p"))
    res = annotate(SearchResult(hits, "m", "b1"), cal)
    assert res.match == "strong"
    low = capped(res, cal, 0.015, "filter")
    assert low.match == "none" and low.confidence == pytest.approx(0.015) and low.confidence_limit == "filter"
    assert low.hits[0].calibrated == pytest.approx(0.015) and low.hits[1].calibrated < res.hits[1].calibrated
    assert capped(res, cal, 0.999, "filter") is res  # a filter holding the product changes nothing


def test_features_lead_over_the_best_other_product():
    f = features([0.9, 0.7, 0.6])
    assert np.allclose(f, [[0.9, 0.2], [0.7, -0.2], [0.6, -0.3]])
    assert np.allclose(features([0.5]), [[0.5, 0.5]])


def _cluster_index(n_products: int, per_product: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    dim = 32
    centres = rng.normal(size=(n_products, dim))
    vecs, product_of = [], {}
    for p in range(n_products):
        for j in range(per_product):
            v = centres[p] + spread * rng.normal(size=dim)
            vecs.append(v / np.linalg.norm(v))
            product_of[len(vecs) - 1] = f"sku{p}"
    index = VectorIndex(dim, "flat")
    index.add(np.arange(len(vecs), dtype=np.int64), np.array(vecs, dtype=np.float32))
    return index, product_of, centres


def test_leave_one_out_on_tight_products_is_right_and_skips_identical_copies():
    index, product_of, _ = _cluster_index(10, 3, 0.05)
    hashes = {i: f"h{i}" for i in product_of}
    s = collect_samples(index, product_of, hashes)
    assert len(s.ranked) == 30 and all(c[0] for c in s.correct)
    # with its whole product left out, the first product is never the query's
    assert len(s.left_out) == 30
    # a byte-identical copy of the query is not a fair neighbour: left out with the query
    hashes = {i: f"p{i // 3}" for i in product_of}  # every product's photos are "identical"
    s = collect_samples(index, product_of, hashes)
    assert not any(c[0] for c in s.correct)
    # near-duplicates of the same product are left out too; with none of its photos left, a photo is skipped
    s = collect_samples(index, product_of, {}, near_duplicate=0.5)
    assert s.ranked == ()


def test_leaving_near_duplicates_out_makes_leave_one_out_honest():
    """Each product: two bursts of three near-identical shots, far apart (a shopper's photo is as far
    from the catalogue as one burst from the other). Plain leave-one-out always finds the burst mate."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(20, 32))
    vecs, product_of = [], {}
    for p in range(20):
        for _ in range(2):
            burst = centres[p] + 1.5 * rng.normal(size=32)
            for _ in range(3):
                v = burst + 0.05 * rng.normal(size=32)
                vecs.append(v / np.linalg.norm(v))
                product_of[len(vecs) - 1] = f"sku{p}"
    index = VectorIndex(32, "flat")
    index.add(np.arange(len(vecs), dtype=np.int64), np.array(vecs, dtype=np.float32))
    acc = lambda s: float(np.mean([c[0] for c in s.correct]))  # noqa: E731
    assert acc(collect_samples(index, product_of, {})) == 1.0
    strict = collect_samples(index, product_of, {}, near_duplicate=0.95)
    assert len(strict.ranked) == 120 and acc(strict) < 0.7
    from shopsearch.confidence_fit import calibrate_index

    cal = calibrate_index(index, product_of, {}, near_duplicate=0.95, density=False)
    assert cal.fitted and cal.near_duplicate == 0.95 and cal.query_features == ("score",)
    assert cal.loo_top1_accuracy == pytest.approx(acc(strict))
    # with the catalogue's density model (the default) the photo's familiarity joins the score
    dens = calibrate_index(index, product_of, {}, near_duplicate=0.95)
    assert dens.query_features[0] == "score" and "density" in dens.query_features and dens.density is not None


def test_open_set_metrics_known_answers():
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.5], [True]) is None
    assert ece([0.8] * 10, [True] * 8 + [False] * 2) == pytest.approx(0.0)
    assert ece([1.0] * 4 + [0.0] * 4, [False] * 4 + [True] * 4) == pytest.approx(1.0)
    curve = precision_coverage([0.9, 0.6, 0.3], [True, False, True])
    assert curve == [(0.9, 1 / 3, 1.0), (0.6, 2 / 3, 0.5), (0.3, 1.0, 2 / 3)]


def test_open_set_on_separable_clusters():
    index, product_of, centres = _cluster_index(20, 4, 0.3, seed=3)
    rng = np.random.default_rng(9)
    queries = []
    for p in range(20):
        for _ in range(3):
            v = centres[p] + 0.3 * rng.normal(size=centres.shape[1])
            queries.append(OpenSetQuery((v / np.linalg.norm(v)).astype(np.float32), frozenset({f"sku{p}"})))
    res = evaluate_open_set(index, product_of, {}, queries, 0.25, seed=1)
    assert res.removed_products == 5 and res.queries_out == 15 and res.queries_in == 45
    assert res.auroc > 0.9
    again = evaluate_open_set(index, product_of, {}, queries, 0.25, seed=1)
    assert again.auroc == res.auroc  # seeded
    # products_removed names the products the run removed (to train a model that never saw them)
    removed = products_removed(product_of.values(), 0.25, seed=1)
    assert len(removed) == 5 and removed != products_removed(product_of.values(), 0.25, seed=2)
    kept_only = [q for q in queries if not q.relevant & removed]
    assert evaluate_open_set(index, product_of, {}, kept_only, 0.25, seed=1).queries_out == 0
    d = res.to_dict()
    assert set(d) >= {"auroc", "ece", "precision_coverage", "match_shares"}
    assert isinstance(Calibration.from_json(res.calibration.to_json()), Calibration)


def test_cli_build_calibrates_and_index_calibrate_refits(tmp_path):
    import json as _json

    from click.testing import CliRunner

    from indexer.cli import cli
    from tests.conftest import jitter, make_image

    (tmp_path / "imgs").mkdir()
    rows = ["sku,title,images"]
    for i in range(12):
        names = []
        for j in range(3):
            p = tmp_path / "imgs" / f"p{i}_{j}.png"
            (make_image(i) if j == 0 else jitter(make_image(i), seed=10 * i + j, amount=5)).save(p)
            names.append(f"imgs/{p.name}")
        rows.append(f"S{i},Thing {i},{'|'.join(names)}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = tmp_path / "data"

    def run(*args):
        res = CliRunner().invoke(cli, ["--data-dir", str(data), *args], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return res

    run("catalogue", "import", str(tmp_path / "m.csv"), "--format", "csv")
    build = _json.loads(run("index", "build", "--model", "colorhist", "--json", "--workers", "1").stdout)
    saved = load_calibration(data / "index" / "builds" / build["build_id"], build["build_id"])
    assert saved.fitted and saved.samples == 36
    # no labelled photos: the build says it serves the catalogue-only fallback, and how to do better
    assert build["calibration"]["source"] == "catalogue" and "--photos" in build["calibration"]["fallback"]
    (data / "index" / "builds" / build["build_id"] / "calibration.json").unlink()
    refit = _json.loads(run("index", "calibrate", "--json").stdout)
    assert refit["build_id"] == build["build_id"] and refit["fitted"] and refit["samples"] == 36
    query = tmp_path / "q.jpg"
    jitter(make_image(5), seed=99, amount=5).save(query, quality=92)
    res = _json.loads(run("search", str(query), "--json").stdout)
    assert res["results"][0]["sku"] == "S5" and res["match"] == "strong"
    assert "calibrated on 36" in run("index", "calibrate").stdout
    assert "catalogue-only fallback" in run("index", "calibrate").stdout
    assert res["calibration"]["source"] == "catalogue" and res["calibration"]["fallback"]
    # labelled shopper photos (image,sku), one of a product the shop does not sell
    lines = ["image,sku"]
    for i in range(12):
        for j in range(3):
            p = tmp_path / "imgs" / f"shopper{i}_{j}.jpg"
            jitter(make_image(i), seed=500 + 10 * i + j, amount=12).save(p, quality=85)
            lines.append(f"imgs/{p.name},S{i}")
    lines.append("imgs/shopper0_0.jpg,NOT-SOLD")
    lines.append("imgs/shopper1_0.jpg,")  # no sku: skipped, and said
    (tmp_path / "photos.csv").write_text("\n".join(lines) + "\n")
    labelled = _json.loads(run("index", "calibrate", "--photos", str(tmp_path / "photos.csv"), "--json").stdout)
    assert labelled["fitted"] and labelled["method"] == "labelled" and labelled["samples"] == 36
    assert labelled["source"] == "labelled" and "fallback" not in labelled
    assert labelled["scoring"] == "rerank=off;fusion=off"
    # the photo's familiarity to the catalogue joins the features; its model is stored with the build
    assert labelled["query_features"] == ["score", "density"]
    assert (data / "index" / "builds" / build["build_id"] / "density.npz").is_file()
    served = _json.loads(run("search", str(query), "--json").stdout)
    assert served["calibration"]["status"] == "calibrated" and "density" in served["calibration"]["features"]
    assert served["calibration"]["source"] == "labelled" and "fallback" not in served["calibration"]
    said = run("index", "calibrate", "--photos", str(tmp_path / "photos.csv"))
    assert "labelled shopper photos" in said.stdout
    assert f"skipped 1 row(s) without both an image and a sku (line {len(lines)})" in said.stderr
    assert "1 photo(s) name a SKU the catalogue lacks" in said.stderr
    # the photos are remembered beside the index: a full rebuild refits on them, not on the catalogue
    rebuilt = _json.loads(run("index", "build", "--model", "colorhist", "--force", "--json", "--workers", "1").stdout)
    assert rebuilt["build_id"] != build["build_id"] and rebuilt["calibration"]["source"] == "labelled"
    assert load_calibration(data / "index" / "builds" / rebuilt["build_id"], rebuilt["build_id"]).samples == 36
    again = run("index", "calibrate")
    assert "remembered" in again.output and "labelled shopper photos" in again.output
    build = rebuilt
    run("catalogue", "delete", "S10", "S11")
    update = _json.loads(run("index", "update", "--json", "--workers", "1").stdout)
    assert update["build_id"] != build["build_id"] and update["strategy"] == "delta"
    # a delta update keeps its base's fit (refitting reads the whole index), stamped with its own id
    carried = load_calibration(data / "index" / "builds" / update["build_id"], update["build_id"])
    assert carried.fitted and carried.samples == 36 and carried.density is not None  # carried with its density
    # --catalogue-only forgets the photos: this fit and the next builds' read the catalogue alone
    only = _json.loads(run("index", "calibrate", "--catalogue-only", "--json").stdout)
    assert only["samples"] == 30 and only["source"] == "catalogue"  # the build's own photos
    refitted = load_calibration(data / "index" / "builds" / update["build_id"], update["build_id"])
    assert refitted.fitted and refitted.samples == 30  # the new build's own photos
    forced = _json.loads(run("index", "build", "--model", "colorhist", "--force", "--json", "--workers", "1").stdout)
    assert forced["calibration"]["source"] == "catalogue"
    with pytest.raises(AssertionError, match="exclude each other"):
        run("index", "calibrate", "--catalogue-only", "--photos", str(tmp_path / "photos.csv"))


def test_remembered_photos_that_are_gone_fall_back_to_the_catalogue(tmp_path):
    """A build whose remembered photos cannot be read any more still gets a (catalogue) fit."""
    from types import SimpleNamespace

    from shopsearch.calibration_source import (BuildCalibrator, LabelledSource, forget_photos, remember_photos,
                                               remembered_photos)
    from shopsearch.embedders import load_embedder

    assert remembered_photos(tmp_path) is None and not forget_photos(tmp_path)
    remember_photos(tmp_path, [(tmp_path / "gone.jpg", "S1"), (tmp_path / "x" / ".." / "b.jpg", "S2")])
    rows = remembered_photos(tmp_path)
    assert rows == [(tmp_path / "gone.jpg", "S1"), (tmp_path / "b.jpg", "S2")]  # absolute, resolved
    index, product_of, _ = _cluster_index(6, 3, 0.05, seed=3)
    images = [SimpleNamespace(id=i, product_id=p, sha256=f"h{i}") for i, p in product_of.items()]
    embedder = load_embedder("colorhist", "cpu")
    cal = BuildCalibrator(labelled=LabelledSource(tuple(rows), embedder, None, tmp_path / "cache")).fit(
        index, images, "b1")
    assert cal.method == "leave-one-out" and cal.samples == 18  # the catalogue's own 6 x 3 photos
    assert forget_photos(tmp_path) and remembered_photos(tmp_path) is None


def test_labelled_photos_fit_is_honest_where_catalogue_near_duplicates_are_not():
    """Catalogue photos that are near-duplicates make leave-one-out look certain; shopper photos
    (further from their product's photos) are right less often, and a fit on them says so."""
    from shopsearch.confidence_fit import LabelledQuery, collect_labelled

    index, product_of, centres = _cluster_index(20, 4, 0.05, seed=2)  # tight: near-duplicate photos
    loo = fit_calibration(collect_samples(index, product_of, {}))
    rng = np.random.default_rng(4)
    shoppers = []
    for p in range(20):
        for _ in range(6):
            v = centres[p] + 0.9 * rng.normal(size=centres.shape[1])  # shopper photos: far noisier
            shoppers.append(LabelledQuery((v / np.linalg.norm(v)).astype(np.float32), f"sku{p}"))
    samples = collect_labelled(index, product_of, shoppers)
    assert samples.method == "labelled" and len(samples.ranked) == 120 and len(samples.left_out) == 120
    labelled = fit_calibration(samples, query_feature_names=("score", "lead", "lead_mean"))
    assert labelled.fitted and labelled.method == "labelled" and labelled.query_features == ("score", "lead", "lead_mean")
    fresh = collect_labelled(index, product_of, shoppers[::2])
    truth = [c[0] for c in fresh.correct]
    by_loo = [loo.confidence(r)[0] for r in fresh.ranked]
    by_labelled = [labelled.confidence(r)[0] for r in fresh.ranked]
    assert ece(by_labelled, truth) < ece(by_loo, truth)
    assert max(by_loo) <= 0.99 and min(by_labelled) >= 0.01  # never shown as certain
    # a photo of a product the index lacks counts as an unknown product only
    alien = collect_labelled(index, product_of, [LabelledQuery(shoppers[0].vector, "not-sold")])
    assert alien.ranked == () and len(alien.left_out) == 1
    assert Calibration.from_json(labelled.to_json()) == labelled


def test_calibration_applies_only_to_the_scoring_path_it_was_fitted_on(tmp_path):
    from shopsearch.confidence import scoring_key
    from shopsearch.rerank import parse_rerank

    cal = fit_calibration(_synthetic_samples(3000), build_id="b1", scoring=scoring_key("off"))
    hits = (ProductHit("a", "A", 0.88, 1, "p"), ProductHit("b", "B", 0.6, 2, "p"))
    assert annotate(SearchResult(hits, "m", "b1"), cal, scoring_key("off")).confidence is not None
    other = annotate(SearchResult(hits, "m", "b1"), cal, scoring_key(parse_rerank("qe").spec))
    assert other.confidence is None and other.match is None
    reason = other.to_dict()["calibration"]["reason"]
    assert "rerank=off" in reason and "rerank=qe=5" in reason and "index calibrate" in reason
    save_calibration(tmp_path, cal)
    assert load_calibration(tmp_path, "b1").scoring == scoring_key("off")
    bad = cal.to_json() | {"query_features": ["score", "no-such-feature"]}
    (tmp_path / "calibration.json").write_text(__import__("json").dumps(bad))
    assert not load_calibration(tmp_path, "b1").fitted  # an unusable file is the stated fallback


def test_rerank_spec_round_trips():
    from shopsearch.rerank import parse_rerank

    for text in ("off", "qe", "kr", "qe+kr", "qe=3,alpha=2,depth=100"):
        opts = parse_rerank(text)
        assert parse_rerank(opts.spec) == opts


def test_open_set_calibrated_on_labelled_photos_out_of_fold():
    from shopsearch.confidence_fit import LabelledQuery

    index, product_of, centres = _cluster_index(20, 4, 0.3, seed=3)
    rng = np.random.default_rng(9)

    def photos(n):
        out = []
        for p in range(20):
            for _ in range(n):
                v = centres[p] + 0.3 * rng.normal(size=centres.shape[1])
                out.append(((v / np.linalg.norm(v)).astype(np.float32), f"sku{p}"))
        return out

    val, test = photos(3), photos(3)
    labelled = [LabelledQuery(v, s) for v, s in val]
    res = evaluate_open_set(index, product_of, {}, [OpenSetQuery(v, frozenset({s})) for v, s in test], 0.25, seed=1,
                            labelled=labelled)
    assert res.calibration.method == "labelled" and res.calibration.samples == 45  # removed products' photos dropped
    assert res.auroc > 0.9 and res.to_dict()["calibration"]["method"] == "labelled"
    cv = evaluate_open_set(index, product_of, {}, [OpenSetQuery(v, frozenset({s})) for v, s in val], 0.25, seed=1,
                           labelled=labelled, labelled_are_queries=True)
    assert cv.auroc > 0.85 and cv.removed_products == res.removed_products
