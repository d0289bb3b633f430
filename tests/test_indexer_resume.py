"""A real `shopsearch index build` killed with SIGKILL midway resumes without re-embedding
what it had finished, and the serving index is never touched by the killed run."""
from __future__ import annotations

import io
import json
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

from shopsearch.embedding.cache import VectorCache
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.embedders.colorhist import ColorHistogramEmbedder
from shopsearch.index import IndexStore
from tests.conftest import REPO, sha
from tests.preforked import CLI, Started, run_script, start_script

N = 400
CHUNK = 16
M = 400  # images of the SIGTERM test: ~1.5 s of work left when it is stopped

# `shopsearch` whose colorhist takes a real model's time per batch (0.2 s): the killed run is
# still busy long after its first chunks, while its images stay small, so that the builds
# before and after it cost little
PACED = r"""
import time
from shopsearch.embedders.colorhist import ColorHistogramEmbedder
_encode = ColorHistogramEmbedder.encode_batch
def _slow(self, batch):
    time.sleep(0.2)
    return _encode(self, batch)
ColorHistogramEmbedder.encode_batch = _slow
from indexer.cli import main
main()
"""


def _start(data_dir, *args: str, script: str = CLI, **kw) -> Started:
    return start_script(script, "--data-dir", str(data_dir), *args, cwd=REPO, **kw)


def _run(data_dir, *args: str):
    return run_script(CLI, "--data-dir", str(data_dir), *args, cwd=REPO, timeout=120)


def _jpeg_catalogue(tmp_path, n: int, size: tuple[int, int]):
    """A data dir whose SQLite catalogue holds n products, one JPEG each: one photo of `size`,
    n distinct files (bytes after the JPEG end marker change the hash, not the pixels)."""
    data = tmp_path / "data"
    data.mkdir()
    cat = CatalogueStore.open(f"sqlite:///{data / 'catalogue.db'}")
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).resize(size).save(buf, "JPEG")
    (tmp_path / "imgs").mkdir()
    for i in range(n):
        p = tmp_path / "imgs" / f"{i:04d}.jpg"
        p.write_bytes(buf.getvalue() + f"#{i}".encode())
        cat.upsert_product(ProductRecord(f"S{i}", "x", images=(ImageRecord(str(p), sha256=sha(p)),)))
    return data, cat, buf


def test_killed_build_resumes_embedding_only_the_rest(tmp_path):
    data, cat, buf = _jpeg_catalogue(tmp_path, N, (160, 120))
    imgs = tmp_path / "imgs"
    # serve a small first build so we can check the killed run never replaces it
    seed_build = _run(data, "index", "build", "--model", "colorhist", "--json")
    assert seed_build.returncode == 0, seed_build.stderr
    first = json.loads(seed_build.stdout)
    assert first["vectors"] == N
    cat.delete_products([f"S{i}" for i in range(N // 2)])  # and make the next build differ
    for i in range(N, N + N // 2):
        p = imgs / f"{i:04d}.jpg"
        p.write_bytes(buf.getvalue() + f"#{i}".encode())
        cat.upsert_product(ProductRecord(f"S{i}", "x", images=(ImageRecord(str(p), sha256=sha(p)),)))
    fp = ColorHistogramEmbedder().fingerprint
    cache_dir = VectorCache(data / "vectors", fp, 384).dir
    chunks_before = set(cache_dir.glob("chunk-*.npz"))

    proc = _start(data, "index", "build", "--model", "colorhist", "--chunk-size", str(CHUNK), "--batch-size",
                  str(CHUNK), "--workers", "1", "--executor", "inline", "--json", script=PACED)
    deadline = time.monotonic() + 60
    while len(set(cache_dir.glob("chunk-*.npz")) - chunks_before) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "the build never wrote a chunk"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    done = len(VectorCache(data / "vectors", fp, 384)) - N  # vectors the killed run managed to save
    assert CHUNK <= done < N // 2
    store = IndexStore(data / "index")
    assert store.current_id() == first["build_id"]  # still serving the complete old build
    assert store.load_current()[1].count == N

    resumed = _run(data, "index", "build", "--model", "colorhist", "--json")
    assert resumed.returncode == 0, resumed.stderr
    r = json.loads(resumed.stdout)
    assert r["embedded"] == N // 2 - done  # only the rest
    assert r["reused"] == N // 2 + done and r["vectors"] == N and not r["failed"]
    assert store.current_id() == r["build_id"] and store.previous_id() == first["build_id"]
    cat.close()


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_sigterm_stops_a_build_cleanly(tmp_path, executor):
    """systemd or Kubernetes stopping a build (SIGTERM to the whole process group): the run
    saves what it embedded, leaves no crash journal (a SIGKILLed run leaves one and makes the
    next run re-check its in-flight images in processes), blames no image, says how to go on."""
    data, cat, _ = _jpeg_catalogue(tmp_path, M, (640, 480))
    cache_dir = VectorCache(data / "vectors", ColorHistogramEmbedder().fingerprint, 384).dir

    proc = _start(data, "index", "build", "--model", "colorhist", "--chunk-size", str(CHUNK), "--batch-size", "8",
                  "--workers", "2", "--executor", executor, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(list(cache_dir.glob("chunk-*.npz"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "the build never wrote a chunk"
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped (SIGTERM)" in err and "run the same command again" in err
    assert not list(cache_dir.glob("inflight-*")) and not list(cache_dir.glob(".*tmp*"))
    saved = len(VectorCache(data / "vectors", ColorHistogramEmbedder().fingerprint, 384))
    assert 2 * CHUNK <= saved < M
    assert IndexStore(data / "index").current_id() is None

    rerun = _run(data, "--log-level", "INFO", "index", "build", "--model", "colorhist", "--json")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "an earlier run died" not in rerun.stderr  # nothing to re-check
    r = json.loads(rerun.stdout)
    assert (r["embedded"], r["reused"], r["vectors"], r["failed"]) == (M - saved, saved, M, [])
    assert cat.unusable_images() == []
    cat.close()
