"""Production serving: the app under gunicorn (threads per worker, optional preload)."""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Mapping

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer

from shopsearch.config import Settings, available_cpus, child_environment, metrics_dir, pin_omp_threads, threads_pinned
from shopsearch.errors import FrontError
from shopsearch.query_threads import InFlight, QueryThreads

if TYPE_CHECKING:
    from webapp.front import NginxFront

log = logging.getLogger("shopsearch.web")


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


#: gunicorn threads per worker beyond its search slots (`threads`): health checks, pages, thumbnails
#: and products are answered on them while every slot searches (webapp/search_gate.py)
SPARE_THREADS = 8


#: glibc malloc arenas per worker: glibc gives each thread that allocates its own arena (up to
#: 8 x cores), and an arena keeps the peak of what its thread decoded (a 36-megapixel upload is
#: hundreds of MB); with the spare threads taking turns at the search slots every one of them did,
#: and a worker held ~5 GB after a burst of large uploads. Two arenas serve the two search slots.
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap this process's glibc malloc arenas (mallopt M_ARENA_MAX) for the threads it starts from
    now on; False where the C library is not glibc."""
    import ctypes  # noqa: PLC0415

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, arenas))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def gunicorn_options(bind: str, workers: int = 2, threads: int = 2, preload: bool = False, timeout: int = 60,
                     access_log: bool = False, max_requests: int = 0) -> dict[str, Any]:
    """Gunicorn settings: gthread workers (the model call releases the GIL, threads overlap I/O),
    `threads` photo searches at a time per worker plus SPARE_THREADS for everything else."""
    if workers < 1 or threads < 1:
        raise ValueError("workers and threads must be at least 1")
    opts: dict[str, Any] = {
        "bind": bind, "workers": workers, "threads": threads + SPARE_THREADS, "worker_class": "gthread",
        "preload_app": preload, "timeout": timeout, "graceful_timeout": 20, "keepalive": 5,
        "accesslog": "-" if access_log else None, "errorlog": "-", "loglevel": "info",
        "max_requests": max_requests, "max_requests_jitter": max_requests // 10 if max_requests else 0,
        "proc_name": "shopsearch",
        # gunicorn's longest (its default, 4094, answered a 500-character text query of emoji,
        # 6,000 bytes once URL-encoded, with its own HTML 414); nginx's buffers match it
        "limit_request_line": 8190,
        # nginx's header buffers (4 x 8 KB) bound a request's headers; gunicorn's own limit of 100
        # fields answered a request with more with its HTML 431, also under /api/
        "limit_request_fields": 32768,
        # gunicorn 25+ opens a control socket at one path per user (~/.gunicorn/gunicorn.ctl): every
        # `serve` on the machine took it over from the last, so `gunicornc` drove whichever started last
        "control_socket_disable": True,
    }
    return opts


def _torch_threads(workers: int, configured: int = 0) -> None:
    """Split the cores between workers instead of every worker claiming all of them
    (`configured`: Settings.torch_threads, 0 to split). A worker forked before torch was
    imported (the usual case: the model loads after fork) gets OMP_NUM_THREADS, which torch
    reads when the worker imports it, unless the operator set it."""
    n = configured or max(1, (os.cpu_count() or 1) // workers)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:
        pin_omp_threads(n, override=bool(configured))


def query_threads_for(settings: Settings, workers: int) -> QueryThreads | None:
    """With SHOPSEARCH_QUERY_THREADS=adaptive, each search's torch threads from the searches in
    flight across all `workers` (a lone one runs on every core: shopsearch/query_threads.py); made
    in the master, before it forks. None, fixed threads, by default and where the operator set
    them (SHOPSEARCH_TORCH_THREADS, OMP_NUM_THREADS)."""
    if settings.query_threads != "adaptive" or settings.torch_threads or threads_pinned():
        return None
    # twice the workers: a graceful reload starts the new workers before the old ones leave
    return QueryThreads(available_cpus(), in_flight=InFlight(slots=2 * workers))


class _FrontArbiter(Arbiter):
    """Gunicorn's master, which also stops the server (exit status 1) once the nginx front has
    exited: gunicorn on its private socket alone is a server nobody can reach."""

    def manage_workers(self) -> None:
        # called on every turn of the master's loop (at least once a second, and at once after a
        # child's SIGCHLD, nginx's included: it is the master's child)
        front = self.app.front
        if front is not None and front.gone() is not None:
            raise HaltServer("the nginx front exited", 1)
        super().manage_workers()


class ShopSearchGunicorn(BaseApplication):
    """Gunicorn application that builds the Flask app with `factory`: in each worker after
    fork (the default; torch models must be loaded after fork), or once in the master with
    preload (model-free embedders only, e.g. colorhist: pages are shared copy-on-write).
    With `front`, the master watches nginx and stops when it exits."""

    def __init__(self, factory: Callable[[], Flask], options: Mapping[str, Any], torch_threads: int = 0,
                 front: "NginxFront | None" = None) -> None:
        self.factory = factory
        self.options = dict(options)
        self.torch_threads = torch_threads
        self.front = front
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if value is not None and key in self.cfg.settings:
                self.cfg.set(key, value)
        workers = int(self.options.get("workers", 1))

        def post_fork(server: Any, worker: Any) -> None:
            limit_malloc_arenas()
            app = self.callable  # set in the master when preloading, else None until the worker loads it
            if app is not None:
                app.extensions["shopsearch"].after_fork()
            else:
                _torch_threads(workers, self.torch_threads)  # safe: torch has not run in this process yet

        self.cfg.set("post_fork", post_fork)

    def load(self) -> Flask:
        return self.factory()

    def run(self) -> None:
        """BaseApplication.run with the arbiter that watches the front."""
        try:
            _FrontArbiter(self).run()
        except RuntimeError as e:
            print(f"\nError: {e}\n", file=sys.stderr)
            sys.stderr.flush()
            sys.exit(1)


def serve_gunicorn(settings: Settings, bind: str, workers: int = 1, threads: int = 4, preload: bool = False,
                   timeout: int = 60, access_log: bool = False, config: Mapping[str, Any] | None = None,
                   front: "NginxFront | None" = None) -> None:
    """Run gunicorn in this process (the caller must not have run torch: see run_server).

    With `front` (checked by the caller: NginxFront.check), nginx listens on `bind` and gunicorn on
    a private unix socket behind it: nginx starts once gunicorn's socket is up (FrontError when it
    cannot listen) and stops when gunicorn's master exits; FrontError when nginx exits first."""
    from webapp import create_app  # noqa: PLC0415

    query_threads = query_threads_for(settings, workers)
    overrides = {"SETTINGS": settings, "QUERY_THREADS": query_threads or "off", "SEARCH_SLOTS": threads,
                 "SEARCH_MAX_WAITING": SPARE_THREADS - 1,
                 **(config or {})}
    opts = gunicorn_options(front.upstream_bind if front else bind, workers, threads, preload, timeout, access_log)
    exited: list[Callable[[int], None]] = [query_threads.in_flight.release] if query_threads is not None else []
    if metrics_dir():
        from webapp.metrics import worker_exited  # noqa: PLC0415

        exited.append(worker_exited)
    if exited:
        opts["child_exit"] = lambda server, worker: [f(worker.pid) for f in exited]
    if front is not None:
        opts["when_ready"] = lambda server: front.start()  # an error here leaves gunicorn before any fork
        opts["on_exit"] = lambda server: front.stop()
    log.info("starting gunicorn", extra={k: v for k, v in opts.items() if k in ("bind", "workers", "threads", "preload_app")})
    try:
        ShopSearchGunicorn(lambda: create_app(overrides), opts, settings.torch_threads, front).run()
    except SystemExit:
        if front is not None and front.failure is not None:  # set in the master only, when nginx exited
            raise FrontError(front.failure) from None
        raise


