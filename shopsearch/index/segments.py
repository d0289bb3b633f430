"""Index builds in segments: a base segment, a small delta segment and a tombstone file.

A build directory holds the base segment (`index.faiss`, with `keys.npz`), shared with the
builds before it by hard link while it is unchanged; optionally `delta.faiss` (an exact flat
index of the vectors added or changed since the base was built, with `delta_keys.npz`) and
`tombstones.npy` (ids of the base segment whose vector is no longer served: removed images,
and changed ones whose new vector is in the delta). An update of k images writes the delta and
tombstones only, never the base: see indexer/update_plan.py for when the segments are
compacted into a fresh base. Invariant: no id is both live in the base and in the delta."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import faiss
import numpy as np

DELTA_FILE = "delta.faiss"
TOMBSTONES_FILE = "tombstones.npy"


def new_delta(dim: int) -> faiss.Index:
    """An empty delta segment: exact inner-product search, ids kept, removable."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def write_delta(directory: Path, delta: faiss.Index | None, dead: np.ndarray) -> tuple[str, str]:
    """Write the delta segment and tombstones into `directory`; (delta sha256, tombstones sha256),
    "" for a part that is empty and so not written."""
    delta_sha = tomb_sha = ""
    if delta is not None and delta.ntotal:
        path = directory / DELTA_FILE
        faiss.write_index(delta, str(path))
        delta_sha = sha256_file(path)
    if len(dead):
        path = directory / TOMBSTONES_FILE
        with open(path, "wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, np.ascontiguousarray(np.unique(dead), dtype=np.int64))
        tomb_sha = sha256_file(path)
    return delta_sha, tomb_sha


def read_delta(directory: Path, delta_sha: str, tomb_sha: str,
               verify: bool = True) -> tuple[faiss.Index | None, np.ndarray]:
    """The delta segment (None when the build has none) and the sorted tombstoned ids.
    OSError / ValueError / RuntimeError when a file is missing, altered or unreadable."""
    delta = None
    if delta_sha:
        path = directory / DELTA_FILE
        if verify and sha256_file(path) != delta_sha:
            raise ValueError(f"{path} does not match its manifest checksum")
        delta = faiss.read_index(str(path))
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
