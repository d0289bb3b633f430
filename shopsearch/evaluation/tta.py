"""Benchmark side of query test-time augmentation: the mirrored query photos' vectors,
embedded once into their own vector cache (fingerprint + "+hflip", keyed by the
original image's content hash) and combined with the plain vectors as the search
service's `tta_vector` combines them for a live query."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import ImageOps
from tqdm import tqdm

from shopsearch.embedders.base import Embedder
from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.preprocess import decode_query
from shopsearch.errors import InvalidImageError

log = logging.getLogger("shopsearch.bench")


def flipped_cache(embedder: Embedder, cache_root: Path, paths_keys: Sequence[tuple[str, str]],
                  batch_size: int = 32, progress: bool = True) -> VectorCache:
    """The mirrored images' vectors, embedding only those not cached yet."""
    cache = VectorCache(cache_root, embedder.fingerprint + "+hflip", embedder.dim)
    todo = [(p, k) for p, k in dict(paths_keys).items() if k not in cache]
    for start in tqdm(range(0, len(todo), batch_size), desc="embedding mirrored queries", unit="batch",
                      disable=not progress):
        imgs, keys = [], []
        for path, key in todo[start:start + batch_size]:
            try:
                imgs.append(ImageOps.mirror(decode_query(path, embedder)))
                keys.append(key)
            except InvalidImageError as e:
                log.warning("mirrored query not embedded", extra={"path": path, "error": str(e)})
        if imgs:
            cache.put(keys, embedder.encode_images(imgs))
    return cache


def combine(plain: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """Unit mean of the two views (rows)."""
    mean = (np.atleast_2d(plain) + np.atleast_2d(mirrored)) / 2
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def time_tta(embedder: Embedder, paths: Sequence[str]) -> list[float]:
    """Milliseconds to decode + embed a query with its mirror image (one query at a time)."""
    from shopsearch.search import tta_vector

    out = []
    for i, p in enumerate(paths):
        try:
            t0 = time.perf_counter()
            tta_vector(embedder, decode_query(p, embedder))
            if i:  # the first call pays one-off costs
                out.append((time.perf_counter() - t0) * 1000)
        except InvalidImageError:
            continue
    return out
