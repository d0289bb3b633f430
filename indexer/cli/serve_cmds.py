"""`shopsearch serve`: the web app under gunicorn (or Flask's debug server with --debug)."""
from __future__ import annotations

import ipaddress
import os
import shutil
import sys
import tempfile
from pathlib import Path

import click

from indexer.cli.context import Ctx, pass_ctx
from shopsearch.config import metrics_dir, pin_serving_threads, set_metrics_dir
from shopsearch.errors import ConfigError


#: why gunicorn alone should not face the network (README: slow clients), in each warning about it
ALONE = "gunicorn serves alone: a few slow clients can stall it"


def _split_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {bind!r}", param_hint="--bind")
    return host.strip("[]") or "127.0.0.1", int(port)


def _trusted_proxies(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple:
    """--trusted-proxies: comma-separated addresses or CIDRs (10.0.0.5, 10.0.0.0/8, ::1), blanks ignored.
    Checked here, before anything imports webapp (and prometheus_client with it: see serve_cmd)."""
    networks = []
    for entry in (e.strip() for e in (value or "").split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise click.BadParameter(f"{entry!r} is not an IP address or CIDR network "
                                     "(e.g. 10.0.0.5, 10.0.0.0/8, ::1)", ctx=ctx, param=param) from None
    return tuple(dict.fromkeys(networks))


@click.command("serve")
@click.option("--bind", envvar="SHOPSEARCH_BIND", default="127.0.0.1:8000", show_default=True,
              help="HOST:PORT to listen on (0.0.0.0:8000 for every interface: only with the nginx front).")
@click.option("--workers", envvar="SHOPSEARCH_WORKERS", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Gunicorn worker processes (each holds the model and the index; on 2 cores 2 x 2 threads "
                   "served more searches/s than 1 x 4: benchmarks/RESULTS.md, load_search_ab_epyc_bf16_idle).")
@click.option("--threads", envvar="SHOPSEARCH_THREADS", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Photo searches at once per worker; each worker keeps 8 more threads for health checks, pages "
                   "and images, and a search that finds no free slot within 30 s gets 503 busy.")
@click.option("--preload/--no-preload", envvar="SHOPSEARCH_PRELOAD", default=False, show_default=True,
              help="Load the app once in the master before forking. Only for model-free embedders "
                   "(colorhist): torch's thread pool does not survive fork, so by default each worker "
                   "loads the model and index once after forking.")
@click.option("--timeout", envvar="SHOPSEARCH_TIMEOUT", type=click.IntRange(5, 3600), default=60, show_default=True,
              help="Seconds before a silent worker is restarted.")
@click.option("--max-upload-mb", envvar="SHOPSEARCH_MAX_UPLOAD_MB", type=click.FloatRange(0.1, 200), default=10,
              show_default=True, help="Largest accepted upload (413 beyond).")
@click.option("--retain-uploads", envvar="SHOPSEARCH_RETAIN_UPLOADS", default=None,
              type=click.Path(file_okay=False), help="Keep uploaded photos in this folder (default: keep nothing).")
@click.option("--image-root", "image_roots", envvar="SHOPSEARCH_IMAGE_ROOTS", multiple=True,
              type=click.Path(file_okay=False), help="Only serve catalogue images under this folder (repeatable).")
@click.option("--model", envvar="SHOPSEARCH_MODEL", default=None,
              help="Query model; default (or 'auto'): the model that built the serving index.")
@click.option("--cors-origins", envvar="SHOPSEARCH_CORS_ORIGINS", default="",
              help="Origins whose pages may read the JSON API's answers (a storefront on another origin): "
                   "comma-separated, e.g. https://shop.example, or * for any. Default: none.")
@click.option("--client-max-connections", envvar="SHOPSEARCH_CLIENT_MAX_CONNECTIONS", type=click.IntRange(0, 100000),
              default=32, show_default=True,  # webapp/front.py: CLIENT_CONNECTIONS
              help="nginx front: requests under way at once per client address, each holding up to the upload "
                   "limit in memory (429 beyond; health checks are never limited). 0: no limit.")
@click.option("--client-search-rate", envvar="SHOPSEARCH_CLIENT_SEARCH_RATE", type=click.IntRange(0, 100000),
              default=10, show_default=True,  # webapp/front.py: CLIENT_SEARCH_RATE
              help="nginx front: photo searches (POST /search, /api/v1/search) per second per client address, "
                   "in bursts of up to twice as many (429 beyond). 0: no limit.")
@click.option("--trusted-proxies", envvar="SHOPSEARCH_TRUSTED_PROXIES", default="", callback=_trusted_proxies,
              help="nginx front: addresses or CIDRs (comma-separated) of your own proxies or storefront servers "
                   "whose X-Forwarded-For names the client, so the per-client limits apply per shopper behind "
                   "them. Default: none (X-Forwarded-For is never trusted).")
@click.option("--front", envvar="SHOPSEARCH_FRONT", type=click.Choice(["auto", "nginx", "none"]), default="auto",
              show_default=True,
              help="nginx in front of gunicorn, absorbing slow clients (auto: when nginx is installed; "
                   "without it only a loopback --bind is served). none: gunicorn alone, behind your own proxy.")
@click.option("--print-nginx-config", is_flag=True,
              help="Print the nginx configuration the front would run (for a system nginx) and exit.")
@click.option("--access-log", is_flag=True, help="Log every request to stderr.")
@click.option("--debug", is_flag=True, help="Flask's development server with the debugger (never in production).")
@pass_ctx
def serve_cmd(c: Ctx, bind: str, workers: int, threads: int, preload: bool, timeout: int, max_upload_mb: float,
              retain_uploads: str | None, image_roots: tuple[str, ...], model: str | None, cors_origins: str,
              client_max_connections: int, client_search_rate: int, trusted_proxies: tuple, front: str,
              print_nginx_config: bool, access_log: bool, debug: bool) -> None:
    """Serve the shoppers' web app and the /api/v1 JSON API.

    By default nginx listens on --bind and gunicorn sits behind it on a private socket, so
    slow clients cannot tie up gunicorn's threads (deploy/nginx/nginx.conf.in)."""
    pin_serving_threads()  # before numpy and faiss load here, in the master the workers fork from
    own_metrics_dir = None
    if (not debug and not print_nginx_config and not metrics_dir()
            and "prometheus_client" not in sys.modules):  # it picks its mode once, at import
        # before anything imports prometheus_client: every gunicorn worker then writes its
        # samples here and /metrics sums them, whichever worker answers (webapp/metrics.py)
        own_metrics_dir = tempfile.mkdtemp(prefix="shopsearch-metrics-")
        set_metrics_dir(own_metrics_dir)
    owner = os.getpid()
    try:
        _serve(c, bind, workers, threads, preload, timeout, max_upload_mb, retain_uploads, image_roots, model,
               cors_origins, (client_max_connections, client_search_rate, trusted_proxies), front, print_nginx_config,
               access_log, debug)
    finally:
        if own_metrics_dir is not None and os.getpid() == owner:  # not in a gunicorn worker unwinding
            set_metrics_dir(None)
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


def _serve(c: Ctx, bind: str, workers: int, threads: int, preload: bool, timeout: int, max_upload_mb: float,
           retain_uploads: str | None, image_roots: tuple[str, ...], model: str | None, cors_origins: str,
           client_limits: tuple[int, int, tuple], front: str, print_nginx_config: bool, access_log: bool,
           debug: bool) -> None:
    from webapp.cors import parse_origins
    from webapp.front import NginxConfig, NginxFront, nginx_binary
    from webapp.server import bind_address, run_dev_server, serve_gunicorn

    host, port = _split_bind(bind)
    origins = parse_origins(cors_origins)  # a malformed origin stops here, in one line, not in every worker's start
    max_body = int(max_upload_mb * 1024 * 1024)
    if print_nginx_config:
        click.echo(NginxConfig(bind_address(host, port), "127.0.0.1:8001", Path("/var/lib/shopsearch-nginx"),
                               max_body, cors_origins=origins, client_connections=client_limits[0],
                               client_search_rate=client_limits[1], trusted_proxies=client_limits[2]).render(),
                   nl=False)
        return
    use_front = not debug and (front == "nginx" or (front == "auto" and nginx_binary() is not None))
    if front == "auto" and not use_front and not debug and not _loopback(host):
        raise ConfigError(
            f"refusing to serve {host} with gunicorn alone: a few slow clients would take it offline. "
            "Install nginx (Debian: apt-get install nginx), or put your own proxy in front and pass --front none")
    if front == "auto" and not use_front and not debug:
        click.echo(f"warning: nginx is not installed, so {ALONE}. Fine on this machine's loopback; for anything "
                   "else install nginx", err=True)
    if front == "none" and not debug and not _loopback(host):
        click.echo(f"warning: --front none on {host}, so {ALONE}. Fine behind your own proxy that buffers "
                   "requests; else use the nginx front (--front auto or nginx)", err=True)
    c.catalogue()  # migrate once here, not racing in every worker
    config = {"MAX_UPLOAD_MB": max_upload_mb, "MODEL": model, "CORS_ORIGINS": cors_origins,
              "RETAIN_UPLOADS": str(Path(retain_uploads).resolve()) if retain_uploads else None,
              "IMAGE_ROOTS": [str(Path(r).resolve()) for r in image_roots] or None}
    how = "debug server" if debug else f"gunicorn, {workers} worker(s) x {threads} thread(s)"
    if debug:
        click.echo(f"serving http://{bind_address(host, port)}/ ({how})", err=True)
        run_dev_server(c.settings, host, port, config)
        return
    nginx = NginxFront(bind_address(host, port), max_body, workers=min(workers, 4), cors_origins=origins,
                       client_connections=client_limits[0], client_search_rate=client_limits[1],
                       trusted_proxies=client_limits[2]) if use_front else None
    try:
        if nginx is not None:
            nginx.check()  # its config, and its port free: in one line before gunicorn loads anything
        click.echo(f"serving http://{bind_address(host, port)}/ ({how}{', behind nginx' if use_front else ''})",
                   err=True)
        serve_gunicorn(c.settings, bind_address(host, port), workers=workers, threads=threads, preload=preload,
                       timeout=timeout, access_log=access_log, config=config, front=nginx)
    finally:
        if nginx is not None:
            nginx.stop()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def register(cli: click.Group) -> None:
    cli.add_command(serve_cmd)
