"""`kill -9` during `index build` (an operator, the OOM killer): the run saved what it had
embedded up to CHUNK_FLUSH_S ago even though no chunk was full, and the next run re-checks
nothing (a kill is no decoder crash) and embeds only the rest. A real process, really killed;
the flush interval is shortened to 0.3 s so the test takes seconds, not tens of seconds."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from shopsearch.embedders.colorhist import ColorHistogramEmbedder
from shopsearch.embedding.cache import VectorCache
from tests.conftest import REPO
from tests.preforked import CLI, run_script, start_script
from tests.test_indexer_resume import _jpeg_catalogue

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals")

N = 300
FLUSHED = r"""
import time
from shopsearch.embedders.colorhist import ColorHistogramEmbedder
from shopsearch.embedding import pipeline
pipeline.CHUNK_FLUSH_S = 0.3
_encode = ColorHistogramEmbedder.encode_batch
def _slow(self, batch):  # a real model's pace: on an idle machine colorhist finished before the kill
    time.sleep(0.05)
    return _encode(self, batch)
ColorHistogramEmbedder.encode_batch = _slow
from indexer.cli import main
main()
"""


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    """Running or sleeping (an exited child that nobody reaped yet is a zombie: gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(ln for ln in f if ln.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return state.split()[1] not in ("Z", "X")


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["thread", "process"])
def test_kill_9_loses_only_the_last_seconds_and_is_not_taken_for_a_crash(tmp_path, executor):
    data, cat, _ = _jpeg_catalogue(tmp_path, N, (640, 480))
    cache_dir = VectorCache(data / "vectors", ColorHistogramEmbedder().fingerprint, 384).dir
    # chunks of 100,000: before the time-based flush nothing reached the cache until the end
    proc = start_script(FLUSHED, "--data-dir", str(data), "index", "build", "--model", "colorhist", "--chunk-size",
                        "100000", "--batch-size", "8", "--workers", "2", "--executor", executor, "--json", cwd=REPO)
    deadline = time.monotonic() + 60
    while len(list(cache_dir.glob("chunk-*.npz"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "the build saved nothing within 60 s"
        time.sleep(0.01)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    if executor == "process":
        assert workers, "the process executor forked no decode workers"
    gone_by = time.monotonic() + 10  # its decode workers must not wait for work forever
    while any(_alive(w) for w in workers) and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)], "decode workers outlived the killed run"
    saved = len(VectorCache(data / "vectors", ColorHistogramEmbedder().fingerprint, 384))
    assert 0 < saved < N
    assert list(cache_dir.glob("inflight-*.txt"))  # it was tracking its decoders when killed

    rerun = run_script(CLI, "--data-dir", str(data), "--log-level", "INFO", "index", "build", "--model", "colorhist",
                       "--json", cwd=REPO, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "an earlier run died" not in rerun.stderr and "an earlier run was killed" in rerun.stderr
    r = json.loads(rerun.stdout)
    assert (r["embedded"], r["reused"], r["vectors"], r["failed"]) == (N - saved, saved, N, [])
    assert not list(cache_dir.glob("inflight-*")) and not list(cache_dir.glob("fault-*"))
    assert cat.unusable_images() == []
    cat.close()


SLOW_IMPORT = r"""
import time
from shopsearch.catalogue import importers
_check = importers.check_image_file
def _slow(path):  # checking processes busy when the import is killed
    time.sleep(0.2)
    return _check(path)
importers.check_image_file = _slow
from indexer.cli import main
main()
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_import_leaves_no_checking_processes(tmp_path, sig):
    from tests.conftest import make_image

    (tmp_path / "imgs").mkdir()
    rows = ["sku,title,images"]
    for i in range(40):
        make_image(i).save(tmp_path / "imgs" / f"{i}.png")
        rows.append(f"S{i},Thing {i},imgs/{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    # a process of its own (not the preforked server's child), whose checking pool forks with the patch in place
    proc = subprocess.Popen([sys.executable, "-c", SLOW_IMPORT, "--data-dir", str(tmp_path / "var"), "catalogue",
                             "import", str(tmp_path / "m.csv"), "--workers", "2"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while len(workers) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "the import started no checking processes within 60 s"
        workers = [w for w in _children(proc.pid) if _alive(w)]
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.kill(proc.pid, sig)
    proc.wait(timeout=10)
    assert proc.returncode != 0, "the import finished before it could be killed"
    gone_by = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)], "checking processes outlived the killed import"
