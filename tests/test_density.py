"""The catalogue's density model (shopsearch.density) and the confidence feature that reads it:
Gaussian clusters with a known answer."""
from __future__ import annotations

import numpy as np
import pytest

from shopsearch.confidence import Calibration, annotate, load_calibration, save_calibration
from shopsearch.density import DENSITY_FILE, ProductDensity, fit_density
from shopsearch.evaluation.open_set import auroc
from shopsearch.results import ProductHit, SearchResult

DIM = 16


def _clusters(seed: int = 0, known: int = 12, unknown: int = 6, per: int = 40, scale: float = 4.0):
    """Products whose photos spread widely along the first half of the dimensions and barely along
    the second; each product the shop does not sell sits next to one it sells, shifted only along the
    narrow directions: close in plain distance, far in units of how one product's photos spread."""
    rng = np.random.default_rng(seed)
    spread = np.r_[np.full(DIM // 2, 2.0), np.full(DIM // 2, 0.1)]
    means = rng.normal(scale=scale, size=(known, DIM))
    twins = means[rng.choice(known, unknown, replace=False)] + np.r_[np.zeros(DIM // 2), np.full(DIM // 2, 0.8)]

    def photos(centres, n):
        return np.concatenate([c + spread * rng.normal(size=(n, DIM)) for c in centres])

    return photos(means, per), np.repeat(np.arange(known), per), photos(means, 10), photos(twins, 10)


def test_familiarity_separates_held_out_products_that_plain_distance_confuses():
    gallery, labels, sold, not_sold = _clusters()
    dens = fit_density(gallery, labels, shrinkage=0.01)
    fam = np.r_[dens.familiarity(sold), dens.familiarity(not_sold)]
    inside = np.r_[np.ones(len(sold), bool), np.zeros(len(not_sold), bool)]
    assert auroc(fam, inside) >= 0.97
    # the nearest catalogue photo in plain distance tells them apart far worse
    nearest = -np.min(((np.r_[sold, not_sold][:, None, :] - gallery[None]) ** 2).sum(2), axis=1)
    assert auroc(nearest, inside) < 0.8


def test_a_product_left_out_makes_its_own_photos_unfamiliar_and_the_model_round_trips():
    gallery, labels, sold, _ = _clusters(seed=1)
    dens = fit_density(gallery, labels, shrinkage=0.01)
    own = sold[:10]  # product 0's photos
    assert np.all(dens.familiarity(own, without=0) < dens.familiarity(own))
    again = ProductDensity.from_bytes(dens.to_bytes())
    np.testing.assert_allclose(again.familiarity(sold), dens.familiarity(sold), rtol=1e-3, atol=1e-3)
    assert fit_density(gallery[:5], np.zeros(5)) is None  # one product: nothing to compare with
    # a catalogue with more products than the cap gets none (each query pays one distance per product)
    assert fit_density(gallery, labels, shrinkage=0.01, max_products=11) is None
    assert fit_density(gallery, labels, shrinkage=0.01, max_products=12) is not None


def _cal_with_density(dens):
    return Calibration(True, top1=(6.0, 2.0, 1.0), hit=(8.0, 4.0, -4.0), query_features=("score", "density"),
                       method="labelled", build_id="b1", density=dens)


def test_density_calibration_is_stored_with_the_build_and_its_absence_is_a_stated_fallback(tmp_path):
    gallery, labels, sold, not_sold = _clusters(seed=2)
    dens = fit_density(gallery, labels, shrinkage=0.01)
    cal = _cal_with_density(dens)
    res = SearchResult((ProductHit("a", "A", 0.8, 1, "p"), ProductHit("b", "B", 0.5, 2, "p")), "m", "b1")
    near, far = annotate(res, cal, vector=sold[0]), annotate(res, cal, vector=not_sold[0])
    assert near.confidence > far.confidence  # same scores: the unfamiliar photo is less likely right
    save_calibration(tmp_path, cal)
    assert (tmp_path / DENSITY_FILE).is_file()
    loaded = load_calibration(tmp_path, "b1")
    assert abs(annotate(res, loaded, vector=sold[0]).confidence - near.confidence) < 1e-3
    # a text query has no photo to judge; a build without the model says what to run
    assert annotate(res, loaded).calibration["status"] == "uncalibrated"
    (tmp_path / DENSITY_FILE).unlink()
    missing = annotate(res, load_calibration(tmp_path, "b1"), vector=sold[0])
    assert missing.confidence is None and "index calibrate --photos" in missing.calibration["reason"]
    # so does a damaged one (cut short), instead of failing the search
    save_calibration(tmp_path, cal)
    data = (tmp_path / DENSITY_FILE).read_bytes()
    (tmp_path / DENSITY_FILE).write_bytes(data[: len(data) // 2])
    damaged = annotate(res, load_calibration(tmp_path, "b1"), vector=sold[0])
    assert damaged.confidence is None and "index calibrate --photos" in damaged.calibration["reason"]
    # a later fit without the feature removes the stale model
    save_calibration(tmp_path, _cal_with_density(dens))
    save_calibration(tmp_path, Calibration(True, top1=(6.0, 1.0), hit=(8.0, 4.0, -4.0), query_features=("score",),
                                           build_id="b1"))
    assert not (tmp_path / DENSITY_FILE).exists()


def test_a_labelled_fit_reads_the_density_and_trusts_familiar_photos_more():
    """Fitted as `index calibrate --photos` fits: the index's own vectors give the density model, the
    labelled photos (and each again with its product left out, which makes it unfamiliar) the fit."""
    from shopsearch.confidence_fit import LabelledQuery, calibrate_index
    from shopsearch.index.vector_index import VectorIndex

    gallery, labels, sold, _ = _clusters(seed=3, scale=1.0)
    unit = lambda v: (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    index = VectorIndex(DIM, "flat")
    index.add(np.arange(len(gallery), dtype=np.int64), unit(gallery))
    product_of = {i: int(p) for i, p in enumerate(labels)}
    photos = [LabelledQuery(v, int(p)) for v, p in zip(unit(sold), np.repeat(np.arange(12), 10))]
    cal = calibrate_index(index, product_of, {}, labelled=photos)
    assert cal.fitted and cal.query_features == ("score", "density") and cal.density is not None
    assert cal.top1[1] > 0  # the more familiar the photo, the likelier its first product is right
    v = photos[0].vector
    scores = [0.9, 0.5]
    familiar, unfamiliar = cal.familiarity(v), float(cal.density.familiarity(v, without=0)[0])
    assert cal.confidence(scores, None, familiar)[0] > cal.confidence(scores, None, unfamiliar)[0]
    without = calibrate_index(index, product_of, {}, labelled=photos, density=False)
    assert without.query_features == ("score",) and without.density is None


def test_relative_distances_equal_the_two_projection_form():
    gallery, labels, sold, unknown = _clusters(seed=2)
    dens = ProductDensity.from_bytes(fit_density(gallery, labels, shrinkage=0.01).to_bytes())
    x = np.concatenate([sold, unknown]).astype(np.float64)
    z = x @ dens.proj
    direct = ((z[:, None, :] - dens.means[None]) ** 2).sum(2) - ((x @ dens.proj0 - dens.mean0) ** 2).sum(1)[:, None]
    # served in float32 (one product with the quadratic form and the means' projections: issue 18):
    # agreement to float32 rounding
    np.testing.assert_allclose(dens.relative_distances(x), direct / x.shape[1], rtol=1e-4, atol=5e-4)
    assert np.array_equal(dens.relative_distances(x).argmin(1), direct.argmin(1))
    # and at a real model's width, on unit vectors as searches send them
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 512))
    labels = np.repeat(np.arange(40), 12)
    gallery = centres[labels] + 0.5 * rng.normal(size=(len(labels), 512))
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    dens = ProductDensity.from_bytes(fit_density(gallery, labels).to_bytes())
    x = gallery[::7] + 0.05 * rng.normal(size=(len(gallery[::7]), 512))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    z = x @ dens.proj
    direct = ((z[:, None, :] - dens.means[None]) ** 2).sum(2) - ((x @ dens.proj0 - dens.mean0) ** 2).sum(1)[:, None]
    np.testing.assert_allclose(dens.relative_distances(x), direct / x.shape[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dens.familiarity(x), -(direct / x.shape[1]).min(1), rtol=1e-5, atol=1e-6)


def test_a_held_out_catalogue_photo_is_read_against_its_products_other_photos():
    """A catalogue photo used as a pseudo-query: its product's mean is recomputed without it (and
    without the photos left out with it), exactly as a density fitted on the rest would place it."""
    gallery, labels, sold, _ = _clusters(seed=4)
    dens = fit_density(gallery, labels, shrinkage=0.01)
    q, rest = gallery[:2], gallery[2:40]  # product 0's first two photos, then its other 38
    held, without = dens.held_out(q[:1], [0], [q])
    manual = ProductDensity(dens.proj, np.r_[(rest.mean(0) @ dens.proj)[None], dens.means[1:]], dens.proj0, dens.mean0)
    assert held[0] == pytest.approx(manual.familiarity(q[:1])[0], rel=1e-3)  # served in float32
    assert held[0] < dens.familiarity(q[:1])[0]  # its own pull on the mean taken away
    assert without[0] == pytest.approx(dens.familiarity(q[:1], without=0)[0])
    # every photo of the product taken out: the product is absent, as if never sold
    everything = gallery[labels == 0]
    assert dens.held_out(q[:1], [0], [everything])[0][0] == pytest.approx(without[0])


def test_catalogue_only_calibration_reads_the_density_and_says_it_is_the_fallback():
    """No labelled photos: held-out catalogue photos are the pseudo-queries, their familiarity read
    with themselves out of their product's mean (else each would look as familiar as the mean it
    pulls), and each again with its whole product left out as a product the shop does not sell."""
    from shopsearch.confidence_fit import calibrate_index, collect_samples
    from shopsearch.density import fit_index_density
    from shopsearch.index.vector_index import VectorIndex

    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    gallery, labels, _, _ = _clusters(seed=5, scale=1.0, per=6)
    gallery = unit(gallery)
    index = VectorIndex(DIM, "flat")
    index.add(np.arange(len(gallery), dtype=np.int64), gallery.astype(np.float32))
    product_of = {i: int(p) for i, p in enumerate(labels)}
    dens = fit_index_density(index, product_of)
    samples = collect_samples(index, product_of, {}, density=dens)
    assert len(samples.familiarity) == len(samples.ranked) == len(gallery)
    assert len(samples.left_out_familiarity) == len(samples.left_out)
    in_mean = dens.familiarity(gallery.astype(np.float32))  # as the index holds them
    held = np.array(samples.familiarity)
    # the photo's own pull on its mean taken away (unchanged only where another product is nearer)
    assert np.all(held <= in_mean + 1e-9) and np.mean(held < in_mean) > 0.5
    assert np.mean(samples.left_out_familiarity) < np.mean(samples.familiarity)  # whole product out: stranger
    cal = calibrate_index(index, product_of, {})
    assert cal.fitted and cal.method == "leave-one-out" and "density" in cal.query_features
    assert cal.top1[cal.query_features.index("density")] > 0  # more familiar: likelier right
    said = cal.describe()
    assert said["source"] == "catalogue" and "index calibrate --photos" in said["fallback"]
    plain = calibrate_index(index, product_of, {}, density=False)
    assert "density" not in plain.query_features and plain.describe()["source"] == "catalogue"
