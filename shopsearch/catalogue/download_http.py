"""One bounded HTTP(S) GET of a catalogue image URL (downloads.py stages, checks and keeps the file).

Bounds hold against a hostile or broken server: one total deadline per download covers the
name's resolution (in a thread of its own, given up at the deadline: the C resolver cannot be
interrupted), the connection, the headers, every redirect hop and every byte of the body (each
socket read waits at most the time left, and the deadline is checked before each one, so a server
dripping a byte a second is cut off at the deadline); the bytes read off the socket are capped
too (a redirect's body, chunk overhead), and the decoded body at `max_bytes` (a gzip bomb stops
there; a body of several gzip members is decoded to its end, as curl and browsers do); an
ImportBudget caps the bytes all of one import's downloads receive together. Redirects go to
http(s) only. A URL is sent as ASCII (IDNA host, percent-encoded path and query), credentials
in it as a Basic Authorization header that does not follow a redirect, and no message names the
password. urllib still does the rest (redirects, proxies from the environment, TLS)."""
from __future__ import annotations

import base64
import functools
import http.client
import io
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from shopsearch.catalogue.download_decode import decoder
from shopsearch.config import DownloadSettings
from shopsearch.errors import DownloadError

#: the most bytes one socket read (and one body read) asks for
CHUNK = 1 << 16
#: headers and redirect answers on top of the body: past 2 x max_bytes + this, a server is refused
_HEADROOM = 1 << 20
#: what percent-encoding leaves as it is in a path (existing %xx escapes included) and a query
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
#: the password of an http(s) URL in any text: up to the last "@" before the path; "http:/" too,
#: as pathlib leaves a URL it took for a file name (old catalogue rows hold such error texts)
_CREDENTIALS = re.compile(r"(?i)(https?:/{1,2}[^\s/?#:@]*:)[^\s/?#]*@")
#: name resolutions running at once, each in a thread (some left behind by downloads that gave up
#: on a resolver that hangs): past this many, a download waits for one to end, within its deadline
_RESOLVING = threading.BoundedSemaphore(32)


def mask_url(text: str) -> str:
    """`text` with the password of every http(s) URL in it shown as ***."""
    return _CREDENTIALS.sub(r"\1***@", text)


