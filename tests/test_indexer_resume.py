"""A real `shopsearch index build` killed with SIGKILL midway resumes without re-embedding
what it had finished, and the serving index is never touched by the killed run."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from shopsearch.embedding.cache import VectorCache
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.embedders.colorhist import ColorHistogramEmbedder
from shopsearch.index import IndexStore
from tests.conftest import REPO, sha

N = 400
CHUNK = 16


def _cmd(data_dir, *args: str) -> list[str]:
    return [sys.executable, "-c", "from indexer.cli import main; main()", "--data-dir", str(data_dir), *args]


def test_killed_build_resumes_embedding_only_the_rest(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    cat = CatalogueStore.open(f"sqlite:///{data / 'catalogue.db'}")
    # One 1200x900 photo, N distinct files: bytes after the JPEG end marker change the hash, not the pixels.
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).resize((1200, 900)).save(buf, "JPEG")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(N):
        p = imgs / f"{i:04d}.jpg"
        p.write_bytes(buf.getvalue() + f"#{i}".encode())
        cat.upsert_product(ProductRecord(f"S{i}", "x", images=(ImageRecord(str(p), sha256=sha(p)),)))
    # serve a small first build so we can check the killed run never replaces it
    seed_build = subprocess.run(_cmd(data, "index", "build", "--model", "colorhist", "--json"), cwd=REPO,
                                capture_output=True, text=True, timeout=120)
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

    proc = subprocess.Popen(_cmd(data, "index", "build", "--model", "colorhist", "--chunk-size", str(CHUNK),
                                 "--batch-size", str(CHUNK), "--workers", "1", "--executor", "inline", "--json"),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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

    resumed = subprocess.run(_cmd(data, "index", "build", "--model", "colorhist", "--json"), cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    r = json.loads(resumed.stdout)
    assert r["embedded"] == N // 2 - done  # only the rest
    assert r["skipped"] == N // 2 + done and r["vectors"] == N and not r["failed"]
    assert store.current_id() == r["build_id"] and store.previous_id() == first["build_id"]
    cat.close()
