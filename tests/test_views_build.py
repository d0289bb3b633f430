"""Synthetic shopper views in `index build` (indexer/views_build.py): a centred build of an
iconic-only catalogue blends each image's views into its one vector (before centring and
adaptation), caches them so compactions repeat the blend without embedding, keeps one
vector per image (a removed product takes its views with it), blends new images of an
update too, and `views="off"` leaves the vectors as before."""
from __future__ import annotations

import numpy as np
import pytest

from indexer.centring_build import folder_sample
from indexer.views_build import choose_views
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.centring import build_centring
from shopsearch.embedding.cache import VectorCache
from shopsearch.errors import ConfigError
from shopsearch.gallery_aug import SHOPPER_VIEWS, blend
from tests.conftest import make_image, sha
from tests.test_centring import builder_setup


def _served(store, cat) -> dict[int, np.ndarray]:
    index, _ = store.load_current()
    return {i.id: index.reconstruct(i.id) for i in cat.indexable_images()}


def _views(settings, emb) -> VectorCache:
    return VectorCache(settings.vector_cache_dir, f"{emb.fingerprint}+shopper{SHOPPER_VIEWS}", emb.dim)


def test_an_iconic_centred_build_blends_cached_views_into_one_vector_per_image(tmp_path):
    settings, cat, shots, emb, store, builder = builder_setup(tmp_path)
    builder.query_sample = folder_sample(emb, builder.cache, shots, workers=1, progress=False)
    before = emb.calls
    rep = builder.build(progress=False, workers=1, centre="on")  # views=auto: iconic and centred
    assert rep.shopper_views == SHOPPER_VIEWS and rep.to_dict()["shopper_views"] == SHOPPER_VIEWS
    images = cat.indexable_images()
    assert emb.calls - before == len(images) * (1 + SHOPPER_VIEWS)  # each image and its views, once
    assert rep.vectors == len(images) == 8  # the views are no vectors of their own
    keys = [i.sha256 for i in images]
    views = _views(settings, emb)
    raw = builder.cache.get_many(keys)
    mixed = blend(raw, views.get_many(keys))
    c = build_centring(store.build_dir(rep.build_id))
    assert c.info["gallery_vectors"] == 8 and np.allclose(c.gallery_mean, mixed.mean(0), atol=1e-5)
    want = c.adapted(c.gallery(mixed))
    served = _served(store, cat)
    assert np.allclose(np.stack([served[i.id] for i in images]), want, atol=1e-3)
    assert not np.allclose(want, c.adapted(c.gallery(raw)), atol=1e-3)  # the views did move them
    # a plain build keeps it all; a compaction repeats the blend from the caches, embedding nothing
    assert builder.build(progress=False, workers=1).up_to_date
    calls = emb.calls
    compact = builder.update(progress=False, workers=1, force=True)
    assert compact.shopper_views == SHOPPER_VIEWS and emb.calls == calls
    served = _served(store, cat)
    assert np.allclose(np.stack([served[i.id] for i in images]), want, atol=1e-3)
    # a removed product leaves with its views; a new one is blended with its own views
    cat.delete_products(["S2"])
    p = tmp_path / "new.png"
    make_image(42).save(p)
    cat.upsert_product(ProductRecord("N1", "New thing", images=(ImageRecord(str(p), sha256=sha(p)),)))
    upd = builder.update(progress=False, workers=1)
    assert upd.shopper_views == SHOPPER_VIEWS and upd.vectors == 8
    assert emb.calls - calls == 1 + SHOPPER_VIEWS
    served = _served(store, cat)
    assert len(served) == 8 and not any(i.path.endswith("cat2.png") for i in cat.indexable_images())
    new = next(i for i in cat.indexable_images() if i.path.endswith("new.png"))
    views = _views(settings, emb)  # read again: the update added to it
    want_new = c.gallery(blend(builder.cache.get_many([new.sha256]), views.get_many([new.sha256])))[0]
    assert np.allclose(served[new.id], want_new, atol=1e-3)  # a delta's vector: centred, views blended
    # switched off: the same catalogue, centred and adapted from its own vectors alone
    off = builder.build(progress=False, workers=1, centre="on", views="off")
    assert not off.up_to_date and off.shopper_views == 0
    images = cat.indexable_images()
    c_off = build_centring(store.build_dir(off.build_id))
    served = _served(store, cat)
    want_off = c_off.adapted(c_off.gallery(builder.cache.get_many([i.sha256 for i in images])))
    assert np.allclose(np.stack([served[i.id] for i in images]), want_off, atol=1e-3)
    assert builder.build(progress=False, workers=1).up_to_date  # auto keeps the serving build's choice
    assert builder.build(progress=False, workers=1, views="on").shopper_views == SHOPPER_VIEWS
    cat.close()


def test_views_are_off_for_an_uncentred_build_by_default(tmp_path):
    settings, cat, shots, emb, store, builder = builder_setup(tmp_path)
    rep = builder.build(progress=False, workers=1)
    assert rep.shopper_views == 0 and emb.calls == 8
    cat.close()


def test_choosing_views():
    assert choose_views("auto", True) == SHOPPER_VIEWS and choose_views("auto", False) == 0
    assert choose_views("on", False) == SHOPPER_VIEWS and choose_views("off", True) == 0
    assert choose_views("auto", True, serving_views=0) == 0 and choose_views("on", True, serving_views=0) > 0
    with pytest.raises(ConfigError, match="views must be"):
        choose_views("sometimes", True)