def one_line(text: str, limit: int = 400) -> str:
    """A reason fit for one report line: white space collapsed, passwords masked, capped."""
    flat = mask_url(" ".join(str(text).split()))
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def request_url(url: str) -> tuple[str, str | None]:
    """(the URL as sent: ASCII, IDNA host, path and query percent-encoded where they are not
    already, no credentials nor fragment; the Authorization header its credentials make, or None)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError as e:
        raise DownloadError(f"malformed URL: {e}") from None
    try:
        host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise DownloadError(f"the host name cannot be encoded for DNS (IDNA): {e}") from None
    netloc = (f"[{host}]" if ":" in host else host) + ("" if port is None else f":{port}")
    auth = None
    if parts.username is not None or parts.password is not None:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    path = quote(parts.path or "/", safe=_PATH_SAFE, errors="surrogatepass")
    query = quote(parts.query, safe=_QUERY_SAFE, errors="surrogatepass")
    return urlunsplit((parts.scheme.lower(), netloc, path, query, "")), auth


class ImportBudget:
    """The bytes one import's downloads may receive in all (DownloadSettings.max_total_bytes), shared
    by its download threads: every byte off a socket counts, and once the cap is passed each
    download stops, in the middle of its body or before it starts, with the same reason."""

    def __init__(self, cap: int) -> None:
        self.cap, self.spent = cap, 0
        self._lock = threading.Lock()

    def spend(self, n: int) -> None:
        with self._lock:
            self.spent += n
            over = self.spent > self.cap
        if over:
            raise DownloadError(self.reason())

    def exhausted(self) -> bool:
        return self.spent >= self.cap

    def reason(self) -> str:
        return (f"not downloaded: this import reached its limit of {self.cap:,} bytes downloaded in all "
                "(SHOPSEARCH_DOWNLOAD_MAX_TOTAL_BYTES); import again to fetch the rest")


class _Limits:
    """One download's budget, shared by every connection of its redirect chain."""

    def __init__(self, timeout_s: float, max_raw: int, budget: ImportBudget | None = None) -> None:
        self.timeout_s, self.max_raw, self.budget = timeout_s, max_raw, budget
        self.deadline = time.monotonic() + timeout_s
        self.received = 0

    def left(self) -> float:
        """Seconds left (a socket's timeout); DownloadError once there are none."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DownloadError(self.timed_out())
        return left

    def timed_out(self) -> str:
        if self.received == 0:
            return f"no answer within {self.timeout_s:g} s"
        return f"took over {self.timeout_s:g} s in all (the server sent too slowly)"

    def count(self, n: int) -> None:
        self.received += n
        if self.budget is not None:
            self.budget.spend(n)
        if self.received > self.max_raw:
            raise DownloadError(f"the server sent over {self.max_raw:,} bytes")


class _DeadlineSocket:
    """A connected socket whose every send and receive waits at most the download's time left.
    http.client closes its socket once the headers are read while the response goes on
    reading: the real socket closes when both are done with it (socket.makefile's rule)."""

    def __init__(self, sock: socket.socket, limits: _Limits) -> None:
        self._sock, self._limits = sock, limits
        self._files, self._closed = 0, False

    def sendall(self, data: bytes) -> None:
        try:
            self._sock.settimeout(self._limits.left())
            self._sock.sendall(data)
        except socket.timeout:
            raise DownloadError(self._limits.timed_out()) from None

    def recv_into(self, buf: Any) -> int:
        try:
            self._sock.settimeout(self._limits.left())
            n = self._sock.recv_into(buf)
        except socket.timeout:
            raise DownloadError(self._limits.timed_out()) from None
        self._limits.count(n)
        return n

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        self._files += 1
        return io.BufferedReader(_DeadlineReader(self), CHUNK)

    def release(self) -> None:
        self._files -= 1
        self._close_if_done()

    def close(self) -> None:
        self._closed = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self._closed and self._files <= 0:
            self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _DeadlineReader(io.RawIOBase):
    """The raw stream under http.client's buffered reader: one bounded receive per read."""

    def __init__(self, sock: _DeadlineSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        return self._sock.recv_into(buf)

    def close(self) -> None:
        if not self.closed:
            self._sock.release()
        super().close()


def _resolve(host: str, port: int, limits: _Limits) -> list[tuple[Any, ...]]:
    """socket.getaddrinfo(host, port) within the download's time left: run in a thread of its own,
    which is left to finish alone when the deadline comes first (DownloadError, as any timeout)."""
    if not _RESOLVING.acquire(timeout=limits.left()):
        raise DownloadError(limits.timed_out())
    answer: list[Any] = []
    done = threading.Event()

    def run() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting download
            answer.append(e)
        finally:
            _RESOLVING.release()
            done.set()

    try:
        threading.Thread(target=run, name="shopsearch-resolve", daemon=True).start()
    except BaseException:
        _RESOLVING.release()
        raise
    if not done.wait(limits.left()):
        raise DownloadError(limits.timed_out())
    if isinstance(answer[0], BaseException):
        raise answer[0]
    return answer[0]


def _connect(address: tuple[str, int], timeout: Any = None, source_address: Any = None, *,
             limits: _Limits) -> socket.socket:
    """socket.create_connection (http.client's _create_connection) with the name resolved within
    the deadline, each of its addresses tried with the time left."""
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in _resolve(address[0], address[1], limits):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(limits.left())
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as e:  # this address refused or timed out: the next one
            error = e
            sock.close()
        except BaseException:
            sock.close()
            raise
    raise error if error is not None else OSError(f"no address found for {address[0]}")


class _DeadlineConnect:
    """Mixed into http.client's connections: resolve and connect within the time left, then bound every I/O."""

    def __init__(self, host: str, *, limits: _Limits, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)  # type: ignore[call-arg]
        self._limits = limits
        self._create_connection = functools.partial(_connect, limits=limits)

    def connect(self) -> None:
        self.timeout = self._limits.left()  # the connection (TLS handshake, proxy tunnel) within what is left
        super().connect()  # type: ignore[misc]
        self.sock = _DeadlineSocket(self.sock, self._limits)  # type: ignore[has-type]


class _HTTPConnection(_DeadlineConnect, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineConnect, http.client.HTTPSConnection):
    pass


def _limits_of(req: urllib.request.Request) -> _Limits:
    limits = getattr(req, "shopsearch_limits", None)
    return limits if limits is not None else _Limits(req.timeout or 30.0, 1 << 31)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req, limits=_limits_of(req))


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req, context=self._context, limits=_limits_of(req))


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Redirects followed to http(s) addresses only (urllib also follows ftp), within the same
    deadline; a loop or a long chain is one line of report."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            fp.close()
            raise DownloadError(f"HTTP {code}: redirected to {mask_url(newurl)[:200]}, not an http(s) address")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.shopsearch_limits = _limits_of(req)
        return new

    def http_error_302(self, req, fp, code, msg, headers):  # noqa: ANN001 - urllib's signature
        try:
            return super().http_error_302(req, fp, code, msg, headers)
        except urllib.error.HTTPError as e:
            if str(e.reason).startswith(self.inf_msg):  # urllib's reason spans lines and quotes the server
                e.close()
                raise DownloadError(f"too many redirects (over {self.max_redirections}, or a loop)") from None
            raise

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def build_opener() -> urllib.request.OpenerDirector:
    """urllib's opener (proxies from the environment, TLS) with the bounded connections and redirects."""
    return urllib.request.build_opener(_HTTPHandler(), _HTTPSHandler(), _Redirects())


