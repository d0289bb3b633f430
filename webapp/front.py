"""The nginx front `shopsearch serve` starts by default: it absorbs slow clients for gunicorn.

Gunicorn's threads each hold one connection from its first byte to its last, so a few
clients sending at 1 byte/s take a worker offline. nginx reads every request in full and
buffers every response before gunicorn is involved. It runs unprivileged from a private
prefix (config, pid, logs, temp folders) and talks to gunicorn over a unix socket there;
the config is rendered from deploy/nginx/nginx.conf.in."""
from __future__ import annotations

import ctypes
import logging
import os
import pwd
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shopsearch.errors import ConfigError

log = logging.getLogger("shopsearch.web")

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "nginx.conf.in"
#: where Debian's package puts the binary (not on a non-root user's PATH)
_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


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

    def render(self, template: Path = TEMPLATE) -> str:
        # nginx drops root to `user` for its workers; without root the directive is ignored
        user = "user nobody nogroup;" if os.geteuid() == 0 and _has_user("nobody") else ""
        nofile = _open_files_limit()
        fields = {"USER": user, "WORKERS": str(self.workers), "NOFILE": str(nofile),
                  "CONNECTIONS": str(max(64, nofile // 2 - 32)), "PREFIX": str(self.prefix), "LISTEN": self.listen,
                  "UPSTREAM": self.upstream, "MAX_BODY": f"{self.max_body_bytes}",
                  "MAX_BODY_TEXT": f"{self.max_body_bytes / (1024 * 1024):g} MB"}
        text = template.read_text()
        for name, value in fields.items():
            text = text.replace(f"@{name}@", value)
        return text


def _open_files_limit(cap: int = 16384) -> int:
    """The most open files nginx may ask for: the hard limit (a non-root process cannot go above)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return cap if hard == resource.RLIM_INFINITY else min(cap, hard)


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


class NginxFront:
    """One nginx master process in front of a gunicorn socket, for the life of `serve`."""

    def __init__(self, listen: str, max_body_bytes: int, workers: int = 1, binary: str | None = None) -> None:
        self.binary = binary or nginx_binary()
        if self.binary is None:
            raise ConfigError("nginx is not installed (Debian: apt-get install nginx); "
                              "or serve without it: --front none, on a loopback address only")
        self.prefix = Path(tempfile.mkdtemp(prefix="shopsearch-nginx-"))
        # nginx's workers run as nobody when started by root: they must reach the socket
        os.chmod(self.prefix, 0o755)
        self.socket = self.prefix / "app.sock"
        self.config = NginxConfig(listen, f"unix:{self.socket}", self.prefix, max_body_bytes, workers)
        self.conf_path = self.prefix / "nginx.conf"
        self.conf_path.write_text(self.config.render())
        self.proc: subprocess.Popen | None = None
        self._owner = os.getpid()  # gunicorn's forked workers unwind through the caller's finally

    @property
    def upstream_bind(self) -> str:
        """What gunicorn binds to."""
        return f"unix:{self.socket}"

    def _cmd(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf_path), "-e", str(self.prefix / "error.log"),
                *extra]

    def check(self) -> None:
        """`nginx -t`: ConfigError with nginx's own words when the config or the port is refused."""
        r = subprocess.run(self._cmd("-t", "-q"), capture_output=True, text=True)
        if r.returncode != 0:
            raise ConfigError(f"nginx refused its configuration: {r.stderr.strip()}")

    def start(self) -> None:
        self.proc = subprocess.Popen(self._cmd("-g", "daemon off;"), preexec_fn=_die_with_parent,
                                     stdin=subprocess.DEVNULL)
        time.sleep(0.2)
        if self.proc.poll() is not None:
            raise ConfigError(f"nginx exited at start: {self.error_log()}")
        log.info("nginx front started", extra={"listen": self.config.listen, "pid": self.proc.pid})

    def error_log(self) -> str:
        try:
            return (self.prefix / "error.log").read_text()[-2000:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        """Graceful stop (SIGQUIT: finish the requests under way), then clean the prefix."""
        if os.getpid() != self._owner:
            return
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)
