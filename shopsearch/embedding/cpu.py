"""CPU executors: images decoded and prepared by worker threads or processes (a bounded
window ahead of the model), or one process per image for the suspects of a crash, and
embedded in batches by the calling thread."""
from __future__ import annotations

import contextlib
import faulthandler
import functools
import multiprocessing as mp
import sys
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Iterable, Iterator, Sequence, TypeVar

import numpy as np

from shopsearch.embedders.base import Embedder, TensorEmbedder
from shopsearch.embedding.executor import OnFailure, OnVectors
from shopsearch.embedding.items import Prepared, Preprocess, WorkItem, prepare, prepare_list
from shopsearch.embedding.preprocess import SplitPreprocess, split_preprocess
from shopsearch.embedding.tuning import GROUP, PipelineConfig, cpu_window, inflight_horizon
from shopsearch.workers import RespawningPool, exit_with_parent

J = TypeVar("J")
R = TypeVar("R")

#: suspects of a crash go to the isolating processes this many at a time
ISOLATED_SLICE = 64

# -- workers --------------------------------------------------------------------------
_worker_preprocess: Preprocess | None = None


def _init_worker(preprocess: Preprocess) -> None:
    global _worker_preprocess
    _worker_preprocess = preprocess
    # a forked worker inherits the crash journal's fault handler: its own death is handled by
    # the pool (shopsearch.workers), and must not mark the parent as crashed
    faulthandler.disable()
    exit_with_parent()  # a kill -9'd indexer leaves no decode workers behind
    try:  # one decode process must not start a team of torch threads of its own
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _prepare_group(items: list[WorkItem]) -> list[Prepared]:
    assert _worker_preprocess is not None
    return [prepare(it, _worker_preprocess) for it in items]


def _make_executor(kind: str, workers: int, preprocess: Preprocess) -> Executor:
    if kind == "process":
        # fork: the preprocess function (and the model object it may belong to) is inherited,
        # never pickled; elsewhere spawn pickles it.
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(preprocess,))
    return ThreadPoolExecutor(workers, thread_name_prefix="decode")


# -- streams of prepared inputs -----------------------------------------------------------
def prepared_stream(items: Sequence[WorkItem], preprocess: Preprocess, workers: int = 2,
                    executor: str = "thread", window: int = 64) -> Iterator[Prepared]:
    """Model inputs in item order, prepared by `workers` threads or processes, at most
    `window` items ahead of the consumer (bounded memory, overlap with the model).
    A decode process that dies (a decoder crash, the OOM killer) is replaced and the image
    it died on is reported as a failure (shopsearch.workers)."""
    if executor == "inline" or workers < 1 or len(items) <= GROUP:
        for it in items:
            yield prepare(it, preprocess)
        return
    groups = [list(items[i:i + GROUP]) for i in range(0, len(items), GROUP)]
    ahead = max(2, window // GROUP)
    # threads share memory: they call the function directly; processes inherit it (fork)
    fn = _prepare_group if executor == "process" else functools.partial(prepare_list, preprocess=preprocess)
    pool: RespawningPool[WorkItem, Prepared] = RespawningPool(
        lambda: _make_executor(executor, workers, preprocess), fn, lambda item, why: (item, why))
    with contextlib.closing(in_order(pool, groups, ahead)) as results:  # stopped early: the pool shut down now
        for done in results:
            yield from done


def in_order(pool: RespawningPool[J, R], groups: Iterable[list[J]], ahead: int) -> Iterator[list[R]]:
    """Each group's results from `pool`, in the groups' order, at most `ahead` groups in flight;
    when the consumer stops (the end, an error, Ctrl-C) what is queued is cancelled and the pool
    shut down."""
    pending: deque[Future] = deque()
    it = iter(groups)
    try:
        for g in it:
            pending.append(pool.submit(g))
            if len(pending) >= ahead:
                break
        while pending:
            done = pool.result(pending.popleft())
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(nxt))
            yield done
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown()


def isolated_stream(items: Sequence[WorkItem], preprocess: Preprocess, workers: int = 2) -> Iterator[Prepared]:
    """Model inputs prepared one task per image in worker processes, in item order: an image
    that kills its process gets shopsearch.workers.DIED and harms nothing else."""
    pool: RespawningPool[WorkItem, Prepared] = RespawningPool(
        lambda: _make_executor("process", max(1, workers), preprocess), _prepare_group, lambda it, why: (it, why))
    try:
        for i in range(0, len(items), ISOLATED_SLICE):
            yield from pool.run_each(items[i:i + ISOLATED_SLICE])
    finally:
        pool.shutdown()


# -- batches through the model --------------------------------------------------------------
def embed_batch(embedder: Embedder, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Stacked model inputs -> (N, dim) unit vectors."""
    return embedder.encode_batch(np.stack(arrays))


def embed_stream(embedder: Embedder, stream: Iterator[Prepared], batch_size: int, on_vectors: OnVectors,
                 on_failure: OnFailure, split: SplitPreprocess | None = None) -> None:
    """Batch prepared inputs through the model; failures are passed on as they come. `split`:
    the split preprocess the stream was prepared with (its normalisation runs here)."""
    batch: list[np.ndarray] = []
    keys: list[str] = []

    def run_model() -> None:
        if split is not None and isinstance(embedder, TensorEmbedder):
            vecs = embedder.encode_tensor(split.finish(np.stack(batch)))
        else:
            vecs = embed_batch(embedder, batch)
        on_vectors(list(keys), vecs)
        batch.clear()
        keys.clear()

    for item, res in stream:
        if isinstance(res, str):
            on_failure(item, res)
            continue
        batch.append(res)
        keys.append(item.key)
        if len(batch) >= batch_size:
            run_model()
    if batch:
        run_model()


# -- the executors ----------------------------------------------------------------------------
class CpuExecutor:
    """Decode workers (cfg.executor: thread | process | inline) a bounded window ahead of
    the model, which runs in the calling thread."""

    def __init__(self, embedder: Embedder, cfg: PipelineConfig) -> None:
        self.embedder, self.cfg = embedder, cfg
        self.split = split_preprocess(embedder)

    @property
    def horizon(self) -> int:
        return inflight_horizon(self.cfg)

    def run(self, items: Sequence[WorkItem], on_vectors: OnVectors, on_failure: OnFailure) -> dict[str, float]:
        preprocess = self.split if self.split is not None else self.embedder.preprocess
        stream = prepared_stream(items, preprocess, self.cfg.workers, self.cfg.executor, cpu_window(self.cfg))
        embed_stream(self.embedder, stream, self.cfg.batch_size, on_vectors, on_failure, self.split)
        return {}


class IsolatedExecutor:
    """One worker process per image, for the images a crashed run had in flight: the one
    that kills its process is reported as shopsearch.workers.DIED, the others embed as usual."""

    #: these decoders run in other processes: a crash there cannot take the run with it
    horizon = 0

    def __init__(self, embedder: Embedder, cfg: PipelineConfig) -> None:
        self.embedder, self.cfg = embedder, cfg
        self.split = split_preprocess(embedder)

    def run(self, items: Sequence[WorkItem], on_vectors: OnVectors, on_failure: OnFailure) -> dict[str, float]:
        stream = isolated_stream(items, self.split or self.embedder.preprocess, self.cfg.workers)
        embed_stream(self.embedder, stream, self.cfg.batch_size, on_vectors, on_failure, self.split)
        return {}
