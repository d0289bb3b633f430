"""One SearchService per process, swapped for a new one when a new index build is published.

Loading a model and an index is expensive, so it happens once per process (at app
creation, before gunicorn forks when preloading). Each request costs at most one stat()
of index/CURRENT (throttled) to notice `shopsearch index build`/`rollback` without a restart."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from flask import current_app

from shopsearch.app import open_catalogue, open_index_store, open_search_service
from shopsearch.catalogue.records import ImageInfo
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.config import Settings
from shopsearch.embedders.base import Embedder
from shopsearch.errors import IndexNotFoundError, ProductNotFoundError, ShopSearchError
from shopsearch.feedback import FeedbackStore
from shopsearch.feedback.writer import LogWriter
from shopsearch.query_threads import QueryThreads
from shopsearch.search import CategoryRouter, SearchService
from webapp.metrics import observe_model_threads

log = logging.getLogger("shopsearch.web")

View = TypeVar("View", bound=Callable[..., Any])

_Signature = tuple[int, int, int] | None


@dataclass(frozen=True)
class ServiceOverrides:
    """What a caller (tests) supplies instead of what the settings name: a prebuilt
    SearchService (served as is, never reloaded), or an embedder and router to pair with
    whichever index build is serving."""

    search_service: SearchService | None = None
    embedder: Embedder | None = None
    router: CategoryRouter | None = None


class ServiceHolder:
    """Owns the process's catalogue connection pool and its current SearchService."""

    def __init__(self, settings: Settings, model: str | None = None, reload_check_s: float = 0.0,
                 overrides: ServiceOverrides | None = None, migrate: bool = False,
                 query_threads: QueryThreads | None = None) -> None:
        overrides = overrides or ServiceOverrides()
        service = overrides.search_service
        self.settings = settings
        self.model = model
        self.reload_check_s = reload_check_s
        self._embedder = overrides.embedder
        self._router = overrides.router
        self._migrate = migrate
        self._fixed = service is not None  # an injected service is served as is
        self._service = service
        self._catalogue: CatalogueStore | None = service.catalogue if service else None
        self._feedback: FeedbackStore | None = None
        self._feedback_writer: LogWriter | None = None
        self._lock = threading.Lock()  # guards reloads
        self._db_lock = threading.Lock()  # guards opening the catalogue (taken inside reloads)
        self._sig: _Signature = None
        self._checked = False
        self._next_check = 0.0
        self._load_error: ShopSearchError | None = None
        self._primary: dict[str, int | None] = {}
        self._fallback: str | None = None  # why the build served is not CURRENT's
        self.loads = 0  # how many times an index was (re)loaded: tests and /healthz
        self.query_threads = query_threads

    # -- collaborators ------------------------------------------------------
    @property
    def catalogue(self) -> CatalogueStore:
        if self._catalogue is None:
            with self._db_lock:
                if self._catalogue is None:
                    self._catalogue = open_catalogue(self.settings, migrate=self._migrate)
        return self._catalogue

    @property
    def feedback(self) -> FeedbackStore:
        """The feedback log, in the catalogue's database (its engine and connection pool)."""
        if self._feedback is None:
            self._feedback = FeedbackStore(self.catalogue.engine)
        return self._feedback

    @property
    def feedback_writer(self) -> LogWriter:
        """Writes logged searches off the request path (a thread of this process)."""
        if self._feedback_writer is None:
            self._feedback_writer = LogWriter(self.feedback)
        return self._feedback_writer

    def flush_feedback(self, timeout: float = 5.0) -> bool:
        """Searches logged by this process so far are in the database (tests; before feedback on them)."""
        return self._feedback_writer is None or self._feedback_writer.flush(timeout)

    @contextlib.contextmanager
    def photo_search(self) -> Iterator[int]:
        """Around a photo search: counted in flight, this thread's torch threads set from the
        server's count (shopsearch/query_threads.py); yields the count set (0: fixed)."""
        if self.query_threads is None:
            yield 0
            return
        with self.query_threads.search() as n:
            observe_model_threads(n)
            yield n

    def get(self) -> SearchService:
        """The serving SearchService; raises IndexNotFoundError (503) while there is none."""
        if not self._fixed:
            self._maybe_reload()
        svc = self._service
        if svc is None:
            raise self._load_error or IndexNotFoundError("no index has been built yet; run `shopsearch index build`")
        return svc

    @property
    def degraded(self) -> str | None:
        """Why the build served is not the one CURRENT names (None when it is)."""
        if self._service is not None and self._load_error is not None:
            return (f"the new index build failed to load ({self._load_error.code}); "
                    f"serving the previous build {self._service.manifest.build_id}")
        return self._fallback

    @property
    def load_error(self) -> ShopSearchError | None:
        return self._load_error

    def current(self) -> SearchService | None:
        """The service loaded now: no reload check, no database, never raises (liveness)."""
        return self._service

    def index_files_present(self) -> bool:
        """The serving build's folder is still on disk (an injected service has none to check)."""
        svc = self._service
        return self._fixed or svc is None or open_index_store(self.settings).build_dir(svc.manifest.build_id).is_dir()

    def peek(self) -> SearchService | None:
        """The current service without raising (pages that work without an index)."""
        try:
            return self.get()
        except ShopSearchError:
            return None

    # -- reloading --------------------------------------------------------------
    def _pointer_signature(self) -> _Signature:
        try:
            st = os.stat(self.settings.index_dir / "CURRENT")
        except FileNotFoundError:
            return None
        # os.replace gives the pointer a new inode, so this changes even within one mtime tick
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self._service is not None and now < self._next_check:
            return
        self._next_check = now + self.reload_check_s
        sig = self._pointer_signature()
        if sig == self._sig and self._checked:  # unchanged since the last attempt (successful or not)
            return
        with self._lock:
            if sig == self._sig and self._checked:
                return
            # no CURRENT pointer is worth a load too: an intact PREVIOUS build is served (degraded)
            self._load()
            self._sig, self._checked = sig, True

    def _load(self) -> None:
        """Load the build CURRENT names; on failure keep serving the old one."""
        store = open_index_store(self.settings)
        new_id = store.serving_id()
        if new_id is None:  # nothing built yet (or every build gone): keep what is loaded, if anything
            return
        if self._service is not None and self._service.manifest.build_id == new_id:
            return
        t0 = time.perf_counter()
        try:
            # an injected embedder comes with its router or none (it has no trained one)
            svc = open_search_service(self.settings, catalogue=self.catalogue, model=self.model,
                                      router=self._router, with_router=self._embedder is None,
                                      embedder=self._embedder)
            warm_up = getattr(svc.embedder, "warm_up", None)
            if warm_up is not None:  # e.g. compile an int8 model now, not in the first shopper's request
                warm_up()
            prepare = getattr(svc.embedder, "prepare_queries", None)
            if prepare is not None:  # the query model's form, measured here (embedders/query_model.py)
                prepare(self.settings.query_precision)
        except ShopSearchError as e:
            self._load_error = e
            log.error("index load failed; keeping the previous one",
                      extra={"build_id": new_id, "error": str(e), "code": e.code})
            return
        old = self._service.manifest.build_id if self._service else None
        cur = store.current_id()
        self._fallback = None if svc.manifest.build_id == cur else (
            store.degraded or f"build {cur} named by CURRENT is corrupt; serving the previous build "
                              f"{svc.manifest.build_id}")
        self._service, self._load_error = svc, None
        self._primary = {}
        self.loads += 1
        log.info("index loaded", extra={"build_id": svc.manifest.build_id, "previous": old,
                                        "vectors": len(svc.index), "model": svc.manifest.model_name,
                                        "seconds": round(time.perf_counter() - t0, 3)})

    # -- small per-process caches -----------------------------------------------
    def primary_image_id(self, sku: str) -> int | None:
        """The product's first catalogue image (card thumbnail), cached per index build."""
        if sku not in self._primary:
            if len(self._primary) > 20_000:
                self._primary = {}
            try:
                images = [i for i in self.catalogue.get_product(sku).images if i.status == "ok"]
            except ProductNotFoundError:
                images = []
            main = [i for i in images if i.role == "catalogue"] or images
            self._primary[sku] = main[0].id if main else None
        return self._primary[sku]

    def image(self, image_id: int) -> ImageInfo | None:
        return self.catalogue.image(image_id)

    # -- process lifecycle ------------------------------------------------------
    def after_fork(self) -> None:
        """In a gunicorn worker: never share the master's database connections."""
        if self._catalogue is not None:
            self._catalogue.engine.dispose(close=False)

    def close(self) -> None:
        if self._feedback_writer is not None:
            self._feedback_writer.close()
        if self._catalogue is not None and not self._fixed:
            self._catalogue.close()


def photo_search(view: View) -> View:
    """A route that searches with an uploaded photo: the whole request (upload, decode, model,
    search, answer) holds one of the worker's search slots (webapp/search_gate.py) and counts as
    one search in flight (ServiceHolder.photo_search), so that under concurrent load a search
    seldom finds itself alone between two others and takes every core."""

    @functools.wraps(view)
    def counted(*args: Any, **kwargs: Any) -> Any:
        # a slot of the worker's gate first: only searches that compute count as in flight
        with current_app.extensions["shopsearch_gate"].enter(), current_app.extensions["shopsearch"].photo_search():
            return view(*args, **kwargs)

    return counted  # type: ignore[return-value]
