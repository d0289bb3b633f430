"""A worker process that dies (a decoder crashing on a hostile file, the OOM killer) costs
one image, never the run: the pool is replaced, the image it died on is reported as a
failure, and every other image comes out as if nothing had happened."""
from __future__ import annotations

import faulthandler
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from shopsearch.embedding import gpu
from shopsearch.embedding import items as stages
from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.pipeline import PipelineConfig, WorkItem, embed_items
from shopsearch.errors import WorkerCrashError
from shopsearch.workers import DIED, RespawningPool
from tests.conftest import FakeEmbedder, sha
from tests.test_indexer_pipeline import MeanColour

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the crashing decoder is patched in and inherited through fork")

POISON = "poison"


def _die_on_poison(jobs: list[str]) -> list[str]:
    """Task: upper-case each job, or kill this process (as the OOM killer would) on a poison one."""
    out = []
    for j in jobs:
        if POISON in j:
            os.kill(os.getpid(), signal.SIGKILL)
        out.append(j.upper())
    return out


def _always_die(jobs: list[str]) -> list[str]:
    os.kill(os.getpid(), signal.SIGKILL)
    return jobs  # pragma: no cover


def _pool(fn, **kw) -> RespawningPool:
    return RespawningPool(lambda: ProcessPoolExecutor(2), fn, lambda job, why: f"failed {job}: {why}", **kw)


def test_only_the_job_a_worker_died_on_fails_and_the_pool_goes_on():
    jobs = [f"j{i}" for i in range(20)]
    jobs[7] = f"{POISON}-7"
    pool = _pool(_die_on_poison)
    try:
        futs = [pool.submit(jobs[i:i + 4]) for i in range(0, 20, 4)]  # the death breaks every pending task
        got = [r for f in futs for r in pool.result(f)]
        assert got == [f"failed {j}: {DIED}" if POISON in j else j.upper() for j in jobs]
        assert pool.culprits == 1 and pool.respawns >= 2  # the batch death, then the culprit's own
        assert pool.result(pool.submit(["after"])) == ["AFTER"]  # a live pool afterwards
    finally:
        pool.shutdown()


def test_workers_dying_on_everything_is_an_error_not_a_run_of_failures():
    pool = _pool(_always_die, max_deaths_in_a_row=3)
    try:
        with pytest.raises(WorkerCrashError, match="3 jobs in a row"):
            pool.result(pool.submit([f"j{i}" for i in range(10)]))
    finally:
        pool.shutdown()


def _crash_on_poison(monkeypatch) -> None:
    """The decoder segfaults on files named poison*: patched into the module that forked
    workers inherit, so the crash happens in a worker, as a real decoder bug would."""
    real = stages.decode_source

    def decode_source(src, *a, **kw):
        if isinstance(src, str) and Path(src).name.startswith(POISON):
            faulthandler.disable()  # pytest's traceback dump would only be noise here
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(src, *a, **kw)

    monkeypatch.setattr(stages, "decode_source", decode_source)


def _items_with_poison(image_dir, n: int = 30) -> tuple[list[WorkItem], WorkItem]:
    paths = image_dir(n)
    poison = paths[11].with_name(f"{POISON}.png")
    poison.write_bytes(paths[11].read_bytes() + b"\0")  # a different file: its own content hash
    items = [WorkItem(sha(p), str(p), i + 1) for i, p in enumerate(paths)]
    bad = WorkItem(sha(poison), str(poison), n + 1)
    return items[:11] + [bad] + items[11:], bad


@pytest.mark.parametrize("executor", ["process", "replicas"])
def test_process_pipeline_survives_a_decoder_crash(tmp_path, image_dir, monkeypatch, executor):
    items, bad = _items_with_poison(image_dir)
    ref = VectorCache(tmp_path / "ref", "fake-grid4x4", 48)
    good = [it for it in items if it is not bad]
    embed_items(FakeEmbedder(), good, ref, batch_size=8, progress=False, executor="inline")
    _crash_on_poison(monkeypatch)
    cache = VectorCache(tmp_path / "c", "fake-grid4x4", 48)
    rep = embed_items(FakeEmbedder(), items, cache, batch_size=8, workers=2, progress=False, executor=executor)
    assert rep.embedded == len(good)
    assert rep.failed == [(bad, DIED)]
    keys = [it.key for it in good]
    np.testing.assert_array_equal(cache.get_many(keys), ref.get_many(keys))
    assert bad.key not in cache


def test_gpu_executors_cpu_lane_survives_a_decoder_crash(tmp_path, image_dir, monkeypatch):
    items, bad = _items_with_poison(image_dir)
    _crash_on_poison(monkeypatch)
    got, failed = {}, []
    gpu.run_gpu_batches(MeanColour(), items, PipelineConfig(8, 2, "gpu"), lambda k, v: got.update(zip(k, v)),
                        lambda it, r: failed.append((it, r)), device="cpu", cpu_decoders=2, cpu_share=1.0)
    assert failed == [(bad, DIED)]
    good = [it for it in items if it is not bad]
    assert set(got) == {it.key for it in good}
    ref = VectorCache(tmp_path / "ref", "mean-colour", 3)
    embed_items(MeanColour(), good, ref, progress=False, executor="inline")
    keys = [it.key for it in good]
    np.testing.assert_allclose(np.stack([got[k] for k in keys]), ref.get_many(keys), atol=2e-3)


@pytest.mark.parametrize("n", [2, 70])
def test_catalogue_import_reports_a_file_that_kills_its_checker(tmp_path, image_dir, monkeypatch, n):
    from shopsearch.catalogue import importers

    paths = [str(p) for p in image_dir(n)]
    poison = Path(paths[1]).with_name(f"{POISON}.png")
    poison.write_bytes(Path(paths[1]).read_bytes())
    real = importers.inspect_image

    def inspect_image(path):
        if Path(path).name.startswith(POISON):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path)

    monkeypatch.setattr(importers, "inspect_image", inspect_image)
    checked = importers.check_image_files(paths + [str(poison)], workers=2, progress=False)
    assert checked[str(poison)] == DIED
    assert all(checked[p].sha256 == sha(Path(p)) for p in paths)
