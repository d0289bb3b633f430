"""The stored stat snapshot: every catalogue image's path, size and mtime (and its folder's
mtime) as numpy arrays in one file, so that a rescan compares the files on disk with it
instead of reading a million rows from the database, or stats only the folders.

It is a cache of the database's (id, path, status, size, mtime) columns, valid for the
catalogue generation it was taken at (migration 0004: any image added, deleted, or whose
status or content hash changed moves the generation, and the snapshot is then read anew
from the rows). A rescan's own writes are applied to it under a lock on the generation
counter (`CatalogueStore.record_file_checks`), so it stays valid across them. A stat written
to the database alone (a re-import of a touched file) leaves the snapshot with the older
stat: that file is re-hashed once more, the safe direction.

What each rescan scope can see (catalogue/rescan.py):
- `files`: every file is stat'ed and compared with the snapshot: a file replaced, deleted
  or rewritten in place is noticed when its size or mtime moved.
- `dirs`: only the folders are stat'ed; the files of a folder whose mtime moved since the
  snapshot are then stat'ed. A folder's mtime moves when a file in it is created, deleted or
  renamed over (`mv`, `rsync`, editors and uploaders that write a new file and rename it),
  but NOT when a file is rewritten in place (`cp` onto it, `open(path, "wb")`): those are
  seen only by the `files` scope, `index status --deep` and `--verify-hashes`.
- `auto` (the default): `dirs`, plus a rolling window of the files in id order
  (`rolling_window`: ROLL_MIN files or 1/ROLL_PARTS of them, whichever is more), the next
  window at each rescan, so that a file rewritten in place is noticed within ROLL_PARTS
  rescans; a catalogue of up to ROLL_MIN images has every file stat'ed at every rescan.
  Where the window stands is kept beside the snapshot (CURSOR_FILE). Why not every file: a
  stat is a system call per file, so a million of them cost seconds at each build (the
  scale runs in benchmarks/RESULTS.md), where a window costs a fraction of that."""
from __future__ import annotations

import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from shopsearch.catalogue.downloads import is_url

#: beside the index builds (<data dir>/index/): one snapshot per data dir and database
SNAPSHOT_FILE = "stat_snapshot.npz"
#: size/mtime of a file that could not be stat'ed (gone), and of a stat never recorded
GONE, UNKNOWN = -2, -1
#: paths per stat task: threads overlap the system calls, which release the GIL
_STAT_CHUNK = 16_384
#: the `auto` scope's rolling window: at least this many files per rescan ...
ROLL_MIN = 65_536
#: ... or this share of them (1/ROLL_PARTS), so that every file is stat'ed once per ROLL_PARTS rescans
ROLL_PARTS = 16
#: where the next rolling window starts (a position in id order), beside the snapshot
CURSOR_FILE = "stat_snapshot.cursor"


