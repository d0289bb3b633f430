"""VectorCache: embeddings on disk keyed by (model fingerprint, image content sha256).

Written in append-only chunk files, each complete before it is renamed into place, so a
run killed at any moment loses at most the chunk in flight; the next run skips every
image already embedded. Because keys are content hashes, an unchanged image is never
embedded twice, whichever product or path it belongs to."""
from __future__ import annotations

import hashlib
import os
import uuid
import zipfile
from pathlib import Path

import numpy as np

from shopsearch.errors import IndexWriteError


def cache_dir(root: Path, fingerprint: str) -> Path:
    """The folder of one model's vectors under the cache root."""
    return Path(root) / hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def write_chunk_file(folder: Path, keys: list[str], vectors: np.ndarray) -> str:
    """Persist one chunk atomically (written, fsynced, then renamed into place); its file name.
    Safe to call from several processes or machines at once on one folder: every chunk has its
    own name."""
    name = f"chunk-{uuid.uuid1().hex}"
    tmp = Path(folder) / f".{name}.tmp.npz"
    try:
        np.savez(tmp, keys=np.array(keys, dtype="U64"), vectors=np.asarray(vectors, dtype=np.float32))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, Path(folder) / f"{name}.npz")
        return f"{name}.npz"
    except BaseException:  # disk full, a kill: never leave a partial chunk behind
        tmp.unlink(missing_ok=True)
        raise


#: beside the chunks: every cached key, sorted, with the chunk and row holding its vector
KEY_INDEX = "key-index.npz"
#: the key index is rewritten once this many chunks or keys are not in it: a small update's
#: chunk is cheaper to read again at the next start than a million-key index is to rewrite
SAVE_AFTER_CHUNKS, SAVE_AFTER_KEYS = 16, 50_000


