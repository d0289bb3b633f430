"""Writing an index build into its staging folder, and checking what is on disk, before
IndexStore renames it into builds/ and makes it serve (shopsearch/index/store.py): a whole
build (one segment), or a build made by a small update that shares the base segment and the
earlier delta parts of the build it came from by hard link (shopsearch/index/segments.py)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from shopsearch.errors import IndexCorruptError
from shopsearch.index.keyfiles import DELTA_KEYS_FILE, KEYS_FILE, read_keys, write_keys
from shopsearch.index.segments import (DELTA_FILE, MAX_PARTS, TOMBSTONES_FILE, Part, compacted, legacy_part,
                                       link_or_copy, live_ids, part_name, read_part, write_delta, write_part)
from shopsearch.index.manifest import INDEX_FILE, MANIFEST, IndexManifest
from shopsearch.index.vector_index import VectorIndex

#: beside the index: the build report (counts, failed images with reasons)
REPORT_FILE = "report.json"


def stage_full(staging: Path, index: VectorIndex, manifest: IndexManifest, keys: Mapping[int, str],
               report: dict | None, extra_files: Mapping[str, str | bytes] | None) -> IndexManifest:
    """Write `index` (one segment), its keys and extras into `staging`, verify what is on disk
    and return the build's manifest."""
    saved = index.save(staging, manifest)
    write_keys(staging / KEYS_FILE, keys)
    write_extras(staging, report, extra_files)
    # Verify what is on disk, not what is in memory, before anyone can serve it.
    reloaded, check = VectorIndex.load(staging)
    if len(reloaded) != len(index) or check.count != saved.count:
        raise IndexCorruptError(f"build {manifest.build_id} failed verification after writing")
    if set(read_keys(staging / KEYS_FILE)) != set(int(i) for i in reloaded.ids()):
        raise IndexCorruptError(f"build {manifest.build_id}: keys file does not match the index ids")
    return saved


def stage_delta(staging: Path, src: Path, manifest: IndexManifest, change: Part | None, dead: np.ndarray,
                delta_keys: Mapping[int, str], report: dict | None,
                extra_files: Mapping[str, str | bytes] | None) -> IndexManifest:
    """Write into `staging` a build sharing build folder `src`'s base segment and delta parts
    (hard links) with `dead` tombstoned, `change` as one new delta part (the chain rewritten as
    one part past MAX_PARTS or when most of it is dead) and `delta_keys` as the delta's keys;
    verify what is on disk and return the build's manifest."""
    base = IndexManifest(**json.loads((src / MANIFEST).read_text()))
    base_count = base.base_count or base.count
    staging.mkdir(parents=True)
    for name in (INDEX_FILE, KEYS_FILE):
        link_or_copy(src / name, staging / name)
    parts = carry_parts(src, base, staging)
    chain = [read_part(staging / name, vectors=False) for name, _ in parts]
    if change is not None:
        chain.append(change)
    live, entries = len(live_ids(chain)), sum(len(p[0]) for p in chain)
    if parts and (len(parts) >= MAX_PARTS or entries - live > live):  # the chain rewritten as one part
        change = compacted([read_part(staging / name) for name, _ in parts] + ([change] if change else []),
                           manifest.dim)
        for name, _ in parts:
            (staging / name).unlink()
        parts = []
    name = part_name(manifest.build_id)
    part_sha, tomb_sha = write_delta(staging, name, change, dead)
    if part_sha:
        parts.append([name, part_sha])
    saved = replace(manifest, count=base_count - len(dead) + live, index_sha256=base.index_sha256,
                    delta_sha256="", delta_parts=parts, tombstones_sha256=tomb_sha, base_count=base_count,
                    delta_count=live, dead_count=len(dead),
                    # the graph is the base's: so are its probed efSearch and what the probe saw
                    ef_search=base.ef_search, recall_probe=base.recall_probe)
    write_keys(staging / DELTA_KEYS_FILE, delta_keys)
    (staging / MANIFEST).write_text(json.dumps(asdict(saved), indent=2))
    write_extras(staging, report, extra_files)
    # Verify what is on disk: the shared base and parts are the very files verified when
    # they were published (same inodes); the new part is read back in full.
    if not os.path.samefile(src / INDEX_FILE, staging / INDEX_FILE) and \
            VectorIndex.load(staging).base_count != base_count:
        raise IndexCorruptError(f"build {manifest.build_id}: the copied base segment does not verify")
    if part_sha and len(read_part(staging / name, part_sha)[0]) != len(change[0]):  # type: ignore[index]
        raise IndexCorruptError(f"build {manifest.build_id}: its delta part failed verification after writing")
    served = live_ids([read_part(staging / n, vectors=False) for n, _ in parts])
    got_dead = np.load(staging / TOMBSTONES_FILE) if tomb_sha else ()
    keys = set(read_keys(staging / DELTA_KEYS_FILE))
    if len(served) != live or len(got_dead) != len(dead) or set(served.tolist()) != keys \
            or keys != set(delta_keys):
        raise IndexCorruptError(f"build {manifest.build_id} failed verification after writing")
    return saved


def carry_parts(src: Path, base: IndexManifest, staging: Path) -> list[list[str]]:
    """The delta parts of build `src` shared into `staging` by hard link; a delta of a build
    made before parts (one FAISS file) is written once as a part."""
    if base.delta_sha256:
        name = part_name(base.build_id)
        return [[name, write_part(staging / name, legacy_part(src / DELTA_FILE))]]
    for name, _ in base.delta_parts:
        link_or_copy(src / name, staging / name)
    return [list(p) for p in base.delta_parts]


def write_extras(staging: Path, report: dict | None, extra_files: Mapping[str, str | bytes] | None) -> None:
    """The build report and the extra files (name -> text or bytes) beside the index."""
    if report is not None:
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str))
    for name, content in (extra_files or {}).items():
        if isinstance(content, bytes):
            (staging / name).write_bytes(content)
        else:
            (staging / name).write_text(content)
