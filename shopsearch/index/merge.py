"""IVF indexes built in shards: the same trained, empty index filled with one shard of
vectors per worker, then the shards merged into it in order.

Adding to an IVF index only assigns each vector to its nearest centroid and encodes it
against the trained codebooks, so shards of consecutive ids merged in order give the
inverted lists, codes and ids that a single add of every vector gives: the same index and
the same search results. FAISS's `merge_from` covers IVF and flat-code indexes; the
IndexIDMap2 and IndexRefine wrappers our types use are merged part by part here."""
from __future__ import annotations

import faiss
import numpy as np

from shopsearch.index.sizing import factory_string
from shopsearch.index.vector_index import VectorIndex


def is_ivf(index_type: str, dim: int, n: int) -> bool:
    """True for the types built from a coarse quantizer (ivfpq, ivfflat, IVF factory strings)."""
    return factory_string(index_type, dim, n).upper().startswith("IVF")


def add_to_copy(index_bytes: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """A copy of the serialised trained index with (ids, vectors) added, serialised."""
    index = faiss.deserialize_index(np.asarray(index_bytes))
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return faiss.serialize_index(index)


def merge_shards(index: VectorIndex, shards: list[np.ndarray]) -> VectorIndex:
    """Merge serialised shards (from `add_to_copy` on `index`'s trained, empty copy) into `index`, in order."""
    for data in shards:
        shard = faiss.deserialize_index(np.asarray(data))  # owns the C++ index: alive until merged
        _merge(index.faiss_index, shard)
    return VectorIndex(index.dim, index.index_type, index=index.faiss_index)


def _merge(target_index: faiss.Index, other_index: faiss.Index) -> None:
    # downcast wrappers do not own their C++ objects: the arguments keep them alive
    target, other = faiss.downcast_index(target_index), faiss.downcast_index(other_index)
    if isinstance(target, faiss.IndexIDMap2):
        # the inner index numbers its vectors 0..n-1; the id table maps them to image ids
        _merge(target.index, other.index)
        ids = np.concatenate([faiss.vector_to_array(target.id_map), faiss.vector_to_array(other.id_map)])
        faiss.copy_array_to_vector(ids.astype(np.int64), target.id_map)
        target.ntotal = len(ids)
        target.construct_rev_map()
    elif isinstance(target, faiss.IndexRefine):
        n = target.ntotal + other.ntotal
        _merge(target.base_index, other.base_index)
        _merge(target.refine_index, other.refine_index)
        target.ntotal = n
    elif isinstance(target, faiss.IndexIVF):
        target.merge_from(other, target.ntotal)  # offset the other shard's sequential numbers
    else:
        target.merge_from(other)
