"""Liveness and readiness for load balancers and orchestrators.

/healthz  the process answers (liveness: restart it when this fails); never touches the
          index or the database, so a database outage does not get healthy workers killed.
/readyz   the index is loaded and its files are still readable and the database answers
          within READY_DB_TIMEOUT_S: 200 "ready", or 200 "degraded" while an older build
          is served, else 503 "unavailable" with the reasons (stop sending traffic)."""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FutureTimeout

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from shopsearch.errors import DatabaseUnavailableError, ShopSearchError
from webapp.service import ServiceHolder

bp = Blueprint("health", __name__)


def holder() -> ServiceHolder:
    return current_app.extensions["shopsearch"]


class DatabaseProbe:
    """Runs one catalogue query at a time on its own thread, so a hung database costs a
    probe its timeout, never a pile of stuck request threads."""

    def __init__(self, holder: ServiceHolder, timeout_s: float) -> None:
        self.holder = holder
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz-db")
        self._pending: Future | None = None
        self._lock = threading.Lock()

    def _query(self) -> None:
        with self.holder.catalogue.engine.connect() as conn:
            conn.execute(text("SELECT 1 FROM products LIMIT 1")).all()

    def problem(self) -> str | None:
        """None when the database answered in time, else why not (no secrets, no paths)."""
        with self._lock:
            if self._pending is not None and not self._pending.done():
                return f"the database has not answered an earlier check (over {self.timeout_s:g} s)"
            self._pending = fut = self._pool.submit(self._query)
        try:
            fut.result(timeout=self.timeout_s)
        except FutureTimeout:
            return f"the database did not answer within {self.timeout_s:g} s"
        except DatabaseUnavailableError as e:  # gone, read-only, its tables dropped
            return f"the catalogue database is unreachable ({e.code})"
        except ShopSearchError as e:
            return f"the catalogue database is unusable ({e.code})"
        except Exception as e:  # noqa: BLE001 - any driver error means "not ready"
            return f"the catalogue database is unreachable ({type(e).__name__})"
        return None


def _probe() -> DatabaseProbe:
    ext = current_app.extensions
    if "shopsearch_db_probe" not in ext:
        ext["shopsearch_db_probe"] = DatabaseProbe(holder(), float(current_app.config["READY_DB_TIMEOUT_S"]))
    return ext["shopsearch_db_probe"]


@bp.get("/healthz")
def healthz():
    """Liveness: the process serves requests. What is loaded is reported, not checked; nothing
    about the process itself (no pid: the body is public, and a process id helps only an attacker)."""
    svc = holder().current()
    body: dict = {"status": "ok", "index_loaded": svc is not None}
    if svc is not None:
        m = svc.manifest
        body.update(model=m.model_name, build_id=m.build_id, vectors=len(svc.index), index_type=m.index_type,
                    dim=m.dim, has_text=bool(svc.embedder.has_text), router=svc.router is not None)
    return jsonify(body)


@bp.get("/readyz")
def readyz():
    h = holder()
    reasons: list[str] = []
    svc = h.peek()  # picks up a new build, like a search would
    if svc is None:
        err = h.load_error
        reasons.append(f"no index is loaded ({err.code if err else 'index_not_found'})")
    elif not h.index_files_present():
        reasons.append("the files of the serving index build are gone (data folder unmounted or deleted?)")
    db = _probe().problem()
    if db:
        reasons.append(db)
    body: dict = {"status": "unavailable" if reasons else ("degraded" if h.degraded else "ready"),
                  "index_loaded": svc is not None, "reasons": reasons}
    if h.degraded:
        body["degraded"] = h.degraded
    if svc is not None:
        body.update(build_id=svc.manifest.build_id, vectors=len(svc.index), model=svc.manifest.model_name)
    return jsonify(body), 503 if reasons else 200
