"""Rescan: notice image files replaced, deleted or restored on disk since they were imported.

The image folders are stat'ed, then the files of the folders whose mtime moved and a
rolling window of the others (the default "auto" scope; "files" stats every file, "dirs"
the folders' files only), and compared with the stored stat snapshot
(catalogue/stat_snapshot.py, which says what each scope can miss and when); only the files whose
(size, mtime) moved are hashed and decoded again, so a rescan of an unchanged catalogue
reads no image bytes and, with a current snapshot, no image row. What it finds goes into
the catalogue (new hash, or status missing / invalid), where `index update` picks it up:
changed images are re-embedded, missing ones leave the index, restored ones come back.
A file rewritten in place with its old size and mtime (`cp -p`, `rsync -t`) slips through
the stat check: `verify_hashes` re-hashes every file too (reading the whole catalogue).
An image still named by its URL (its download failed at import) has no file to check: it keeps
the import's reason until an import downloads it; a downloaded image's row names its local copy,
which is checked like any file."""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shopsearch.catalogue.downloads import is_url
from shopsearch.catalogue.importers import check_image_files
from shopsearch.catalogue.records import FileCheck, ImageInfo, ImageRecord
from shopsearch.catalogue.stat_snapshot import CURSOR_FILE, StatSnapshot
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.images import sha256_file

log = logging.getLogger("shopsearch.catalogue")

#: what a rescan stats: the folders, the files of those that moved and a rolling window of the
#: rest (auto); every file (files); the folders and the files of those that moved (dirs)
SCOPES = ("auto", "files", "dirs")


@dataclass(frozen=True)
class RescanReport:
    images: int  # catalogue images (their files stat'ed, or their folders with the "dirs" scope)
    rehashed: int  # stat moved (or never recorded), or content moved under an unchanged stat: decoded again
    changed: int  # usable, with new content: `index update` re-embeds them
    missing: int  # the file is gone: `index update` drops them from the index
    invalid: int  # the file is no longer a usable image
    restored: int  # missing or invalid before, usable now
    seconds: float
    #: (image id, path, reason) of each image found unusable by this rescan
    problems: tuple[tuple[int, str, str], ...] = ()
    files_checked: int = 0  # files stat'ed (every one with the "files" scope; see SCOPES)
    #: the catalogue generation this rescan started from and the one its writes made (None:
    #: another writer came in between, nothing written): with `moves`, what an update needs to
    #: apply this rescan alone to a build that was current at the first (indexer/update_plan.py)
    generations: tuple[int, int | None] = (0, None)
    #: image ids whose indexable content this rescan moved: (now usable again, new content,
    #: usable before and not now)
    moves: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] = ((), (), ())

    def to_dict(self) -> dict:
        """Counts only: the problems go into the build report's failure list."""
        d = asdict(self)
        for k in ("problems", "generations", "moves"):
            d.pop(k)
        return {**d, "seconds": round(self.seconds, 3)}


def stat_moved(img: ImageInfo) -> bool:
    """True when the file's size or mtime differs from the catalogue's record (or it vanished);
    never for an image URL, which names no file here."""
    return not is_url(img.path) and _moved(img.path, img.status, img.file_size, img.file_mtime_ns)


def _moved(path: str, status: str, size: int | None, mtime_ns: int | None) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return status != "missing"
    return st.st_size != size or st.st_mtime_ns != mtime_ns


