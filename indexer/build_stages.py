"""The stages an index build is made of, shared by a full build and an update
(indexer/build.py): read the catalogue (rescan, work items, plan), embed what the vector cache
lacks, turn cached vectors into the build's (shopper views blended in, centred, adapted) and
into an index, refuse a build that would shrink the serving one, publish through IndexStore and
record the build in the catalogue, and the BuildReport of a run."""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from indexer.build_types import BuildOptions, BuildPlan, BuildReport, SegmentCounts, UpdateChanges
from indexer.shrink import check_publishable
from indexer.update_plan import UP_TO_DATE
from indexer.views_build import GalleryViews
from shopsearch.calibration_source import BuildCalibrator
from shopsearch.catalogue.records import ImageInfo, IndexBuildInfo
from shopsearch.catalogue.rescan import RescanReport, rescan_files
from shopsearch.catalogue.stat_snapshot import SNAPSHOT_FILE
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.centring import CENTRING_FILE, DomainCentring
from shopsearch.config import GpuTuning
from shopsearch.confidence import calibration_file
from shopsearch.embedders.base import Embedder
from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.pipeline import EmbedReport, WorkItem, embed_items
from shopsearch.errors import IndexShrinkError, NothingToIndexError
from shopsearch.images import sha256_file
from shopsearch.index.layout import storage_order
from shopsearch.index.recall_probe import RecallProbe, probe_built
from shopsearch.index.sizing import choose_index_type, estimate_bytes_per_vector
from shopsearch.index.store import IndexStore, new_build_id
from shopsearch.index.manifest import IndexManifest
from shopsearch.index.vector_index import VectorIndex

log = logging.getLogger("shopsearch.indexer")


class BuildStages:
    """An index builder's state (embedder, catalogue, index store, vector cache, the centring
    and shopper views of the build being made) and the stages IndexBuilder runs in order."""

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
        self.recall_probe: RecallProbe | None = None  # the HNSW recall probe of the build being made
        self.index_choice = "auto"  # how the build being made chose its index type (IndexManifest.index_choice)

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

    def _manifest(self, build_id: str, itype: str, count: int, probe: RecallProbe | None = None) -> IndexManifest:
        return IndexManifest(build_id, self.embedder.name, self.embedder.fingerprint, self.embedder.dim,
                             count, itype, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             ef_search=probe.ef_search if probe is not None else 0,
                             recall_probe=probe.to_dict() if probe is not None else {},
                             index_choice=self.index_choice)

    def _probe(self, index: VectorIndex) -> RecallProbe | None:
        """An HNSW graph's recall checked on its own vectors, and the efSearch its searches will use."""
        self.recall_probe = probe = probe_built(index)
        return probe

    def _publish(self, build_id: str, itype: str, index: VectorIndex, keys: dict[int, str], report: dict,
                 images: list[ImageInfo]) -> int:
        # refit with every full build: the confidence a search reports belongs to the build it searches
        probe = self._probe(index)  # first: the calibration below is fit on searches as they will run
        cal = self.calibrator.fit(index, images, build_id)
        report = {**report, "recall_probe": probe.to_dict() if probe is not None else None}
        saved = self.store.publish(index, self._manifest(build_id, itype, len(index), probe), keys=keys, report=report,
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
        self.recall_probe = None
        build_id = new_build_id()
        self._record(build_id, itype, 0, "building")
        return build_id

    def _report(self, build_id: str, itype: str, count: int, rep: EmbedReport, t0: float, est: int, mode: str,
                trained_on: int, scan: RescanReport | None = None, update: UpdateChanges | None = None,
                strategy: str = "full", segments: SegmentCounts | None = None) -> BuildReport:
        # files found unusable by the rescan and by the decoder are one list for the merchandiser
        failed = (scan.problems if scan else ()) + tuple((it.image_id, it.path, r) for it, r in rep.failed)
        # an update's compaction takes every vector it does not embed from the vector cache; the
        # embedding report counts only the new or changed images found there (0 for a plain --force)
        reused = max(0, count - rep.embedded) if mode == "rebuild" else rep.skipped
        return BuildReport(build_id, self.embedder.name, self.embedder.fingerprint, itype, count, rep.embedded,
                           reused, failed, time.perf_counter() - t0, rep.images_per_s, est, mode, trained_on,
                           scan, update, strategy == UP_TO_DATE, strategy, segments,
                           self._centring.adapt_rounds if self._centring is not None and self._centring.adapts else 0,
                           self._views.n, self.recall_probe.to_dict() if self.recall_probe is not None else None)

    def _up_to_date(self, serving: IndexManifest, t0: float, scan: RescanReport | None,
                    update: UpdateChanges | None = None) -> BuildReport:
        """The report of a run that found the serving build current: nothing written."""
        prev = self.store.load_report(serving.build_id) or {}
        if update is not None:  # no new build: the build serving before is the one before the serving build
            before = self.store.previous_id()
            update = replace(update, previous_build=before if before != serving.build_id else None)
        log.info("index up to date", extra={"build_id": serving.build_id, "vectors": serving.count})
        return self._report(serving.build_id, serving.index_type, serving.count, EmbedReport(), t0, 0, UP_TO_DATE,
                            int(prev.get("trained_on") or serving.count), scan, update, UP_TO_DATE,
                            SegmentCounts.of(serving))

