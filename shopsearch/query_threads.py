"""How many intra-op threads a shopper's query runs the model on: every core while it is the
only search in flight on the server, an even share of them while others are.

A lone query on one thread leaves the other cores idle: on 2 cores its forward pass is most of a
search's time. Under concurrent load each core already has a search to run, and a second thread
per search would only contend with them. So each search is counted in flight across all the
server's worker processes (InFlight: one counter per process in shared memory, made before the
workers fork) and sets its own thread's torch intra-op count from that total. torch's count is
OpenMP's per-thread setting, so one request thread changing it leaves the others' alone; the
vectors are the same on any count (tests/test_query_threads.py checks it)."""
from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import sys
import threading
from typing import Iterator

#: int32 cells per slot: the owner process's pid, its searches in flight
_CELLS = 2


class InFlight:
    """Searches in flight across the processes of one server.

    One slot (pid, count) per process in anonymous shared memory: made before a server forks its
    workers, it is shared by all of them; each process claims a free slot on its first search and
    writes only its own count (under a thread lock), so reading the total takes no lock. A
    process without a slot (more processes than slots) counts only its own searches."""

    def __init__(self, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self._slots = slots
        self._mem = mmap.mmap(-1, 4 * _CELLS * slots)  # MAP_SHARED | MAP_ANONYMOUS: kept across fork
        self._cells = memoryview(self._mem).cast("i")
        self._claim = multiprocessing.Lock()  # a semaphore shared across fork: one claim at a time
        self._lock = threading.Lock()
        self._pid = 0  # the process whose slot _slot is (a forked child must claim its own)
        self._slot = -1
        self._own = 0  # this process's count when it has no slot

    def _my_slot(self) -> int:
        pid = os.getpid()
        if self._pid != pid:
            self._pid, self._slot, self._own = pid, -1, 0
            with self._claim:
                for i in range(self._slots):
                    owner = self._cells[_CELLS * i]
                    if owner in (0, pid) or not _alive(owner):
                        self._cells[_CELLS * i], self._cells[_CELLS * i + 1] = pid, 0
                        self._slot = i
                        break
        return self._slot

    def enter(self) -> int:
        """Count one more search of this process; returns the server's total, this one included."""
        with self._lock:
            slot = self._my_slot()
            if slot < 0:
                self._own += 1
                return self._own + self.total()
            self._cells[_CELLS * slot + 1] += 1
        return self.total()

    def leave(self) -> None:
        """One search of this process is over."""
        with self._lock:
            slot = self._my_slot()
            if slot < 0:
                self._own = max(0, self._own - 1)
            else:
                self._cells[_CELLS * slot + 1] = max(0, self._cells[_CELLS * slot + 1] - 1)

    def total(self) -> int:
        """Searches in flight in every process with a slot."""
        return sum(max(0, self._cells[_CELLS * i + 1]) for i in range(self._slots))

    def release(self, pid: int) -> None:
        """Free the slot of process `pid`, which has exited (the server's master calls it): a
        worker killed mid-search must not leave its count behind."""
        with self._claim:
            for i in range(self._slots):
                if self._cells[_CELLS * i] == pid:
                    self._cells[_CELLS * i], self._cells[_CELLS * i + 1] = 0, 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class QueryThreads:
    """Sets the calling thread's torch intra-op threads for one search: the `cores` divided
    between the searches in flight, at least one each."""

    def __init__(self, cores: int, in_flight: InFlight | None = None) -> None:
        self.cores = max(1, cores)
        self.in_flight = in_flight if in_flight is not None else InFlight()

    def threads_for(self, in_flight: int) -> int:
        """Intra-op threads for a search while `in_flight` searches (itself included) run."""
        return max(1, self.cores // max(1, in_flight))

    @contextlib.contextmanager
    def search(self) -> Iterator[int]:
        """Count this search in flight while the block runs, with this thread's torch threads set
        from the total as it enters; yields that thread count."""
        n = self.threads_for(self.in_flight.enter())
        try:
            set_thread_count(n)
            yield n
        finally:
            self.in_flight.leave()


def set_thread_count(n: int) -> None:
    """torch's intra-op threads for the calling thread (OpenMP's count is per thread; torch also
    drops its oneDNN primitive cache on every set, so an unchanged count is not set again). A
    process that has not loaded torch (a model-free embedder) has nothing to set."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
