"""Synthetic shopper views in an index build (shopsearch/gallery_aug.py): for a catalogue of
about one studio photo per product, each image's gallery vector becomes the unit blend of its
own vector and the mean of its synthetic shopper views' vectors, before centring and
adaptation. One vector per image as before, so a product's views are searched, shown and
removed with it, never as results of their own. The views' vectors live in their own vector
cache (model fingerprint + "+shopper{N}", keyed by the image's content hash, deterministic per
image), so compactions, re-adds and rebuilds blend the same vectors without re-embedding; the
build report's `shopper_views` says how many views the published vectors blend (updates
keep the serving build's)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from shopsearch.centring import build_centring
from shopsearch.embedders.base import Embedder
from shopsearch.errors import ConfigError
from shopsearch.gallery_aug import SHOPPER_VIEWS, blend, shopper_view_vectors, views_fingerprint
from shopsearch.index.store import IndexStore

log = logging.getLogger("shopsearch.indexer")

VIEWS_MODES = ("auto", "on", "off")


def choose_views(mode: str, iconic_centred: bool, serving_views: int | None = None) -> int:
    """Views per catalogue image for a build: "on" SHOPPER_VIEWS, "off" 0, "auto" SHOPPER_VIEWS
    for an iconic-only catalogue (about one image per product) whose build is centred (where
    they were measured to help, with adaptation: benchmarks/RESULTS.md), else 0; an "auto"
    build keeping the serving build's centring (`serving_views` given) keeps its views too."""
    if mode not in VIEWS_MODES:
        raise ConfigError(f"views must be one of {', '.join(VIEWS_MODES)}, got {mode!r}")
    if mode == "off":
        return 0
    if mode == "auto" and serving_views is not None:
        return serving_views
    return SHOPPER_VIEWS if mode == "on" or iconic_centred else 0


def served_views(store: IndexStore, build_id: str) -> int:
    """Shopper views per image in a published build (its report; 0 for builds made before)."""
    return int((store.load_report(build_id) or {}).get("shopper_views") or 0)


def transforms_kept(store: IndexStore, centre: str, adapt: str, views: str, build_id: str) -> bool:
    """Whether a build with these --centre, --adapt and --views leaves the serving build's
    centring, adaptation and shopper views as they are."""
    if not (views == "auto" or (views == "on") == (served_views(store, build_id) > 0)):
        return False
    current = build_centring(store.build_dir(build_id))
    if centre == "keep":
        return adapt == "auto" or (adapt == "on") == bool(current is not None and current.adapts)
    return centre == "off" and current is None


class GalleryViews:
    """The shopper views of one build: `n` per image (0: none) and their vector cache."""

    def __init__(self, embedder: Embedder, cache_root: Path, n: int) -> None:
        self.embedder, self.cache_root, self.n = embedder, Path(cache_root), int(n)
        self._cache = None

    def ensure(self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None, progress: bool = True) -> None:
        """Embed the views of the (path, content hash) images not cached yet."""
        if self.n and pairs:
            self._cache = shopper_view_vectors(self.embedder, list(pairs), self.n, self.cache_root,
                                               batch_size or 32, progress)

    def apply(self, keys: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """The images' (content hashes) vectors blended with their views' mean; an image whose
        views are not cached (undecodable for the augmenter) keeps its own vector."""
        if not self.n or not len(keys):
            return vectors
        if self._cache is None:
            from shopsearch.embedding.cache import VectorCache

            self._cache = VectorCache(self.cache_root, views_fingerprint(self.embedder.fingerprint, self.n),
                                      self.embedder.dim)
        have = self._cache.present(list(keys))
        if not have.any():
            return vectors
        views = np.array(vectors, np.float32, copy=True)
        views[have] = self._cache.get_many([k for k, h in zip(keys, have) if h])
        out = blend(vectors, views)
        out[~have] = vectors[~have]
        return out
