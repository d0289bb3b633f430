"""The nginx front `shopsearch serve` starts by default: it absorbs slow clients for gunicorn.

Gunicorn's threads each hold one connection from its first byte to its last, so a few
clients sending at 1 byte/s take a worker offline. nginx reads every request in full and
buffers every response before gunicorn is involved. It runs unprivileged from a private
prefix (config, pid, logs, temp folders) and talks to gunicorn over a unix socket there;
the config is rendered from deploy/nginx/nginx.conf.in. `serve` refuses to start when nginx
cannot listen (its port taken) and stops when nginx dies: gunicorn alone on a private socket
would be a server nobody can reach."""
from __future__ import annotations

import ctypes
import errno
import grp
import ipaddress
import logging
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shopsearch.errors import ConfigError, FrontError, PortInUseError
from webapp.cors import ANY, parse_origins

log = logging.getLogger("shopsearch.web")

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "nginx.conf.in"
#: where Debian's package puts the binary (not on a non-root user's PATH)
_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
#: per-client-address limits by default (`serve --client-max-connections`, `--client-search-rate`)
CLIENT_CONNECTIONS = 32
CLIENT_SEARCH_RATE = 10


def nginx_binary() -> str | None:
    """The nginx executable, or None when it is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((c for c in _CANDIDATES if os.access(c, os.X_OK)), None)


@dataclass(frozen=True)
class NginxConfig:
    listen: str  # "127.0.0.1:8000", "[::]:8000"
    upstream: str  # "unix:/path/app.sock" or "127.0.0.1:9000"
    prefix: Path
    max_body_bytes: int
    workers: int = 1
    #: origins whose browsers may read nginx's own JSON errors too (webapp/cors.py's CORS_ORIGINS)
    cors_origins: frozenset[str] = frozenset()
    #: requests under way at once per client address (429 beyond; 0: no limit)
    client_connections: int = CLIENT_CONNECTIONS
    #: photo searches per second per client address, bursts of twice as many (429 beyond; 0: no limit)
    client_search_rate: int = CLIENT_SEARCH_RATE
    #: proxies whose X-Forwarded-For names the client (`serve --trusted-proxies`, checked there; empty: none)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def render(self, template: Path = TEMPLATE) -> str:
        # nginx drops root to `user` for its workers; without root the directive is ignored
        user = "user nobody nogroup;" if os.geteuid() == 0 and _has_user("nobody") else ""
        nofile = _open_files_limit()
        fields = {"USER": user, "WORKERS": str(self.workers), "NOFILE": str(nofile),
                  "CONNECTIONS": str(max(64, nofile // 2 - 32)), "PREFIX": str(self.prefix), "LISTEN": self.listen,
                  "UPSTREAM": self.upstream, "MAX_BODY": f"{self.max_body_bytes}",
                  "MAX_BODY_TEXT": f"{self.max_body_bytes / (1024 * 1024):g} MB", **_cors_fields(self.cors_origins),
                  **_limit_fields(self.client_connections, self.client_search_rate),
                  **_real_ip_fields(self.trusted_proxies)}
        text = template.read_text()
        for name, value in fields.items():
            text = text.replace(f"@{name}@", value)
        return text


def _cors_fields(configured: frozenset[str]) -> dict[str, str]:
    """The $http_origin map's entries and the Vary value for nginx's own API errors."""
    # normalised again: only origins that passed webapp/cors.py's checks (plain ASCII) reach the config
    origins = parse_origins(sorted(configured))
    if ANY in origins:  # as the app: `*` for a request that names an origin, and no Vary
        return {"CORS_ORIGINS": '        default "*";\n        "" "";', "CORS_VARY": ""}
    entries = ['        default "";', *(f'        "{origin}" $http_origin;' for origin in sorted(origins))]
    return {"CORS_ORIGINS": "\n".join(entries), "CORS_VARY": "Origin" if origins else ""}


def _limit_fields(connections: int, search_rate: int) -> dict[str, str]:
    """The per-client-address limits' zones (http block) and directives (server block); 0 turns one off."""
    if connections < 0 or search_rate < 0:
        raise ValueError("per-client limits must be 0 (off) or more")
    zones, limits = [], []
    if connections:
        zones.append("    limit_conn_zone $shopsearch_conn_key zone=shopsearch_conn:10m;")
        limits.append(f"        limit_conn shopsearch_conn {connections};")
    else:
        limits.append("        # no limit on the requests under way per client address (--client-max-connections 0)")
    if search_rate:
        zones.append(f"    limit_req_zone $shopsearch_search_key zone=shopsearch_search:10m rate={search_rate}r/s;")
        limits.append(f"        limit_req zone=shopsearch_search burst={2 * search_rate} nodelay;")
    else:
        limits.append("        # no limit on photo searches per client address (--client-search-rate 0)")
    return {"LIMIT_ZONES": "\n".join(zones), "LIMITS": "\n".join(limits)}


