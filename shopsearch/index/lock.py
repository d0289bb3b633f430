"""One writer per index folder: `index build`, `update` and `rollback` hold an exclusive lock
on `<index dir>/.writer.lock`, so two runs on one data dir never prune or re-point each other's
builds. POSIX record locks (fcntl) belong to the process: the kernel drops them when it dies,
however it dies (kill -9, OOM), so a dead run's lock is taken over without any clean-up; they
are not inherited by forked decode workers, which may outlive a killed parent for a moment."""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from shopsearch.errors import IndexBusyError, IndexWriteError

log = logging.getLogger("shopsearch.index")

LOCK_FILE = ".writer.lock"


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it (read through our own descriptor: opening
    the file again and closing it would drop a POSIX lock this process holds)."""
    text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    return text or "another process"


@contextmanager
def index_lock(index_dir: Path, wait: bool = False, what: str = "index build",
               on_wait: Callable[[str], None] | None = None, poll_s: float = 0.2) -> Iterator[None]:
    """Hold the index folder's writer lock while the block runs. Another live holder makes
    this raise IndexBusyError at once, or, with `wait`, block until it is gone (`on_wait` is
    told once who is being waited for)."""
    index_dir = Path(index_dir)
    path = index_dir / LOCK_FILE
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:  # a read-only or full data dir: say so before any work starts
        raise IndexWriteError(f"cannot create the index lock file {path}: {IndexWriteError.reason_of(e)}") from None
    try:
        told = False
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:  # EACCES or EAGAIN: held by a live process
                holder = _holder(fd)
                if not wait:
                    raise IndexBusyError(f"{holder} is already writing the index in {index_dir}; this {what} "
                                         "would prune or re-point its builds. Wait for it to finish, or pass "
                                         "--wait to queue behind it") from None
                if not told and on_wait is not None:
                    on_wait(holder)
                    told = True
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
        command = command if len(command) <= 300 else command[:299] + "…"  # the whole command, within reason
        os.pwrite(fd, (f"{what} (pid {os.getpid()} on {socket.gethostname()}, `{command}`, since "
                       f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})\n").encode(), 0)
        log.info("index writer lock taken", extra={"path": str(path), "what": what})
        yield
    finally:
        os.close(fd)  # releases the lock
