"""Train an adapter on the catalogue (and confirmed queries) and publish the adapted build.

The model's vectors come from the vector cache (what the cache lacks is embedded once, as
any build does); the adapter maps them, and the adapted vectors become a new index build
with the adapter file beside them and the adapted fingerprint in its manifest. Published
like any other build (atomic CURRENT, previous kept for rollback), or staged as the
shadow build to compare first (`index compare`, `index promote`)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from indexer.build import IndexBuilder
from indexer.shrink import DEFAULT_MAX_SHRINK, check_shrink
from shopsearch.adapter.model import ADAPTER_FILE, Adapter, build_adapter
from shopsearch.adapter.train import AdapterOptions, ConfirmedPair, TrainReport, train_adapter, usable_pairs
from shopsearch.catalogue.records import IndexBuildInfo
from shopsearch.confidence import calibration_file
from shopsearch.errors import ManifestError
from shopsearch.index.store import new_build_id
from shopsearch.index.sizing import choose_index_type
from shopsearch.index.manifest import IndexManifest
from shopsearch.index.recall_probe import probe_built
from shopsearch.index.vector_index import VectorIndex


@dataclass(frozen=True)
class CatalogueVectors:
    """The model's vectors of every indexable catalogue image, with their product."""

    ids: np.ndarray  # image ids
    keys: dict[int, str]  # image id -> content hash
    vectors: np.ndarray
    skus: list[str]


@dataclass(frozen=True)
class AdapterBuildReport:
    build_id: str
    shadow: bool
    model: str
    fingerprint: str
    adapter_sha256: str
    vectors: int
    pairs_used: int
    pairs_skipped: int
    train: TrainReport
    seconds: float

    def to_dict(self) -> dict:
        return {"build_id": self.build_id, "shadow": self.shadow, "model": self.model,
                "fingerprint": self.fingerprint, "adapter_sha256": self.adapter_sha256, "vectors": self.vectors,
                "pairs_used": self.pairs_used, "pairs_skipped": self.pairs_skipped, "train": self.train.to_dict(),
                "seconds": round(self.seconds, 3)}


def catalogue_vectors(builder: IndexBuilder, progress: bool = True, workers: int | None = None) -> CatalogueVectors:
    """Every indexable image's vector from `builder.embedder` (the model, never adapted)."""
    items = builder.work_items()
    builder.embed(items, workers=workers, progress=progress)
    good = {it.image_id: it.key for it in items if it.image_id is not None and it.key in builder.cache}
    info = builder.catalogue.products_for_images(sorted(good))
    ids = np.array([i for i in sorted(good) if i in info], dtype=np.int64)
    if not len(ids):
        raise ManifestError("the catalogue has no embedded images to train an adapter on")
    return CatalogueVectors(ids, {int(i): good[int(i)] for i in ids}, builder.cache.get_many([good[int(i)] for i in ids]),
                            [info[int(i)][0].sku for i in ids])


def train_and_build(builder: IndexBuilder, pairs: Iterable[ConfirmedPair] = (), options: AdapterOptions = AdapterOptions(),
                    shadow: bool = False, index_type: str = "auto", progress: bool = True,
                    workers: int | None = None, max_shrink: float | None = DEFAULT_MAX_SHRINK) -> AdapterBuildReport:
    """Adapter from the catalogue plus `pairs`, then the adapted build (published, or the shadow).
    Like any build, it is refused when it would hold far fewer vectors than the serving one."""
    t0 = time.perf_counter()
    base = builder.embedder
    cat = catalogue_vectors(builder, progress, workers)
    serving = builder.store.current_manifest()
    if serving is not None:
        keys = builder.store.load_keys(serving.build_id)
        check_shrink(serving.count, None if keys is None else list(keys), [int(i) for i in cat.ids],
                     builder.catalogue, max_shrink)
    # queries logged by an adapted build are mapped back to the model's space through its adapter
    served = build_adapter(builder.store.build_dir(serving.build_id)) if serving is not None else None
    q, q_skus, skipped = usable_pairs(pairs, base.fingerprint, set(cat.skus), [served] if served else [])
    adapter, train = train_adapter(cat.vectors, cat.skus, base.fingerprint, q, q_skus, options)
    build_id = publish_adapted(builder, adapter, cat, shadow, index_type)
    return AdapterBuildReport(build_id, shadow, base.name, adapter.fingerprint, adapter.sha256, len(cat.ids), len(q),
                              skipped, train, time.perf_counter() - t0)


def publish_adapted(builder: IndexBuilder, adapter: Adapter, cat: CatalogueVectors, shadow: bool = False,
                    index_type: str = "auto") -> str:
    """The adapted catalogue vectors as a new build carrying the adapter; returns its id."""
    base = builder.embedder
    itype = choose_index_type(len(cat.ids)) if index_type == "auto" else index_type
    build_id = new_build_id()
    builder.catalogue.record_build(IndexBuildInfo(build_id, base.name, adapter.fingerprint, itype, base.dim, 0,
                                                  "building", None, None))
    index = VectorIndex(base.dim, itype, expected_size=len(cat.ids))
    vectors = adapter.apply(cat.vectors)
    index.add(cat.ids, vectors)
    probe = probe_built(index)  # before the calibration: it is fit on searches as they will run
    manifest = IndexManifest(build_id, base.name, adapter.fingerprint, base.dim, len(index), itype,
                             time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             ef_search=probe.ef_search if probe is not None else 0,
                             recall_probe=probe.to_dict() if probe is not None else {})
    cal = builder.calibrator.fit(index, builder.catalogue.indexable_images(), build_id)
    report = {"mode": "adapter", "vectors": len(index), "adapter_sha256": adapter.sha256, "adapter": adapter.info,
              "recall_probe": probe.to_dict() if probe is not None else None}
    saved = builder.store.publish(index, manifest, keys=cat.keys, report=report,
                                  extra_files={**calibration_file(cal), ADAPTER_FILE: adapter.to_bytes()},
                                  make_current=not shadow)
    builder.catalogue.record_build(IndexBuildInfo(build_id, base.name, adapter.fingerprint, itype, base.dim,
                                                  saved.count, "complete", None, None))
    return build_id
