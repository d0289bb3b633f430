"""Web app configuration: defaults, then SHOPSEARCH_* environment variables, then the
caller's overrides (tests, `shopsearch serve` options)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from flask import Flask

from shopsearch.config import MAX_K, Settings
from shopsearch.images import DEFAULT_MAX_PIXELS

DEFAULTS: dict[str, Any] = {
    # where the catalogue/index live; None -> Settings.from_env() (SHOPSEARCH_DATA_DIR etc.)
    "SETTINGS": None,
    "DATA_DIR": None,
    "DATABASE_URL": None,
    "DEVICE": None,
    # query model; None/"auto" -> the model that built the serving index
    "MODEL": None,
    # uploads: 10 MB unless MAX_CONTENT_LENGTH is set explicitly
    "MAX_UPLOAD_MB": 10,
    "MAX_CONTENT_LENGTH": None,
    "MAX_IMAGE_PIXELS": DEFAULT_MAX_PIXELS,
    # a folder to keep uploaded photos in; None = nothing uploaded ever touches the disk
    "RETAIN_UPLOADS": None,
    # folders catalogue images must resolve into (os.pathsep-separated string or list); None = any
    "IMAGE_ROOTS": None,
    "THUMB_DIR": None,
    "RESULTS_K": 12,
    "SIMILAR_K": 8,
    "MAX_K": MAX_K,
    "ROUTING": True,
    # how often (seconds) a request may stat index/CURRENT to pick up a new build: 0, one stat per
    # request, so that the first request after a publish, promote or rollback is answered by it
    "RELOAD_CHECK_S": 0.0,
    # load model + index when the app is created (before gunicorn forks with --preload)
    "EAGER_LOAD": True,
    # Prometheus metrics at /metrics
    "METRICS": True,
    # /readyz: how long the catalogue database may take to answer before the app reports unready
    "READY_DB_TIMEOUT_S": 2.0,
    # the CLI migrates before serving; the app itself only checks the schema
    "MIGRATE": False,
    # the shop's currency (ISO code) for products that name none; None shows the bare amount
    "CURRENCY": None,
    # product attributes shown on product pages and in the API's products: comma-separated names, or "*"; none by default
    "VISIBLE_ATTRIBUTES": "",
    # origins whose pages may read the JSON API's answers (webapp/cors.py): comma-separated, or "*"; none by default
    "CORS_ORIGINS": "",
    # at most this many object regions for objects=auto
    "MAX_OBJECTS": 4,
    # the key results pages' posted-back query vectors are signed with (webapp/signing.py); None: a
    # random one kept in <data dir>/page_key, shared by the workers and nodes of that data dir
    "SECRET_KEY": None,
    # how long (seconds) a results page's filters and "Show more" work before asking for the photo again
    "PAGE_QUERY_MAX_AGE_S": 86400,
    # each photo search's torch threads from the searches in flight (shopsearch.query_threads.QueryThreads,
    # shared by all workers: `shopsearch serve` makes it); None: this process's own where the settings
    # ask for adaptive threads (SHOPSEARCH_QUERY_THREADS=adaptive), "off": fixed threads
    "QUERY_THREADS": None,
    # photo searches computing at once in a process (webapp/search_gate.py; `serve` sets its --threads,
    # and gives gunicorn spare threads for light requests); 0: no limit. A search waits for a slot
    # at most SEARCH_WAIT_S seconds, then gets 503 "busy"
    "SEARCH_SLOTS": 0,
    "SEARCH_WAIT_S": 30.0,
    # searches waiting for a slot at once (None: no limit); `serve` keeps one spare thread free of them
    "SEARCH_MAX_WAITING": None,
}


def load_config(app: Flask, overrides: Mapping[str, Any] | None) -> None:
    """Fill app.config in the documented order and derive the computed keys."""
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("SHOPSEARCH")
    if overrides:
        app.config.update(overrides)
    cfg = app.config
    if cfg.get("MAX_CONTENT_LENGTH") is None:
        cfg["MAX_CONTENT_LENGTH"] = int(float(cfg["MAX_UPLOAD_MB"]) * 1024 * 1024)
    if cfg.get("MODEL") in ("", "auto"):
        cfg["MODEL"] = None
    settings = cfg.get("SETTINGS")
    if settings is None:
        settings = Settings.from_env(data_dir=cfg.get("DATA_DIR"), database_url=cfg.get("DATABASE_URL"),
                                     device=cfg.get("DEVICE"))
    cfg["SETTINGS"] = settings
    cfg["THUMB_DIR"] = Path(cfg["THUMB_DIR"]) if cfg.get("THUMB_DIR") else settings.data_dir / "thumbs"
    cfg["IMAGE_ROOTS"] = _roots(cfg.get("IMAGE_ROOTS"), settings)
    if cfg.get("RETAIN_UPLOADS"):
        cfg["RETAIN_UPLOADS"] = Path(cfg["RETAIN_UPLOADS"])
    else:
        cfg["RETAIN_UPLOADS"] = None


def _roots(value: Any, settings: Settings) -> tuple[Path, ...] | None:
    if isinstance(value, (str, os.PathLike)):
        value = [v for v in str(value).split(os.pathsep) if v]
    roots = [Path(v) for v in (value or [])]
    if settings.image_root is not None:
        roots.append(Path(settings.image_root))
    if roots:  # the images a manifest named by URL, downloaded by the import, are catalogue images too
        roots.append(settings.downloads_dir)
    return tuple(r.resolve() for r in roots) or None
