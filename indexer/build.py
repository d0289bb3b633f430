"""IndexBuilder: catalogue images -> vectors (via the cache) -> a published FAISS build.

`build` makes a fresh index of every good image; `update` starts from the serving build
and applies only the difference with the catalogue (new and changed images by content
hash, removed images by id), publishing it as a new build. Both embed only what the
vector cache lacks, so a killed run resumes where it stopped, and both publish through
IndexStore.publish (verified, atomic, previous build kept for rollback)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from indexer.shrink import DEFAULT_MAX_SHRINK, check_shrink
from indexer.update_plan import READD, REBUILD, plan_update
from shopsearch.catalogue.records import IndexBuildInfo
from shopsearch.catalogue.rescan import RescanReport, rescan_files
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.config import GpuTuning
from shopsearch.confidence import calibration_file
from shopsearch.confidence_fit import calibrate_build
from shopsearch.rerank import RerankOptions
from shopsearch.embedders.base import Embedder
from shopsearch.errors import IndexShrinkError, ModelMismatchError
from shopsearch.images import sha256_file
from shopsearch.index.store import IndexStore, new_build_id
from shopsearch.index.vector_index import IndexManifest, VectorIndex, choose_index_type, estimate_bytes_per_vector
from shopsearch.embedding.pipeline import EmbedReport, WorkItem, embed_items
from shopsearch.embedding.cache import VectorCache

log = logging.getLogger("shopsearch.indexer")



@dataclass(frozen=True)
class BuildPlan:
    """What a build is about to do; printed (memory estimate included) before any work."""

    images: int
    index_type: str
    estimated_bytes: int
    dim: int


@dataclass(frozen=True)
class UpdateChanges:
    """What an update applied to the serving build."""

    previous_build: str
    added: int
    changed: int
    removed: int
    unchanged: int
    rebuild_reason: str | None  # why the index was rebuilt or re-filled (None: changed in place)
    added_since_training: int  # vectors added since an IVF index was trained


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
    mode: str = "full"  # full | incremental | rebuild
    trained_on: int = 0  # vectors the index was (last) trained or built on
    rescan: RescanReport | None = None  # the files found changed on disk first
    update: UpdateChanges | None = None  # an update's changes (None for a full build)

    def to_dict(self) -> dict:
        d = {
            "build_id": self.build_id, "model": self.model, "fingerprint": self.fingerprint,
            "index_type": self.index_type, "vectors": self.vectors, "embedded": self.embedded,
            "skipped": self.skipped, "failed": [{"image_id": i, "path": p, "reason": r} for i, p, r in self.failed],
            "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 2),
            "estimated_bytes": self.estimated_bytes, "mode": self.mode,
        }
        if self.update is not None:
            u = self.update
            d |= {"rebuild_reason": u.rebuild_reason, "previous_build": u.previous_build, "added": u.added,
                  "changed": u.changed, "removed": u.removed, "unchanged": u.unchanged}
        d["trained_on"] = self.trained_on
        if self.update is not None:
            d["added_since_training"] = self.update.added_since_training
        d["rescan"] = self.rescan.to_dict() if self.rescan else None
        return d


@dataclass(frozen=True)
class IndexDiff:
    """The serving build against the catalogue, by image id and content hash."""

    added: tuple[int, ...]  # in the catalogue, not in the index
    changed: tuple[int, ...]  # in both, with another content hash
    removed: tuple[int, ...]  # in the index, no longer an indexable catalogue image
    unchanged: int


def diff_index(want: dict[int, str], have: dict[int, str | None]) -> IndexDiff:
    """Ids to add, re-embed and drop to turn `have` (id -> hash, None when unknown) into `want`."""
    added = tuple(sorted(i for i in want if i not in have))
    changed = tuple(sorted(i for i in want if i in have and have[i] != want[i]))
    removed = tuple(sorted(i for i in have if i not in want))
    return IndexDiff(added, changed, removed, len(want) - len(added) - len(changed))


class IndexBuilder:
    def __init__(self, embedder: Embedder, catalogue: CatalogueStore, store: IndexStore, cache_root: Path,
                 gpu: GpuTuning | None = None, rerank: RerankOptions = RerankOptions()) -> None:
        self.embedder = embedder
        self.gpu = gpu  # the GPU executor's knobs (Settings.gpu)
        self.rerank = rerank  # the searches' default re-ranking: the calibration is fitted on its scores
        self.catalogue = catalogue
        self.store = store
        self.cache = VectorCache(cache_root, embedder.fingerprint, embedder.dim)

    # -- stage: read the catalogue ------------------------------------------------------
    def rescan(self, workers: int | None = None, progress: bool = True, verify_hashes: bool = False) -> RescanReport:
        """Catch files replaced or deleted on disk since the import (stat, re-hash what moved;
        `verify_hashes`: re-hash every file)."""
        return rescan_files(self.catalogue, workers=workers or 2, progress=progress, verify_hashes=verify_hashes)

    def work_items(self) -> list[WorkItem]:
        items = []
        for img in self.catalogue.indexable_images():
            key = img.sha256 or sha256_file(img.path)
            items.append(WorkItem(key, img.path, img.id))
        return items

    def plan(self, index_type: str = "auto", items: list[WorkItem] | None = None) -> BuildPlan:
        n = len(self.work_items() if items is None else items)
        itype = choose_index_type(n) if index_type == "auto" else index_type
        return BuildPlan(n, itype, estimate_bytes_per_vector(itype, self.embedder.dim) * n, self.embedder.dim)

    # -- stage: embed ---------------------------------------------------------------------
    def embed(self, items: list[WorkItem], batch_size: int | None = None, workers: int | None = None,
              progress: bool = True, executor: str = "auto", chunk_size: int = 512,
              compile: str | None = None) -> EmbedReport:
        report = embed_items(self.embedder, items, self.cache, batch_size=batch_size, workers=workers,
                             progress=progress, executor=executor, chunk_size=chunk_size, compile=compile,
                             gpu=self.gpu)
        failed_keys = {it.key: reason for it, reason in report.failed}
        for it in items:
            if it.key in failed_keys and it.image_id is not None:
                self.catalogue.mark_image_failed(it.image_id, failed_keys[it.key])
        return report

    # -- stage: merge into an index and publish -----------------------------------------
    def _vectors(self, ids: list[int], keys: list[str], fallback: VectorIndex | None = None) -> np.ndarray:
        """Vectors from the cache; ids the cache lacks (cache wiped) come from the old index."""
        if fallback is None or all(k in self.cache for k in keys):
            return self.cache.get_many(keys)
        out = np.empty((len(ids), self.embedder.dim), np.float32)
        for j, (i, k) in enumerate(zip(ids, keys)):
            out[j] = self.cache.get_many([k])[0] if k in self.cache else fallback.reconstruct(i)
        return out

    def _new_index(self, itype: str, ids: list[int], keys: list[str], fallback: VectorIndex | None = None) -> VectorIndex:
        index = VectorIndex(self.embedder.dim, itype, expected_size=len(ids))
        if ids:
            index.add(np.array(ids, dtype=np.int64), self._vectors(ids, keys, fallback))
        return index

    def _publish(self, build_id: str, itype: str, index: VectorIndex, keys: dict[int, str], report: dict) -> int:
        manifest = IndexManifest(build_id, self.embedder.name, self.embedder.fingerprint, self.embedder.dim,
                                 len(index), itype, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        # refit with every build: the confidence a search reports belongs to the build it searches
        cal = calibrate_build(index, self.catalogue.indexable_images(), build_id, self.rerank)
        saved = self.store.publish(index, manifest, keys=keys, report=report, extra_files=calibration_file(cal))
        self.catalogue.record_build(IndexBuildInfo(build_id, self.embedder.name, self.embedder.fingerprint, itype,
                                                   self.embedder.dim, saved.count, "complete", None, None))
        return saved.count

    def _serving(self) -> tuple[IndexManifest | None, list[int] | None]:
        """The serving build's manifest and image ids (None where it predates the keys sidecar)."""
        manifest = self.store.current_manifest()
        keys = self.store.load_keys(manifest.build_id) if manifest is not None else None
        return manifest, None if keys is None else list(keys)

    def _guard(self, build_id: str | None, itype: str, serving: IndexManifest | None,
               serving_ids: list[int] | None, new_ids: list[int], max_shrink: float | None) -> None:
        """Refuse (IndexShrinkError, the build recorded as failed) a build that drops more than
        `max_shrink` of the serving build's vectors. Checked on the plan, before any embedding,
        and again on what was embedded."""
        if serving is None:
            return
        try:
            check_shrink(serving.count, serving_ids, new_ids, self.catalogue, max_shrink)
        except IndexShrinkError:
            if build_id is not None:
                self.catalogue.record_build(IndexBuildInfo(build_id, self.embedder.name, self.embedder.fingerprint,
                                                           itype, self.embedder.dim, len(new_ids), "failed", None,
                                                           None))
            raise

    def _start(self, itype: str) -> str:
        build_id = new_build_id()
        self.catalogue.record_build(IndexBuildInfo(build_id, self.embedder.name, self.embedder.fingerprint, itype,
                                                   self.embedder.dim, 0, "building", None, None))
        return build_id

    def _report(self, build_id: str, itype: str, count: int, rep: EmbedReport, t0: float, est: int, mode: str,
                trained_on: int, scan: RescanReport | None = None, update: UpdateChanges | None = None) -> BuildReport:
        # files found unusable by the rescan and by the decoder are one list for the merchandiser
        failed = (scan.problems if scan else ()) + tuple((it.image_id, it.path, r) for it, r in rep.failed)
        return BuildReport(build_id, self.embedder.name, self.embedder.fingerprint, itype, count, rep.embedded,
                           rep.skipped, failed, time.perf_counter() - t0, rep.images_per_s, est, mode, trained_on,
                           scan, update)

    # -- public -----------------------------------------------------------------------------
    def build(self, index_type: str = "auto", batch_size: int | None = None, workers: int | None = None,
              progress: bool = True, executor: str = "auto", chunk_size: int = 512, rescan: bool = True,
              on_plan: Callable[[BuildPlan], None] | None = None, compile: str | None = None,
              verify_hashes: bool = False, max_shrink: float | None = DEFAULT_MAX_SHRINK) -> BuildReport:
        """Embed what is missing, build a fresh index of every good image, publish it atomically.
        `on_plan` sees the plan (memory estimate included) before any embedding starts; a build
        with less than (1 - max_shrink) of the serving build's vectors is refused (indexer.shrink)."""
        t0 = time.perf_counter()
        scan = self.rescan(workers, progress, verify_hashes) if rescan else None
        items = self.work_items()
        plan = self.plan(index_type, items)
        log.info("building index", extra={"images": plan.images, "index_type": plan.index_type,
                                          "estimated_bytes": plan.estimated_bytes})
        if on_plan is not None:
            on_plan(plan)
        serving, serving_ids = self._serving()
        self._guard(None, plan.index_type, serving, serving_ids, [it.image_id for it in items], max_shrink)
        build_id = self._start(plan.index_type)
        rep = self.embed(items, batch_size, workers, progress, executor, chunk_size, compile)
        good = {it.image_id: it.key for it in items if it.key in self.cache and it.image_id is not None}
        ids = sorted(good)
        self._guard(build_id, plan.index_type, serving, serving_ids, ids, max_shrink)
        index = self._new_index(plan.index_type, ids, [good[i] for i in ids])
        report = self._report(build_id, plan.index_type, len(index), rep, t0, plan.estimated_bytes, "full", len(ids),
                              scan)
        count = self._publish(build_id, plan.index_type, index, good, report.to_dict())
        return self._report(build_id, plan.index_type, count, rep, t0, plan.estimated_bytes, "full", len(ids), scan)

    def update(self, index_type: str = "auto", batch_size: int | None = None, workers: int | None = None,
               progress: bool = True, executor: str = "auto", chunk_size: int = 512,
               rescan: bool = True, compile: str | None = None, verify_hashes: bool = False,
               max_shrink: float | None = DEFAULT_MAX_SHRINK) -> BuildReport:
        """Apply the catalogue's changes to the serving build and publish the result as a new build.

        Files replaced or deleted on disk are noticed first (`rescan`). Only new or changed
        images are embedded. Removals use FAISS remove_ids where the index type allows it;
        HNSW (no removal) and a due compaction rebuild from the vector cache, never
        re-embedding. Without a serving build this is a full `build`."""
        manifest = self.store.current_manifest()
        if manifest is None:
            return self.build(index_type, batch_size, workers, progress, executor, chunk_size, rescan,
                              compile=compile, verify_hashes=verify_hashes, max_shrink=max_shrink)
        if manifest.model_fingerprint != self.embedder.fingerprint:
            raise ModelMismatchError(
                f"the serving build {manifest.build_id} was made with {manifest.model_name!r}; an update must use "
                f"the same model (or run `shopsearch index build --model {self.embedder.name}`)")
        t0 = time.perf_counter()
        scan = self.rescan(workers, progress, verify_hashes) if rescan else None
        old, _ = self.store.load_current()
        items = self.work_items()
        want = {it.image_id: it.key for it in items if it.image_id is not None}
        keys = self.store.load_keys(manifest.build_id)
        # A build from before the keys sidecar: ids known, hashes not; assume unchanged.
        have: dict[int, str | None] = dict(keys) if keys is not None else {int(i): want.get(int(i)) for i in old.ids()}
        diff = diff_index(want, have)
        self._guard(None, manifest.index_type, manifest, list(have), list(want), max_shrink)
        todo_ids = set(diff.added) | set(diff.changed)
        todo = [it for it in items if it.image_id in todo_ids]
        rep = self.embed(todo, batch_size, workers, progress, executor, chunk_size, compile)
        ok_new = {i: want[i] for i in sorted(todo_ids) if want[i] in self.cache}
        final = {i: k for i, k in have.items() if i in want and i not in todo_ids and k is not None}
        final.update(ok_new)
        target = (choose_index_type(len(final)) if index_type == "auto" else index_type)
        prev_report = self.store.load_report(manifest.build_id) or {}
        trained_on = int(prev_report.get("trained_on") or len(have))
        since_training = int(prev_report.get("added_since_training") or 0) + len(ok_new)
        drop = list(diff.removed) + list(diff.changed)
        plan = plan_update(old.index_type, target, old.is_trained, old.supports_remove(), len(final), trained_on,
                           since_training, len(drop))
        reason = plan.reason
        build_id = self._start(target)
        ids = sorted(final)
        self._guard(build_id, target, manifest, list(have), ids, max_shrink)
        if plan.strategy == READD:
            # IVF: keep the trained quantizer and codebooks, re-add the cached vectors (no k-means)
            log.info("re-adding cached vectors to the trained index", extra={"reason": reason, "vectors": len(ids)})
            index = VectorIndex(old.dim, old.index_type, index=faiss.clone_index(old.faiss_index))
            index.faiss_index.reset()
            if ids:
                index.add(np.array(ids, dtype=np.int64), self._vectors(ids, [final[i] for i in ids], old))
        elif plan.strategy == REBUILD:  # compaction: a fresh index from cached vectors, nothing re-embedded
            log.info("rebuilding from the vector cache", extra={"reason": reason, "vectors": len(ids)})
            index = self._new_index(target, ids, [final[i] for i in ids], fallback=old)
            trained_on, since_training = len(ids), 0
        else:
            index = old
            index.remove(np.array(drop, dtype=np.int64))
            new_ids = sorted(ok_new)
            if new_ids:
                index.add(np.array(new_ids, dtype=np.int64), self.cache.get_many([ok_new[i] for i in new_ids]))
        mode = "rebuild" if reason else "incremental"
        changes = UpdateChanges(manifest.build_id, len(diff.added), len(diff.changed), len(diff.removed),
                                diff.unchanged, reason, since_training)
        est = estimate_bytes_per_vector(target, self.embedder.dim) * len(ids)
        report = self._report(build_id, target, len(index), rep, t0, est, mode, trained_on, scan, changes)
        count = self._publish(build_id, target, index, final, report.to_dict())
        return self._report(build_id, target, count, rep, t0, est, mode, trained_on, scan, changes)
