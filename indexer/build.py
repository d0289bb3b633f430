"""IndexBuilder: catalogue images -> vectors (via the cache) -> a published FAISS build.

`build` makes a fresh index of every good image, unless the serving build already holds
exactly those images with this model and index type ("up to date": no index work, unless
`force`). `update` starts from the serving build and applies only the difference with the
catalogue (new and changed images by content hash, removed images by id); a small change is
published as a delta segment and tombstones beside the serving build's base segment, which is
shared, not rewritten (indexer/update_plan.py decides, shopsearch/index/segments.py stores).
Both embed only what the vector cache lacks, so a killed run resumes where it stopped, and
both publish through IndexStore (verified, atomic, previous build kept for rollback)."""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

from indexer.centring_build import choose_adaptation, choose_centring, iconic_only
from indexer.views_build import GalleryViews, choose_views, served_views, transforms_kept
from indexer.diff import IndexDiff, diff_arrays, diff_index
from indexer.build_types import (BuildOptions, BuildPlan, BuildReport, SegmentCounts, UpdateChanges,
                                 resolve_options)
from indexer.shrink import check_publishable
from indexer.update_plan import (DELTA, READD, UP_TO_DATE, Changes, ServingIndex, current_at, indexable_keys,
                                 plan_update, rescan_diff)
from shopsearch.catalogue.records import ImageInfo, IndexBuildInfo
from shopsearch.catalogue.rescan import RescanReport, rescan_files
from shopsearch.catalogue.stat_snapshot import SNAPSHOT_FILE
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.centring import CENTRING_FILE, DomainCentring, build_centring
from shopsearch.config import GpuTuning
from shopsearch.calibration_source import BuildCalibrator
from shopsearch.confidence import calibration_file, load_calibration
from shopsearch.embedders.base import Embedder
from shopsearch.errors import IndexShrinkError, ModelMismatchError, NothingToIndexError
from shopsearch.images import sha256_file
from shopsearch.index.layout import storage_order
from shopsearch.index.merge import is_ivf
from shopsearch.index.store import IndexStore, new_build_id
from shopsearch.index.sizing import choose_index_type, estimate_bytes_per_vector
from shopsearch.index.vector_index import IndexManifest, VectorIndex
from shopsearch.embedding.pipeline import EmbedReport, WorkItem, embed_items
from shopsearch.embedding.cache import VectorCache

log = logging.getLogger("shopsearch.indexer")

__all__ = ["BuildOptions", "BuildPlan", "BuildReport", "IndexBuilder", "IndexDiff", "UpdateChanges", "diff_index"]


