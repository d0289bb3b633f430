"""Signed query vectors: what a results page carries back to the server (the photo's vector in
`qv`, each found object's in `region`) is sealed with an HMAC, so that POST /search runs only
vectors this server computed from a shopper's photo, never one a client made up (which would be
logged as a photo search, and confirmed products of it would train the adapter).

    signer = Signer(key)
    token = signer.seal("qv", payload)      # "<payload>~<issued, hex seconds>~<tag>"
    payload = signer.open("qv", token)      # ExpiredQueryError (400) when unsigned, forged or old

The key is SHOPSEARCH_SECRET_KEY (Flask's SECRET_KEY) when set; otherwise a random key made once
and kept in `<data dir>/page_key` (0600), so that every gunicorn worker, and every `serve` node
sharing the data dir, accepts the pages the others rendered."""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Mapping

from shopsearch.errors import ConfigError
from webapp.errors import BadParameterError

log = logging.getLogger("shopsearch.web")

#: what a shopper reads when a posted-back query is unsigned, forged or too old
EXPIRED = "These results have expired. Please upload the photo again to search."
KEY_FILE = "page_key"
_TAG_BYTES = 16  # 128 bits of HMAC-SHA256: 22 characters a field


class ExpiredQueryError(BadParameterError):
    code = "expired_query"


class Signer:
    """Seals and opens the values a page posts back; `max_age_s`: how long a page's forms work."""

    def __init__(self, key: bytes, max_age_s: float = 86400.0) -> None:
        if len(key) < 16:
            raise ValueError("the signing key must be 16 bytes or more")
        self._key = key
        self.max_age_s = float(max_age_s)

    def _tag(self, kind: str, signed: str) -> str:
        msg = kind.encode("ascii") + b"\0" + signed.encode("utf-8", "replace")
        mac = hmac.new(self._key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:_TAG_BYTES]).decode("ascii").rstrip("=")

    def seal(self, kind: str, payload: str, now: float | None = None) -> str:
        signed = f"{payload}~{int(time.time() if now is None else now):x}"
        return f"{signed}~{self._tag(kind, signed)}"

    def open(self, kind: str, token: Any, now: float | None = None) -> str:
        """The payload `seal(kind, ...)` sealed: its exact text, unchanged and not older than
        max_age_s; ExpiredQueryError otherwise (missing, altered, forged, another kind, expired)."""
        if not isinstance(token, str) or token.count("~") < 2:
            raise ExpiredQueryError(EXPIRED)
        signed, tag = token.rsplit("~", 1)
        payload, issued = signed.rsplit("~", 1)
        if not hmac.compare_digest(tag.encode("utf-8", "replace"), self._tag(kind, signed).encode("ascii")):
            raise ExpiredQueryError(EXPIRED)
        try:
            age = (time.time() if now is None else now) - int(issued, 16)
        except ValueError:  # never sealed so, but no traceback either way
            raise ExpiredQueryError(EXPIRED) from None
        if not -300 <= age <= self.max_age_s:  # a few minutes of clock skew between nodes
            raise ExpiredQueryError(EXPIRED)
        return payload


def load_key(config: Mapping[str, Any], data_dir: Path) -> bytes:
    """SECRET_KEY when configured, else the data dir's page key (made on first use)."""
    configured = config.get("SECRET_KEY")
    if configured:
        key = configured if isinstance(configured, bytes) else str(configured).encode("utf-8")
        if len(key) < 16:
            raise ConfigError("SHOPSEARCH_SECRET_KEY must be at least 16 characters")
        return key
    try:
        return _stored_key(Path(data_dir) / KEY_FILE)
    except OSError as e:
        # this worker alone: forms another worker rendered are refused as expired (set SHOPSEARCH_SECRET_KEY)
        log.warning("no shared page key: set SHOPSEARCH_SECRET_KEY when running several workers",
                    extra={"error": str(e)})
        return secrets.token_bytes(32)


def _stored_key(path: Path) -> bytes:
    """The key kept at `path`, created (0600, exclusively: one worker wins the race) when absent."""
    for _ in range(50):
        try:
            raw = path.read_bytes().strip()
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue  # another worker made it first: read theirs
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            continue
        if len(raw) >= 32:
            return raw
        time.sleep(0.02)  # another worker is still writing it
    raise OSError(f"the page key {path.name} is empty or unreadable")
