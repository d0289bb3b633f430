"""Catalogue images named by URL (a product feed's `image_link`, a shop export's image column):
downloaded once into the data folder, then imported like any local file.

Each URL has one file, named by a hash of the URL as the source gives it (`downloads/ab/<hash>.jpg`),
so a re-import of the same feed finds it there and neither downloads nor reads it again (the
import's own size-and-mtime check takes over); `refresh` fetches every URL again, for a shop that
replaces pictures behind the same address. A download is written beside its final name, checked
(it must decode as an image, in the import's checking processes when it gives some) and only then
renamed into place: a half, truncated or non-image download never takes the final name, so the
next import tries again, and a refresh that fails in any way leaves the previous file as it was.
Bounded (download_http.py): http(s) only, one deadline per download, a size cap, a few at a time,
and a cap on the bytes one import (one fetch_all) downloads in all: past it, the URLs left fail
with that reason (a re-import fetches them, not those downloaded)."""
from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping
from urllib.parse import urlsplit

from tqdm import tqdm

from shopsearch.catalogue.download_http import ImportBudget, build_opener, fetch, mask_url, one_line
from shopsearch.catalogue.records import ImageRecord
from shopsearch.config import DownloadSettings
from shopsearch.errors import DownloadError, InvalidImageError
from shopsearch.images import inspect_image

__all__ = ["DownloadResult", "DownloadSettings", "ImageDownloader", "check_url", "is_url", "mask_url"]

#: the image suffixes a downloaded file keeps (others are saved as .img: the decoder sniffs content)
KEEP_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic"})
#: {path: its checked record, or why it is unusable}: how staged downloads are checked
Checker = Callable[[list[str]], Mapping[str, ImageRecord | str]]


def is_url(path: str) -> bool:
    """True for an http(s) address (the cell of a manifest's image column)."""
    head = path[:8].lower()
    return head.startswith("http://") or head.startswith("https://")