def run_server(settings: Settings, host: str = "127.0.0.1", port: int = 8000, workers: int = 2, threads: int = 2,
               preload: bool = False, timeout: int = 60, access_log: bool = False,
               config: Mapping[str, Any] | None = None) -> None:
    """Serve the web app under gunicorn until interrupted; never returns (used by `shopsearch demo`).

    The process is replaced by a fresh `shopsearch serve`: a caller that has already run a
    torch model (the demo's sample search) has an OpenMP thread pool that does not survive
    fork(), so forked gunicorn workers would hang on their first inference."""
    args = [sys.executable, "-c", "from indexer.cli import main; main()", "--data-dir", str(settings.data_dir),
            "--device", settings.device]
    if settings.database_url:
        args += ["--database-url", settings.database_url]
    args += ["serve", "--bind", bind_address(host, port), "--workers", str(workers), "--threads", str(threads),
             "--timeout", str(timeout), "--preload" if preload else "--no-preload"]
    if access_log:
        args.append("--access-log")
    # read back by create_app's SHOPSEARCH_* loading
    env = child_environment({f"SHOPSEARCH_{key}": value if isinstance(value, str) else json.dumps(value)
                             for key, value in (config or {}).items()})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, env)


def run_dev_server(settings: Settings, host: str = "127.0.0.1", port: int = 8000,
                   config: Mapping[str, Any] | None = None) -> None:
    """Flask's debug server: auto-reload and the interactive debugger. Never in production."""
    from webapp import create_app  # noqa: PLC0415

    app = create_app({"SETTINGS": settings, **(config or {})})
    app.run(host=host, port=port, debug=True, use_reloader=False, threaded=True)
