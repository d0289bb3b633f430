"""Catalogue adaptation in `index build` (shopsearch.centring.adapt_gallery): an iconic-only
catalogue built with a shopper sample is adapted and stores the sample with its means, so a
compaction from the vector cache moves the vectors the same way; `adapt` switches it, and a
catalogue with several photos per product is not adapted by default."""
from __future__ import annotations

import numpy as np
import pytest

from indexer.centring_build import choose_adaptation, folder_sample, iconic_only
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.centring import ADAPT_ROUNDS, CENTRING_FILE, WHITEN_SHRINK, build_centring, fit_centring
from shopsearch.embedders.base import l2_normalize
from shopsearch.errors import ConfigError
from shopsearch.index import IndexStore
from tests.conftest import make_image, sha
from tests.test_centring import builder_setup


def _served(store: IndexStore, cat) -> dict[int, np.ndarray]:
    index, _ = store.load_current()
    return {i.id: index.reconstruct(i.id) for i in cat.indexable_images()}


def test_an_iconic_build_is_adapted_and_a_compaction_repeats_it(tmp_path):
    settings, cat, shots, emb, store, builder = builder_setup(tmp_path)
    with pytest.raises(ConfigError, match="centre"):
        builder.build(progress=False, workers=1, adapt="on")  # nothing to adapt to without a centred build
    builder.query_sample = folder_sample(emb, builder.cache, shots, workers=1, progress=False)
    # adapt=auto: one photo per product (the shopper views, tests/test_views_build.py, off here)
    rep = builder.build(progress=False, workers=1, centre="on", views="off")
    assert rep.adapt_rounds == ADAPT_ROUNDS and rep.to_dict()["adapt_rounds"] == ADAPT_ROUNDS
    c = build_centring(store.build_dir(rep.build_id))
    assert c is not None and c.adapts and c.sample.shape == (24, emb.dim) and c.info["adapt_sample"] == 24
    # an adapted build also whitens both domains with the map fitted on the sample
    assert c.whitening is not None and c.whitening.shape == (emb.dim, emb.dim)
    assert c.info["whiten_shrink"] == WHITEN_SHRINK
    images = cat.indexable_images()
    raw = builder.cache.get_many([i.sha256 for i in images])
    want = c.adapted(c.gallery(raw))
    assert not np.allclose(want, c.gallery(raw), atol=1e-3)  # the vectors did move
    served = _served(store, cat)
    assert np.allclose(np.stack([served[i.id] for i in images]), want, atol=1e-3)
    # kept as it is by a plain build, and by a compaction from the cache (the sample is stored)
    assert builder.build(progress=False, workers=1).up_to_date
    compact = builder.update(progress=False, workers=1, force=True)
    assert build_centring(store.build_dir(compact.build_id)).sha256 == c.sha256
    served = _served(store, cat)
    assert np.allclose(np.stack([served[i.id] for i in images]), want, atol=1e-3)
    # switched off: the same means, the vectors centred only
    off = builder.build(progress=False, workers=1, adapt="off")
    assert not off.up_to_date and off.adapt_rounds == 0
    c_off = build_centring(store.build_dir(off.build_id))
    assert c_off is not None and not c_off.adapts and (store.build_dir(off.build_id) / CENTRING_FILE).is_file()
    assert c_off.whitening is None and "whiten_shrink" not in c_off.info
    served = _served(store, cat)
    assert np.allclose(np.stack([served[i.id] for i in images]), c_off.gallery(raw), atol=1e-4)
    with pytest.raises(ConfigError, match="stores no shopper photos"):
        builder.build(progress=False, workers=1, adapt="on")  # kept centring, no sample to adapt to
    cat.close()


def test_a_catalogue_of_several_photos_per_product_is_not_adapted_by_default(tmp_path):
    settings, cat, shots, emb, store, builder = builder_setup(tmp_path)
    for i in range(8):  # a second photo of every product: a catalogue with shopper photos
        p = tmp_path / f"second{i}.png"
        make_image(200 + i).save(p)
        cat.upsert_product(ProductRecord(f"S{i}", f"Thing {i}", images=(
            ImageRecord(str(tmp_path / f"cat{i}.png"), sha256=sha(tmp_path / f"cat{i}.png")),
            ImageRecord(str(p), sha256=sha(p)))))
    builder.query_sample = folder_sample(emb, builder.cache, shots, workers=1, progress=False)
    auto = builder.build(progress=False, workers=1, centre="on")
    assert auto.adapt_rounds == 0 and not build_centring(store.build_dir(auto.build_id)).adapts
    forced = builder.build(progress=False, workers=1, centre="on", adapt="on")
    assert forced.adapt_rounds == ADAPT_ROUNDS
    cat.close()


def test_choosing_adaptation_and_the_iconic_rule():
    assert iconic_only([1, 2, 3, 4]) and iconic_only([1, 1, 2, 3])
    assert not iconic_only([1, 1, 2, 2]) and not iconic_only([])
    rng = np.random.default_rng(0)
    sample = l2_normalize(rng.normal(size=(30, 8)))
    c = fit_centring(l2_normalize(rng.normal(size=(6, 8))), sample, "fp", "x")
    assert choose_adaptation("auto", c, sample, iconic=True).adapts
    assert not choose_adaptation("auto", c, sample, iconic=False).adapts
    assert choose_adaptation("on", c, sample, iconic=False).adapts
    assert choose_adaptation("auto", c, sample, iconic=True).whitening is not None
    assert choose_adaptation("auto", c, sample, iconic=False).whitening is None
    assert choose_adaptation("auto", None, None, iconic=True) is None
    with pytest.raises(ConfigError, match="adapt must be"):
        choose_adaptation("maybe", c, sample, iconic=True)
    # the sample round-trips through the build's file, and older files (means only) still read
    adapted = c.with_adaptation(sample, 2)
    back = type(c).from_bytes(adapted.to_bytes())
    assert back.adapts and back.adapt_rounds == 2 and back.sha256 == adapted.sha256 != c.sha256
    assert not type(c).from_bytes(c.to_bytes()).adapts
