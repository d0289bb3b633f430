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
hash: a file replaced on disk is tried again.

A run killed from outside (kill -9, the OOM killer) is no decoder crash, and re-checking its
window (a few hundred images, one process each) would be wasted: so a run also keeps an empty
`fault-<host>-<pid>.txt`, into which faulthandler writes when the process dies of a fatal
signal of its own (SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL). SIGKILL cannot be caught and
leaves it empty: that journal names no suspects. A journal without a fault file (an older
version) is taken for a crash. The OOM killer also sends SIGKILL, and a file whose decoding
exhausts memory would be killed for again and again: so the window of the last killed run
is kept (`killed.txt`), and the images two killed runs in a row both had in flight are
re-checked as suspects after all."""
from __future__ import annotations

import faulthandler
import json
import logging
import os
import sys
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
        self.killed_path = self.folder / "killed.txt"
        self._fault: object | None = None  # the open fault file while armed
        self._had_handler = False

    @staticmethod
    def fault_path(journal: Path) -> Path:
        """The fault file that goes with a journal file."""
        return journal.with_name(f"fault-{journal.stem[len('inflight-'):]}.txt")  # .txt and .tmp share one

    # -- this run -------------------------------------------------------------------------
    def window(self, keys: Iterable[str]) -> None:
        """Name the images this run may be decoding from now on (atomic replace, no fsync:
        it must outlive the process, not the machine)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(keys) + "\n")
        os.replace(tmp, self.path)

    def arm(self) -> None:
        """Record a fatal signal of this process (a crash, not a kill) in its fault file;
        done before the first window is written, so a journal always has its fault file."""
        if self._fault is not None:
            return
        self._had_handler = faulthandler.is_enabled()
        self._fault = open(self.fault_path(self.path), "w")
        faulthandler.enable(file=self._fault, all_threads=True)  # type: ignore[arg-type]

    def close(self) -> None:
        """The run ended with its process alive: nothing it had in flight crashed it."""
        if self._fault is not None:
            faulthandler.disable()
            if self._had_handler and sys.__stderr__ is not None:  # give back the one we replaced
                try:
                    faulthandler.enable(file=sys.__stderr__)
                except (ValueError, OSError):
                    pass
            self._fault.close()  # type: ignore[attr-defined]
            self._fault = None
        for p in (self.path, self.path.with_suffix(".tmp"), self.fault_path(self.path)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    # -- earlier runs ---------------------------------------------------------------------
    def stale(self) -> tuple[list[Path], set[str]]:
        """Journals left by runs whose process died, and the keys they name (none for a run
        killed from outside: its fault file is empty)."""
        files: list[Path] = []
        keys: set[str] = set()
        # a run that died between writing its next window and renaming it leaves a .tmp
        # beside (or instead of) its journal: that window may name the culprit, so both files
        # are read as one journal (a cut-short last key matches nothing)
        runs = sorted({p.with_suffix(".txt") for p in self.folder.glob("inflight-*.t[xm][tp]")})
        for journal in runs:
            if journal == self.path or not self._is_stale(journal):
                continue
            parts = [p for p in (journal, journal.with_suffix(".tmp")) if p.exists()]
            window: set[str] = set()
            for p in parts:
                try:
                    window.update(k for k in p.read_text().split() if k)
                except OSError:
                    continue
            files.extend(parts)
            try:
                killed = self.fault_path(journal).stat().st_size == 0
            except FileNotFoundError:  # no fault file: an older version's journal, maybe a crash
                killed = False
            keys.update(self._killed(journal.name, window) if killed else window)
        return files, keys

    def _killed(self, name: str, window: set[str]) -> set[str]:
        """A journal of a run killed from outside: no suspects, unless the run killed before it
        had some of the same images in flight (a decode the OOM killer stops every time).
        `killed.txt` (JSON) remembers the last such journal, its window and that verdict, so
        reading the same journal again gives the same answer."""
        try:
            last = json.loads(self.killed_path.read_text()) if self.killed_path.exists() else {}
            if last.get("journal") == name:
                return set(last.get("again", []))
            again = sorted(window & set(last.get("window", [])))
            self.killed_path.write_text(json.dumps({"journal": name, "window": sorted(window), "again": again}))
        except (OSError, ValueError, AttributeError):
            return set()
        if again:
            log.warning("two runs in a row were killed with the same images in flight (the OOM killer?); "
                        "re-checking them in separate processes", extra={"images": len(again)})
        else:
            log.info("an earlier run was killed (no crash of its own): nothing to re-check", extra={"journal": name})
        return set(again)

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

    @classmethod
    def forget(cls, files: Iterable[Path]) -> None:
        """Drop journals (and their fault files) whose suspects were all dealt with."""
        for p in files:
            for f in (p, cls.fault_path(p)):
                try:
                    f.unlink()
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
