"""Cross-origin access to the JSON API, for a storefront on another origin than the search server
(`https://shop.example` calling `https://search.example/api/v1/...` from the shopper's browser).

Off by default: a browser lets a page of another site send the API a photo, but not read the
answer. `CORS_ORIGINS` (SHOPSEARCH_CORS_ORIGINS) names the origins whose pages may read it,
comma-separated (`https://shop.example,https://www.shop.example`), or `*` for any; each is
normalised as browsers write `Origin` (no default port, lowercase, IDNA host). Only /api/
answers carry the headers (under `serve`, nginx adds them to the errors it answers itself:
deploy/nginx/nginx.conf.in); the HTML pages and their forms stay same-origin (webapp/__init__.py
refuses cross-site form posts). No credentials are involved: the API uses no cookies.

Every OPTIONS request under /api/ is answered here with 204 and the route's methods (Flask's own
answer was an empty HTML 200), and a browser's preflight from an allowed origin with the methods
and request headers it may use."""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, request

from shopsearch.errors import ConfigError

#: request headers a page may send (beyond the CORS-safelisted ones, Content-Type: application/json is not)
ALLOWED_HEADERS = ("content-type", "accept", "accept-language", "content-language")
#: response headers a page may read beyond the safelisted ones (a busy server's wait; the app's timing)
EXPOSED_HEADERS = "Retry-After, Server-Timing"
#: how long a browser may reuse a preflight's answer (seconds)
MAX_AGE_S = 600
ANY = "*"


def parse_origins(value: object) -> frozenset[str]:
    """`https://a.example, http://localhost:3000` -> their normalised origins; `*` -> {"*"}; empty: none.
    ConfigError for anything that is not an origin (a path, no scheme, ...), so a typo fails at start."""
    text = ",".join(value) if isinstance(value, (list, tuple)) else str(value or "")
    out = set()
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        if raw == ANY:
            out.add(ANY)
            continue
        try:
            out.add(normalise_origin(raw))
        except ValueError:
            raise ConfigError(f"CORS origin {raw!r} is not an origin: expected scheme://host[:port], e.g. "
                              "https://shop.example, or * for any (SHOPSEARCH_CORS_ORIGINS)") from None
    return frozenset(out)


#: the port a browser leaves out of the Origin it sends
DEFAULT_PORTS = {"http": 80, "https": 443}
#: a host as a browser serialises it: ASCII (IDNA) labels; nothing here needs quoting in nginx's map
_ASCII_HOST = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")


def normalise_origin(raw: str) -> str:
    """An origin as a browser writes it in `Origin`: `HTTPS://Bücher.Example:443` -> `https://xn--bcher-kva.example`
    (lowercase, the host IDNA-encoded, no default port). ValueError for anything that is not an origin."""
    parts = urlsplit(raw)
    port = parts.port  # ValueError for a bad one
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username is not None:
        raise ValueError(raw)
    host = _ascii_host(parts.hostname)
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != DEFAULT_PORTS[parts.scheme] else "")


def _ascii_host(host: str) -> str:
    """`Bücher.example` -> `xn--bcher-kva.example`, `::1` -> `[::1]`; ValueError for characters no host has."""
    if ":" in host:
        if "%" in host:  # a zone (fe80::1%eth0) is local to one machine: no browser sends it
            raise ValueError(host)
        return f"[{ipaddress.IPv6Address(host).compressed}]"
    try:
        ascii_host = (host if host.isascii() else _idna(host)).lower()
    except UnicodeError as e:  # idna's IDNAError too
        raise ValueError(host) from e
    if not _ASCII_HOST.fullmatch(ascii_host):
        raise ValueError(host)
    return ascii_host


def _idna(host: str) -> str:
    try:
        import idna  # noqa: PLC0415 - UTS #46, as browsers map hosts (IDNA 2003 turns ß into ss)
    except ImportError:  # the standard library's IDNA 2003: the same answer for most names
        return host.encode("idna").decode("ascii")
    return idna.encode(host, uts46=True).decode("ascii")


def _allowed(origin: str | None) -> str | None:
    """The Access-Control-Allow-Origin value for this request's Origin, None when not allowed."""
    origins: frozenset[str] = current_app.extensions["shopsearch_cors"]
    if not origin or not origins:
        return None
    if ANY in origins:
        return ANY
    return origin if origin.rstrip("/").lower() in origins else None


def _options() -> Response | None:
    """OPTIONS under /api/: 204 with the route's methods, plus a preflight's answer for allowed origins."""
    if request.method != "OPTIONS" or not request.path.startswith("/api/") or request.url_rule is None:
        return None  # an unknown path or method goes on to its 404/405 in JSON
    methods = sorted(request.url_rule.methods or ())
    resp = Response(status=204)
    resp.headers["Allow"] = ", ".join(methods)
    allow = _allowed(request.headers.get("Origin"))
    if allow is not None and request.headers.get("Access-Control-Request-Method"):
        resp.headers["Access-Control-Allow-Methods"] = ", ".join(m for m in methods if m not in ("HEAD", "OPTIONS"))
        asked = [h.strip().lower() for h in request.headers.get("Access-Control-Request-Headers", "").split(",")]
        granted = [h for h in asked if h in ALLOWED_HEADERS]
        if granted:
            resp.headers["Access-Control-Allow-Headers"] = ", ".join(granted)
        resp.headers["Access-Control-Max-Age"] = str(MAX_AGE_S)
    return resp


def is_api_path(path: str) -> bool:
    """/api/... and /api itself (its JSON 404, webapp/api.py), as nginx's map reads them too."""
    return path == "/api" or path.startswith("/api/")


def _headers(resp: Response) -> Response:
    if not is_api_path(request.path):
        return resp
    if current_app.extensions["shopsearch_cors"] and ANY not in current_app.extensions["shopsearch_cors"]:
        resp.vary.add("Origin")  # the answer differs by origin: shared caches must key on it
    allow = _allowed(request.headers.get("Origin"))
    if allow is not None:
        resp.headers["Access-Control-Allow-Origin"] = allow
        resp.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    return resp


def init_app(app: Flask) -> None:
    """Read CORS_ORIGINS once (ConfigError when malformed) and answer OPTIONS and cross-origin reads."""
    app.extensions["shopsearch_cors"] = parse_origins(app.config.get("CORS_ORIGINS"))
    app.before_request(_options)
    app.after_request(_headers)
