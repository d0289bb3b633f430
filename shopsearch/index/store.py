"""IndexStore: the index builds on disk and which one is serving.

Layout under <data_dir>/index/:  builds/<build_id>/{index.faiss,manifest.json,keys.npz,report.json}  and
CURRENT (the serving build id), PREVIOUS (the one before, for rollback) and SHADOW (a build
made beside the serving one, not served until promoted); a build made by a small update adds
its delta part (delta-<build id>.npz), delta_keys.npz and tombstones.npy, and shares index.faiss,
keys.npz and the earlier delta parts with the build it came from by hard link
(shopsearch/index/segments.py). A build is written under a temporary name, verified,
renamed into builds/, and only then CURRENT is swapped with os.replace, so a crash at
any point leaves the old index serving. The previous build is kept for rollback."""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from shopsearch.errors import IndexCorruptError, IndexNotFoundError, IndexWriteError
from shopsearch.index.keyfiles import DELTA_KEYS_FILE, KEYS_FILE, SegmentKeys, read_arrays, read_ids, read_keys
from shopsearch.index.segments import TOMBSTONES_FILE, Part
from shopsearch.index.staging import REPORT_FILE, stage_delta, stage_full
from shopsearch.index.manifest import INDEX_FILE, MANIFEST, IndexManifest
from shopsearch.index.vector_index import VectorIndex

log = logging.getLogger("shopsearch.index")

#: pointer to a build made beside the serving one (`index build --shadow`), until promoted
SHADOW = "SHADOW"


def new_build_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


