"""LogWriter: writes logged searches on a background thread, so a search answers without
waiting for the database (one small transaction per search, after the response is sent
on its way). A full queue drops the entry with a warning rather than slow searches down; a
database that has gone away costs a warning per search, never a failed search."""
from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from shopsearch.errors import ShopSearchError
from shopsearch.feedback.records import SearchLogEntry
from shopsearch.feedback.store import FeedbackStore

log = logging.getLogger("shopsearch.feedback")


class LogWriter:
    """One per process (started lazily, again after a fork): a queue and a daemon thread."""

    def __init__(self, store: FeedbackStore, max_pending: int = 1000) -> None:
        self.store = store
        self.max_pending = max_pending
        self._pid: int | None = None
        self._queue: queue.Queue[SearchLogEntry | None] = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None
        self.dropped = 0  # entries refused because the queue was full

    def submit(self, entry: SearchLogEntry) -> bool:
        """Queue `entry` for writing; False (and a warning) when the queue is full."""
        self._ensure_thread()
        with self._idle:
            if self._pending >= self.max_pending:
                self.dropped += 1
                log.warning("search not logged: the feedback log is behind", extra={"pending": self._pending})
                return False
            self._pending += 1
        self._queue.put(entry)
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued is written (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
            return self._pending == 0

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is not None and self._pid == os.getpid():
            self.flush(timeout)
            self._queue.put(None)
            self._thread.join(timeout)
        self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._idle:
            if self._thread is not None and self._pid == os.getpid():
                return
            # after a fork the parent's thread does not exist here: start afresh
            self._queue, self._pending, self._idle = queue.Queue(), 0, threading.Condition()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="shopsearch-feedback-log", daemon=True)
            self._thread.start()
            atexit.register(self.flush, 2.0)

    def _run(self) -> None:
        q = self._queue
        while True:
            entry = q.get()
            if entry is None:
                return
            try:
                self.store.record_search(entry)
            except (SQLAlchemyError, ShopSearchError, OSError) as e:
                log.warning("search not logged", extra={"error": " ".join(str(e).split())[:300]})
            except Exception:  # noqa: BLE001 - the writer thread must outlive any one bad entry
                log.exception("search not logged")
            finally:
                with self._idle:
                    self._pending -= 1
                    if not self._pending:
                        self._idle.notify_all()
