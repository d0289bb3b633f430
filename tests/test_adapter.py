"""The feedback adapter (issue 17, point 3): training undoes a known distortion, and an
adapted build carries its adapter, serves queries through it and leaves other builds alone."""
from __future__ import annotations

import numpy as np
import pytest

from indexer.adapter_build import train_and_build
from indexer.build import IndexBuilder
from shopsearch.adapter.model import ADAPTER_FILE, AdaptedEmbedder, Adapter
from shopsearch.adapter.train import AdapterOptions, ConfirmedPair, top1_recall, train_adapter
from shopsearch.app import open_search_service
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.config import Settings
from shopsearch.embedders import load_embedder
from shopsearch.embedders.base import l2_normalize
from shopsearch.errors import ModelMismatchError
from shopsearch.index import IndexStore
from tests.conftest import jitter, make_image, sha


def _distorted(seed: int = 0):
    """10 products separated in 6 dimensions; 10 more dimensions of product-independent
    clutter, then a fixed linear distortion that amplifies the clutter and mixes all axes."""
    rng = np.random.default_rng(seed)
    classes, signal, clutter = 10, 6, 10
    centres = rng.normal(size=(classes, signal))
    mix = np.linalg.qr(rng.normal(size=(signal + clutter, signal + clutter)))[0]
    scale = np.diag([1.0] * signal + [4.0] * clutter)

    def sample(per_class: int) -> tuple[np.ndarray, list[str]]:
        labels = np.repeat(np.arange(classes), per_class)
        x = np.hstack([centres[labels] + 0.35 * rng.normal(size=(len(labels), signal)),
                       rng.normal(size=(len(labels), clutter))])
        return l2_normalize(x @ scale @ mix.T), [f"P{c}" for c in labels]

    return sample(4), sample(3), sample(20)  # catalogue, confirmed queries, unseen queries


def test_adapter_undoes_a_known_linear_distortion():
    (g, gs), (v, vs), (q, qs) = _distorted()
    before = top1_recall(g, gs, q, qs)
    adapter, report = train_adapter(g, gs, "synthetic", v, vs, AdapterOptions(lam=0.01, steps=300, lr=1e-2, threads=1))
    after = top1_recall(g, gs, q, qs, adapter)
    assert report.loss_end < report.loss_start and report.query_samples == len(v)
    assert before < 0.6 and after > before + 0.2, (before, after)
    # a strong pull to the identity leaves the space (nearly) as it was
    held, _ = train_adapter(g, gs, "synthetic", v, vs, AdapterOptions(lam=1e4, steps=50, lr=1e-2, threads=1))
    assert np.abs(held.matrix - np.eye(len(held.matrix))).max() < 0.05


def test_adapter_file_round_trip_and_inverse(tmp_path):
    rng = np.random.default_rng(1)
    a = Adapter((np.eye(8) + 0.1 * rng.normal(size=(8, 8))).astype(np.float32), "base-fp", {"note": "x"})
    a.save(tmp_path / ADAPTER_FILE)
    b = Adapter.load(tmp_path / ADAPTER_FILE)
    assert b.sha256 == a.sha256 and b.fingerprint == f"base-fp+adapter-{a.sha256[:12]}" and b.info == {"note": "x"}
    x = l2_normalize(rng.normal(size=(5, 8)))
    assert np.allclose(b.unapply(b.apply(x)), x, atol=1e-5)


def _catalogue(url: str, tmp_path, n: int = 6) -> CatalogueStore:
    cat = CatalogueStore.open(url)
    for i in range(n):
        paths = []
        for j in range(2):  # two photos of each product: the catalogue's own labelled pairs
            p = tmp_path / f"p{i}_{j}.png"
            (make_image(i) if j == 0 else jitter(make_image(i), seed=100 + i, amount=40)).save(p)
            paths.append(p)
        cat.upsert_product(ProductRecord(f"S{i}", f"Thing {i}", category_path=("Things",),
                                         images=tuple(ImageRecord(str(p), sha256=sha(p)) for p in paths)))
    return cat


def test_adapted_build_is_searched_through_its_adapter(db_url, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, device="cpu")
    cat = _catalogue(db_url, tmp_path)
    base = load_embedder("colorhist", "cpu")
    store = IndexStore(settings.index_dir)
    builder = IndexBuilder(base, cat, store, settings.vector_cache_dir)
    plain = builder.build(progress=False, workers=1)
    query = jitter(make_image(3), seed=7, amount=30)
    qv = base.encode_images([query])
    pairs = [ConfirmedPair(qv[0], "S3", base.fingerprint), ConfirmedPair(qv[0], "S3", "another-model")]

    shadow = train_and_build(builder, pairs, AdapterOptions(lam=0.1, steps=40, lr=1e-2, threads=1), shadow=True,
                             progress=False)
    assert store.current_id() == plain.build_id and store.shadow_id() == shadow.build_id  # staged, not served
    assert (shadow.pairs_used, shadow.pairs_skipped) == (1, 1)
    store.promote()
    adapter = Adapter.load(store.build_dir(shadow.build_id) / ADAPTER_FILE)
    assert store.current_manifest().model_fingerprint == adapter.fingerprint == shadow.fingerprint
    assert store.current_manifest().model_name == "colorhist"

    svc = open_search_service(settings, catalogue=cat, with_router=False)
    assert isinstance(svc.embedder, AdaptedEmbedder)
    res = svc.search_image(query, k=3)
    # the scores are the adapted cosines: query and gallery both went through the adapter
    gallery_ids = [h.image_id for h in res.hits]
    g = adapter.apply(np.stack([base.encode_images([_open(cat, i)])[0] for i in gallery_ids]))
    assert np.allclose([h.score for h in res.hits], g @ adapter.apply(qv)[0], atol=1e-4)
    assert res.build_id == shadow.build_id

    store.rollback()  # the build without an adapter: plain model, plain cosines
    svc0 = open_search_service(settings, catalogue=cat, with_router=False)
    assert svc0.embedder.fingerprint == base.fingerprint
    res0 = svc0.search_image(query, k=3)
    g0 = np.stack([base.encode_images([_open(cat, h.image_id)])[0] for h in res0.hits])
    assert np.allclose([h.score for h in res0.hits], g0 @ qv[0], atol=1e-4)
    assert [h.score for h in res0.hits] != pytest.approx([h.score for h in res.hits])
    with pytest.raises(ModelMismatchError):
        AdaptedEmbedder(load_embedder("colorhist", "cpu"), Adapter(adapter.matrix, "another-model"))
    cat.close()


def _open(cat: CatalogueStore, image_id: int):
    from PIL import Image

    return Image.open(cat.image(image_id).path).convert("RGB")