def _real_ip_fields(trusted: tuple) -> dict[str, str]:
    """The realip directives (http block) and the X-Forwarded-For gunicorn gets; nothing trusted: neither changes."""
    if not trusted:
        return {"REAL_IP": "    # no trusted proxies (--trusted-proxies): X-Forwarded-For never names the client",
                "FORWARDED_FOR": "$proxy_add_x_forwarded_for"}
    # each entry parsed again: only what ipaddress accepts, in its own spelling, reaches the config
    lines = [f"    set_real_ip_from {ipaddress.ip_network(str(net), strict=False)};" for net in trusted]
    lines += ["    real_ip_header X-Forwarded-For;", "    real_ip_recursive on;",
              # $proxy_add_x_forwarded_for would append the chosen client again; append the sender instead
              "    map $http_x_forwarded_for $shopsearch_forwarded_for {",
              '        "" $realip_remote_addr;', '        default "$http_x_forwarded_for, $realip_remote_addr";', "    }"]
    return {"REAL_IP": "\n".join(lines), "FORWARDED_FOR": "$shopsearch_forwarded_for"}


def _open_files_limit(cap: int = 16384) -> int:
    """The most open files nginx may ask for: the hard limit (a non-root process cannot go above)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return cap if hard == resource.RLIM_INFINITY else min(cap, hard)


def _open_to_workers(prefix: Path) -> None:
    """nginx's workers run as nobody:nogroup when started by root, and must reach gunicorn's socket
    in `prefix`: the folder is opened to that group alone (0750), not to every local account (the
    socket is gunicorn's, writable by anyone who can reach it: it would bypass nginx's limits)."""
    if os.geteuid() != 0 or not _has_user("nobody"):
        return  # nginx's workers run as this user
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = pwd.getpwnam("nobody").pw_gid
    os.chown(prefix, 0, gid)
    os.chmod(prefix, 0o750)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _die_with_parent() -> None:
    """In the nginx child: SIGTERM when the process that started it dies (even by kill -9)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _nginx_child() -> None:
    """In the nginx child: its own process group (a terminal's Ctrl-C is for `serve`, which stops
    nginx gracefully; stop() can reach the workers of a killed master), and _die_with_parent."""
    os.setpgid(0, 0)  # Popen's process_group=0, which Python 3.10 lacks
    _die_with_parent()


def _listen_problem(listen: str) -> FrontError | None:
    """Bind nginx's address as nginx will (SO_REUSEADDR, IPv6 only on [::]) and let go: the error
    nginx would meet, None when it is free (or for nginx to name: an unknown host, ...)."""
    host, _, port = listen.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, ValueError):
        return None
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT is no user
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(addr)
            except PermissionError:
                return FrontError(f"no permission to listen on port {port} ({listen}): ports below 1024 need "
                                  "root or CAP_NET_BIND_SERVICE; or serve on another --bind")
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return _in_use(listen)
    return None


def _in_use(listen: str) -> PortInUseError:
    port = listen.rpartition(":")[2]
    return PortInUseError(f"port {port} is in use: another process listens on {listen}; "
                          "stop it or serve on another --bind")


#: what nginx logs when it cannot go on (not [error]: those are one request's, e.g. the app down):
#: `2024/01/02 03:04:05 [emerg] 12#12: bind() to ... failed (98: ...)`, or on stderr `nginx: [emerg] ...`
_FATAL_LINE = re.compile(r"\[(?:emerg|alert|crit)\] (?:\d+#\d+: )?(?:\*\d+ )?(.*)")


def _last_fatal(log_text: str) -> str | None:
    """The last fatal message nginx logged, on one line (without date and pid); None when none."""
    found = [m.group(1) for m in map(_FATAL_LINE.search, log_text.splitlines()) if m]
    return found[-1] if found else None


