"""CPU decode lane of the GPU executor: worker processes read and decode their share of
each batch (PIL draft scaling, EXIF orientation) straight into a shared memory-mapped
arena, so the host process only copies finished pixels to the GPU.

Why not return arrays from the workers: unpickling ~230 KB per image in the host process
holds its GIL, which its read threads and nvJPEG calls need (with pickling decode
processes the run was slower than nvJPEG alone: benchmarks/RESULTS.md). Here a result is
two integers per image."""
from __future__ import annotations

import faulthandler
import multiprocessing as mp
import os
import sys
import tempfile
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from shopsearch.embedding.items import DRAFT_SIZE, WorkItem, decode
from shopsearch.workers import RespawningPool, exit_with_parent

#: decode_source never returns a side longer than this, so one slot holds any image
SLOT_SIDE = 2 * DRAFT_SIZE
SLOT_BYTES = SLOT_SIDE * SLOT_SIDE * 3
#: images per task: enough to amortise the task round trip, small enough to spread a batch
CHUNK = 16

_arena: np.ndarray | None = None
_draft: int | None = None
_fork_lock = threading.Lock()


def _init(path: str | None, slots: int, draft_size: int | None) -> None:
    """Worker start. Forked workers inherit the parent's shared mapping (path None), so the
    file can be unlinked at once and a killed run leaves nothing in /dev/shm; spawned ones
    map the file by name."""
    global _arena, _draft
    faulthandler.disable()  # the parent's crash journal fault file is not this process's
    exit_with_parent()  # a kill -9'd indexer leaves no decode workers behind
    if path is not None:
        _arena = np.memmap(path, dtype=np.uint8, mode="r+", shape=(slots, SLOT_BYTES))
        _draft = draft_size
    try:  # one decode process must not start a team of torch threads of its own
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _decode_into(jobs: list[tuple[int, str]]) -> list[tuple[int, tuple[int, int] | str]]:
    """Worker: decode each (slot, path) into its slot; (slot, (h, w)) or (slot, failure reason)."""
    assert _arena is not None
    out: list[tuple[int, tuple[int, int] | str]] = []
    for slot, path in jobs:
        _, img = decode(WorkItem("", path), _draft)
        if isinstance(img, str):
            out.append((slot, img))
            continue
        a = np.asarray(img, dtype=np.uint8)  # decode_source returns RGB
        if a.nbytes > SLOT_BYTES:  # cannot happen (decode_source caps the size): report, never overflow
            out.append((slot, f"decoded image too large for the decode arena: {a.shape}"))
            continue
        _arena[slot, :a.nbytes] = a.reshape(-1)
        out.append((slot, (int(a.shape[0]), int(a.shape[1]))))
    return out


class CpuDecodeLane:
    """`workers` decode processes writing into `slots` slots of a memory-mapped file
    (in /dev/shm where there is one). Callers own slot numbering: a slot may be reused
    once its pixels were read back with `pixels`."""

    def __init__(self, workers: int, slots: int, draft_size: int | None) -> None:
        shm = Path("/dev/shm")
        fd, path = tempfile.mkstemp(prefix="shopsearch-decode-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK)
                                    else None)
        os.close(fd)
        self.path: str | None = path
        self.slots = slots
        # sparse: only the bytes decoded images touch take memory
        self.arena = np.memmap(path, dtype=np.uint8, mode="w+", shape=(slots, SLOT_BYTES))
        self._fork = sys.platform.startswith("linux")  # workers start in milliseconds, inherit the mapping
        self._workers, self._draft_size = workers, draft_size
        # a worker that dies (decoder crash, OOM killer) is replaced, and the image it died on
        # reported as a failure of its slot (shopsearch.workers)
        self.pool: RespawningPool[tuple[int, str], tuple[int, tuple[int, int] | str]] = RespawningPool(
            self._start_pool, _decode_into, lambda job, why: (job[0], why))
        if self._fork:
            self._unlink()

    def _start_pool(self) -> ProcessPoolExecutor:
        global _arena, _draft
        with _fork_lock:
            _arena, _draft = self.arena, self._draft_size  # what forked workers inherit
            pool = ProcessPoolExecutor(self._workers, mp_context=mp.get_context("fork" if self._fork else "spawn"),
                                       initializer=_init,
                                       initargs=(None if self._fork else self.path, self.slots, self._draft_size))
            # fork starts every process at the first task and never again: start them now,
            # before the caller's threads exist (forking a busy multi-threaded process can
            # copy a held lock; a replacement pool after a worker's death is the exception),
            # after which the file is no longer needed by name
            list(pool.map(abs, range(self._workers)))
        return pool

    def submit(self, jobs: Sequence[tuple[int, str]]) -> list[Future]:
        """Decode (slot, path) jobs in chunks; read each future back with `result`."""
        return [self.pool.submit(jobs[i:i + CHUNK]) for i in range(0, len(jobs), CHUNK)]

    def result(self, fut: Future) -> list[tuple[int, tuple[int, int] | str]]:
        """[(slot, (h, w) | failure reason)] of one submitted chunk."""
        return self.pool.result(fut)

    def pixels(self, slot: int, shape: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) uint8 view of a decoded slot (valid until the slot is reused)."""
        h, w = shape
        return self.arena[slot, :h * w * 3].reshape(h, w, 3)

    def close(self) -> None:
        global _arena
        self.pool.shutdown()
        with _fork_lock:
            if _arena is self.arena:  # the parent's copy of what workers inherited: let it go
                _arena = None
        del self.arena
        self._unlink()

    def _unlink(self) -> None:
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.path = None
