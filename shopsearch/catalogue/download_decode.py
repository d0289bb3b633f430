"""Decoding a downloaded body's Content-Encoding (download_http.py asks for none, but some servers
send gzip all the same): gzip or zlib, bounded by the room the caller gives each read."""
from __future__ import annotations

import zlib

from shopsearch.errors import DownloadError

_GZIP_MAGIC = b"\x1f\x8b"


def decoder(encoding: str) -> Inflater | None:
    """A decompressor for a Content-Encoding (None for none); DownloadError for one we do not decode."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip", "deflate"):
        return Inflater()
    raise DownloadError(f"the server sent the body in {enc[:40]!r} encoding, which is not decoded "
                        "(it was asked for none)")


class Inflater:
    """A gzip or zlib body (told by its header) decoded to its end: gzip members one after another
    (`cat a.gz b.gz`) are all decoded, as curl and browsers do; bytes after a member that do not
    start another one (zero padding) are ignored, as before. Each feed's output stops at `room`."""

    def __init__(self) -> None:
        self._dec = zlib.decompressobj(zlib.MAX_WBITS | 32)
        self._held = b""  # the start of what follows a member, too short to tell a gzip header
        self._trailing = False  # what follows the last member is no gzip member: ignored

    @property
    def eof(self) -> bool:
        return self._dec.eof

    def feed(self, data: bytes, room: int) -> bytes:
        out = []
        while data and room > 0 and not self._trailing:
            if self._dec.eof:  # a member ended: another follows only where a gzip header starts
                data, self._held = self._held + data, b""
                if len(data) < len(_GZIP_MAGIC):
                    self._held = data
                    break
                if not data.startswith(_GZIP_MAGIC):
                    self._trailing = True
                    break
                self._dec = zlib.decompressobj(zlib.MAX_WBITS | 16)
            try:
                chunk = self._dec.decompress(data, room)
            except zlib.error as e:
                raise DownloadError(f"the compressed body cannot be decoded: {e}") from None
            out.append(chunk)
            room -= len(chunk)
            data = self._dec.unused_data if self._dec.eof else b""  # else all taken, or room is spent
        return b"".join(out)
