"""A disk that fills up during `index build`: one clear line and exit 1, nothing left
behind (no `.staging-*` build, no partial vector chunk), the serving build untouched, and
the same command works once there is room. The writes really fail with ENOSPC: the
in-process test sends them to /dev/full, the other (root only) fills a small tmpfs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.cli import cli
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.embedding import cache as cache_mod
from shopsearch.index import IndexStore
from shopsearch.index import vector_index
from tests.conftest import REPO, sha
from tests.preforked import CLI, run_script
from tests.test_indexer_resume import _jpeg_catalogue

needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")


def _build(data: Path, *extra: str):
    return CliRunner().invoke(cli, ["--data-dir", str(data), "index", "build", "--model", "colorhist", "--workers",
                                    "1", "--max-shrink", "1", "--json", *extra], catch_exceptions=False)


def _leftovers(data: Path) -> list[str]:
    return sorted(p.name for p in data.rglob("*") if p.name.startswith(".staging-") or ".tmp" in p.name)


@needs_dev_full
def test_disk_full_while_writing_the_index_or_the_vectors(tmp_path, monkeypatch):
    data, cat, buf = _jpeg_catalogue(tmp_path, 12, (64, 48))
    first = _build(data)
    assert first.exit_code == 0, first.output
    serving = json.loads(first.stdout)["build_id"]
    cat.delete_products(["S0"])

    real_write = vector_index.faiss.write_index
    monkeypatch.setattr(vector_index.faiss, "write_index", lambda index, path: real_write(index, "/dev/full"))
    res = _build(data)
    assert res.exit_code == 1 and res.stdout == ""
    assert "no space left on device" in res.stderr and "[index_write_failed]" in res.stderr
    assert f"build {serving} is still serving" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("Error: ")  # after the model and plan lines
    assert _leftovers(data) == []
    store = IndexStore(data / "index")
    assert store.current_id() == serving and [m.build_id for m in store.list_builds()] == [serving]
    monkeypatch.undo()

    # the vector cache's chunk on a full disk: the partial chunk goes, the complete ones stay
    for i in range(12, 20):
        p = tmp_path / "imgs" / f"{i:04d}.jpg"
        p.write_bytes(buf.getvalue() + f"#{i}".encode())
    for i in range(12, 20):
        p = tmp_path / "imgs" / f"{i:04d}.jpg"
        cat.upsert_product(ProductRecord(f"S{i}", "x", images=(ImageRecord(str(p), sha256=sha(p)),)))
    real_savez = np.savez

    def savez_on_full_disk(file, **arrays):
        Path(file).touch()  # the partial file a real full disk leaves
        with open("/dev/full", "wb") as f:
            real_savez(f, **arrays)

    monkeypatch.setattr(cache_mod.np, "savez", savez_on_full_disk)
    res = _build(data)
    assert res.exit_code == 1 and "cannot save embedded vectors" in res.stderr
    assert "no space left on device" in res.stderr and "Traceback" not in res.stderr
    assert _leftovers(data) == [] and store.current_id() == serving
    monkeypatch.undo()

    again = _build(data)  # room again: the same command works
    assert again.exit_code == 0, again.output
    out = json.loads(again.stdout)
    assert out["vectors"] == 19 and out["embedded"] == 8 and store.current_id() == out["build_id"]
    assert _leftovers(data) == []
    cat.close()


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_disk_full_on_a_real_small_filesystem(tmp_path):
    """The index folder on a 256 KiB tmpfs (root only: skipped where mounting is not allowed)."""
    data, cat, _ = _jpeg_catalogue(tmp_path, 150, (64, 48))
    cat.close()
    if not _mount_tmpfs(data / "index", "256k"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        def shopsearch(*args):
            return run_script(CLI, "--data-dir", str(data), "index", "build", "--model", "colorhist", "--json", *args,
                              cwd=REPO, timeout=120)

        full = shopsearch()  # 150 x 384 float32 vectors and their keys: more than 256 KiB
        assert full.returncode == 1, full.stderr[-2000:]
        assert "no space left on device" in full.stderr and "Traceback" not in full.stderr
        assert _leftovers(data) == [] and IndexStore(data / "index").current_id() is None
        # (the stat snapshot is the rescan's cache of the catalogue's file stats, written before the
        # build ran out of room: not part of any build)
        assert sum(f.stat().st_size for f in (data / "index").rglob("*")
                   if f.is_file() and f.name != "stat_snapshot.npz") < 4096
        subprocess.run(["mount", "-o", "remount,size=4m", str(data / "index")], check=True)
        ok = shopsearch()
        assert ok.returncode == 0, ok.stderr[-2000:]
        out = json.loads(ok.stdout)
        assert out["vectors"] == 150 and out["embedded"] == 0  # the vectors were saved by the failed run
        assert IndexStore(data / "index").current_id() == out["build_id"]
    finally:
        subprocess.run(["umount", str(data / "index")], capture_output=True)
