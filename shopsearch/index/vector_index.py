"""VectorIndex: a FAISS index of L2-normalised vectors keyed by product-image id,
searched by inner product (= cosine), saved with a manifest that names the model."""
from __future__ import annotations

import hashlib
import logging
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from shopsearch.errors import IndexCorruptError, ModelMismatchError
from shopsearch.index.filtered import PositionMap, empty_result, search_positions

log = logging.getLogger("shopsearch.index")

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
FORMAT_VERSION = 1

# Above these sizes exact search gets slow enough that ANN pays off; see
# benchmarks/ann_bench.py for the recall (>= 0.95 of exact at k=10) behind them.
# At 100k vectors exact search is already tens of times slower per query than HNSW32 at
# nearly the same recall (benchmarks/results/ann_100k.json, ann_1m.json; benchmarks/RESULTS.md),
# so HNSW from 100k. HNSW holds the full vectors plus links: past 2M vectors IVF-PQ with
# SQ8 re-ranking, a fraction of the memory at recall@10 near 0.98, takes over.
HNSW_THRESHOLD = 100_000
IVFPQ_THRESHOLD = 2_000_000
#: most vectors an IVF/PQ index is trained on (about 40 per list at 4k lists)
MAX_TRAIN_VECTORS = 160_000
#: search-time defaults of the ANN types (see benchmarks/results/ann_*.json). HNSW32 recall@10
#: at efSearch 64 fell from 0.991 (100k) to 0.941 (1M), at 128 it is 0.998 / 0.975: 128 up to
#: 1M vectors, 256 beyond (ef_for_size). IVF-PQ re-ranks k * 8 candidates (0.990 at 100k).
DEFAULT_NPROBE = 16
DEFAULT_EF_SEARCH = 128
DEFAULT_REFINE_K_FACTOR = 8


def ef_for_size(n: int) -> int:
    """HNSW efSearch that keeps recall@10 >= 0.95 of exact at this size (measured to 1M)."""
    return DEFAULT_EF_SEARCH if n <= 1_000_000 else 2 * DEFAULT_EF_SEARCH


@dataclass(frozen=True)
class IndexManifest:
    build_id: str
    model_name: str
    model_fingerprint: str
    dim: int
    count: int
    index_type: str
    created: str
    index_sha256: str = ""
    format_version: int = FORMAT_VERSION


def choose_index_type(n: int) -> str:
    """Exact search for small catalogues, HNSW then IVF-PQ as they grow."""
    if n < HNSW_THRESHOLD:
        return "flat"
    if n < IVFPQ_THRESHOLD:
        return "hnsw"
    return "ivfpq"


def factory_string(index_type: str, dim: int, n: int) -> str:
    """Our short names -> a FAISS factory string (anything else is passed through)."""
    if index_type == "flat":
        return "Flat"
    if index_type == "hnsw":
        return "HNSW32,Flat"
    if index_type == "ivfpq":
        # PQ codes alone cap recall@10 near 0.67 (benchmarks/results/ann_100k.json); re-ranking
        # k_factor x k candidates on 8-bit scalar codes lifts it to 0.976 (k_factor 4), 0.990 (8)
        # (benchmarks/results/ivfpq_refine_100k.json) for ~600 B/vector instead of 2 KB (512-d).
        nlist = int(max(16, min(65536, 4 * np.sqrt(max(n, 1)))))
        return f"IVF{nlist},PQ{_pq_m(dim)}x8,Refine(SQ8)"
    if index_type == "ivfflat":
        return f"IVF{int(max(16, 4 * np.sqrt(max(n, 1))))},Flat"
    return index_type


