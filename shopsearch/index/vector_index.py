"""VectorIndex: a FAISS index of L2-normalised vectors keyed by product-image id,
searched by inner product (= cosine), saved with a manifest that names the model."""
from __future__ import annotations

import logging
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from shopsearch.errors import ConfigError, IndexCorruptError, ModelMismatchError
from shopsearch.index.manifest import INDEX_FILE, MANIFEST, IndexManifest
from shopsearch.index.exact import empty_result, flat_storage
from shopsearch.index.filtered import AllowedSearch
from shopsearch.index.half_copy import HalfCopy
from shopsearch.index.faiss_gpu import gpu_available, gpu_kmeans
from shopsearch.index.segments import delta_part, merge_best, part_name, read_delta, sha256_file, write_delta
from shopsearch.index.sizing import (
    DEFAULT_EF_SEARCH,
    DEFAULT_NPROBE,
    DEFAULT_REFINE_K_FACTOR,
    faiss_reason,
    MAX_TRAIN_VECTORS,
    ef_for_size,
    factory_string,
    one_faiss_thread,
)

log = logging.getLogger("shopsearch.index")

class VectorIndex:
    """int64 ids -> unit vectors; search returns (scores, ids) best first.

    A loaded build may be segmented (shopsearch/index/segments.py): the base index, whose
    tombstoned ids (`dead_ids`) `search` excludes itself, plus an exact delta segment whose
    results it merges in. Callers see one index either way."""

    def __init__(self, dim: int, index_type: str = "flat", expected_size: int = 0,
                 index: faiss.Index | None = None, delta: faiss.Index | None = None,
                 dead: np.ndarray | None = None) -> None:
        self.dim = dim
        self.index_type = index_type
        if index is None:
            try:
                inner = faiss.index_factory(dim, factory_string(index_type, dim, expected_size),
                                            faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as e:
                raise ConfigError(f"index type {index_type!r} is not one ShopSearch or FAISS knows: expected auto, "
                                  f"flat, hnsw, ivfpq or a FAISS factory string such as 'IVF256,Flat' "
                                  f"({faiss_reason(e)})") from None
            index = faiss.IndexIDMap2(inner)
        self._index = index
        self.nprobe = DEFAULT_NPROBE
        self.ef_search = DEFAULT_EF_SEARCH
        self.refine_k_factor = DEFAULT_REFINE_K_FACTOR
        self._search_index: faiss.Index | None = None  # a GPU copy answering search(), see to_gpu
        self._among: AllowedSearch | None = None  # filtered search, made on the first one
        self._half: HalfCopy | None = None  # float16 copy for large filtered scans (make_half_copy)
        self._delta = delta if delta is not None and delta.ntotal else None
        self._dead = np.unique(np.asarray(dead if dead is not None else (), dtype=np.int64))
        self._dead_set = frozenset(self._dead.tolist())
        # the selector objects must outlive every search that uses them
        self._not_dead = faiss.IDSelectorNot(faiss.IDSelectorBatch(self._dead)) if len(self._dead) else None

    @property
    def faiss_index(self) -> faiss.Index:
        """The base segment (the whole index unless `segmented`)."""
        return self._index

    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._dead) + self.delta_count

    @property
    def segmented(self) -> bool:
        """True when tombstones or a delta segment sit beside the base index."""
        return self._delta is not None or len(self._dead) > 0

    @property
    def base_count(self) -> int:
        return int(self._index.ntotal)

    @property
    def delta_count(self) -> int:
        return int(self._delta.ntotal) if self._delta is not None else 0

    @property
    def delta_index(self) -> faiss.Index | None:
        return self._delta

    @property
    def dead_ids(self) -> np.ndarray:
        """Sorted ids of the base segment that `search` never returns (removed or replaced)."""
        return self._dead

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def train(self, vectors: np.ndarray) -> None:
        if not self._index.is_trained:
            gpu_kmeans(self._index)  # IVF k-means on the GPU when faiss-gpu is installed
            if len(vectors) > MAX_TRAIN_VECTORS:
                # k-means quality saturates long before millions of points; a seeded sample keeps
                # training time bounded (and builds reproducible).
                pick = np.random.default_rng(0).choice(len(vectors), MAX_TRAIN_VECTORS, replace=False)
                vectors = vectors[np.sort(pick)]
            try:
                self._index.train(np.ascontiguousarray(vectors, dtype=np.float32))
            except RuntimeError as e:  # too few vectors for its clusters or codebooks
                raise ConfigError(f"the {self.index_type} index cannot be trained on {len(vectors)} vectors "
                                  f"({faiss_reason(e)}); use --index flat, or auto, which picks a type "
                                  "for the catalogue's size") from None

    def to_gpu(self, device: int = 0, cloner: Callable[[faiss.Index], faiss.Index] | None = None) -> bool:
        """Answer search() from a GPU copy (faiss-gpu); False when it stays on the CPU.

        The CPU index is kept for reconstruct / ids / remove / save, which GPU types lack
        or answer differently, so "more like this" and rebuilds never depend on the GPU.
        `cloner` replaces faiss.index_cpu_to_gpu (tests pass a CPU copy)."""
        if self.segmented:  # tombstones need search-time selectors, which GPU indexes lack
            return False
        if cloner is None:
            if not gpu_available() or self.index_type == "hnsw":  # no GPU HNSW in FAISS
                return False
            res = faiss.StandardGpuResources()
            opts = faiss.GpuClonerOptions()
            # PQ64 lookup tables only fit in shared memory as fp16; flat stays fp32 (exact)
            opts.useFloat16 = self.index_type == "ivfpq"
            self._gpu_res = res  # the resources must outlive the copy

            def cloner(index: faiss.Index) -> faiss.Index:
                return faiss.index_cpu_to_gpu(res, device, index, opts)
        try:
            self._search_index = cloner(self._index)
        except (RuntimeError, AttributeError) as e:  # a type the GPU module lacks (e.g. Refine(SQ8))
            log.info("FAISS index stays on the CPU: %s", e)
            self._search_index = None
            return False
        log.info("FAISS search on the GPU", extra={"index_type": self.index_type, "vectors": len(self)})
        return True

    @property
    def on_gpu(self) -> bool:
        return self._search_index is not None

    @property
    def half_copy(self) -> HalfCopy | None:
        """The float16 copy large filtered scans read (make_half_copy), None without one."""
        return self._half

    def make_half_copy(self, threads: int = 1) -> int:
        """Keep a float16 copy of the base segment's vectors, from which large filtered sets are
        scored exactly with half the memory traffic, by up to `threads` threads a scan
        (shopsearch/index/half_copy.py); returns its bytes (0: this index type stores no flat
        float vectors, or they do not fit float16). Safe while searches run: they use the copy
        once it is whole."""
        flat = flat_storage(faiss.downcast_index(self._index.index))
        if flat is None or flat.ntotal == 0:
            return 0
        try:
            half = HalfCopy(flat, threads)
        except ValueError as e:  # not representable in float16: scans stay on float32
            log.warning("no float16 copy for filtered scans: %s", e)
            return 0
        self._half = half
        return half.nbytes

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add to the base index (a fresh index: builds add no segments here)."""
        if self.segmented:
            raise ValueError("a segmented index takes its changes as a new delta segment (IndexStore.publish_delta)")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of dim {self.dim}, got shape {vectors.shape}")
        if len(ids) != len(vectors):
            raise ValueError("ids and vectors differ in length")
        if len(ids) == 0:
            return
        if not self._index.is_trained:
            self.train(vectors)
        self._index.add_with_ids(vectors, ids)
        self._among = None
        self._half = None
        self._search_index = None  # a GPU copy would now miss these; to_gpu() again

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; returns how many were present. Only for types where supports_remove()."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        if not self.supports_remove() or self.segmented:
            raise NotImplementedError(f"{self.index_type} indexes cannot remove vectors; rebuild without them")
        self._search_index = None  # the GPU copy would still return them
        self._among = None
        self._half = None
        return int(self._index.remove_ids(ids))

    def supports_remove(self) -> bool:
        """Only exact (flat) indexes delete correctly in place. FAISS HNSW cannot delete, IVF
        with a refine stage cannot either, and IVF inside IndexIDMap2 *can* but then maps
        the remaining vectors to the wrong ids (IDMap compacts its id table, IVF keeps its
        internal labels), so those are rebuilt from cached vectors instead."""
        return self.index_type == "flat"

    def ids(self) -> np.ndarray:
        """Every id the index serves (base in insertion order, then the delta)."""
        base = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        if len(self._dead):
            base = base[~np.isin(base, self._dead)]
        if self._delta is None:
            return base
        return np.concatenate([base, faiss.vector_to_array(self._delta.id_map).astype(np.int64)])

    def reconstruct(self, image_id: int) -> np.ndarray:
        """The stored vector of `image_id` (RuntimeError when absent); "more like this" uses it."""
        if self._delta is not None:
            try:
                return self._delta.reconstruct(int(image_id))
            except RuntimeError:
                pass
        if int(image_id) in self._dead_set:
            raise RuntimeError(f"id {image_id} was removed from the index")
        try:
            return self._index.reconstruct(int(image_id))
        except RuntimeError as e:
            # IVF lists find a vector by id only through a direct map, built on first use
            # (8 bytes per vector) rather than at load time for indexes never asked.
            if "direct map" not in str(e) or not self._make_direct_map():
                raise
            return self._index.reconstruct(int(image_id))

    def _make_direct_map(self) -> bool:
        inner = faiss.downcast_index(self._index.index)
        if hasattr(inner, "base_index"):  # IndexRefine reconstructs from its refine codes already
            inner = faiss.downcast_index(inner.base_index)
        try:
            faiss.extract_index_ivf(inner).make_direct_map()
        except RuntimeError:
            return False
        return True

    def _tune(self, index: faiss.Index) -> None:
        inner = faiss.downcast_index(index.index)
        if hasattr(inner, "k_factor") and hasattr(inner, "base_index"):  # IndexRefine: re-rank k * k_factor
            inner.k_factor = float(self.refine_k_factor)
            inner = faiss.downcast_index(inner.base_index)
        if hasattr(inner, "nprobe"):
            inner.nprobe = self.nprobe
        if hasattr(inner, "hnsw"):
            # the default grows with the index; an explicitly set ef_search is used as given
            ef = ef_for_size(len(self)) if self.ef_search == DEFAULT_EF_SEARCH else self.ef_search
            inner.hnsw.efSearch = ef

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               selector: faiss.IDSelector | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), both (nq, k); missing slots have id -1. `allowed`: only these ids may
        be returned, and the best of them are (shopsearch/index/filtered.py); an empty set
        answers at once without searching. `selector` (image ids) limits the candidates
        through FAISS. Tombstoned ids are excluded and the delta segment merged in here."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ModelMismatchError(f"query vectors have dim {q.shape[1]}, the index has dim {self.dim}")
        if len(q) == 1:
            # one query on this thread alone: FAISS splits even one query's scan over its OpenMP
            # threads, which then wait for each other (3x the CPU of one thread, and longer, on
            # a busy machine: benchmarks/RESULTS.md, filtered_search_ab_*_omp1_*)
            with one_faiss_thread():
                return self._search(q, k, allowed, selector)
        return self._search(q, k, allowed, selector)

    def _search(self, q: np.ndarray, k: int, allowed: np.ndarray | None,
                selector: faiss.IDSelector | None) -> tuple[np.ndarray, np.ndarray]:
        if allowed is not None:
            return self._search_among(q, max(1, int(k)), allowed)
        k = max(1, min(int(k), max(len(self), 1)))
        if not self.segmented and selector is None:
            index = self._search_index if self._search_index is not None else self._index
            self._tune(index)
            return index.search(q, k)
        scores, ids = self._search_base(q, k, selector)
        return self._with_delta(q, k, scores, ids, selector)

    def _with_delta(self, q: np.ndarray, k: int, scores: np.ndarray, ids: np.ndarray,
                    selector: faiss.IDSelector | None) -> tuple[np.ndarray, np.ndarray]:
        """The base's best k merged with the delta segment's (itself limited by `selector`)."""
        if self._delta is None:
            return scores, ids
        params = faiss.SearchParameters(sel=selector) if selector is not None else None
        ds, di = self._delta.search(q, min(k, self.delta_count), params=params)
        return merge_best(scores, ids, ds, di, k)

    def _search_base(self, q: np.ndarray, k: int,
                     selector: faiss.IDSelector | None) -> tuple[np.ndarray, np.ndarray]:
        """The base segment's best k, tombstones and ids outside `selector` excluded."""
        sel = self._not_dead
        if selector is not None:
            sel = selector if sel is None else faiss.IDSelectorAnd(sel, selector)
        self._tune(self._index)
        if sel is None:  # a delta and no tombstones: nothing to exclude
            return self._index.search(q, k)
        params, _alive = self._params(sel)  # _alive: the objects params point into, kept until the search ends
        return self._index.search(q, k, params=params)

    def _params(self, sel: faiss.IDSelector) -> tuple[faiss.SearchParameters, list]:
        """Search parameters carrying `sel` (image ids) and this index's tuning: parameters
        replace the index's own efSearch / nprobe / k_factor, so they are copied in."""
        inner = faiss.downcast_index(self._index.index)
        if hasattr(inner, "base_index"):
            # IndexRefine hands the base index its own parameters, which IndexIDMap2 does not
            # translate: the selector sees the base's sequential numbers, mapped here to ids
            translated = faiss.IDSelectorTranslated(self._index.id_map, sel)
            base, _ = self._params_for(faiss.downcast_index(inner.base_index), translated)
            return faiss.IndexRefineSearchParameters(k_factor=float(inner.k_factor), base_index_params=base), \
                [translated, base, sel]
        return self._params_for(inner, sel)

    @staticmethod
    def _params_for(inner: faiss.Index, sel: faiss.IDSelector) -> tuple[faiss.SearchParameters, list]:
        if hasattr(inner, "hnsw"):
            return faiss.SearchParametersHNSW(sel=sel, efSearch=int(inner.hnsw.efSearch)), [sel]
        if hasattr(inner, "nprobe"):
            return faiss.SearchParametersIVF(sel=sel, nprobe=int(inner.nprobe)), [sel]
        return faiss.SearchParameters(sel=sel), [sel]

    def _search_among(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Always on the CPU index: GPU indexes take no ID selectors.
        allowed = np.asarray(allowed, dtype=np.int64)
        if len(allowed) == 0:
            return empty_result(len(q), k)
        if self._among is None:
            self._among = AllowedSearch(self._index, self._delta, self._dead)
        ef = ef_for_size(len(self)) if self.ef_search == DEFAULT_EF_SEARCH else self.ef_search
        try:
            return self._among.search(q, k, allowed, self.nprobe, ef, self.refine_k_factor, self._half)
        except RuntimeError as e:  # IVF reconstructs by position only through a direct map
            if "direct map" not in str(e) or not self._make_direct_map():
                raise
            return self._among.search(q, k, allowed, self.nprobe, ef, self.refine_k_factor, self._half)

    # -- persistence --------------------------------------------------------
    def save(self, directory: Path, manifest: IndexManifest) -> IndexManifest:
        """Write index + manifest into `directory` (caller makes it atomic by renaming the dir)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / INDEX_FILE
        faiss.write_index(self._index, str(path))
        name = part_name(manifest.build_id)
        part_sha, tomb_sha = write_delta(directory, name, delta_part(self._delta) if self._delta is not None else None,
                                         self._dead)
        manifest = IndexManifest(**{**asdict(manifest), "count": len(self), "dim": self.dim,
                                    "index_type": self.index_type, "index_sha256": sha256_file(path),
                                    "delta_sha256": "", "delta_parts": [[name, part_sha]] if part_sha else [],
                                    "tombstones_sha256": tomb_sha,
                                    "base_count": self.base_count, "delta_count": self.delta_count,
                                    "dead_count": len(self._dead)})
        tmp = directory / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(asdict(manifest), indent=2))
        os.replace(tmp, directory / MANIFEST)
        _fsync_dir(directory)
        return manifest

    @classmethod
    def load(cls, directory: Path, verify: bool = True, mmap: bool = False) -> tuple["VectorIndex", IndexManifest]:
        try:
            manifest = IndexManifest(**json.loads((directory / MANIFEST).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise IndexCorruptError(f"index manifest in {directory} is unreadable: {e}") from None
        path = directory / INDEX_FILE
        if verify and manifest.index_sha256 and sha256_file(path) != manifest.index_sha256:
            raise IndexCorruptError(f"index file {path} does not match its manifest checksum")
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
            delta, dead = read_delta(directory, manifest.dim, manifest.delta_parts, manifest.delta_sha256,
                                     manifest.tombstones_sha256, verify)
        except (OSError, ValueError, RuntimeError) as e:
            raise IndexCorruptError(f"cannot read index {path}: {e}") from None
        vi = cls(manifest.dim, manifest.index_type, index=index, delta=delta, dead=dead)
        if manifest.ef_search > 0:
            vi.ef_search = manifest.ef_search
        if len(vi) != manifest.count:
            raise IndexCorruptError(f"index {path} holds {len(vi)} vectors, its manifest says {manifest.count}")
        return vi, manifest


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
