"""Concurrent small encode calls (a web server's queries) run as one model batch.

Why: each query is a batch of one. Run side by side from a server's request threads, the
forwards compete for the same cores (every one with its own intra-op thread team, which
stalls at every barrier once the cores are oversubscribed), and a batch of one uses a CPU
poorly. Here the first caller runs its batch at once, with no added wait; callers that
arrive while a batch is running are queued and the next of them runs all queued inputs as
one batch. A lone caller is therefore as fast as before, and N concurrent ones share one
forward."""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np


class _Job:
    __slots__ = ("x", "out", "error", "done")

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.out: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class Coalescer:
    """`coalescer(batch)` returns `run(batch)`, with concurrent calls merged into one `run`
    of at most `max_rows` rows (a single larger call runs alone). `batches` counts the
    calls of `run` (for tests and logs)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_rows: int = 16) -> None:
        self._run = run
        self._max_rows = max(1, int(max_rows))
        self._model_lock = threading.Lock()  # held while a merged batch runs
        self._queue_lock = threading.Lock()  # guards _pending
        self._pending: list[_Job] = []
        self.batches = 0

    @property
    def queued(self) -> int:
        """Calls waiting for the batch that runs now to finish."""
        with self._queue_lock:
            return len(self._pending)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        job = _Job(batch)
        with self._queue_lock:
            self._pending.append(job)
        while True:
            with self._model_lock:
                if not job.done:  # nobody ran it while we waited: run the queue (oldest first)
                    self._run_pending()
                if job.done:
                    break
        if job.error is not None:
            raise job.error
        assert job.out is not None
        return job.out

    def _run_pending(self) -> None:
        with self._queue_lock:
            take, rows = [], 0
            while self._pending and (not take or rows + len(self._pending[0].x) <= self._max_rows):
                job = self._pending.pop(0)
                take.append(job)
                rows += len(job.x)
        if not take:
            return
        try:
            self.batches += 1
            out = self._run(take[0].x if len(take) == 1 else np.concatenate([j.x for j in take]))
            start = 0
            for j in take:
                j.out = out[start:start + len(j.x)]
                start += len(j.x)
        except BaseException as e:  # noqa: BLE001 - every caller of the merged batch gets the error
            for j in take:
                j.error = e
        finally:
            for j in take:
                j.done = True
