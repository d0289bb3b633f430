"""IndexBuilder: catalogue images -> vectors (via the cache) -> a published FAISS build."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shopsearch.catalogue.records import IndexBuildInfo
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.embedders.base import Embedder
from shopsearch.images import sha256_file
from shopsearch.index.store import IndexStore, new_build_id
from shopsearch.index.vector_index import IndexManifest, VectorIndex, choose_index_type, estimate_bytes_per_vector
from indexer.pipeline import EmbedReport, WorkItem, embed_items
from indexer.vector_cache import VectorCache

log = logging.getLogger("shopsearch.indexer")


@dataclass(frozen=True)
class BuildReport:
    build_id: str
    model: str
    fingerprint: str
    index_type: str
    vectors: int
    embedded: int
    skipped: int
    failed: tuple[tuple[int | None, str, str], ...]
    seconds: float
    images_per_s: float
    estimated_bytes: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "build_id": self.build_id, "model": self.model, "fingerprint": self.fingerprint,
            "index_type": self.index_type, "vectors": self.vectors, "embedded": self.embedded,
            "skipped": self.skipped, "failed": [{"image_id": i, "path": p, "reason": r} for i, p, r in self.failed],
            "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 2),
            "estimated_bytes": self.estimated_bytes, **self.extra,
        }


class IndexBuilder:
    def __init__(self, embedder: Embedder, catalogue: CatalogueStore, store: IndexStore, cache_root: Path) -> None:
        self.embedder = embedder
        self.catalogue = catalogue
        self.store = store
        self.cache = VectorCache(cache_root, embedder.fingerprint, embedder.dim)

    def work_items(self) -> list[WorkItem]:
        items = []
        for img in self.catalogue.indexable_images():
            key = img.sha256 or sha256_file(img.path)
            items.append(WorkItem(key, img.path, img.id))
        return items

    def embed(self, items: list[WorkItem], batch_size: int = 32, workers: int = 2, progress: bool = True) -> EmbedReport:
        report = embed_items(self.embedder, items, self.cache, batch_size=batch_size, workers=workers, progress=progress)
        failed_keys = {it.key: reason for it, reason in report.failed}
        for it in items:
            if it.key in failed_keys and it.image_id is not None:
                self.catalogue.mark_image_failed(it.image_id, failed_keys[it.key])
        return report

    def build(self, index_type: str = "auto", batch_size: int = 32, workers: int = 2, progress: bool = True) -> BuildReport:
        """Embed what is missing, build a fresh index of every good image, publish it atomically."""
        t0 = time.perf_counter()
        items = self.work_items()
        itype = choose_index_type(len(items)) if index_type == "auto" else index_type
        est = estimate_bytes_per_vector(itype, self.embedder.dim) * len(items)
        log.info("building index", extra={"images": len(items), "index_type": itype, "estimated_bytes": est})
        build_id = new_build_id()
        info = IndexBuildInfo(build_id, self.embedder.name, self.embedder.fingerprint, itype, self.embedder.dim,
                              0, "building", None, None)
        self.catalogue.record_build(info)
        report = self.embed(items, batch_size, workers, progress)
        good = [it for it in items if it.key in self.cache]
        index = VectorIndex(self.embedder.dim, itype, expected_size=len(good))
        if good:
            vecs = self.cache.get_many([it.key for it in good])
            index.add(np.array([it.image_id for it in good], dtype=np.int64), vecs)
        manifest = IndexManifest(build_id, self.embedder.name, self.embedder.fingerprint, self.embedder.dim,
                                 len(index), itype, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        saved = self.store.publish(index, manifest)
        self.catalogue.record_build(IndexBuildInfo(build_id, self.embedder.name, self.embedder.fingerprint, itype,
                                                   self.embedder.dim, saved.count, "complete", None, None))
        secs = time.perf_counter() - t0
        return BuildReport(build_id, self.embedder.name, self.embedder.fingerprint, itype, saved.count,
                           report.embedded, report.skipped,
                           tuple((it.image_id, it.path, r) for it, r in report.failed), secs,
                           report.images_per_s, est)
