"""Wiring: Settings -> catalogue, embedder, index, search service. The CLI and the web
app both call these; they hold no logic of their own."""
from __future__ import annotations

import logging

from shopsearch.catalogue.store import CatalogueStore
from shopsearch.config import Settings
from shopsearch.embedders import load_embedder
from shopsearch.embedders.base import Embedder
from shopsearch.index.store import IndexStore
from shopsearch.search import CategoryRouter, SearchService

log = logging.getLogger("shopsearch.app")


def open_catalogue(settings: Settings, migrate: bool = True) -> CatalogueStore:
    return CatalogueStore.open(settings.db_url, migrate=migrate)


def open_index_store(settings: Settings) -> IndexStore:
    return IndexStore(settings.index_dir)


def embedder_for_index(settings: Settings, store: IndexStore, model: str | None = None) -> Embedder:
    """The embedder that built the serving index (or `model`, which must then match it)."""
    manifest = store.current_manifest()
    spec = model or (manifest.model_name if manifest else settings.model)
    return load_embedder(spec, settings.device)


def open_search_service(settings: Settings, catalogue: CatalogueStore | None = None, model: str | None = None,
                        router: CategoryRouter | None = None, with_router: bool = True) -> SearchService:
    store = open_index_store(settings)
    index, manifest = store.load_current()
    embedder = embedder_for_index(settings, store, model)
    catalogue = catalogue or open_catalogue(settings)
    if router is None and with_router:
        router = _load_router(settings, embedder)
    return SearchService(embedder, index, catalogue, manifest, router=router)


def _load_router(settings: Settings, embedder: Embedder) -> CategoryRouter | None:
    """The category router trained for this embedder, when one exists (issue: category tagging)."""
    try:
        from shopsearch.classify.router import load_router_for  # noqa: PLC0415 - optional feature
    except ImportError:
        return None
    return load_router_for(settings, embedder)