def rescan_files(store: CatalogueStore, workers: int = 2, progress: bool = True,
                 verify_hashes: bool = False, snapshot: Path | None = None, scope: str = "auto") -> RescanReport:
    """Bring the catalogue's hashes and statuses in line with the files on disk. `snapshot`:
    the stored stat snapshot to compare with (catalogue/stat_snapshot.py; read from the rows
    and written there when absent or stale); `scope` "files" stats every file, "dirs" only
    the folders and then the files of the folders that moved, "auto" those and a rolling
    window of the other files (both need a valid snapshot, else every file is stat'ed);
    `verify_hashes` also hashes the files whose stat did not move."""
    if scope not in SCOPES:
        raise ValueError(f"rescan scope {scope!r}: use one of {', '.join(SCOPES)}")
    t0 = time.perf_counter()
    generation = store.generation()  # before anything is read: a change after it shows next time
    snap = StatSnapshot.load(snapshot, generation, store.source()) if snapshot is not None else None
    stored = snap is not None  # the file holds this snapshot already
    if snap is None:  # (id, path, status, size, mtime) tuples: full rows only for the files that moved
        snap = StatSnapshot.from_rows(store.image_stats(), generation, store.source())
        scope = "files"  # no folder mtimes to compare with yet
    cursor_file = snapshot.with_name(CURSOR_FILE) if snapshot is not None else None
    dir_mtimes = snap.stat_dirs()
    rows, cursor = None, None  # None: every file
    if scope != "files":
        rows = snap.in_dirs(dir_mtimes != snap.dir_mtimes)
        if scope == "auto":
            window, cursor = snap.rolling_window(StatSnapshot.load_cursor(cursor_file))
            rows = None if len(window) == len(snap.ids) else np.union1d(rows, window)
    # an image URL is not a file name (pathlib would make "https:/..." of it): only an import
    # settles it, and its download reason stands till then (a snapshot written before that rule
    # may still count it as moved)
    todo = [img for img in store.images_by_id(snap.moved(rows, workers).tolist()) if not is_url(img.path)]
    checked = len(snap.ids) if rows is None else len(rows)
    if verify_hashes:  # reads every file anyway: the full rows cost nothing next to that
        moved = {img.id for img in todo}
        todo += _content_moved([img for img in store.images() if img.id not in moved and img.status == "ok"],
                               workers, progress)
    changed = missing = invalid = restored = 0
    problems = []
    moves: tuple[list[int], list[int], list[int]] = ([], [], [])
    checks: list[FileCheck] = []
    results = check_image_files([img.path for img in todo], workers, progress, desc="re-hashing changed files")
    for img in todo:
        res = results[img.path]
        if isinstance(res, ImageRecord):
            if img.status != "ok":
                restored += 1
                moves[0].append(img.id)
            elif res.sha256 != img.sha256:
                changed += 1
                moves[1].append(img.id)
            checks.append(FileCheck(img.id, "ok", res.sha256, res.width, res.height, res.file_size,
                                    res.file_mtime_ns))
            continue
        status = "missing" if res.startswith("no such file") else "invalid"
        if img.status == "ok":
            moves[2].append(img.id)
        if status != img.status:
            missing += status == "missing"
            invalid += status == "invalid"
            problems.append((img.id, img.path, res))
        size, mtime = _stat_or_none(img.path)
        # The stat of an unusable file is kept too, so it is not re-decoded at every rescan.
        checks.append(FileCheck(img.id, status, file_size=size, file_mtime_ns=mtime, error=res))
    after = store.record_file_checks(checks, generation) if checks else generation
    if snapshot is not None:
        _keep(snap, snapshot, after, dir_mtimes, checks, stored)
        if cursor is not None and after is not None:  # the window was checked: the next one next time
            StatSnapshot.save_cursor(cursor_file, cursor)
    report = RescanReport(len(snap.ids), len(todo), changed, missing, invalid, restored, time.perf_counter() - t0,
                          tuple(problems), checked, (generation, after), tuple(tuple(m) for m in moves))
    if todo:
        log.info("files rescanned", extra=report.to_dict())
    return report


def _keep(snap: StatSnapshot, path: Path, generation: int | None, dir_mtimes, checks: list[FileCheck],
          stored: bool) -> None:
    """Store the snapshot with this rescan's findings, or drop it when another writer changed
    the catalogue meanwhile (the next rescan reads the rows again)."""
    if generation is None:
        path.unlink(missing_ok=True)
        return
    if stored and not checks and generation == snap.generation and np.array_equal(dir_mtimes, snap.dir_mtimes):
        return  # nothing moved: the file is this snapshot already (not rewritten: it is large)
    snap.patch([(c.image_id, c.status, c.file_size, c.file_mtime_ns) for c in checks])
    snap.generation, snap.dir_mtimes = generation, dir_mtimes
    snap.save(path)


def _content_moved(images: list[ImageInfo], workers: int, progress: bool) -> list[ImageInfo]:
    """The images whose file no longer has the recorded hash (hashed in threads: hashlib
    releases the GIL on large buffers). A file that vanished meanwhile counts as moved."""

    def moved(img: ImageInfo) -> bool:
        try:
            return sha256_file(img.path) != img.sha256
        except OSError:
            return True

    with ThreadPoolExecutor(max(1, workers)) as pool:
        flags = list(tqdm(pool.map(moved, images), total=len(images), desc="verifying hashes", unit="img",
                          disable=not progress or not images))
    return [img for img, f in zip(images, flags) if f]


def _stat_or_none(path: str) -> tuple[int | None, int | None]:
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns
