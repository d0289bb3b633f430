"""Per-domain mean centring (shopsearch.centring): it undoes a shift between catalogue and
shopper photos, and a centred build stores its means, serves queries through them, keeps
them through updates and drops them when built with centring off."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from indexer.build import IndexBuilder
from indexer.centring_build import folder_sample
from shopsearch.app import open_search_service
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.centring import (CENTRING_FILE, DomainCentring, adapt_gallery, build_centring, fit_centring,
                                 whitening_matrix)
from shopsearch.config import Settings
from shopsearch.embedders.base import l2_normalize
from shopsearch.errors import ConfigError
from shopsearch.index import IndexStore
from tests.conftest import FakeEmbedder, jitter, make_image, sha


def _shifted(seed: int = 0, products: int = 30, dim: int = 32, per_product: int = 5):
    """Catalogue vectors and shopper vectors of the same products, each domain pushed along
    its own strong direction (studio white vs shelf clutter), shoppers' also noisier."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(products, dim))
    studio, shelf = 4.0 * rng.normal(size=dim), 4.0 * rng.normal(size=dim)
    gallery = l2_normalize(centres + studio)
    labels = np.repeat(np.arange(products), per_product)
    queries = l2_normalize(centres[labels] + shelf + 0.6 * rng.normal(size=(len(labels), dim)))
    return gallery, queries, labels


def _recall1(gallery: np.ndarray, queries: np.ndarray, labels: np.ndarray) -> float:
    return float(((queries @ gallery.T).argmax(1) == labels).mean())


def test_centring_undoes_a_shift_between_catalogue_and_shopper_photos():
    gallery, queries, labels = _shifted()
    # the query mean comes from other shopper photos than the ones scored (an unlabelled sample)
    _, sample, _ = _shifted(seed=0)
    sample = l2_normalize(sample + 0.01 * np.random.default_rng(5).normal(size=sample.shape))
    c = fit_centring(gallery, sample, "fp", "a test sample")
    before = _recall1(gallery, queries, labels)
    after = _recall1(c.gallery(gallery), c.query(queries), labels)
    assert after > before + 0.2, (before, after)
    # one mean for both sides does not undo a shift that differs per side
    both = DomainCentring(gallery.mean(0), gallery.mean(0), "fp")
    assert _recall1(both.gallery(gallery), both.query(queries), labels) < after
    one = c.query(queries[0])
    assert one.shape == (32,) and np.isclose(np.linalg.norm(one), 1.0)
    assert np.allclose(np.linalg.norm(c.gallery(gallery), axis=1), 1.0)


def test_centring_round_trip_and_refusals(tmp_path):
    rng = np.random.default_rng(2)
    c = fit_centring(l2_normalize(rng.normal(size=(5, 8))), l2_normalize(rng.normal(size=(25, 8))), "fp", "x")
    (tmp_path / CENTRING_FILE).write_bytes(c.to_bytes())
    back = build_centring(tmp_path)
    assert back is not None and back.sha256 == c.sha256 and back.info["query_vectors"] == 25
    assert build_centring(tmp_path / "none") is None
    with pytest.raises(ConfigError, match="at least 20 shopper photos"):
        fit_centring(rng.normal(size=(5, 8)), rng.normal(size=(3, 8)), "fp", "three photos")
    with pytest.raises(ConfigError):
        fit_centring(np.zeros((0, 8)), rng.normal(size=(30, 8)), "fp", "x")


def _tinted(img: Image.Image, seed: int) -> Image.Image:
    """A shopper photo: the product under a strong warm light, a little noise."""
    arr = np.asarray(jitter(img, seed=seed, amount=20), dtype=np.float32)
    return Image.fromarray(np.clip(arr * 0.6 + np.array([110, 60, 0]), 0, 255).astype(np.uint8))


def _build_setup(tmp_path, url: str):
    from shopsearch.catalogue.store import CatalogueStore

    settings = Settings(data_dir=tmp_path / "data", database_url=url, device="cpu")
    cat = CatalogueStore.open(url)
    for i in range(8):
        p = tmp_path / f"cat{i}.png"
        make_image(i).save(p)
        cat.upsert_product(ProductRecord(f"S{i}", f"Thing {i}", images=(ImageRecord(str(p), sha256=sha(p)),)))
    shots = tmp_path / "shopper"
    shots.mkdir()
    for j in range(24):
        _tinted(make_image(100 + j), seed=j).save(shots / f"q{j}.png")
    return settings, cat, shots


def builder_setup(tmp_path):
    """(settings, catalogue, shopper folder, embedder, store, builder) over _build_setup's catalogue."""
    settings, cat, shots = _build_setup(tmp_path, f"sqlite:///{tmp_path / 'c.db'}")
    emb = FakeEmbedder()
    store = IndexStore(settings.index_dir)
    return settings, cat, shots, emb, store, IndexBuilder(emb, cat, store, settings.vector_cache_dir)