def fetch(opener: urllib.request.OpenerDirector, url: str, out: BinaryIO, s: DownloadSettings,
          budget: ImportBudget | None = None) -> int:
    """Write `url`'s body (decoded) into `out`; its size. DownloadError with a one-line reason
    when it is given up (an HTTP error, no answer, too slow, too large, an unknown encoding, the
    import's `budget` spent)."""
    limits = _Limits(s.timeout_s, 2 * s.max_bytes + _HEADROOM, budget)
    try:
        target, auth = request_url(url)
        # identity: a body is stored as it is sent; one encoded all the same is decoded below
        req = urllib.request.Request(target, headers={"User-Agent": s.user_agent, "Accept": "image/*",
                                                      "Accept-Encoding": "identity"})
        if auth is not None:
            req.add_unredirected_header("Authorization", auth)  # never sent on to a redirect's host
        req.shopsearch_limits = limits  # type: ignore[attr-defined]
        with opener.open(req, timeout=limits.left()) as resp:
            return _copy_body(resp, out, s, limits)
    except DownloadError as e:
        raise DownloadError(one_line(str(e))) from None
    except Exception as e:  # noqa: BLE001 - every failure of one address becomes its reason
        raise DownloadError(one_line(_reason(e, limits))) from None


def _copy_body(resp: Any, out: BinaryIO, s: DownloadSettings, limits: _Limits) -> int:
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > s.max_bytes and not resp.headers.get("Content-Encoding"):
        raise DownloadError(f"{int(length):,} bytes, over the {s.max_bytes:,}-byte limit")
    inflate = decoder(resp.headers.get("Content-Encoding") or "")
    size = 0
    while True:
        limits.left()  # checked before every read, whatever the socket's timeout let through
        raw = resp.read1(CHUNK)
        if not raw:
            break
        # a decoder stops at the room left (+1 to tell "over"): a gzip bomb never inflates further
        data = raw if inflate is None else inflate.feed(raw, s.max_bytes - size + 1)
        size += len(data)
        if size > s.max_bytes:
            raise DownloadError(f"over the {s.max_bytes:,}-byte limit")
        out.write(data)
    if resp.length:  # the connection closed before the Content-Length announced had come
        raise DownloadError(f"the connection closed {resp.length:,} bytes short of the length announced")
    if inflate is not None:
        if not inflate.eof:
            raise DownloadError("the compressed body is truncated")
    if size == 0:
        raise DownloadError("the server sent an empty body")
    return size


def _reason(e: Exception, limits: _Limits) -> str:
    """Why a download failed, in words, from what urllib or http.client raised."""
    if isinstance(e, urllib.error.HTTPError):
        e.close()
        return f"HTTP {e.code} {e.reason}" if e.code >= 300 else str(e.reason)
    if isinstance(e, urllib.error.URLError):
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            return limits.timed_out()
        return f"cannot connect: {e.reason}"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return limits.timed_out()
    if isinstance(e, http.client.IncompleteRead):
        return "the connection closed before the whole body had come"
    if isinstance(e, http.client.HTTPException):
        return f"not a valid HTTP answer: {type(e).__name__}: {e}"
    return f"{type(e).__name__}: {e}"
