"""Index builds in segments: a base segment, a small delta segment and a tombstone file.

A build directory holds the base segment (`index.faiss`, with `keys.npz`), shared with the
builds before it by hard link while it is unchanged; optionally a delta segment (the exact
flat vectors added or changed since the base was built, with `delta_keys.npz`) and
`tombstones.npy` (ids of the base segment whose vector is no longer served: removed images,
and changed ones whose new vector is in the delta). An update of k images writes a delta
part and the tombstones only, never the base: see indexer/update_plan.py for when the
segments are compacted into a fresh base. Invariant: no id is both live in the base and in
the delta.

The delta segment is a chain of immutable part files (`delta-<build id>.npz`): each update
writes one part holding only its own k vectors, plus the ids of earlier parts it drops
(removed, or changed again), and shares the earlier parts by hard link, as the base is
shared. Applied in order (a later part's drops and re-adds win), the parts give the delta.
So an update writes O(k) vector bytes however large the delta has grown, and the files of a
published build are never written again (rollback, crash and concurrent readers are as safe
as for the base). The chain is rewritten as one part once it passes MAX_PARTS files or holds
more dropped entries than live ones: an O(delta) write at most every MAX_PARTS updates.
The keys and tombstones beside it (8 to 72 bytes an entry, against 4 x dim for a vector)
are still written whole."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import faiss
import numpy as np

#: a whole delta segment in one FAISS file: builds made before delta parts (read, never written)
DELTA_FILE = "delta.faiss"
TOMBSTONES_FILE = "tombstones.npy"
#: parts in a delta chain before it is rewritten as one
MAX_PARTS = 8

#: one delta part: (image ids, their vectors (n, dim) float32, ids of earlier parts it drops)
Part = tuple[np.ndarray, np.ndarray, np.ndarray]


def part_name(build_id: str) -> str:
    return f"delta-{build_id}.npz"


def new_delta(dim: int) -> faiss.Index:
    """An empty delta segment: exact inner-product search, ids kept, removable."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def delta_part(delta: faiss.Index) -> Part:
    """A whole delta segment (IndexIDMap2 over a flat index) as one part that drops nothing."""
    ids = faiss.vector_to_array(delta.id_map).astype(np.int64)
    vectors = delta.index.reconstruct_n(0, delta.ntotal) if delta.ntotal else np.zeros((0, delta.d), np.float32)
    return ids, vectors, np.empty(0, np.int64)


def legacy_part(path: Path) -> Part:
    """The delta of a build made before parts (one FAISS file) as one part."""
    return delta_part(faiss.read_index(str(path)))


def write_part(path: Path, part: Part) -> str:
    """Write one delta part; its sha256."""
    ids, vectors, drop = part
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, ids=np.ascontiguousarray(ids, dtype=np.int64),
                 vectors=np.ascontiguousarray(vectors, dtype=np.float32),
                 drop=np.ascontiguousarray(drop, dtype=np.int64))
        f.flush()
        os.fsync(f.fileno())
    return sha256_file(path)


def read_part(path: Path, sha: str | None = None, vectors: bool = True) -> Part:
    """One delta part (`vectors` False: an empty vector array, the ids only); ValueError when
    it does not match `sha`."""
    if sha is not None and sha256_file(path) != sha:
        raise ValueError(f"{path} does not match its manifest checksum")
    with np.load(path) as z:
        v = z["vectors"].astype(np.float32) if vectors else np.zeros((0, 0), np.float32)
        return z["ids"].astype(np.int64), v, z["drop"].astype(np.int64)


def live_entries(parts: list[Part]) -> list[np.ndarray]:
    """Per part, a mask of its entries still live: not dropped nor re-added by a later part."""
    masks: list[np.ndarray] = [np.zeros(0, bool)] * len(parts)
    killed = np.empty(0, np.int64)
    for j in range(len(parts) - 1, -1, -1):
        ids, _, drop = parts[j]
        masks[j] = ~np.isin(ids, killed)
        killed = np.union1d(killed, np.union1d(ids, drop))
    return masks


def live_ids(parts: list[Part]) -> np.ndarray:
    """The ids a chain of parts serves, sorted."""
    masks = live_entries(parts)
    return np.sort(np.concatenate([p[0][m] for p, m in zip(parts, masks)] or [np.empty(0, np.int64)]))


def assemble(parts: list[Part], dim: int) -> faiss.Index | None:
    """The delta segment a chain of parts gives (None when nothing is live)."""
    masks = live_entries(parts)
    ids = np.concatenate([p[0][m] for p, m in zip(parts, masks)] or [np.empty(0, np.int64)])
    if not len(ids):
        return None
    delta = new_delta(dim)
    delta.add_with_ids(np.ascontiguousarray(np.concatenate([p[1][m] for p, m in zip(parts, masks)]),
                                            dtype=np.float32), ids)
    return delta


def compacted(parts: list[Part], dim: int) -> Part:
    """A chain of parts rewritten as one part of its live entries."""
    delta = assemble(parts, dim)
    return delta_part(delta) if delta is not None else (np.empty(0, np.int64), np.zeros((0, dim), np.float32),
                                                        np.empty(0, np.int64))


def write_delta(directory: Path, name: str, part: Part | None, dead: np.ndarray) -> tuple[str, str]:
    """Write one delta part (`name`) and the tombstones into `directory`; (part sha256,
    tombstones sha256), "" for what is empty and so not written."""
    part_sha = tomb_sha = ""
    if part is not None and (len(part[0]) or len(part[2])):
        part_sha = write_part(directory / name, part)
    if len(dead):
        path = directory / TOMBSTONES_FILE
        with open(path, "wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, np.ascontiguousarray(np.unique(dead), dtype=np.int64))
        tomb_sha = sha256_file(path)
    return part_sha, tomb_sha


def read_delta(directory: Path, dim: int, parts: list[list[str]], delta_sha: str, tomb_sha: str,
               verify: bool = True) -> tuple[faiss.Index | None, np.ndarray]:
    """The delta segment (None when the build has none) from its parts ([name, sha256] each)
    or, for a build made before parts, its one FAISS file; and the sorted tombstoned ids.
    OSError / ValueError / RuntimeError when a file is missing, altered or unreadable."""
    delta = None
    if delta_sha:
        path = directory / DELTA_FILE
        if verify and sha256_file(path) != delta_sha:
            raise ValueError(f"{path} does not match its manifest checksum")
        delta = faiss.read_index(str(path))
    elif parts:
        delta = assemble([read_part(directory / name, sha if verify else None) for name, sha in parts], dim)
    dead = np.empty(0, np.int64)
    if tomb_sha:
        path = directory / TOMBSTONES_FILE
        if verify and sha256_file(path) != tomb_sha:
            raise ValueError(f"{path} does not match its manifest checksum")
        dead = np.load(path).astype(np.int64)
    return delta, dead


def link_or_copy(src: Path, dst: Path) -> None:
    """Share an unchanged segment file with the build it comes from (a copy where the file
    system has no hard links). Segment files are never written in place, so sharing is safe."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def merge_best(s1: np.ndarray, i1: np.ndarray, s2: np.ndarray, i2: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of two (scores, ids) result sets per query row; empty slots (id -1) last."""
    scores = np.concatenate([s1, s2], axis=1)
    ids = np.concatenate([i1, i2], axis=1)
    scores = np.where(ids < 0, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out_s, out_i = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    if out_s.shape[1] < k:  # fewer candidates than k in both segments together
        pad = k - out_s.shape[1]
        out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
    return out_s.astype(np.float32), out_i.astype(np.int64)
