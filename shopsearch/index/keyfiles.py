"""The keys files beside an index segment: each vector's image id and the content sha256 it
was computed from (`keys.npz` for the base segment, `delta_keys.npz` for the delta)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

#: beside every index: image ids and the content sha256 each vector was computed from
KEYS_FILE = "keys.npz"
#: beside the delta segment: its image ids and content hashes (keys.npz then covers the base only)
DELTA_KEYS_FILE = "delta_keys.npz"


@dataclass(frozen=True)
class SegmentKeys:
    """A build's image id -> content hash, per segment (see shopsearch/index/segments.py)."""

    base: dict[int, str]  # the base segment, tombstoned ids included
    dead: frozenset[int]  # tombstoned ids of the base segment
    delta: dict[int, str]

    def served(self) -> dict[int, str]:
        """What the build serves: the live base entries, then the delta."""
        out = {i: k for i, k in self.base.items() if i not in self.dead} if self.dead else dict(self.base)
        out.update(self.delta)
        return out


def write_keys(path: Path, keys: Mapping[int, str]) -> None:
    ids = np.fromiter(keys.keys(), dtype=np.int64, count=len(keys))
    tmp = path.with_name(f".{path.name}")
    with open(tmp, "wb") as f:
        # hex digests as bytes: a quarter of the size of numpy's UTF-32 strings, read back as str
        np.savez(f, ids=ids, keys=np.array([keys[int(i)] for i in ids], dtype="S64"))
    os.replace(tmp, path)


def read_keys(path: Path) -> dict[int, str]:
    with np.load(path) as z:
        return dict(zip(z["ids"].tolist(), z["keys"].astype("U64").tolist()))


def read_ids(path: Path) -> np.ndarray:
    """The sorted ids of a keys file; sorted here only when the file's are not (an O(n) check
    instead of a sort of a million ids at every update)."""
    with np.load(path) as z:
        ids = z["ids"].astype(np.int64)
    return ids if bool(np.all(ids[1:] > ids[:-1])) else np.unique(ids)


def read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["ids"].astype(np.int64), z["keys"].astype("S64")
