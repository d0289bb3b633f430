"""Concurrent queries share one model batch (shopsearch.embedders.coalesce)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from shopsearch.embedders.coalesce import Coalescer
from shopsearch.embedders.torch_base import TorchEmbedder


def _wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _held_first_batch(n_callers: int, run_rest):
    """n callers; the first batch is held until all the others have queued. Returns
    (coalescer, batch sizes seen by run, outputs by caller, errors by caller)."""
    release = threading.Event()
    sizes: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        if len(sizes) == 1:
            release.wait(10)
        return run_rest(x)

    co = Coalescer(run, max_rows=8)
    outs: dict[int, np.ndarray] = {}
    errs: dict[int, BaseException] = {}

    def call(i: int) -> None:
        try:
            outs[i] = co(np.full((1, 3), float(i), dtype=np.float32))
        except Exception as e:  # noqa: BLE001
            errs[i] = e

    first = threading.Thread(target=call, args=(0,))
    first.start()
    _wait_for(lambda: len(sizes) == 1)  # caller 0 is inside the model
    rest = [threading.Thread(target=call, args=(i,)) for i in range(1, n_callers)]
    for t in rest:
        t.start()
    _wait_for(lambda: co.queued == n_callers - 1)
    release.set()
    for t in [first, *rest]:
        t.join(10)
    return co, sizes, outs, errs


def test_callers_queued_behind_a_batch_share_the_next_one():
    co, sizes, outs, errs = _held_first_batch(6, lambda x: x * 2)
    assert not errs
    assert sizes == [1, 5] and co.batches == 2
    for i in range(6):  # each caller gets its own rows back
        np.testing.assert_array_equal(outs[i], np.full((1, 3), 2.0 * i, dtype=np.float32))


def test_merged_batches_respect_max_rows_and_a_large_call_runs_alone():
    co, sizes, outs, errs = _held_first_batch(12, lambda x: x + 1)
    assert not errs and sizes == [1, 8, 3]
    assert all(np.array_equal(outs[i], np.full((1, 3), i + 1.0, dtype=np.float32)) for i in range(12))
    big = np.arange(30, dtype=np.float32).reshape(10, 3)
    np.testing.assert_array_equal(co(big), big + 1)  # 10 rows > max_rows: one batch of its own


def test_a_failing_batch_fails_each_of_its_callers_and_the_next_batch_runs():
    def run(x: np.ndarray) -> np.ndarray:
        if (x == 3).any():
            raise RuntimeError("model failed")
        return x

    co, sizes, outs, errs = _held_first_batch(4, run)
    assert sizes == [1, 3]
    assert 0 in outs and set(errs) == {1, 2, 3}
    assert all(isinstance(e, RuntimeError) for e in errs.values())
    np.testing.assert_array_equal(co(np.ones((1, 3), np.float32)), np.ones((1, 3), np.float32))


def _tiny_embedder() -> TorchEmbedder:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    tf = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)])
    return TorchEmbedder("tiny", model, tf, dim=8, fingerprint="tiny-test")


def test_concurrent_queries_get_the_vectors_of_single_queries():
    emb = _tiny_embedder()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(16)]
    alone = [emb.encode_images([im])[0] for im in images]
    got: dict[int, np.ndarray] = {}
    start = threading.Barrier(8)

    def client(n: int) -> None:
        start.wait()
        for i in range(n, 16, 8):
            got[i] = emb.encode_images([images[i]])[0]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == list(range(16))
    for i in range(16):
        np.testing.assert_allclose(got[i], alone[i], atol=1e-5)
    # bulk calls (more images than a query) are batched as before, not through the coalescer
    before = emb._coalescer.batches
    assert emb.encode_images(images, batch_size=8).shape == (16, 8)
    assert emb._coalescer.batches == before


@pytest.mark.parametrize("n", [0, 1, 4])
def test_query_sized_calls_keep_their_shapes(n):
    emb = _tiny_embedder()
    out = emb.encode_images([Image.new("RGB", (40, 40), (n * 40, 10, 200))] * n)
    assert out.shape == (n, 8) and out.dtype == np.float32
