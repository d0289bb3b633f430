"""At most a few photo searches compute at once in a worker; the others wait their turn a while.

A photo search is the heavy request (decoding the upload, the model, the index); health checks,
pages, thumbnails and products are light. Gunicorn gives each worker more threads than it lets
search (webapp/server.py: SPARE_THREADS), so a worker busy with searches still answers the light
requests on its spare threads instead of queueing them behind the searches: a liveness probe
with a 1 s timeout no longer fails a healthy but busy server. A search that finds every slot
taken waits up to `wait_s`; at most `max_waiting` wait at once (the spare threads less one), and
one more is told at once that the server is busy (503 with Retry-After): searches that all waited
would hold every spare thread, and gunicorn queues what comes next (health checks included)
behind them."""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator

from webapp.errors import ServerBusyError

log = logging.getLogger("shopsearch.web")

BUSY = "The search is busy right now. Please try again in a moment."


class SearchGate:
    """`slots` photo searches at once in this process (0: no limit, as under the development server),
    `max_waiting` more waiting for one (None: no limit)."""

    def __init__(self, slots: int = 0, wait_s: float = 30.0, max_waiting: int | None = None) -> None:
        if slots < 0 or wait_s < 0 or (max_waiting is not None and max_waiting < 0):
            raise ValueError("slots, wait_s and max_waiting must be at least 0")
        self.slots = slots
        self.wait_s = wait_s
        self.max_waiting = max_waiting
        self._sem = threading.BoundedSemaphore(slots) if slots else None
        self._lock = threading.Lock()
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Searches waiting for a slot now."""
        return self._waiting

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Hold a slot for the duration of a search; ServerBusyError when none frees in time."""
        if self._sem is None:
            yield
            return
        if not self._sem.acquire(blocking=False):
            with self._lock:
                full = self.max_waiting is not None and self._waiting >= self.max_waiting
                self._waiting += 0 if full else 1
            if full:
                log.warning("search refused: every slot busy and the queue full",
                            extra={"slots": self.slots, "waiting": self.max_waiting})
                raise ServerBusyError(BUSY)
            try:
                got = self._sem.acquire(timeout=self.wait_s)
            finally:
                with self._lock:
                    self._waiting -= 1
            if not got:
                log.warning("search refused: every slot busy", extra={"slots": self.slots, "waited_s": self.wait_s})
                raise ServerBusyError(BUSY)
        try:
            yield
        finally:
            self._sem.release()