def test_a_centred_build_serves_queries_through_its_means_and_keeps_them(tmp_path):
    settings, cat, shots, emb, store, builder = builder_setup(tmp_path)
    with pytest.raises(ConfigError, match="--centre-sample"):
        builder.build(progress=False, workers=1, centre="on")
    builder.query_sample = folder_sample(emb, builder.cache, shots, workers=1, progress=False)
    assert len(builder.query_sample[0]) == 24
    # centring alone (an iconic catalogue is adapted and given shopper views too by default:
    # tests/test_adapt_build.py, tests/test_views_build.py)
    rep = builder.build(progress=False, workers=1, centre="on", adapt="off", views="off")
    c = build_centring(store.build_dir(rep.build_id))
    assert c is not None and c.info["query_vectors"] == 24 and c.info["gallery_vectors"] == 8
    index, _ = store.load_current()
    id3 = next(i.id for i in cat.indexable_images() if i.path.endswith("cat3.png"))
    raw = builder.cache.get_many([sha(tmp_path / "cat3.png")])
    assert np.allclose(index.reconstruct(id3), c.gallery(raw)[0], atol=1e-5)  # stored centred
    assert not np.allclose(index.reconstruct(id3), raw[0], atol=1e-3)

    svc = open_search_service(settings, catalogue=cat, embedder=emb, with_router=False)
    assert svc.centring is not None and svc.centring.sha256 == c.sha256
    photo = _tinted(make_image(3), seed=99)
    res = svc.search_image(photo, k=3)
    qv = emb.encode_images([photo])[0]
    assert np.allclose(res.query_vector, qv)  # the model's vector is what gets logged
    # scores are centred cosines: the query centred on the shopper mean, the gallery on the catalogue's
    gal = {i.id: c.gallery(builder.cache.get_many([i.sha256]))[0] for i in cat.indexable_images()}
    assert np.allclose([h.score for h in res.hits], [float(gal[h.image_id] @ c.query(qv)) for h in res.hits],
                       atol=1e-4)
    # an unchanged catalogue with centring kept is up to date; an update keeps the means
    assert builder.build(progress=False, workers=1).up_to_date
    p = tmp_path / "cat8.png"
    make_image(8).save(p)
    cat.upsert_product(ProductRecord("S8", "Thing 8", images=(ImageRecord(str(p), sha256=sha(p)),)))
    upd = builder.update(progress=False, workers=1)
    c2 = build_centring(store.build_dir(upd.build_id))
    assert c2 is not None and c2.sha256 == c.sha256
    index, _ = store.load_current()
    new = c.gallery(builder.cache.get_many([sha(p)]))[0]
    assert max(float(index.reconstruct(int(i)) @ new) for i in index.ids()) == pytest.approx(1.0, abs=1e-5)
    # built with centring off: plain vectors again, and the service stops centring
    off = builder.build(progress=False, workers=1, centre="off")
    assert not off.up_to_date and build_centring(store.build_dir(off.build_id)) is None
    assert open_search_service(settings, catalogue=cat, embedder=emb, with_router=False).centring is None
    cat.close()


def test_bench_centre_config_centres_gallery_and_queries(tmp_path):
    from shopsearch.evaluation.configs import BenchConfig, parse_config
    from shopsearch.evaluation.datasets import load_dataset
    from shopsearch.evaluation.runner import RunOptions, run_benchmark

    root = tmp_path / "tree"
    for c in range(8):
        (root / "train" / f"class{c}").mkdir(parents=True)
        make_image(c).save(root / "train" / f"class{c}" / "studio.png")
        (root / "test" / f"class{c}").mkdir(parents=True)
        for j in range(4):
            # a shopper photo: the product faint in front of the same shelf, which looks like product 0
            shot = Image.blend(jitter(make_image(c), seed=10 * c + j, amount=10), make_image(0), 0.7)
            shot.save(root / "test" / f"class{c}" / f"shot{j}.png")
    (c,) = parse_config("centre=on", BenchConfig("fake"))
    assert c.centre and "centred" in c.label
    (a,) = parse_config("centre=on,adapt=1", BenchConfig("fake"))
    assert a.adapt == 1 and "adapt=1" in a.label
    (w,) = parse_config("centre=on,adapt=1,whiten=100", BenchConfig("fake"))
    assert w.whiten == 100 and "whiten=100" in w.label
    with pytest.raises(ConfigError, match="centre"):
        parse_config("adapt=1", BenchConfig("fake"))
    with pytest.raises(ConfigError, match="centre"):
        parse_config("whiten=100", BenchConfig("fake"))
    with pytest.raises(ConfigError, match="whiten"):
        parse_config("centre=on,whiten=lots", BenchConfig("fake"))
    plain, centred, adapted, whitened = run_benchmark(lambda g: load_dataset(root, "imagefolder", g),
                                            [BenchConfig("fake"), c, a, w],
                                   tmp_path / "vectors", embedder_for=lambda spec: FakeEmbedder(),
                                   router_for=lambda e: None,
                                   options=RunOptions(ks=(1,), workers=1, progress=False, latency_samples=0))
    assert centred.centring["query_vectors"] == 32 and "query photos" in centred.centring["query_source"]
    assert not plain.centring and adapted.centring["query_vectors"] == 32
    assert whitened.centring["whiten_shrink"] == 100 and "whiten_shrink" not in adapted.centring
    assert adapted.summary.recall_at[1] >= centred.summary.recall_at[1]
    assert plain.summary.recall_at[1] < 0.5 and centred.summary.recall_at[1] > 0.9, \
        (plain.summary.recall_at, centred.summary.recall_at)


