"""The GPU executor's two lanes (run here on the CPU): the decode lane works on the next
batch while the model runs, errors on either side stop both without hanging, and no
thread outlives the run."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from shopsearch.embedding import gpu
from shopsearch.embedding.pipeline import PipelineConfig, WorkItem
from tests.conftest import make_image, sha
from tests.test_indexer_pipeline import MeanColour


def _jpegs(d: Path, n: int) -> list[WorkItem]:
    d.mkdir()
    items = []
    for i in range(n):
        p = d / f"{i}.jpg"
        make_image(i, (160, 120)).save(p, quality=90)
        items.append(WorkItem(sha(p), str(p), i + 1))
    return items


def _lane_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "gpu-decode"]


def test_decode_lane_runs_ahead_of_the_model(tmp_path, monkeypatch):
    """While the model holds batch 0, the next batch gets decoded and transformed: the model
    waits for that to happen, which can only succeed if the lanes overlap."""
    items = _jpegs(tmp_path / "img", 40)  # 5 batches of 8
    transformed = threading.Semaphore(0)
    real_for = gpu.gpu_transform_for

    def counting_transform(embedder, device=None):
        run = real_for(embedder, device)

        def wrapped(images):
            out = run(images)
            transformed.release()
            return out

        return wrapped

    monkeypatch.setattr(gpu, "gpu_transform_for", counting_transform)
    overlapped = []

    class SlowModel(MeanColour):
        def encode_batch(self, batch):
            # batch k is already counted; wait for k+1 (or time out -> no overlap)
            if len(overlapped) < 4:
                transformed.acquire(timeout=10)  # this batch
                overlapped.append(transformed.acquire(timeout=10))  # the next one
                transformed.release()  # leave it for the next call
            return super().encode_batch(batch)

    got: dict[str, np.ndarray] = {}
    gpu.run_gpu_batches(SlowModel(), items, PipelineConfig(8, 2, "gpu"), lambda k, v: got.update(zip(k, v)),
                        lambda it, r: pytest.fail(r), device="cpu", cpu_decoders=0)
    assert overlapped == [True, True, True, True]
    assert set(got) == {it.key for it in items}
    assert gpu.STAGES["model"] > 0 and gpu.STAGES["decode"] > 0
    assert not _lane_threads()


def test_error_in_the_model_lane_stops_the_decode_lane(tmp_path):
    items = _jpegs(tmp_path / "img", 64)
    calls = []

    def on_vectors(keys, vecs):
        calls.append(len(keys))
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        gpu.run_gpu_batches(MeanColour(), items, PipelineConfig(8, 2, "gpu"), on_vectors,
                            lambda it, r: None, device="cpu", cpu_decoders=0)
    assert calls == [8]  # nothing embedded after the failure
    assert not _lane_threads()


def test_error_in_the_decode_lane_reaches_the_caller(tmp_path, monkeypatch):
    items = _jpegs(tmp_path / "img", 24)
    seen = []

    def broken_transform(embedder, device=None):
        def run(images):
            if seen:
                raise MemoryError("CUDA out of memory (simulated)")
            seen.append(len(images))
            return real(images)

        real = real_for(embedder, device)
        return run

    real_for = gpu.gpu_transform_for
    monkeypatch.setattr(gpu, "gpu_transform_for", broken_transform)
    got: dict[str, np.ndarray] = {}
    with pytest.raises(MemoryError, match="simulated"):
        gpu.run_gpu_batches(MeanColour(), items, PipelineConfig(8, 2, "gpu"), lambda k, v: got.update(zip(k, v)),
                            lambda it, r: None, device="cpu", cpu_decoders=0)
    assert len(got) == 8  # the batch decoded before the failure was still embedded and handed over
    assert not _lane_threads()


def test_failures_are_reported_from_the_calling_thread(tmp_path):
    """on_failure may touch state that is not thread-safe (the report, a SQLite session)."""
    items = _jpegs(tmp_path / "img", 10)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"\x00" * 100)
    items.append(WorkItem(sha(bad), str(bad), 99))
    threads = []
    gpu.run_gpu_batches(MeanColour(), items, PipelineConfig(4, 2, "gpu"), lambda k, v: None,
                        lambda it, r: threads.append(threading.current_thread()), device="cpu", cpu_decoders=0)
    assert threads == [threading.main_thread()]