class IndexStore:
    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.builds_dir = self.root / "builds"
        self.keep = keep
        #: why the build served is not the one CURRENT names (set by serving_id/load_current)
        self.degraded: str | None = None

    # -- pointers ---------------------------------------------------------
    def _read_pointer(self, name: str) -> str | None:
        try:
            return (self.root / name).read_text().strip() or None
        except FileNotFoundError:
            return None

    def _write_pointer(self, name: str, value: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / name)

    def current_id(self) -> str | None:
        return self._read_pointer("CURRENT")

    def previous_id(self) -> str | None:
        return self._read_pointer("PREVIOUS")

    def build_dir(self, build_id: str) -> Path:
        return self.builds_dir / build_id

    def _readable(self, build_id: str) -> bool:
        """Cheap check (no checksum): the build's manifest parses and its index file is there."""
        d = self.build_dir(build_id)
        try:
            IndexManifest(**json.loads((d / MANIFEST).read_text()))
        except (OSError, ValueError, TypeError):
            return False
        return (d / INDEX_FILE).is_file()

    def serving_id(self) -> str | None:
        """The build to serve: CURRENT's, or the intact PREVIOUS one when CURRENT is missing or
        names a missing or unreadable build (then `degraded` says so)."""
        cur, prev = self.current_id(), self.previous_id()
        self.degraded = None
        if cur is not None and self._readable(cur):
            return cur
        if prev and prev != cur and self._readable(prev):
            what = f"build {cur} named by CURRENT is missing or unreadable" if cur else "the CURRENT pointer is missing"
            self.degraded = f"{what}; serving the previous build {prev}"
            log.error("index falls back to the previous build", extra={"current": cur, "previous": prev})
            return prev
        return cur

    def list_builds(self) -> list[IndexManifest]:
        out = []
        if self.builds_dir.is_dir():
            for d in sorted(self.builds_dir.iterdir()):
                if d.name.startswith(".") or not (d / "manifest.json").is_file():
                    continue
                try:
                    out.append(IndexManifest(**json.loads((d / MANIFEST).read_text())))
                except (ValueError, TypeError):
                    continue
        return out

    # -- load -------------------------------------------------------------
    def load_current(self, mmap: bool = False) -> tuple[VectorIndex, IndexManifest]:
        """The serving build (see serving_id); a CURRENT build that fails verification falls
        back to PREVIOUS too."""
        build_id = self.serving_id()
        if build_id is None:
            raise IndexNotFoundError(f"no index has been built yet in {self.root}; run `shopsearch index build`")
        try:
            return VectorIndex.load(self.build_dir(build_id), mmap=mmap)
        except IndexCorruptError as e:
            prev = self.previous_id()
            if self.degraded or not prev or prev == build_id or not self._readable(prev):
                raise
            log.error("index falls back to the previous build", extra={"current": build_id, "previous": prev,
                                                                       "error": str(e)})
            loaded = VectorIndex.load(self.build_dir(prev), mmap=mmap)
            self.degraded = f"build {build_id} named by CURRENT is corrupt; serving the previous build {prev}"
            return loaded

    def current_manifest(self) -> IndexManifest | None:
        build_id = self.serving_id()
        if build_id is None:
            return None
        try:
            return IndexManifest(**json.loads((self.build_dir(build_id) / "manifest.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    # -- beside the index: which content hash each id had, and the build's report --------
    def load_keys(self, build_id: str) -> dict[int, str]:
        """image id -> content sha256 of every vector a build serves (every build has them)."""
        return self.segment_keys(build_id).served()

    def segment_keys(self, build_id: str) -> SegmentKeys:
        """A build's keys per segment; a build without them is corrupt."""
        d = self.build_dir(build_id)
        try:
            base = read_keys(d / KEYS_FILE)
            if not (d / DELTA_KEYS_FILE).is_file():
                return SegmentKeys(base, frozenset(), {})
            dead = np.load(d / TOMBSTONES_FILE) if (d / TOMBSTONES_FILE).is_file() else ()
            return SegmentKeys(base, frozenset(int(i) for i in dead), read_keys(d / DELTA_KEYS_FILE))
        except (OSError, ValueError, KeyError) as e:
            raise IndexCorruptError(f"keys file of build {build_id} is unreadable: {e}") from None

    def served_keys(self, build_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, content hashes as S64) of every vector a build serves, by ascending id: the
        keys files' columns as arrays (what load_keys holds, without a dict of a million)."""
        d = self.build_dir(build_id)
        try:
            ids, keys = read_arrays(d / KEYS_FILE)
            if (d / TOMBSTONES_FILE).is_file():
                live = ~np.isin(ids, np.load(d / TOMBSTONES_FILE).astype(np.int64))
                ids, keys = ids[live], keys[live]
            if (d / DELTA_KEYS_FILE).is_file():
                delta_ids, delta_keys = read_arrays(d / DELTA_KEYS_FILE)
                ids, keys = np.concatenate([ids, delta_ids]), np.concatenate([keys, delta_keys])
        except (OSError, ValueError, KeyError) as e:
            raise IndexCorruptError(f"keys file of build {build_id} is unreadable: {e}") from None
        order = np.argsort(ids, kind="stable")
        return ids[order], keys[order]

    def segment_parts(self, build_id: str) -> tuple[np.ndarray, frozenset[int], dict[int, str]]:
        """A build's base segment ids (sorted array), its tombstones and its delta's id -> hash:
        what an update that keeps the base needs, without the base's hashes."""
        d = self.build_dir(build_id)
        try:
            base = read_ids(d / KEYS_FILE)
            if not (d / DELTA_KEYS_FILE).is_file():
                return base, frozenset(), {}
            dead = np.load(d / TOMBSTONES_FILE) if (d / TOMBSTONES_FILE).is_file() else ()
            return base, frozenset(int(i) for i in dead), read_keys(d / DELTA_KEYS_FILE)
        except (OSError, ValueError, KeyError) as e:
            raise IndexCorruptError(f"keys file of build {build_id} is unreadable: {e}") from None

    def served_ids(self, build_id: str) -> np.ndarray:
        """The sorted image ids a build serves, from the keys files' id columns alone (the
        hashes stay on disk): base minus tombstones, plus the delta."""
        d = self.build_dir(build_id)
        try:
            ids = read_ids(d / KEYS_FILE)
            if (d / TOMBSTONES_FILE).is_file():
                ids = np.setdiff1d(ids, np.load(d / TOMBSTONES_FILE).astype(np.int64))
            if (d / DELTA_KEYS_FILE).is_file():
                ids = np.union1d(ids, read_ids(d / DELTA_KEYS_FILE))
            return ids
        except (OSError, ValueError, KeyError) as e:
            raise IndexCorruptError(f"keys file of build {build_id} is unreadable: {e}") from None

    def load_report(self, build_id: str | None = None) -> dict | None:
        """The build report (counts, failures with reasons) written with a build, if any."""
        build_id = build_id or self.serving_id()
        try:
            return json.loads((self.build_dir(build_id) / REPORT_FILE).read_text()) if build_id else None
        except (OSError, ValueError):
            return None

    # -- publish ----------------------------------------------------------
    def publish(self, index: VectorIndex, manifest: IndexManifest, keys: Mapping[int, str],
                report: dict | None = None, extra_files: Mapping[str, str | bytes] | None = None,
                make_current: bool = True) -> IndexManifest:
        """Save, verify, and atomically make this build the serving one (`make_current` False:
        the shadow build, served only after `promote`).

        `keys` (image id -> content hash of its vector, for every id in the index) lets `index update` tell new, changed and
        removed images apart; `report` (counts, failures) is kept beside the index for people;
        `extra_files` (name -> text, e.g. the calibration) are written into the build before it serves.
        A write that fails (disk full, read-only mount) removes what it wrote, staging included,
        and raises IndexWriteError: the serving build is untouched and the next run has the room."""
        if index.segmented:
            raise ValueError("publish writes one segment; a segmented index is published by publish_delta")
        return self._write_build(manifest, lambda staging: stage_full(
            staging, index, manifest, keys, report, extra_files), make_current)

    def _write_build(self, manifest: IndexManifest, stage: Callable[[Path], IndexManifest],
                     make_current: bool = True) -> IndexManifest:
        """Stage a build (`stage` writes and verifies it), rename it into builds/, make it CURRENT."""
        staging = self.builds_dir / f".staging-{manifest.build_id}"
        try:
            self.builds_dir.mkdir(parents=True, exist_ok=True)
            self._drop_staging()  # left by a run killed while publishing: room for this one
            saved = stage(staging)
            return self._swap_in(staging, saved, make_current)
        except (OSError, RuntimeError) as e:  # faiss reports a failed write as RuntimeError
            shutil.rmtree(staging, ignore_errors=True)
            if self.current_id() != manifest.build_id:  # renamed into builds/, never made CURRENT
                shutil.rmtree(self.build_dir(manifest.build_id), ignore_errors=True)
            for tmp in self.root.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
            serving = self.current_id() or "none"
            raise IndexWriteError(f"cannot write index build {manifest.build_id} under {self.builds_dir}: "
                                  f"{IndexWriteError.reason_of(e)}; nothing was published (build {serving} is still "
                                  "serving): free some space and run the same command again") from None
        except IndexCorruptError:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def publish_delta(self, base_build: str, manifest: IndexManifest, change: Part | None, dead: np.ndarray,
                      delta_keys: Mapping[int, str], report: dict | None = None,
                      extra_files: Mapping[str, str | bytes] | None = None,
                      make_current: bool = True) -> IndexManifest:
        """Publish a build that shares `base_build`'s base segment and delta parts (hard links,
        nothing rewritten or re-hashed) with `dead` of its base ids tombstoned and `change`
        (this update's vectors, and the ids of the delta it drops) written as one new delta
        part; `delta_keys` are the delta's live ids and hashes afterwards. Same guarantees as
        `publish`: verified, atomic, rollback."""
        return self._write_build(manifest, lambda staging: stage_delta(
            staging, self.build_dir(base_build), manifest, change, dead, delta_keys, report, extra_files),
            make_current)

    def _drop_staging(self) -> None:
        for d in self.builds_dir.glob(".staging-*"):
            shutil.rmtree(d, ignore_errors=True)

    def _swap_in(self, staging: Path, saved: IndexManifest, make_current: bool = True) -> IndexManifest:
        final = self.build_dir(saved.build_id)
        os.replace(staging, final)
        if not make_current:
            self._write_pointer(SHADOW, saved.build_id)
            log.info("shadow index build staged", extra={"build_id": saved.build_id, "count": saved.count})
            self._prune()
            return saved
        old = self.serving_id()  # a broken CURRENT must not push the intact build out of PREVIOUS
        if old and old != saved.build_id:
            self._write_pointer("PREVIOUS", old)
        self._write_pointer("CURRENT", saved.build_id)
        log.info("index build published", extra={"build_id": saved.build_id, "count": saved.count})
        self._prune()
        return saved

    def rollback(self) -> str:
        """Serve the previous build again; returns its id."""
        prev, cur = self.previous_id(), self.current_id()
        if not prev or not (self.build_dir(prev) / "manifest.json").is_file():
            raise IndexNotFoundError("there is no previous index build to roll back to")
        VectorIndex.load(self.build_dir(prev))  # refuse to roll back onto a broken build
        self._write_pointer("CURRENT", prev)
        if cur:
            self._write_pointer("PREVIOUS", cur)
        return prev

    # -- shadow builds --------------------------------------------------------
    def shadow_id(self) -> str | None:
        return self._read_pointer(SHADOW)

    def promote(self) -> str:
        """Serve the shadow build (verified first); the serving one becomes PREVIOUS, so
        `rollback` undoes this. Returns the promoted build id."""
        shadow, cur = self.shadow_id(), self.current_id()
        if not shadow or not self._readable(shadow):
            raise IndexNotFoundError("there is no shadow build to promote; run `shopsearch index build --shadow`")
        VectorIndex.load(self.build_dir(shadow))  # refuse to promote a broken build
        if cur and cur != shadow:
            self._write_pointer("PREVIOUS", cur)
        self._write_pointer("CURRENT", shadow)
        (self.root / SHADOW).unlink(missing_ok=True)
        log.info("shadow index build promoted", extra={"build_id": shadow, "previous": cur})
        return shadow

    def _prune(self) -> None:
        """Keep CURRENT, PREVIOUS, SHADOW and the newest `keep` builds; drop stale staging dirs."""
        keep_ids = {self.current_id(), self.previous_id(), self.shadow_id()}
        builds = [m.build_id for m in self.list_builds()]
        keep_ids.update(builds[-self.keep:])
        self._drop_staging()
        for d in self.builds_dir.iterdir():
            if d.is_dir() and not d.name.startswith(".") and d.name not in keep_ids:
                shutil.rmtree(d, ignore_errors=True)