def _chunk_keys(path: Path, dim: int) -> np.ndarray | None:
    """A chunk's keys (S64) without reading its vectors; None when the chunk is unreadable or
    of another dimension (treated as never written)."""
    try:
        with zipfile.ZipFile(path) as zf:
            with zf.open("vectors.npy") as fp:
                major, _ = np.lib.format.read_magic(fp)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, _ = read(fp)
        with np.load(path) as z:
            keys = z["keys"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if len(shape) != 2 or shape[1] != dim or shape[0] != len(keys):
        return None
    return keys.astype("S64")


class VectorCache:
    """Vectors by key, read chunk by chunk as they are asked for: a key index (`KEY_INDEX`,
    sorted keys -> chunk, row; extended with the chunks written since it was saved) answers
    which keys are cached without reading any vector, so an update of ten images reads the
    chunks holding those ten, not the gigabytes of a million-image catalogue."""

    def __init__(self, root: Path, fingerprint: str, dim: int) -> None:
        self.dir = cache_dir(root, fingerprint)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "FINGERPRINT").write_text(fingerprint + "\n")
        self.dim = dim
        self._names: list[str] = []  # chunk file names; a chunk's number is its place here
        self._sorted: np.ndarray | None = None  # S64 keys, ascending (None: not read yet)
        self._where = np.zeros((0, 2), np.int32)  # (chunk, row) of each sorted key
        self._recent: dict[str, tuple[int, int]] = {}  # keys put by this process
        self._vectors: dict[int, np.ndarray] = {}  # the chunks read so far

    # -- the key index ------------------------------------------------------------------------
    def _index(self) -> None:
        if self._sorted is not None:
            return
        names: list[str] = []
        keys, where = [np.zeros(0, "S64")], [np.zeros((0, 2), np.int32)]
        try:
            with np.load(self.dir / KEY_INDEX) as z:
                names, keys[0], where[0] = [str(n) for n in z["names"]], z["keys"], z["where"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # no index yet (or unreadable, cut short): every chunk's keys are read once
        on_disk = {f.name for f in self.dir.glob("chunk-*.npz")}
        if any(n not in on_disk for n in names):  # a chunk was removed by hand: index afresh
            names, keys, where = [], keys[:0] + [np.zeros(0, "S64")], [np.zeros((0, 2), np.int32)]
        known = set(names)
        added = 0
        for name in sorted(on_disk - known):
            k = _chunk_keys(self.dir / name, self.dim)
            if k is None:
                continue
            names.append(name)
            keys.append(k)
            where.append(np.stack([np.full(len(k), len(names) - 1, np.int32), np.arange(len(k), dtype=np.int32)], 1))
            added += len(k)
        self._names = names
        self._set(np.concatenate(keys), np.concatenate(where))
        if len(names) - len(known) >= SAVE_AFTER_CHUNKS or added >= SAVE_AFTER_KEYS:
            self._save_index()

    def _set(self, keys: np.ndarray, where: np.ndarray) -> None:
        keys, first = np.unique(keys, return_index=True)  # a key cached twice: either copy serves
        self._sorted, self._where = keys, where[first]

    def _save_index(self) -> None:
        tmp = self.dir / f".key-index.{uuid.uuid4().hex}.tmp.npz"  # ends in .npz: savez adds no suffix
        try:
            np.savez(tmp, names=np.array(self._names), keys=self._sorted, where=self._where)
            os.replace(tmp, self.dir / KEY_INDEX)
        except OSError:  # an index that cannot be saved is rebuilt from the chunks next time
            tmp.unlink(missing_ok=True)

    def save_index(self) -> None:
        """Fold the keys put by this process into the saved key index (once there are enough of
        them: SAVE_AFTER_KEYS)."""
        if len(self._recent) < SAVE_AFTER_KEYS:
            return
        where = np.array(list(self._recent.values()), np.int32).reshape(-1, 2)
        self._set(np.concatenate([self._sorted, np.array(list(self._recent), dtype="S64")]),
                  np.concatenate([self._where, where]))
        self._recent = {}
        self._save_index()

    def _locate(self, keys: list[str]) -> np.ndarray:
        """(chunk, row) per key, (-1, -1) where it is not cached."""
        self._index()
        out = np.full((len(keys), 2), -1, np.int32)
        if len(self._sorted) and keys:
            want = np.array(keys, dtype="S64")
            pos = np.minimum(np.searchsorted(self._sorted, want), len(self._sorted) - 1)
            hit = self._sorted[pos] == want
            out[hit] = self._where[pos[hit]]
        if self._recent:
            for j in np.flatnonzero(out[:, 0] < 0).tolist():
                if keys[j] in self._recent:
                    out[j] = self._recent[keys[j]]
        return out

    def present(self, keys: list[str]) -> np.ndarray:
        """Which of `keys` are cached (a bool per key), without reading any vector."""
        return self._locate(keys)[:, 0] >= 0

    def __contains__(self, key: str) -> bool:
        return bool(self.present([key])[0])

    def __len__(self) -> int:
        self._index()
        extra = [k for k in self._recent]
        return len(self._sorted) + int((~self._in_index(extra)).sum()) if extra else len(self._sorted)

    def _in_index(self, keys: list[str]) -> np.ndarray:
        if not len(self._sorted):
            return np.zeros(len(keys), bool)
        want = np.array(keys, dtype="S64")
        return self._sorted[np.minimum(np.searchsorted(self._sorted, want), len(self._sorted) - 1)] == want

    # -- vectors -----------------------------------------------------------------------------
    def _chunk(self, c: int) -> np.ndarray:
        if c not in self._vectors:
            with np.load(self.dir / self._names[c]) as z:
                self._vectors[c] = np.asarray(z["vectors"], dtype=np.float32)
        return self._vectors[c]

    def get_many(self, keys: list[str]) -> np.ndarray:
        """Vectors for `keys` (all must be present), in order; only their chunks are read."""
        where = self._locate(list(keys))
        if (where[:, 0] < 0).any():
            raise KeyError(keys[int(np.flatnonzero(where[:, 0] < 0)[0])])
        out = np.empty((len(keys), self.dim), np.float32)
        for c in np.unique(where[:, 0]):
            sel = where[:, 0] == c
            out[sel] = self._chunk(int(c))[where[sel, 1]]
        return out

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        """Persist a chunk (atomically) and make it visible."""
        if not keys:
            return
        self._index()
        vectors = np.asarray(vectors, dtype=np.float32)
        try:
            name = write_chunk_file(self.dir, keys, vectors)
        except OSError as e:  # disk full: the complete chunks before this one are kept
            raise IndexWriteError(f"cannot save embedded vectors under {self.dir}: {IndexWriteError.reason_of(e)}; "
                                  "the vectors saved before are kept: free some space and run the same command "
                                  "again") from None
        # the saved key index lacks this chunk until a later run reads its keys (one chunk's worth)
        self._names.append(name)
        c = len(self._names) - 1
        self._vectors[c] = vectors
        for j, k in enumerate(keys):
            self._recent[k] = (c, j)
