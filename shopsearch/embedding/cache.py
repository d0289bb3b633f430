"""VectorCache: embeddings on disk keyed by (model fingerprint, image content sha256).

Written in append-only chunk files, each complete before it is renamed into place, so a
run killed at any moment loses at most the chunk in flight; the next run skips every
image already embedded. Because keys are content hashes, an unchanged image is never
embedded twice, whichever product or path it belongs to."""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np

from shopsearch.errors import IndexWriteError


def cache_dir(root: Path, fingerprint: str) -> Path:
    """The folder of one model's vectors under the cache root."""
    return Path(root) / hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def write_chunk_file(folder: Path, keys: list[str], vectors: np.ndarray) -> None:
    """Persist one chunk atomically (written, fsynced, then renamed into place). Safe to call
    from several processes or machines at once on one folder: every chunk has its own name."""
    name = f"chunk-{uuid.uuid1().hex}"
    tmp = Path(folder) / f".{name}.tmp.npz"
    try:
        np.savez(tmp, keys=np.array(keys, dtype="U64"), vectors=np.asarray(vectors, dtype=np.float32))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, Path(folder) / f"{name}.npz")
    except BaseException:  # disk full, a kill: never leave a partial chunk behind
        tmp.unlink(missing_ok=True)
        raise


class VectorCache:
    def __init__(self, root: Path, fingerprint: str, dim: int) -> None:
        self.dir = cache_dir(root, fingerprint)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "FINGERPRINT").write_text(fingerprint + "\n")
        self.dim = dim
        self._keys: dict[str, int] = {}
        self._blocks: list[np.ndarray] = []
        self._rows = 0
        # read at first use: a build with nothing to do never needs the vectors (gigabytes at a million)
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for f in sorted(self.dir.glob("chunk-*.npz")):
            try:
                with np.load(f) as z:
                    keys, vecs = z["keys"], z["vectors"]
            except (OSError, ValueError, KeyError, EOFError):
                continue  # a chunk that cannot be read is treated as never written
            if vecs.ndim != 2 or vecs.shape[1] != self.dim:
                continue
            self._append(keys, vecs)

    def _append(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        for j, k in enumerate(keys):
            self._keys[str(k)] = self._rows + j
        self._blocks.append(np.asarray(vecs, dtype=np.float32))
        self._rows += len(vecs)
        if len(self._blocks) > 64:
            self._blocks = [np.concatenate(self._blocks)]

    def __contains__(self, key: str) -> bool:
        self._load()
        return key in self._keys

    def __len__(self) -> int:
        self._load()
        return len(self._keys)

    def get_many(self, keys: list[str]) -> np.ndarray:
        """Vectors for `keys` (all must be present), in order."""
        self._load()
        if len(self._blocks) > 1:
            self._blocks = [np.concatenate(self._blocks)]
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        rows = np.fromiter((self._keys[k] for k in keys), dtype=np.int64, count=len(keys))
        return self._blocks[0][rows]

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        """Persist a chunk (atomically) and make it visible."""
        if not keys:
            return
        self._load()  # the rows already on disk are numbered first
        vectors = np.asarray(vectors, dtype=np.float32)
        try:
            write_chunk_file(self.dir, keys, vectors)
        except OSError as e:  # disk full: the complete chunks before this one are kept
            raise IndexWriteError(f"cannot save embedded vectors under {self.dir}: {IndexWriteError.reason_of(e)}; "
                                  "the vectors saved before are kept: free some space and run the same command "
                                  "again") from None
        self._append(np.array(keys), vectors)
