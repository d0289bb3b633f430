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
from typing import Any, Callable

import faiss
import numpy as np

from indexer.build_stages import BuildStages
from indexer.build_types import (BuildOptions, BuildPlan, BuildReport, SegmentCounts, UpdateChanges,
                                 resolve_index_type, resolve_options)
from indexer.centring_build import choose_adaptation, choose_centring, iconic_only
from indexer.diff import IndexDiff, diff_arrays, diff_index
from indexer.update_plan import (DELTA, READD, UP_TO_DATE, Changes, ServingIndex, current_at, indexable_keys,
                                 plan_update, rescan_diff)
from indexer.views_build import GalleryViews, choose_views, served_views, transforms_kept
from shopsearch.catalogue.rescan import RescanReport
from shopsearch.centring import build_centring
from shopsearch.confidence import calibration_file, load_calibration
from shopsearch.embedding.pipeline import EmbedReport
from shopsearch.errors import ModelMismatchError
from shopsearch.index.merge import is_ivf
from shopsearch.index.sizing import choose_index_type, estimate_bytes_per_vector
from shopsearch.index.manifest import IndexManifest
from shopsearch.index.vector_index import VectorIndex

log = logging.getLogger("shopsearch.indexer")

__all__ = ["BuildOptions", "BuildPlan", "BuildReport", "IndexBuilder", "IndexDiff", "UpdateChanges", "diff_index"]


class IndexBuilder(BuildStages):
    """Builds (`build`) and updates (`update`) the published index from the catalogue; the
    stages both run are BuildStages' (indexer/build_stages.py)."""

    def build(self, options: BuildOptions | None = None, on_plan: Callable[[BuildPlan], None] | None = None,
              **overrides: Any) -> BuildReport:
        """Embed what is missing, build a fresh index of every good image, publish it atomically.
        Up to date (same model, index type, image ids and content hashes as the serving build):
        nothing is built or published unless `force`. `on_plan` sees the plan (memory estimate
        included) before any embedding starts; a build with less than (1 - max_shrink) of the
        serving build's vectors is refused (indexer.shrink). `overrides` replace fields of `options`."""
        o = resolve_options(options, overrides)
        itype, self.index_choice = resolve_index_type(o.index_type, self.store.current_manifest())
        o = replace(o, index_type=itype)
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
        itype, self.index_choice = resolve_index_type(o.index_type, manifest)
        o = replace(o, index_type=itype)
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
