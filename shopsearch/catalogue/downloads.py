"""Catalogue images named by URL (a product feed's `image_link`, a shop export's image column):
downloaded once into the data folder, then imported like any local file.

Each URL has one file, named by a hash of the URL (`downloads/ab/<hash>.jpg`), so a re-import of
the same feed finds it there and neither downloads nor reads it again (the import's own
size-and-mtime check takes over); `refresh` fetches every URL again, for a shop that replaces
pictures behind the same address. A download is written beside its final name and renamed
into place once complete, so a process killed mid-download leaves no half file under that name.
Bounded: http and https only (redirects too), a timeout per request, a size cap, a few at a time."""
from __future__ import annotations

import hashlib
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

from tqdm import tqdm

#: the image suffixes a downloaded file keeps (others are saved as .img: the decoder sniffs content)
KEEP_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic"})
CHUNK = 1 << 16


def is_url(path: str) -> bool:
    """True for an http(s) address (the cell of a manifest's image column)."""
    head = path[:8].lower()
    return head.startswith("http://") or head.startswith("https://")


def check_url(url: str) -> str:
    """`url` when it can be downloaded, else ValueError naming what is wrong (a manifest row problem)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise ValueError(f"image URL {url[:200]!r} is malformed: {e}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"image URL {url[:200]!r} names no host")
    if any(c.isspace() for c in url):
        raise ValueError(f"image URL {url[:200]!r} holds white space (percent-encode it as %20)")
    return url


@dataclass(frozen=True)
class DownloadSettings:
    """How image URLs are fetched (Settings.downloads)."""

    #: seconds a download may take in all (connect, redirects, every byte)
    timeout_s: float = 30.0
    #: the largest image file accepted (bytes)
    max_bytes: int = 50 << 20
    #: downloads at once
    concurrency: int = 8
    user_agent: str = "ShopSearch catalogue import"


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects followed to http(s) addresses only (urllib also follows ftp)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirected to {newurl[:200]}, not an http(s) address",
                                         headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class ImageDownloader:
    """Fetches image URLs into `root`; each URL's file name is fixed by the URL alone."""

    def __init__(self, root: Path, settings: DownloadSettings = DownloadSettings()) -> None:
        self.root = Path(root)
        self.settings = settings
        self._opener = urllib.request.build_opener(_HttpOnlyRedirects())

    def local_path(self, url: str) -> Path:
        """Where `url`'s file lives (whether or not it was downloaded yet)."""
        digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
        suffix = Path(urlsplit(url).path).suffix.lower()
        return self.root / digest[:2] / (digest[2:34] + (suffix if suffix in KEEP_SUFFIXES else ".img"))

    def fetch_all(self, urls: Iterable[str], refresh: bool = False, progress: bool = True) -> dict[str, Path | str]:
        """url -> its local file, or the reason it could not be downloaded. Files already there are
        not fetched again unless `refresh`."""
        out: dict[str, Path | str] = {}
        todo = []
        for url in dict.fromkeys(urls):
            path = self.local_path(url)
            if not refresh and path.is_file():
                out[url] = path
            else:
                todo.append(url)
        if not todo:
            return out
        self._sweep_partial()
        bar = tqdm(total=len(todo), desc="downloading images", unit="img", disable=not progress)
        with ThreadPoolExecutor(max(1, self.settings.concurrency)) as pool:
            for url, res in zip(todo, pool.map(self._fetch_one, todo)):
                out[url] = res
                bar.update()
        bar.close()
        return out

    def _fetch_one(self, url: str) -> Path | str:
        final = self.local_path(url)
        part = final.with_name(f"{final.name}.part{os.getpid()}-{os.urandom(4).hex()}")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            why = self._download(url, part)
            if why is None:
                os.replace(part, final)
                return final
            return why
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code} {e.reason}" if e.code >= 300 else str(e.reason)
        except urllib.error.URLError as e:
            if isinstance(e.reason, (socket.timeout, TimeoutError)):
                return f"no answer within {self.settings.timeout_s:g} s"
            return f"cannot connect: {e.reason}"
        except (socket.timeout, TimeoutError):
            return f"no answer within {self.settings.timeout_s:g} s"
        except Exception as e:  # noqa: BLE001 - one address must never abort the whole import
            return f"{type(e).__name__}: {e}"
        finally:
            if part.exists():
                part.unlink()

    def _download(self, url: str, part: Path) -> str | None:
        """Stream `url` into `part`; None when complete, else why it was given up."""
        s = self.settings
        deadline = time.monotonic() + s.timeout_s
        req = urllib.request.Request(url, headers={"User-Agent": s.user_agent, "Accept": "image/*"})
        with self._opener.open(req, timeout=s.timeout_s) as resp, open(part, "wb") as f:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > s.max_bytes:
                return f"{int(length):,} bytes, over the {s.max_bytes:,}-byte limit"
            size = 0
            while chunk := resp.read(CHUNK):
                size += len(chunk)
                if size > s.max_bytes:
                    return f"over the {s.max_bytes:,}-byte limit"
                if time.monotonic() > deadline:
                    return f"took over {s.timeout_s:g} s"
                f.write(chunk)
        return "the server sent an empty body" if size == 0 else None

    def _sweep_partial(self) -> None:
        """Remove the half files that killed imports left (old enough that no download still writes them)."""
        old = time.time() - 10 * self.settings.timeout_s
        for p in self.root.glob("*/*.part*") if self.root.is_dir() else ():
            try:
                if p.stat().st_mtime < old:
                    p.unlink()
            except OSError:
                pass