class NginxFront:
    """One nginx master process in front of a gunicorn socket, for the life of `serve`."""

    #: how long nginx may take to listen (it starts in tens of ms; it retries a taken port for 2.5 s)
    START_TIMEOUT_S = 10.0

    def __init__(self, listen: str, max_body_bytes: int, workers: int = 1, binary: str | None = None,
                 cors_origins: frozenset[str] = frozenset(), client_connections: int = CLIENT_CONNECTIONS,
                 client_search_rate: int = CLIENT_SEARCH_RATE, trusted_proxies: tuple = ()) -> None:
        self.binary = binary or nginx_binary()
        if self.binary is None:
            raise ConfigError("nginx is not installed (Debian: apt-get install nginx); "
                              "or serve without it: --front none, on a loopback address only")
        self.prefix = Path(tempfile.mkdtemp(prefix="shopsearch-nginx-"))  # 0700: this user's alone
        _open_to_workers(self.prefix)
        self.socket = self.prefix / "app.sock"
        self.config = NginxConfig(listen, f"unix:{self.socket}", self.prefix, max_body_bytes, workers,
                                  frozenset(cors_origins), client_connections, client_search_rate,
                                  tuple(trusted_proxies))
        self.conf_path = self.prefix / "nginx.conf"
        self.conf_path.write_text(self.config.render())
        self.proc: subprocess.Popen | None = None
        self._owner = os.getpid()  # gunicorn's forked workers unwind through the caller's finally
        self._stopping = False
        #: why nginx is gone while `serve` was not stopping it (set by gone())
        self.failure: str | None = None

    @property
    def upstream_bind(self) -> str:
        """What gunicorn binds to."""
        return f"unix:{self.socket}"

    def _cmd(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf_path), "-e", str(self.prefix / "error.log"),
                *extra]

    def check(self) -> None:
        """`nginx -t`, then the port: ConfigError with nginx's own words when the config is refused,
        PortInUseError (one line) when another process listens there. `nginx -t` binds nothing."""
        r = subprocess.run(self._cmd("-t", "-q"), capture_output=True, text=True)
        if r.returncode != 0:
            raise ConfigError(f"nginx refused its configuration: {r.stderr.strip()}")
        problem = _listen_problem(self.config.listen)
        if problem is not None:
            raise problem

    def start(self) -> None:
        """Run nginx and return once it listens (it writes its pid file after binding): FrontError
        when it exits first, PortInUseError at once when the port is taken (nginx itself would retry
        for 2.5 s and leave `serve` behind it unreachable)."""
        with open(self.prefix / "stderr.log", "wb") as stderr:  # its start-up errors (also in error.log)
            self.proc = subprocess.Popen(self._cmd("-g", "daemon off;"), preexec_fn=_nginx_child,
                                         stdin=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while not self._listening():
            if self.proc.poll() is not None or "Address already in use" in self.error_log() \
                    or time.monotonic() > deadline:
                log_text = self.error_log()
                if self.proc.poll() is None:  # still retrying the port: before its signal handlers, so no SIGQUIT
                    self.proc.kill()
                    self.proc.wait()
                if "Address already in use" in log_text:
                    raise _in_use(self.config.listen)
                why = _last_fatal(log_text) or (log_text.splitlines() or ["it logged nothing"])[-1]
                raise FrontError(f"nginx did not start on {self.config.listen}: {why}")
            time.sleep(0.02)
        log.info("nginx front started", extra={"listen": self.config.listen, "pid": self.proc.pid})

    def _listening(self) -> bool:
        try:
            return (self.prefix / "nginx.pid").read_text().strip() == str(self.proc.pid)
        except OSError:
            return False

    def gone(self) -> str | None:
        """Why `serve` must stop: nginx has exited though nothing stopped it (None while it runs, in a
        gunicorn worker, or once stop() began). The reason is kept in `failure`."""
        if self.failure is not None or self.proc is None or self._stopping or os.getpid() != self._owner \
                or self.proc.poll() is None:
            return self.failure
        # 0 also when gunicorn's master reaped it first (it waits for any child): no status to tell then
        code = self.proc.returncode
        how = (f" (killed by {signal.Signals(-code).name})" if code < 0 else f" (exit status {code})") if code else ""
        why = _last_fatal(self.error_log())
        self.failure = (f"nginx, the front on {self.config.listen}, exited{how}"
                        f"{': ' + why if why else ' unexpectedly'}; gunicorn stopped too")
        return self.failure

    def error_log(self) -> str:
        """The end of nginx's error log (or of its start-up stderr, when it did not get to open the log)."""
        for name in ("error.log", "stderr.log"):
            try:
                text = (self.prefix / name).read_text(errors="replace")[-2000:].strip()
            except OSError:
                continue
            if text:
                return text
        return ""

    def stop(self) -> None:
        """Graceful stop (SIGQUIT: finish the requests under way), then clean the prefix."""
        if os.getpid() != self._owner:
            return
        self._stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            try:  # workers whose master was killed (SIGKILL) keep the port and answer 502: end them
                os.killpg(self.proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(self.prefix, ignore_errors=True)
