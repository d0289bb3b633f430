"""Which domain centring (shopsearch.centring) a build gets, and the unlabelled shopper
photos its query mean is estimated from: a folder of photos (embedded into the vector
cache like catalogue images) or the query vectors the feedback log holds for this model."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from shopsearch.centring import ADAPT_ROUNDS, WHITEN_SHRINK, DomainCentring, build_centring, fit_centring
from shopsearch.embedders.base import Embedder
from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.pipeline import WorkItem, embed_items
from shopsearch.errors import ConfigError
from shopsearch.images import sha256_file
from shopsearch.index.store import IndexStore
from shopsearch.index.manifest import IndexManifest

log = logging.getLogger("shopsearch.indexer")

MODES = ("keep", "on", "off")
ADAPT_MODES = ("auto", "on", "off")
#: a catalogue with at most this many indexable images per product on average is iconic-only
#: (one studio photo per product), where adaptation helps (benchmarks/RESULTS.md)
ICONIC_IMAGES_PER_PRODUCT = 1.5
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def folder_sample(embedder: Embedder, cache: VectorCache, folder: str | Path, workers: int | None = None,
                  progress: bool = True) -> tuple[np.ndarray, str]:
    """(vectors, source) of the photos under `folder` (recursively), embedded through the cache."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"--centre-sample {folder}: not a folder of shopper photos")
    paths = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    items = [WorkItem(sha256_file(p), p) for p in paths]
    embed_items(embedder, items, cache, workers=workers, progress=progress)
    keys = [it.key for it in items if it.key in cache]
    vecs = cache.get_many(keys) if keys else np.zeros((0, embedder.dim), np.float32)
    return vecs, f"{len(keys)} photos under {root}"


def choose_centring(mode: str, store: IndexStore, serving: IndexManifest | None, embedder: Embedder,
                    gallery_vectors: np.ndarray, query_sample: tuple[np.ndarray, str] | None) -> DomainCentring | None:
    """The build's centring: the serving build's ("keep", same model only), none ("off"), or
    fitted on these catalogue vectors and the shopper-photo sample ("on")."""
    if mode not in MODES:
        raise ConfigError(f"centre must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return None
    if mode == "keep":
        if serving is None or serving.model_fingerprint != embedder.fingerprint:
            return None
        return build_centring(store.build_dir(serving.build_id))
    if query_sample is None:
        raise ConfigError("centring needs shopper photos to estimate their mean: give --centre-sample DIR "
                          "(unlabelled photos) or --centre-sample feedback (the searches logged so far)")
    vecs, source = query_sample
    centring = fit_centring(gallery_vectors, vecs, embedder.fingerprint, source)
    log.info("domain centring fitted", extra=centring.info)
    return centring


def iconic_only(product_ids: Sequence[int]) -> bool:
    """Whether the indexable images (their product ids) are about one per product."""
    products = len(set(product_ids))
    return products > 0 and len(product_ids) <= ICONIC_IMAGES_PER_PRODUCT * products


def choose_adaptation(mode: str, centring: DomainCentring | None, fresh_sample: np.ndarray | None,
                      iconic: bool) -> DomainCentring | None:
    """The build's centring with or without catalogue adaptation (an adapted one also whitens,
    WHITEN_SHRINK). `fresh_sample`: the shopper photos of a `centre on` build (None: the
    centring was kept from the serving build, with whatever adaptation and sample it stored)."""
    if mode not in ADAPT_MODES:
        raise ConfigError(f"adapt must be one of {', '.join(ADAPT_MODES)}, got {mode!r}")
    if centring is None:
        if mode == "on":
            raise ConfigError("adaptation moves centred catalogue vectors: build with --centre on and "
                              "--centre-sample (or keep a serving build centred that way)")
        return None
    if mode == "off":
        return centring.with_adaptation(None)
    if fresh_sample is None:
        if mode == "on" and not centring.adapts:
            raise ConfigError("--adapt on: the serving build's centring stores no shopper photos to adapt to; "
                              "build with --centre on --centre-sample DIR|feedback")
        return centring
    if mode == "auto" and not iconic:
        log.info("catalogue adaptation off: the catalogue has several images per product")
        return centring.with_adaptation(None)
    return centring.with_adaptation(fresh_sample, ADAPT_ROUNDS, WHITEN_SHRINK)
