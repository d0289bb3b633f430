"""At most a few photo searches compute at once in a worker; the others wait their turn a while.

A photo search is the heavy request (decoding the upload, the model, the index); health checks,
pages, thumbnails and products are light. Gunicorn gives each worker more threads than it lets
search (webapp/server.py: SPARE_THREADS), so a worker busy with searches still answers the light
requests on its spare threads instead of queueing them behind the searches: a liveness probe
with a 1 s timeout no longer fails a healthy but busy server. A search that finds every slot
taken waits up to `wait_s`, then is told the server is busy (503 with Retry-After) rather than
queueing without end."""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator

from webapp.errors import ServerBusyError

log = logging.getLogger("shopsearch.web")


class SearchGate:
    """`slots` photo searches at once in this process (0: no limit, as under the development server)."""

    def __init__(self, slots: int = 0, wait_s: float = 30.0) -> None:
        if slots < 0 or wait_s < 0:
            raise ValueError("slots and wait_s must be at least 0")
        self.slots = slots
        self.wait_s = wait_s
        self._sem = threading.BoundedSemaphore(slots) if slots else None

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Hold a slot for the duration of a search; ServerBusyError when none frees in time."""
        if self._sem is None:
            yield
            return
        if not self._sem.acquire(timeout=self.wait_s):
            log.warning("search refused: every slot busy", extra={"slots": self.slots, "waited_s": self.wait_s})
            raise ServerBusyError("The search is busy right now. Please try again in a moment.")
        try:
            yield
        finally:
            self._sem.release()
