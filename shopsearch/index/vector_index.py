"""VectorIndex: a FAISS index of L2-normalised vectors keyed by product-image id,
searched by inner product (= cosine), saved with a manifest that names the model."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from shopsearch.errors import IndexCorruptError, ModelMismatchError

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
FORMAT_VERSION = 1

# Above these sizes exact search gets slow enough that ANN pays off; see
# benchmarks/ann_bench.py for the recall (>= 0.95 of exact at k=10) behind them.
HNSW_THRESHOLD = 200_000
IVFPQ_THRESHOLD = 2_000_000


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
        nlist = int(max(16, min(65536, 4 * np.sqrt(max(n, 1)))))
        return f"IVF{nlist},PQ{_pq_m(dim)}x8"
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
        return _pq_m(dim) + 8 + 16
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
        self.nprobe = 16
        self.ef_search = 64

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
            self._index.train(np.ascontiguousarray(vectors, dtype=np.float32))

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

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; returns how many were present."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        return int(self._index.remove_ids(ids))

    def supports_remove(self) -> bool:
        return self.index_type != "hnsw"  # FAISS HNSW cannot delete in place

    def ids(self) -> np.ndarray:
        """Every id in the index (insertion order)."""
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def reconstruct(self, image_id: int) -> np.ndarray:
        return self._index.reconstruct(int(image_id))

    def _tune(self) -> None:
        inner = faiss.downcast_index(self._index.index)
        if hasattr(inner, "nprobe"):
            inner.nprobe = self.nprobe
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = self.ef_search

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), both (nq, k); missing slots have id -1."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ModelMismatchError(f"query vectors have dim {q.shape[1]}, the index has dim {self.dim}")
        k = max(1, min(int(k), max(len(self), 1)))
        self._tune()
        return self._index.search(q, k)

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