@dataclass
class StatSnapshot:
    """Per image (sorted by id): path, recorded size and mtime, whether it is recorded missing,
    and the index of its folder; per folder: path and mtime when the snapshot was taken."""

    generation: int
    source: str  # the database it describes (URL without password)
    ids: np.ndarray  # int64, ascending
    paths: np.ndarray  # bytes (S), file system encoding
    sizes: np.ndarray  # int64, UNKNOWN when never recorded
    mtimes: np.ndarray  # int64 ns, UNKNOWN when never recorded
    missing: np.ndarray  # bool: the catalogue records the file as missing, or no file is expected (an image URL)
    dir_of: np.ndarray  # int32 index into dirs
    dirs: np.ndarray  # bytes (S)
    dir_mtimes: np.ndarray  # int64 ns, GONE when the folder could not be stat'ed

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[int, str, str, int | None, int | None]], generation: int,
                  source: str) -> "StatSnapshot":
        """From (id, path, status, size, mtime) rows (CatalogueStore.image_stats); folder
        mtimes are not known yet (GONE): stat_dirs fills them."""
        rows = sorted(rows)
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        paths = np.array([os.fsencode(r[1]) for r in rows], dtype=bytes) if rows else np.array([], "S1")
        sizes = np.fromiter((UNKNOWN if r[3] is None else r[3] for r in rows), np.int64, len(rows))
        mtimes = np.fromiter((UNKNOWN if r[4] is None else r[4] for r in rows), np.int64, len(rows))
        # an image URL whose download failed names no file: a failed stat of it is no news
        missing = np.fromiter((r[2] == "missing" or is_url(r[1]) for r in rows), bool, len(rows))
        dirs, dir_of = np.unique(np.array([os.path.dirname(p) for p in paths.tolist()], dtype=bytes)
                                 if rows else np.array([], "S1"), return_inverse=True)
        return cls(generation, source, ids, paths, sizes, mtimes, missing, dir_of.astype(np.int32), dirs,
                   np.full(len(dirs), GONE, np.int64))

    @classmethod
    def load(cls, path: Path, generation: int, source: str) -> "StatSnapshot | None":
        """The snapshot at `path` when it describes this database at this generation, else None."""
        try:
            with np.load(path) as z:
                if int(z["generation"]) != generation or str(z["source"]) != source:
                    return None
                return cls(generation, source, *(z[k] for k in ("ids", "paths", "sizes", "mtimes", "missing",
                                                                   "dir_of", "dirs", "dir_mtimes")))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # absent, cut short or from another version: the rows are read instead

    @staticmethod
    def folders_moved(path: Path, generation: int, source: str) -> int | None:
        """How many image folders' mtimes moved since the snapshot at `path` was taken (files
        added, deleted or renamed in them); None without a current snapshot. Reads the folder
        columns only."""
        try:
            with np.load(path) as z:
                if int(z["generation"]) != generation or str(z["source"]) != source:
                    return None
                dirs, then = z["dirs"], z["dir_mtimes"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None
        return int((_stat_many(dirs.tolist())[1] != then).sum())

    def save(self, path: Path) -> None:
        """Written beside and renamed into place: a reader sees the old file or the new one."""
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")  # ends in .npz: savez adds no suffix
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, generation=np.int64(self.generation), source=np.str_(self.source), ids=self.ids,
                     paths=self.paths, sizes=self.sizes, mtimes=self.mtimes, missing=self.missing,
                     dir_of=self.dir_of, dirs=self.dirs, dir_mtimes=self.dir_mtimes)
            os.replace(tmp, path)
        except OSError:  # a cache: a full disk costs the next run a read of the rows, nothing else
            tmp.unlink(missing_ok=True)

    def stat_dirs(self) -> np.ndarray:
        """The folders' mtimes now (GONE for a folder that vanished); taken before their files
        are stat'ed, so that a change made during the scan shows at the next one."""
        return _stat_many(self.dirs.tolist())[1]

    def moved(self, rows: np.ndarray | None = None, workers: int = 2) -> np.ndarray:
        """Ids among `rows` (indexes; None: all) whose file's size or mtime differs from the
        snapshot, or that vanished while not recorded missing."""
        idx = np.arange(len(self.ids)) if rows is None else rows
        sizes, mtimes = _stat_many(self.paths[idx].tolist(), workers)
        gone = sizes == GONE
        moved = np.where(gone, ~self.missing[idx], (sizes != self.sizes[idx]) | (mtimes != self.mtimes[idx]))
        return self.ids[idx[moved]]

    def rolling_window(self, start: int) -> tuple[np.ndarray, int]:
        """(indexes of the files the `auto` scope stats this time, where the next window starts):
        max(ROLL_MIN, n / ROLL_PARTS) files from `start` on, wrapping round; every file when
        that is all of them."""
        n = len(self.ids)
        size = max(ROLL_MIN, -(-n // ROLL_PARTS))
        if size >= n:
            return np.arange(n), 0
        start %= n
        return (np.arange(start, start + size) % n), (start + size) % n

    @staticmethod
    def load_cursor(path: Path) -> int:
        """Where the next rolling window starts (0 when never written or unreadable)."""
        try:
            return max(0, int(path.read_text().strip() or 0))
        except (OSError, ValueError):
            return 0

    @staticmethod
    def save_cursor(path: Path, cursor: int) -> None:
        """A few bytes, renamed into place; a failed write only repeats a window."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(f"{cursor}\n")
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)

    def in_dirs(self, dir_mask: np.ndarray) -> np.ndarray:
        """Indexes of the images whose folder is in `dir_mask`."""
        return np.flatnonzero(dir_mask[self.dir_of])

    def patch(self, checks: Sequence[tuple[int, str, int | None, int | None]]) -> None:
        """Apply a rescan's writes: (image id, status, size, mtime)."""
        for image_id, status, size, mtime in checks:
            j = int(np.searchsorted(self.ids, image_id))
            if j < len(self.ids) and self.ids[j] == image_id:
                self.sizes[j] = UNKNOWN if size is None else size
                self.mtimes[j] = UNKNOWN if mtime is None else mtime
                self.missing[j] = status == "missing"


def _stat_many(paths: list[bytes], workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, mtimes ns) of `paths`, GONE for those that cannot be stat'ed."""

    def part(chunk: list[bytes]) -> tuple[list[int], list[int]]:
        sizes, mtimes = [], []
        stat = os.stat
        for p in chunk:
            try:
                st = stat(p)
            except OSError:
                sizes.append(GONE)
                mtimes.append(GONE)
                continue
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
        return sizes, mtimes

    chunks = [paths[i:i + _STAT_CHUNK] for i in range(0, len(paths), _STAT_CHUNK)]
    if len(chunks) > 1 and workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(part, chunks))
    else:
        done = [part(c) for c in chunks]
    # two flat int lists per chunk: numpy converts them without a tuple per file
    if not done:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (np.concatenate([np.array(s, np.int64) for s, _ in done]),
            np.concatenate([np.array(m, np.int64) for _, m in done]))