def _pq_m(dim: int) -> int:
    """PQ sub-quantizers: as many as possible up to 64 while keeping >= 4 dims each."""
    return next((m for m in (64, 48, 32, 16, 8, 4, 2) if dim % m == 0 and dim // m >= 4), 1)


def estimate_bytes_per_vector(index_type: str, dim: int) -> int:
    """Rough RAM per vector, printed before a build (ids included)."""
    if index_type == "flat":
        return 4 * dim + 16
    if index_type == "hnsw":
        return 4 * dim + 32 * 2 * 4 + 16
    if index_type == "ivfpq":
        return _pq_m(dim) + dim + 8 + 16  # PQ code + SQ8 refine code + id + list overhead
    return 4 * dim + 16


class VectorIndex:
    """int64 ids -> unit vectors; search returns (scores, ids) best first."""

    def __init__(self, dim: int, index_type: str = "flat", expected_size: int = 0,
                 index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.index_type = index_type
        if index is None:
            inner = faiss.index_factory(dim, factory_string(index_type, dim, expected_size), faiss.METRIC_INNER_PRODUCT)
            index = faiss.IndexIDMap2(inner)
        self._index = index
        self.nprobe = DEFAULT_NPROBE
        self.ef_search = DEFAULT_EF_SEARCH
        self.refine_k_factor = DEFAULT_REFINE_K_FACTOR
        self._search_index: faiss.Index | None = None  # a GPU copy answering search(), see to_gpu
        self._positions: PositionMap | None = None  # id -> position, built on the first filtered search

    @property
    def faiss_index(self) -> faiss.Index:
        return self._index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def train(self, vectors: np.ndarray) -> None:
        if not self._index.is_trained:
            _gpu_kmeans(self._index)  # IVF k-means on the GPU when faiss-gpu is installed
            if len(vectors) > MAX_TRAIN_VECTORS:
                # k-means quality saturates long before millions of points; a seeded sample keeps
                # training time bounded (and builds reproducible).
                pick = np.random.default_rng(0).choice(len(vectors), MAX_TRAIN_VECTORS, replace=False)
                vectors = vectors[np.sort(pick)]
            self._index.train(np.ascontiguousarray(vectors, dtype=np.float32))

    def to_gpu(self, device: int = 0, cloner: Callable[[faiss.Index], faiss.Index] | None = None) -> bool:
        """Answer search() from a GPU copy (faiss-gpu); False when it stays on the CPU.

        The CPU index is kept for reconstruct / ids / remove / save, which GPU types lack
        or answer differently, so "more like this" and rebuilds never depend on the GPU.
        `cloner` replaces faiss.index_cpu_to_gpu (tests pass a CPU copy)."""
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

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
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
        self._positions = None
        self._search_index = None  # a GPU copy would now miss these; to_gpu() again

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; returns how many were present. Only for types where supports_remove()."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        if not self.supports_remove():
            raise NotImplementedError(f"{self.index_type} indexes cannot remove vectors; rebuild without them")
        self._search_index = None  # the GPU copy would still return them
        self._positions = None
        return int(self._index.remove_ids(ids))

    def supports_remove(self) -> bool:
        """Only exact (flat) indexes delete correctly in place. FAISS HNSW cannot delete, IVF
        with a refine stage cannot either, and IVF inside IndexIDMap2 *can* but then maps
        the remaining vectors to the wrong ids (IDMap compacts its id table, IVF keeps its
        internal labels), so those are rebuilt from cached vectors instead."""
        return self.index_type == "flat"

    def ids(self) -> np.ndarray:
        """Every id in the index (insertion order)."""
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def reconstruct(self, image_id: int) -> np.ndarray:
        """The stored vector of `image_id` (RuntimeError when absent); "more like this" uses it."""
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

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), both (nq, k); missing slots have id -1. `allowed`: only these ids may
        be returned, and the best of them are (shopsearch/index/filtered.py); an empty set
        answers at once without searching."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ModelMismatchError(f"query vectors have dim {q.shape[1]}, the index has dim {self.dim}")
        if allowed is not None:
            return self._search_among(q, max(1, int(k)), allowed)
        k = max(1, min(int(k), max(len(self), 1)))
        index = self._search_index if self._search_index is not None else self._index
        self._tune(index)
        return index.search(q, k)

    def _search_among(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Always on the CPU index: GPU indexes take no ID selectors.
        if self._positions is None:
            self._positions = PositionMap(self.ids())
        positions = self._positions.positions(allowed)
        if len(positions) == 0:
            return empty_result(len(q), k)
        inner = faiss.downcast_index(self._index.index)
        ef = ef_for_size(len(self)) if self.ef_search == DEFAULT_EF_SEARCH else self.ef_search
        try:
            scores, pos = search_positions(inner, q, k, positions, self.nprobe, ef, self.refine_k_factor)
        except RuntimeError as e:  # IVF reconstructs by position only through a direct map
            if "direct map" not in str(e) or not self._make_direct_map():
                raise
            scores, pos = search_positions(inner, q, k, positions, self.nprobe, ef, self.refine_k_factor)
        ids = np.where(pos >= 0, self._positions.external[np.maximum(pos, 0)], -1)
        return scores, ids

    # -- persistence --------------------------------------------------------
    def save(self, directory: Path, manifest: IndexManifest) -> IndexManifest:
        """Write index + manifest into `directory` (caller makes it atomic by renaming the dir)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / INDEX_FILE
        faiss.write_index(self._index, str(path))
        manifest = IndexManifest(**{**asdict(manifest), "count": len(self), "dim": self.dim,
                                    "index_type": self.index_type, "index_sha256": _sha256(path)})
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
        if verify and manifest.index_sha256 and _sha256(path) != manifest.index_sha256:
            raise IndexCorruptError(f"index file {path} does not match its manifest checksum")
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as e:
            raise IndexCorruptError(f"cannot read index {path}: {e}") from None
        vi = cls(manifest.dim, manifest.index_type, index=index)
        if len(vi) != manifest.count:
            raise IndexCorruptError(f"index {path} holds {len(vi)} vectors, its manifest says {manifest.count}")
        return vi, manifest


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees a GPU (the faiss-gpu packages)."""
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # noqa: BLE001 - a CPU-only build may lack the symbol entirely
        return False


def _gpu_kmeans(index: faiss.Index) -> None:
    """Point an IVF index's coarse k-means at a GPU flat index (training far faster than on the CPU)."""
    if not gpu_available():
        return
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if hasattr(inner, "base_index"):
        inner = faiss.downcast_index(inner.base_index)
    if hasattr(inner, "clustering_index") and hasattr(inner, "nlist"):
        try:
            inner.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(inner.d))
        except (RuntimeError, AttributeError) as e:
            log.info("IVF training stays on the CPU: %s", e)


def check_model(manifest: IndexManifest, fingerprint: str) -> None:
    """Queries must use the model that built the index."""
    if manifest.model_fingerprint != fingerprint:
        raise ModelMismatchError(
            f"index build {manifest.build_id} was made with model {manifest.model_name!r} "
            f"(fingerprint {manifest.model_fingerprint}); the query model has fingerprint {fingerprint}. "
            f"Use --model {manifest.model_name} or rebuild the index."
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