def test_adapting_the_catalogue_to_unlabelled_shopper_photos():
    """Each studio photo is off its product by its own direction (no common shift for the
    means to undo): moving it toward the shopper photos nearest to it, labels unused,
    recovers products that held-out shopper photos missed."""
    rng = np.random.default_rng(3)
    products, dim = 40, 24
    centres = rng.normal(size=(products, dim))
    gallery = l2_normalize(centres + 1.5 * rng.normal(size=(products, dim)))
    labels = np.repeat(np.arange(products), 6)
    sample = l2_normalize(centres[labels] + 0.5 * rng.normal(size=(len(labels), dim)))
    queries = l2_normalize(centres[labels] + 0.5 * rng.normal(size=(len(labels), dim)))
    adapted = adapt_gallery(gallery, sample, rounds=2)
    assert np.allclose(np.linalg.norm(adapted, axis=1), 1.0)
    assert _recall1(adapted, queries, labels) > _recall1(gallery, queries, labels) + 0.1
    assert np.array_equal(adapt_gallery(gallery, sample, rounds=0), gallery)
    # a catalogue vector no shopper photo is nearest to stays as it was
    far = np.vstack([gallery, -sample.mean(0, keepdims=True) / np.linalg.norm(sample.mean(0))])
    assert np.allclose(adapt_gallery(far, sample, rounds=1)[-1], far[-1], atol=1e-6)


def test_whitening_damps_how_shopper_photos_vary_and_round_trips():
    """Shopper photos of every product vary a lot along a few shared directions (light, clutter,
    angle) that the means cannot remove (they average to nothing); the whitening fitted on an
    unlabelled sample of shopper photos damps them, so held-out photos find their product."""
    rng = np.random.default_rng(7)
    products, dim = 40, 32
    centres = rng.normal(size=(products, dim))
    nuisance = np.linalg.qr(rng.normal(size=(dim, 3)))[0].T * 6.0  # three strong shared directions

    def shots(n_per: int, seed: int):
        r = np.random.default_rng(seed)
        labels = np.repeat(np.arange(products), n_per)
        x = centres[labels] + r.normal(size=(len(labels), 3)) @ nuisance + 0.3 * r.normal(size=(len(labels), dim))
        return l2_normalize(x), labels

    gallery = l2_normalize(centres)
    sample, _ = shots(6, 1)
    queries, labels = shots(3, 2)
    c = fit_centring(gallery, sample, "fp", "x")
    w = c.with_whitening(sample, 1.0)
    assert w.whitening is not None and w.info["whiten_shrink"] == 1.0
    before = _recall1(c.gallery(gallery), c.query(queries), labels)
    after = _recall1(w.gallery(gallery), w.query(queries), labels)
    assert after > before + 0.2, (before, after)
    assert np.allclose(np.linalg.norm(w.query(queries), axis=1), 1.0) and w.query(queries[0]).shape == (dim,)
    # stored with the means (older files without it still read), and part of the build's identity
    back = DomainCentring.from_bytes(w.to_bytes())
    assert back.sha256 == w.sha256 != c.sha256 and np.allclose(back.whitening, w.whitening)
    assert DomainCentring.from_bytes(c.to_bytes()).whitening is None
    assert c.with_whitening(sample, 0).whitening is None and w.with_whitening(None).whitening is None
    assert "whiten_shrink" not in w.with_whitening(None).info
    # a stronger shrinkage is closer to the identity (up to scale)
    def off_identity(m: np.ndarray) -> float:
        return float(np.abs(m * dim / np.trace(m) - np.eye(dim)).max())

    assert off_identity(whitening_matrix(sample, 1e4)) < 0.01 < off_identity(whitening_matrix(sample, 0.1))
    with pytest.raises(ConfigError, match="two shopper photos"):
        whitening_matrix(sample[:1], 1.0)
    with pytest.raises(ConfigError, match="positive"):
        whitening_matrix(sample, 0.0)
