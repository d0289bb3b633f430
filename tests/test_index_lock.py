"""Two `index build` runs on one data dir: the second fails at once (exit 75, naming the
first) or, with --wait, queues behind it; a lock left by a run killed with SIGKILL is taken
over. The runs are real processes; the first is held inside its embedding stage (a file
releases it), so the overlap does not depend on the machine's speed."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from shopsearch.index import IndexStore
from tests.conftest import REPO
from tests.preforked import CLI, Started, run_script, start_script
from tests.test_indexer_resume import _jpeg_catalogue

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fcntl locks and signals")

# `shopsearch ...` whose build stops when it starts embedding: it touches <data>/embedding and
# waits (at most 60 s) for <data>/go.
HELD = r"""
import sys, time
from pathlib import Path
from indexer.build import IndexBuilder

data = Path(sys.argv[sys.argv.index("--data-dir") + 1])
real = IndexBuilder.embed
def embed(self, *a, **kw):
    (data / "embedding").touch()
    deadline = time.monotonic() + 60
    while not (data / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return real(self, *a, **kw)
IndexBuilder.embed = embed
from indexer.cli import main
main()
"""


def _args(data: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data), "index", "build", "--model", "colorhist", "--workers", "1", "--json", *extra]


def _held(data: Path, *extra: str) -> Started:
    (data / "embedding").unlink(missing_ok=True)
    (data / "go").unlink(missing_ok=True)
    proc = start_script(HELD, *_args(data, *extra), cwd=REPO)
    deadline = time.monotonic() + 60
    while not (data / "embedding").exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the held build never reached its embedding stage"
        time.sleep(0.05)
    return proc


def _cli(data: Path, *extra: str):
    return run_script(CLI, *_args(data, *extra), cwd=REPO, timeout=120)


@pytest.mark.slow
def test_a_second_build_fails_fast_or_waits_and_a_dead_runs_lock_is_taken_over(tmp_path):
    data, cat, _ = _jpeg_catalogue(tmp_path, 24, (64, 48))
    cat.close()
    first = _held(data)

    t0 = time.monotonic()
    second = _cli(data)
    assert second.returncode == 75, second.stderr[-2000:]
    assert f"pid {first.pid}" in second.stderr and "already writing the index" in second.stderr
    assert f"--data-dir {data} index build" in second.stderr  # the holder's whole command, not its first words
    assert "--wait" in second.stderr and "Traceback" not in second.stderr and second.stdout == ""
    assert time.monotonic() - t0 < 60  # at once, not after the first build
    assert IndexStore(data / "index").current_id() is None  # nothing published by the refused run

    waiting = start_script(CLI, *_args(data, "--wait"), cwd=REPO)
    deadline = time.monotonic() + 60
    while "waiting for index build (pid" not in waiting.stderr_so_far():
        assert waiting.poll() is None and time.monotonic() < deadline, waiting.stderr_so_far()
        time.sleep(0.05)
    (data / "go").touch()
    out_first, err_first = first.communicate(timeout=120)
    out_waiting, err_waiting = waiting.communicate(timeout=120)
    assert first.returncode == 0, err_first[-2000:]
    assert waiting.returncode == 0, err_waiting[-2000:]
    a, b = json.loads(out_first), json.loads(out_waiting)
    store = IndexStore(data / "index")
    # one after the other: the waiting one then finds the first one's build up to date
    assert (store.current_id(), store.previous_id()) == (a["build_id"], None)
    assert b["up_to_date"] and b["build_id"] == a["build_id"] and b["embedded"] == 0

    killed = _held(data, "--force")  # nothing changed: only a forced build reaches its embedding stage
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=30)
    assert f"pid {killed.pid}" in (data / "index" / ".writer.lock").read_text()  # its lock file is still there
    after = _cli(data, "--force")  # a new build even though nothing changed: the first one becomes previous
    assert after.returncode == 0, after.stderr[-2000:]
    assert store.current_id() == json.loads(after.stdout)["build_id"] and store.previous_id() == a["build_id"]
    rolled = run_script(CLI, "--data-dir", str(data), "index", "rollback", "--json", cwd=REPO, timeout=120)
    assert rolled.returncode == 0 and json.loads(rolled.stdout)["build_id"] == a["build_id"]


def test_an_index_folder_that_cannot_be_written_is_one_clear_line(tmp_path):
    from click.testing import CliRunner

    from indexer.cli import cli

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "index").write_text("a file where the index folder should be")
    res = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "data"), "index", "rollback"], catch_exceptions=False)
    assert res.exit_code == 1 and "cannot create the index lock file" in res.output and "Traceback" not in res.output
