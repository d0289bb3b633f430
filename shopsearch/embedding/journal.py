"""Crash journal: the images a run may be decoding, so the run after a hard crash can find
the one that caused it.

A decoder that crashes inside the indexing process itself (threaded decoding, the default
on small machines; nvJPEG) takes the run with it, and a plain resume would decode the same
file first and crash again, every time. So each run keeps a small file in the vector
cache's folder naming the images within reach of its decoders (a window ahead of the last
result, rewritten as it moves); a run that ends, even by an exception, removes it. A
journal whose process is gone names the suspects: the next run decodes them first, each
in a separate process (shopsearch.workers), so the one that kills its process is found,
reported and quarantined, and the others are embedded as usual. Quarantine is by content
hash: a file replaced on disk is tried again."""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

log = logging.getLogger("shopsearch.journal")

#: a journal from another host is only trusted to be stale once it is this old (seconds)
FOREIGN_STALE_S = 3600


@dataclass(frozen=True)
class Quarantined:
    key: str
    path: str
    reason: str
    when: str  # UTC, ISO 8601

    def describe(self) -> str:
        return (f"skipped: {self.reason}, in an earlier run ({self.when}); "
                "the file is tried again once its content changes")


class CrashJournal:
    """Journal files `inflight-<host>-<pid>.txt` and the quarantine `quarantine.jsonl` in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.host = socket.gethostname()
        self.path = self.folder / f"inflight-{self.host}-{os.getpid()}.txt"
        self.quarantine_path = self.folder / "quarantine.jsonl"

    # -- this run -------------------------------------------------------------------------
    def window(self, keys: Iterable[str]) -> None:
        """Name the images this run may be decoding from now on (atomic replace, no fsync:
        it must outlive the process, not the machine)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(keys) + "\n")
        os.replace(tmp, self.path)

    def close(self) -> None:
        """The run ended with its process alive: nothing it had in flight crashed it."""
        for p in (self.path, self.path.with_suffix(".tmp")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    # -- earlier runs ---------------------------------------------------------------------
    def stale(self) -> tuple[list[Path], set[str]]:
        """Journals left by runs whose process died, and the keys they name."""
        files, keys = [], set()
        # a run that died between writing its next window and renaming it leaves a .tmp:
        # that window may name the culprit, so it is a journal too (a cut-short last key
        # matches nothing)
        for p in sorted(self.folder.glob("inflight-*.txt")) + sorted(self.folder.glob("inflight-*.tmp")):
            if p.with_suffix(".txt") == self.path or not self._is_stale(p):
                continue
            try:
                keys.update(k for k in p.read_text().split() if k)
            except OSError:
                continue
            files.append(p)
        return files, keys

    def _is_stale(self, p: Path) -> bool:
        host, _, pid = p.stem[len("inflight-"):].rpartition("-")
        try:
            if host != self.host:  # no way to ask another machine: only a long silence counts
                return time.time() - p.stat().st_mtime > FOREIGN_STALE_S
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (ValueError, OSError):  # not ours to judge (bad name, another user's live process)
            return False
        return False

    @staticmethod
    def forget(files: Iterable[Path]) -> None:
        """Drop journals whose suspects were all dealt with."""
        for p in files:
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    # -- quarantine -----------------------------------------------------------------------
    def quarantined(self) -> dict[str, Quarantined]:
        out: dict[str, Quarantined] = {}
        try:
            lines = self.quarantine_path.read_text().splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                q = Quarantined(**json.loads(line))
            except (ValueError, TypeError):  # a line cut short by a crash while appending
                continue
            out[q.key] = q
        return out

    def quarantine(self, key: str, path: str, reason: str) -> None:
        q = Quarantined(key, path, reason, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with open(self.quarantine_path, "a") as f:
            f.write(json.dumps(q.__dict__) + "\n")
        log.warning("image quarantined", extra={"path": path, "reason": reason})
