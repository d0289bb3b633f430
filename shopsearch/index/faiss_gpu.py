"""FAISS on a GPU when this build of faiss has one (the faiss-gpu packages); nothing otherwise."""

from __future__ import annotations

import logging

import faiss

log = logging.getLogger("shopsearch.index")


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees a GPU (the faiss-gpu packages)."""
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # noqa: BLE001 - a CPU-only build may lack the symbol entirely
        return False


def gpu_kmeans(index: faiss.Index) -> None:
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
