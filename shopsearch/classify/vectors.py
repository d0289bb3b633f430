"""Embedder vectors for labelled images and catalogue products, through the indexer's
VectorCache (keyed by model fingerprint + image content hash), so training a head,
evaluating it and tagging reuse every vector an index build already computed."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from shopsearch.classify.data import LabelledImage
from shopsearch.embedders.base import Embedder, l2_normalize
from shopsearch.images import sha256_file

log = logging.getLogger("shopsearch.classify")


def embed_paths(embedder: Embedder, paths: Sequence[str], hashes: Sequence[str | None], cache_root: Path,
                progress: bool = True, workers: int | None = None) -> tuple[np.ndarray, list[int]]:
    """(vectors of the images that decoded, their positions in `paths`); failures are logged."""
    from shopsearch.embedding.pipeline import WorkItem, embed_items
    from shopsearch.embedding.cache import VectorCache

    keys = [h or sha256_file(p) for p, h in zip(paths, hashes)]
    cache = VectorCache(cache_root, embedder.fingerprint, embedder.dim)
    report = embed_items(embedder, [WorkItem(k, p) for k, p in zip(keys, paths)], cache,
                         workers=workers, progress=progress)
    for item, reason in report.failed:
        log.warning("image not embedded", extra={"path": item.path, "reason": reason})
    keep = [i for i, k in enumerate(keys) if k in cache]
    return cache.get_many([keys[i] for i in keep]), keep


def embed_labelled(embedder: Embedder, items: Sequence[LabelledImage], cache_root: Path, progress: bool = True,
                   workers: int | None = None) -> tuple[np.ndarray, list[LabelledImage]]:
    """Vectors of labelled images (the undecodable ones dropped, with a warning)."""
    vecs, keep = embed_paths(embedder, [i.path for i in items], [i.sha256 for i in items], cache_root,
                             progress, workers)
    return vecs, [items[i] for i in keep]


def mean_vectors(vectors: np.ndarray, groups: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """One L2-normalised mean vector per distinct group id (in first-seen order)."""
    order: list[int] = []
    sums: dict[int, np.ndarray] = {}
    for v, g in zip(vectors, groups):
        if g not in sums:
            order.append(g)
            sums[g] = np.zeros_like(v)
        sums[g] = sums[g] + v
    if not order:
        return np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), np.float32), []
    return l2_normalize(np.stack([sums[g] for g in order])), order
