"""Embedding pipeline: decode in worker processes, embed in batches, write chunks to the cache.

Stages are separate functions (read -> decode -> embed -> write) so they can be moved
onto other executors (see docs/scaling.md)."""
from __future__ import annotations

import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from shopsearch.embedders.base import Embedder
from shopsearch.errors import InvalidImageError
from shopsearch.images import load_image
from indexer.vector_cache import VectorCache

log = logging.getLogger("shopsearch.pipeline")

#: decode JPEGs at reduced scale: the models need ~224 px
DRAFT_SIZE = 320


@dataclass(frozen=True)
class WorkItem:
    key: str  # content sha256 (cache key)
    path: str
    image_id: int | None = None


@dataclass
class EmbedReport:
    embedded: int = 0
    skipped: int = 0
    failed: list[tuple[WorkItem, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def decode(item: WorkItem) -> tuple[WorkItem, object]:
    """Worker stage: file -> upright RGB PIL image (reduced), or the failure reason."""
    try:
        img = load_image(item.path, draft_size=DRAFT_SIZE)
        if max(img.size) > 2 * DRAFT_SIZE:
            img.thumbnail((2 * DRAFT_SIZE, 2 * DRAFT_SIZE))
        return item, img
    except InvalidImageError as e:
        return item, str(e)
    except Exception as e:  # noqa: BLE001 - a worker must report, never die, on one bad file
        return item, f"{type(e).__name__}: {e}"


def decoded_stream(items: Sequence[WorkItem], workers: int) -> Iterator[tuple[WorkItem, object]]:
    if workers <= 1 or len(items) < 32:
        yield from map(decode, items)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(decode, items, chunksize=16)


def embed_items(embedder: Embedder, items: Sequence[WorkItem], cache: VectorCache, batch_size: int = 32,
                workers: int = 2, chunk_size: int = 512, progress: bool = True) -> EmbedReport:
    """Embed every item not already in the cache; failures are reported, never raised."""
    report = EmbedReport()
    todo = [it for it in items if it.key not in cache]
    report.skipped = len(items) - len(todo)
    seen: set[str] = set()
    todo = [it for it in todo if not (it.key in seen or seen.add(it.key))]  # type: ignore[func-returns-value]
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc="embedding", unit="img", disable=not progress)
    batch_keys: list[str] = []
    batch: list[np.ndarray] = []
    pend_keys: list[str] = []
    pend_vecs: list[np.ndarray] = []

    def flush_batch() -> None:
        if batch:
            pend_vecs.append(embedder.encode_batch(np.stack(batch)))
            pend_keys.extend(batch_keys)
            report.embedded += len(batch)
            bar.update(len(batch))
            batch.clear()
            batch_keys.clear()

    def flush_chunk() -> None:
        if pend_keys:
            cache.put(list(pend_keys), np.concatenate(pend_vecs))
            pend_keys.clear()
            pend_vecs.clear()

    for item, img in decoded_stream(todo, workers):
        if isinstance(img, str):
            report.failed.append((item, img))
            bar.update(1)
            continue
        batch.append(embedder.preprocess(img))  # type: ignore[arg-type]
        batch_keys.append(item.key)
        if len(batch) >= batch_size:
            flush_batch()
        if len(pend_keys) >= chunk_size:
            flush_chunk()
    flush_batch()
    flush_chunk()
    bar.close()
    report.seconds = time.perf_counter() - t0
    return report