def check_url(url: str) -> str:
    """`url` when it can be downloaded, else ValueError naming what is wrong (a manifest row problem;
    the URL's password masked before it is cut short, so that no part of it shows)."""
    shown = repr(mask_url(url)[:200])
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise ValueError(f"image URL {shown} is malformed: {one_line(str(e))}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"image URL {shown} names no host")
    if any(c.isspace() for c in url):
        raise ValueError(f"image URL {shown} holds white space (percent-encode it as %20)")
    return url


@dataclass(frozen=True)
class DownloadResult:
    """What became of one URL."""

    url: str
    #: the local file to import: downloaded now, before, or kept after a failed refresh; None: nothing
    path: Path | None = None
    #: why this download failed (one line, no password); with `path` set, the previous file was kept
    error: str | None = None
    #: a new file was written under `path` by this run
    downloaded: bool = False
    #: the new file's check (hash, size, mtime under its final name): it need not be read again
    record: ImageRecord | None = None

    @property
    def kept(self) -> bool:
        """A fetch failed but an earlier download of the URL stands (a refresh's failure)."""
        return self.path is not None and self.error is not None


def check_in_process(paths: list[str]) -> dict[str, ImageRecord | str]:
    """The default Checker: each file decoded in this process (an import checks in its workers)."""
    out: dict[str, ImageRecord | str] = {}
    for p in paths:
        try:
            m = inspect_image(p)
            out[p] = ImageRecord(p, sha256=m.sha256, width=m.width, height=m.height, file_size=m.file_size,
                                 file_mtime_ns=m.file_mtime_ns)
        except (InvalidImageError, OSError) as e:
            out[p] = str(e)
    return out


class ImageDownloader:
    """Fetches image URLs into `root`; each URL's file name is fixed by the URL alone."""

    def __init__(self, root: Path, settings: DownloadSettings = DownloadSettings()) -> None:
        self.root = Path(root)
        self.settings = settings
        self._opener = build_opener()

    def local_path(self, url: str) -> Path:
        """Where `url`'s file lives (whether or not it was downloaded yet)."""
        digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
        suffix = Path(urlsplit(url).path).suffix.lower()
        return self.root / digest[:2] / (digest[2:34] + (suffix if suffix in KEEP_SUFFIXES else ".img"))

    def fetch_all(self, urls: Iterable[str], refresh: bool = False, progress: bool = True,
                  check: Checker | None = None) -> dict[str, DownloadResult]:
        """url -> what became of it. Files already there are not fetched again unless `refresh`;
        a fetched file takes its final name only once `check` (default: check_in_process) found
        it an image. Downloads go in batches of a few per worker, each checked as it ends, so
        that no staged file waits long enough to look abandoned to another import's sweep."""
        out: dict[str, DownloadResult] = {}
        todo = []
        for url in dict.fromkeys(urls):
            path = self.local_path(url)
            if not refresh and path.is_file():
                out[url] = DownloadResult(url, path)
            else:
                todo.append(url)
        if not todo:
            return out
        self._sweep_partial()
        check = check or check_in_process
        budget = ImportBudget(self.settings.max_total_bytes)  # this import's downloads, all together
        workers = max(1, self.settings.concurrency)
        bar = tqdm(total=len(todo), desc="downloading images", unit="img", disable=not progress)
        try:
            with ThreadPoolExecutor(workers) as pool:
                for start in range(0, len(todo), 4 * workers):
                    batch = todo[start:start + 4 * workers]
                    staged = dict(zip(batch, pool.map(lambda u: self._stage(u, budget), batch)))
                    parts = [str(p) for p in staged.values() if isinstance(p, Path)]
                    try:
                        checked = check(parts) if parts else {}
                    except BaseException:  # the checking pool broke down: no staged file outlives the run
                        for p in parts:
                            Path(p).unlink(missing_ok=True)
                        raise
                    for url, st in staged.items():
                        out[url] = self._settle(url, st, checked)
                        bar.update()
        finally:
            bar.close()
        return out

    def _stage(self, url: str, budget: ImportBudget) -> Path | str:
        """Download `url` beside its final name: the staged file, or why it was given up (the
        import's `budget` spent: not even tried)."""
        if budget.exhausted():
            return budget.reason()
        final = self.local_path(url)
        part = final.with_name(f"{final.name}.part{os.getpid()}-{os.urandom(4).hex()}")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(part, "wb") as f:
                fetch(self._opener, url, f, self.settings, budget)
            return part
        except DownloadError as e:
            why = str(e)
        except Exception as e:  # noqa: BLE001 - one address must never abort the whole import
            why = one_line(f"{type(e).__name__}: {e}")
        part.unlink(missing_ok=True)
        return why

    def _settle(self, url: str, staged: Path | str, checked: Mapping[str, ImageRecord | str]) -> DownloadResult:
        """Rename a staged file that checked as an image into place; else drop it, and keep
        what an earlier download left under the final name (a refresh's failure)."""
        final = self.local_path(url)
        if isinstance(staged, Path):
            try:
                res = checked.get(str(staged), "not checked")
                if isinstance(res, ImageRecord):
                    os.replace(staged, final)  # same inode: the record's size and mtime still hold
                    return DownloadResult(url, final, downloaded=True, record=replace(res, path=str(final)))
                why = one_line("not a usable image: " + res.replace(str(staged), "the download"))
            except OSError as e:
                why = one_line(f"cannot save the download: {e}")
            finally:
                staged.unlink(missing_ok=True)
        else:
            why = staged
        return DownloadResult(url, final if final.is_file() else None, error=why)

    def _sweep_partial(self) -> None:
        """Remove the half files that killed imports left (old enough that no download still writes them)."""
        old = time.time() - 10 * self.settings.timeout_s
        for p in self.root.glob("*/*.part*") if self.root.is_dir() else ():
            try:
                if p.stat().st_mtime < old:
                    p.unlink()
            except OSError:
                pass