class IndexBuilder:
    def __init__(self, embedder: Embedder, catalogue: CatalogueStore, store: IndexStore, cache_root: Path,
                 gpu: GpuTuning | None = None, calibrator: BuildCalibrator | None = None) -> None:
        self.embedder = embedder
        self.gpu = gpu  # the GPU executor's knobs (Settings.gpu)
        # fits each full build's confidence calibration (remembered labelled photos, else the catalogue)
        self.calibrator = calibrator or BuildCalibrator()
        self.catalogue = catalogue
        self.store = store
        self.cache_root = Path(cache_root)
        self.cache = VectorCache(cache_root, embedder.fingerprint, embedder.dim)
        #: unlabelled shopper photos' vectors and where they came from, for `centre="on"` builds
        self.query_sample: tuple[np.ndarray, str] | None = None
        self._centring: DomainCentring | None = None  # the centring of the build being made
        self._views = GalleryViews(embedder, cache_root, 0)  # the shopper views the build blends in

    # -- stage: read the catalogue ------------------------------------------------------
    def rescan(self, workers: int | None = None, progress: bool = True, verify_hashes: bool = False,
               scope: str = "auto") -> RescanReport:
        """Catch files replaced or deleted on disk since the import (stat against the stored
        snapshot, re-hash what moved; `verify_hashes`: re-hash every file; `scope`: see
        shopsearch/catalogue/stat_snapshot.py)."""
        return rescan_files(self.catalogue, workers=workers or 2, progress=progress, verify_hashes=verify_hashes,
                            snapshot=self.store.root / SNAPSHOT_FILE, scope=scope)

    def work_items(self, images: list[ImageInfo] | None = None) -> list[WorkItem]:
        """One item per indexable image (`images`: already read from the catalogue)."""
        images = self.catalogue.indexable_images() if images is None else images
        return [WorkItem(img.sha256 or sha256_file(img.path), img.path, img.id) for img in images]

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

    def _embed(self, items: list[WorkItem], o: BuildOptions) -> EmbedReport:
        if not items:  # nothing to embed: no workers started
            return EmbedReport()
        return self.embed(items, o.batch_size, o.workers, o.progress, o.executor, o.chunk_size, o.compile)

    # -- stage: merge into an index and publish -----------------------------------------
    def _vectors(self, ids: list[int], keys: list[str], fallback: VectorIndex | None = None) -> np.ndarray:
        """Vectors from the cache (centred when the build is); ids the cache lacks (cache wiped)
        come from the old index, which holds them centred already when it is."""
        if fallback is None or self.cache.present(keys).all():
            return self._adapt(self._centre(self._raw(keys)))
        out = np.empty((len(ids), self.embedder.dim), np.float32)
        cached = np.zeros(len(ids), bool)
        for j, (i, k) in enumerate(zip(ids, keys)):
            cached[j] = k in self.cache
            out[j] = self._centre(self._raw([k]))[0] if cached[j] else fallback.reconstruct(i)
        return self._adapt(out, cached)  # vectors read back from the index were adapted already

    def _adapt(self, centred: np.ndarray, movable: np.ndarray | None = None) -> np.ndarray:
        """A whole gallery moved toward the build's shopper sample (when its centring adapts):
        only whole-gallery builds adapt; a delta's new vectors are centred alone until the next
        compaction."""
        return centred if self._centring is None else self._centring.adapted(centred, movable)

    def _raw(self, keys: list[str]) -> np.ndarray:
        """Cached vectors, blended with their shopper views when the build has them."""
        return self._views.apply(keys, self.cache.get_many(keys))

    def _centre(self, vectors: np.ndarray) -> np.ndarray:
        return vectors if self._centring is None or not len(vectors) else self._centring.gallery(vectors)

    def _extra_files(self) -> dict[str, bytes]:
        return {CENTRING_FILE: self._centring.to_bytes()} if self._centring is not None else {}

    def _new_index(self, itype: str, ids: list[int], keys: list[str], fallback: VectorIndex | None = None,
                   index: VectorIndex | None = None) -> VectorIndex:
        index = VectorIndex(self.embedder.dim, itype, expected_size=len(ids)) if index is None else index  # or a trained one
        if ids:  # in storage order: a filter's vectors in a few contiguous runs (shopsearch/index/layout.py)
            ids, keys = storage_order(ids, keys, self.catalogue.filter_columns())
            index.add(np.array(ids, dtype=np.int64), self._vectors(ids, keys, fallback))
        return index

    def _manifest(self, build_id: str, itype: str, count: int) -> IndexManifest:
        return IndexManifest(build_id, self.embedder.name, self.embedder.fingerprint, self.embedder.dim,
                             count, itype, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def _publish(self, build_id: str, itype: str, index: VectorIndex, keys: dict[int, str], report: dict,
                 images: list[ImageInfo]) -> int:
        # refit with every full build: the confidence a search reports belongs to the build it searches
        cal = self.calibrator.fit(index, images, build_id)
        saved = self.store.publish(index, self._manifest(build_id, itype, len(index)), keys=keys, report=report,
                                   extra_files={**calibration_file(cal), **self._extra_files()})
        self._record(build_id, itype, saved.count, "complete")
        return saved.count

    def _record(self, build_id: str, itype: str, count: int, status: str) -> None:
        self.catalogue.record_build(IndexBuildInfo(build_id, self.embedder.name, self.embedder.fingerprint, itype,
                                                   self.embedder.dim, count, status, None, None))

    def _serving(self) -> tuple[IndexManifest | None, dict[int, str]]:
        """The serving build's manifest and image id -> content hash (empty when nothing serves)."""
        manifest = self.store.current_manifest()
        return manifest, self.store.load_keys(manifest.build_id) if manifest is not None else {}

    def _guard(self, build_id: str | None, itype: str, serving: IndexManifest | None,
               serving_ids: list[int], new_ids: list[int], max_shrink: float | None) -> None:
        """Refuse (the build recorded as failed) a build of no vectors (NothingToIndexError) or one
        that drops more than `max_shrink` of the serving build's (IndexShrinkError). Checked on the
        plan, before any embedding, and again on what was embedded."""
        try:
            check_publishable(None if serving is None else serving.count, serving_ids, new_ids, self.catalogue,
                              max_shrink)
        except (IndexShrinkError, NothingToIndexError):
            if build_id is not None:
                self._record(build_id, itype, len(new_ids), "failed")
            raise

    def _start(self, itype: str) -> str:
        build_id = new_build_id()
        self._record(build_id, itype, 0, "building")
        return build_id

    def _report(self, build_id: str, itype: str, count: int, rep: EmbedReport, t0: float, est: int, mode: str,
                trained_on: int, scan: RescanReport | None = None, update: UpdateChanges | None = None,
                strategy: str = "full", segments: SegmentCounts | None = None) -> BuildReport:
        # files found unusable by the rescan and by the decoder are one list for the merchandiser
        failed = (scan.problems if scan else ()) + tuple((it.image_id, it.path, r) for it, r in rep.failed)
        return BuildReport(build_id, self.embedder.name, self.embedder.fingerprint, itype, count, rep.embedded,
                           rep.skipped, failed, time.perf_counter() - t0, rep.images_per_s, est, mode, trained_on,
                           scan, update, strategy == UP_TO_DATE, strategy, segments,
                           self._centring.adapt_rounds if self._centring is not None and self._centring.adapts else 0,
                           self._views.n)

    def _up_to_date(self, serving: IndexManifest, t0: float, scan: RescanReport | None,
                    update: UpdateChanges | None = None) -> BuildReport:
        """The report of a run that found the serving build current: nothing written."""
        prev = self.store.load_report(serving.build_id) or {}
        log.info("index up to date", extra={"build_id": serving.build_id, "vectors": serving.count})
        return self._report(serving.build_id, serving.index_type, serving.count, EmbedReport(), t0, 0, UP_TO_DATE,
                            int(prev.get("trained_on") or serving.count), scan, update, UP_TO_DATE,
                            SegmentCounts.of(serving))

    # -- public -----------------------------------------------------------------------------
    def build(self, options: BuildOptions | None = None, on_plan: Callable[[BuildPlan], None] | None = None,
              **overrides: Any) -> BuildReport:
        """Embed what is missing, build a fresh index of every good image, publish it atomically.
        Up to date (same model, index type, image ids and content hashes as the serving build):
        nothing is built or published unless `force`. `on_plan` sees the plan (memory estimate
        included) before any embedding starts; a build with less than (1 - max_shrink) of the
        serving build's vectors is refused (indexer.shrink). `overrides` replace fields of `options`."""
        o = resolve_options(options, overrides)
        t0 = time.perf_counter()
        scan = self.rescan(o.workers, o.progress, o.verify_hashes, o.rescan_scope) if o.rescan else None
        # read before the rows: a change made after this makes the next build look at the rows
        generation = self.catalogue.generation()
        serving = None if o.force else current_at(self.store, self.catalogue, self.embedder.fingerprint,
                                                  generation, o.index_type)
        kept = functools.partial(transforms_kept, self.store, o.centre, o.adapt, o.views)  # -> bool, of a build id
        if serving is not None and kept(serving.build_id):
            return self._up_to_date(serving, t0, scan)
        images = self.catalogue.indexable_images()
        items = self.work_items(images)
        plan = self.plan(o.index_type, items)
        serving, serving_keys = self._serving()
        # a degraded store (CURRENT missing or unreadable, PREVIOUS served) is never up to date: build replaces it
        if not o.force and serving is not None and kept(serving.build_id) and not self.store.degraded \
                and serving.model_fingerprint == self.embedder.fingerprint and serving.index_type == plan.index_type \
                and serving_keys == {it.image_id: it.key for it in items}:
            self.catalogue.set_build_generation(serving.build_id, generation)
            return self._up_to_date(serving, t0, scan)
        log.info("building index", extra={"images": plan.images, "index_type": plan.index_type,
                                          "estimated_bytes": plan.estimated_bytes})
        if on_plan is not None:
            on_plan(plan)
        self._guard(None, plan.index_type, serving, list(serving_keys), [it.image_id for it in items], o.max_shrink)
        build_id = self._start(plan.index_type)
        rep = self._embed(items, o)
        cached = self.cache.present([it.key for it in items]).tolist()
        good = {it.image_id: it.key for it, hit in zip(items, cached) if hit and it.image_id is not None}
        ids = sorted(good)
        self._guard(build_id, plan.index_type, serving, list(serving_keys), ids, o.max_shrink)
        iconic = iconic_only([im.product_id for im in images if im.id in good])
        kept = None if o.centre == "on" else choose_centring(o.centre, self.store, serving, self.embedder,
                                                              np.zeros((0, self.embedder.dim), np.float32), None)
        # shopper views (auto): for an iconic-only catalogue whose build is centred, as adaptation
        self._views = GalleryViews(self.embedder, self.cache_root, choose_views(
            o.views, iconic and (o.centre == "on" or kept is not None),
            served_views(self.store, serving.build_id) if o.centre == "keep" and serving is not None else None))
        self._views.ensure([(it.path, it.key) for it in items if it.image_id in good], o.batch_size, o.progress)
        self._centring = kept if o.centre != "on" else choose_centring(
            "on", self.store, serving, self.embedder, self._raw([good[i] for i in ids]), self.query_sample)
        fresh = self.query_sample[0] if o.centre == "on" and self.query_sample is not None else None
        self._centring = choose_adaptation(o.adapt, self._centring, fresh, iconic)
        index = self._new_index(plan.index_type, ids, [good[i] for i in ids])
        segments = SegmentCounts(len(index), 0, 0)
        report = self._report(build_id, plan.index_type, len(index), rep, t0, plan.estimated_bytes, "full", len(ids),
                              scan, segments=segments)
        count = self._publish(build_id, plan.index_type, index, good, report.to_dict(), images)
        if len(good) == len(items):  # every indexable image is in: the build holds this generation exactly
            self.catalogue.set_build_generation(build_id, generation)
        return self._report(build_id, plan.index_type, count, rep, t0, plan.estimated_bytes, "full", len(ids), scan,
                            segments=segments)

    def update(self, options: BuildOptions | None = None, **overrides: Any) -> BuildReport:
        """Apply the catalogue's changes to the serving build and publish the result as a new build.

        Files replaced or deleted on disk are noticed first (`rescan`). Only new or changed
        images are embedded. indexer.update_plan picks how they reach the index: nothing to do
        (up to date, nothing published), a delta segment and tombstones beside the serving
        base segment (work proportional to the change, any index type), or a compaction from
        the vector cache (never re-embedding). Without a serving build this is a full `build`."""
        o = resolve_options(options, overrides)
        manifest = self.store.current_manifest()
        if manifest is None:
            return self.build(o)
        if manifest.model_fingerprint != self.embedder.fingerprint:
            raise ModelMismatchError(
                f"the serving build {manifest.build_id} was made with {manifest.model_name!r}; an update must use "
                f"the same model (or run `shopsearch index build --model {self.embedder.name}`)")
        t0 = time.perf_counter()
        # new vectors join the serving build's space: its means, never refitted by an update
        self._centring = build_centring(self.store.build_dir(manifest.build_id))
        scan = self.rescan(o.workers, o.progress, o.verify_hashes, o.rescan_scope) if o.rescan else None
        generation = self.catalogue.generation()
        if not o.force and current_at(self.store, self.catalogue, self.embedder.fingerprint, generation,
                                      o.index_type) is not None:
            prev = self.store.load_report(manifest.build_id) or {}
            changes = UpdateChanges(manifest.build_id, 0, 0, 0, manifest.count, None,
                                    int(prev.get("added_since_training") or 0))
            return self._up_to_date(manifest, t0, scan, changes)
        have_ids = None  # the rescan's own changes alone: no row or key read (update_plan.rescan_diff)
        diff = None if o.force or self.store.degraded else rescan_diff(
            manifest, scan, self.catalogue.build_generation(manifest.build_id), generation, o.max_shrink)
        if diff is None:  # the diff in numpy: Python objects (rows, items) only for the images that changed
            want_ids, want_keys = indexable_keys(self.catalogue)
            have_ids, have_keys = self.store.served_keys(manifest.build_id)
            diff = diff_arrays(want_ids, want_keys, have_ids, have_keys)
            self._guard(None, manifest.index_type, manifest, have_ids.tolist(), want_ids.tolist(), o.max_shrink)
        todo_ids = sorted(set(diff.added) | set(diff.changed))
        todo_items = self.work_items(self.catalogue.images_by_id(todo_ids))
        rep = self._embed(todo_items, o)
        ok_new = {it.image_id: it.key for it in todo_items if it.key in self.cache}
        # new images join the serving build's space: its shopper views too
        self._views = GalleryViews(self.embedder, self.cache_root, served_views(self.store, manifest.build_id))
        self._views.ensure([(it.path, it.key) for it in todo_items if it.image_id in ok_new], o.batch_size, o.progress)
        count = diff.unchanged + len(diff.added) + len(diff.changed) - len(todo_ids) + len(ok_new)
        target = (choose_index_type(count) if o.index_type == "auto" else o.index_type)
        prev_report = self.store.load_report(manifest.build_id) or {}
        trained_on = int(prev_report.get("trained_on") or manifest.count)
        since_training = int(prev_report.get("added_since_training") or 0)
        serving = ServingIndex(manifest.index_type, is_ivf(manifest.index_type, manifest.dim, manifest.count),
                               manifest.base_count or manifest.count, manifest.dead_count, manifest.delta_count,
                               trained_on, since_training)
        plan = plan_update(serving, Changes(len(diff.added), len(diff.changed), len(diff.removed), count, target),
                           o.force)
        changes = UpdateChanges(manifest.build_id, len(diff.added), len(diff.changed), len(diff.removed),
                                diff.unchanged, plan.reason, since_training + len(ok_new))
        complete = len(ok_new) == len(todo_ids)  # nothing failed: the result holds this generation exactly
        if plan.strategy == UP_TO_DATE:
            if complete:
                self.catalogue.set_build_generation(manifest.build_id, generation)
            return self._up_to_date(manifest, t0, scan, changes)
        build_id = self._start(target)
        est = estimate_bytes_per_vector(target, self.embedder.dim) * count
        if plan.strategy == DELTA:
            if count < manifest.count and have_ids is not None:  # (rescan_diff checked its own shrink)
                self._guard(build_id, target, manifest, have_ids.tolist(),
                            sorted(set(want_ids.tolist()) - set(todo_ids) | set(ok_new)), o.max_shrink)
            out = self._publish_delta(build_id, manifest, diff, set(todo_ids), ok_new, rep, t0, est, trained_on,
                                      scan, changes)
            if complete:
                self.catalogue.set_build_generation(build_id, generation)
            return out
        # a compaction reads everything anyway: the whole id -> hash map, and the rows for the calibration
        if have_ids is None:
            want_ids, _ = indexable_keys(self.catalogue)
            have_ids, have_keys = self.store.served_keys(manifest.build_id)
        keep = np.isin(have_ids, want_ids, assume_unique=True) & ~np.isin(have_ids, np.array(todo_ids, np.int64))
        final = dict(zip(have_ids[keep].tolist(), have_keys[keep].astype("U64").tolist()))
        final.update(ok_new)
        ids = sorted(final)
        self._guard(build_id, target, manifest, have_ids.tolist(), ids, o.max_shrink)
        old, _ = self.store.load_current()
        if plan.strategy == READD:
            # IVF: keep the trained quantizer and codebooks, re-add the cached vectors (no k-means)
            log.info("re-adding cached vectors to the trained index", extra={"reason": plan.reason, "vectors": len(ids)})
            index = VectorIndex(old.dim, old.index_type, index=faiss.clone_index(old.faiss_index))
            index.faiss_index.reset()
            index = self._new_index(target, ids, [final[i] for i in ids], old, index)
        else:  # compaction: a fresh index from cached vectors, nothing re-embedded
            log.info("rebuilding from the vector cache", extra={"reason": plan.reason, "vectors": len(ids)})
            index = self._new_index(target, ids, [final[i] for i in ids], fallback=old)
            trained_on, changes = len(ids), replace(changes, added_since_training=0)
        segments = SegmentCounts(len(index), 0, 0)
        report = self._report(build_id, target, len(index), rep, t0, est, "rebuild", trained_on, scan, changes,
                              plan.strategy, segments)
        count = self._publish(build_id, target, index, final, report.to_dict(), self.catalogue.indexable_images())
        if complete:
            self.catalogue.set_build_generation(build_id, generation)
        return self._report(build_id, target, count, rep, t0, est, "rebuild", trained_on, scan, changes,
                            plan.strategy, segments)

    def _publish_delta(self, build_id: str, manifest: IndexManifest, diff: IndexDiff, todo: set[int],
                       ok_new: dict[int, str], rep: EmbedReport, t0: float, est: int, trained_on: int,
                       scan: RescanReport | None, changes: UpdateChanges) -> BuildReport:
        """Keep the serving base segment and delta parts; tombstone the base's removed and changed
        ids; write one delta part of the new vectors (from the cache) and the delta ids they
        drop. Work and writes are proportional to the change, never to the base (whose ids are
        only searched, as a sorted array) nor to the delta already written."""
        base_ids, old_dead, old_delta_keys = self.store.segment_parts(manifest.build_id)
        touched = np.array(diff.removed + diff.changed, dtype=np.int64)
        in_base = touched[np.isin(touched, base_ids, assume_unique=True)] if len(touched) else touched
        dead = set(old_dead) | set(in_base.tolist())
        gone = set(diff.removed) | todo
        # the delta: its kept entries (still wanted, not re-embedded) and every new vector
        delta_keys = {i: k for i, k in old_delta_keys.items() if i not in gone}
        delta_keys.update(ok_new)
        drop = np.array(sorted(i for i, k in old_delta_keys.items() if delta_keys.get(i) != k), dtype=np.int64)
        new = sorted(i for i in delta_keys if old_delta_keys.get(i) != delta_keys[i])
        vectors = self._centre(self._raw([delta_keys[i] for i in new])) if new else \
            np.zeros((0, self.embedder.dim), np.float32)
        change = (np.array(new, dtype=np.int64), vectors, drop)
        dead_ids = np.array(sorted(dead), dtype=np.int64)
        segments = SegmentCounts(manifest.base_count or manifest.count, len(delta_keys), len(dead_ids))
        count = segments.base - segments.dead + segments.delta
        log.info("publishing a delta segment", extra={"build_id": build_id, "base": segments.base,
                                                      "delta": segments.delta, "dead": segments.dead})
        report = self._report(build_id, manifest.index_type, count, rep, t0, est, DELTA, trained_on, scan, changes,
                              DELTA, segments)
        # the base's calibration still holds for a change this small (refit at each compaction,
        # or with `shopsearch index calibrate`)
        cal = load_calibration(self.store.build_dir(manifest.build_id))
        saved = self.store.publish_delta(manifest.build_id, self._manifest(build_id, manifest.index_type, count),
                                         change, dead_ids, delta_keys, report.to_dict(),
                                         {**calibration_file(replace(cal, build_id=build_id)), **self._extra_files()})
        self._record(build_id, manifest.index_type, saved.count, "complete")
        return replace(report, vectors=saved.count, seconds=time.perf_counter() - t0)
