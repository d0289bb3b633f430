"""Worker pools that outlive a worker's death.

A decode process can die without raising anything: an image decoder crashing on a hostile
file (SIGSEGV), the kernel's OOM killer. ProcessPoolExecutor then fails every future that
was pending with BrokenProcessPool, which would stop an indexing run over one file.
`RespawningPool` starts a fresh pool and runs the interrupted jobs again, one task each;
a job that kills a worker while it runs alone is the culprit and becomes a failure report
(through `blame`), like any other bad image. Only deaths in a row with nothing succeeding
between them mean something else is wrong (memory, a broken library): after
`max_deaths_in_a_row` of those it raises WorkerCrashError (the run is resumable)."""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Generic, Sequence, TypeVar

from shopsearch.errors import WorkerCrashError

log = logging.getLogger("shopsearch.workers")

J = TypeVar("J")  # one job (a path, a (slot, path) pair...)
R = TypeVar("R")  # the result of one job

#: what a job that killed its worker is reported as
DIED = "the decoding process died on this image (a crash in the decoder, or killed by the system)"
MAX_DEATHS_IN_A_ROW = 8


def exit_with_parent(poll_s: float = 0.5) -> None:
    """In a pool worker: end this process once the process that started it is gone. A parent
    killed with SIGKILL never shuts its pool down, and its workers would otherwise wait for
    work forever, each holding the memory of a forked indexer. A watching thread rather than
    PR_SET_PDEATHSIG, which fires when the *thread* that forked the worker ends."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class RespawningPool(Generic[J, R]):
    """Runs `fn(jobs) -> [result per job]` tasks on the executor that `start()` makes,
    replacing it when a worker dies. `blame(job, reason)` is the result a culprit job gets."""

    def __init__(self, start: Callable[[], Executor], fn: Callable[[list[J]], list[R]],
                 blame: Callable[[J, str], R], max_deaths_in_a_row: int = MAX_DEATHS_IN_A_ROW) -> None:
        self._start, self._fn, self._blame = start, fn, blame
        self.max_deaths_in_a_row = max_deaths_in_a_row
        self.executor = start()
        self.generation = 0  # bumped per replacement, so one death replaces the pool once
        self.respawns = 0
        self.culprits = 0
        self._in_a_row = 0
        self._tasks: dict[Future, tuple[int, list[J]]] = {}

    def submit(self, jobs: Sequence[J]) -> Future:
        """Start one task over `jobs`; read it back with `result`."""
        jobs = list(jobs)
        try:
            fut = self.executor.submit(self._fn, jobs)
        except BrokenProcessPool:  # a death noticed before any of its tasks was read back
            self._replace(self.generation)
            fut = self.executor.submit(self._fn, jobs)
        self._tasks[fut] = (self.generation, jobs)
        return fut

    def result(self, fut: Future) -> list[R]:
        """The task's results; if its worker pool broke, its jobs again on a fresh pool."""
        gen, jobs = self._tasks.pop(fut)
        try:
            out = fut.result()
        except BrokenProcessPool:
            self._replace(gen)
            return self.run_each(jobs)
        self._in_a_row = 0
        return out

    def run_each(self, jobs: Sequence[J]) -> list[R]:
        """One task per job, all at once; those caught in another death run again one at a
        time, where a death can only be their own."""
        futs = [self.submit([j]) for j in jobs]
        out: list[R | None] = [None] * len(futs)
        suspects = []
        for i, f in enumerate(futs):
            gen, _ = self._tasks.pop(f)
            try:
                out[i] = f.result()[0]
            except BrokenProcessPool:
                self._replace(gen)
                suspects.append(i)
        for i in suspects:
            f = self.submit([jobs[i]])
            gen, _ = self._tasks.pop(f)
            try:
                out[i] = f.result()[0]
                self._in_a_row = 0
            except BrokenProcessPool:
                self._replace(gen)
                self.culprits += 1
                self._in_a_row += 1
                log.warning("worker died on a job", extra={"job": str(jobs[i])[:300]})
                if self._in_a_row >= self.max_deaths_in_a_row:
                    raise WorkerCrashError(
                        f"worker processes died on {self._in_a_row} jobs in a row, each run alone (last: "
                        f"{str(jobs[i])[:200]}): likely out of memory or a broken decoder library; "
                        "try fewer workers. Finished work is kept and the run can be resumed.") from None
                out[i] = self._blame(jobs[i], DIED)
        return out  # type: ignore[return-value]

    def _replace(self, gen: int) -> None:
        if gen != self.generation:  # this death already got its new pool
            return
        log.warning("worker process died; starting a new pool", extra={"respawns": self.respawns + 1})
        self.executor.shutdown(wait=True, cancel_futures=True)
        # the tasks of the dead pool are still read back by their owners (result()), which
        # runs their jobs again: only the bookkeeping of this pool's generation changes
        self.executor = self._start()
        self.generation += 1
        self.respawns += 1

    def shutdown(self) -> None:
        self._tasks.clear()
        self.executor.shutdown(wait=True, cancel_futures=True)
