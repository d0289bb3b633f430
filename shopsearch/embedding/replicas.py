"""Replica executor: on a CPU with few cores, one single-threaded copy of the model per
worker process, each reading, decoding, preprocessing and embedding whole batches of its own;
the calling process only hands out batches and collects vectors, in item order.

Why (issue 18, bulk_replicas_ab_lite0_xeon_amx_loaded in benchmarks/RESULTS.md): with one model
on two OpenMP threads beside decode threads, every operator of a small model ends at a barrier
where one thread waits for the other; replicas share nothing while they work. Alone they saved
little for bf16 EfficientNet-Lite0 (17.8 against 18.6 ms of CPU per photo, 2-core Xeon with AMX):
its eager model spends half its time in ReLU6 passes of their own. With the oneDNN-fused model
(TorchEmbedder.fuse, built here for one thread before the replicas fork and inherited by them)
it took 9.4 ms. A result is one (dim,) float32 vector per image, so little crosses processes.

A replica that dies (a decoder crash, the OOM killer) is replaced and the image it died on
reported as shopsearch.workers.DIED (RespawningPool). Replicas ignore SIGINT: Ctrl-C reaches the
calling process alone, which cancels what is queued and keeps every vector already received."""
from __future__ import annotations

import contextlib
import faulthandler
import logging
import multiprocessing as mp
import signal
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator, Sequence, Union

import numpy as np

from shopsearch.embedders.base import Embedder
from shopsearch.embedding.cpu import embed_stream, in_order
from shopsearch.embedding.executor import OnFailure, OnVectors
from shopsearch.embedding.items import Failure, Preprocess, WorkItem, prepare
from shopsearch.embedding.preprocess import SplitPreprocess, split_preprocess
from shopsearch.embedding.tuning import PipelineConfig, replica_ahead
from shopsearch.workers import RespawningPool, exit_with_parent

log = logging.getLogger("shopsearch.pipeline")

#: jobs of at least this many images get the oneDNN-fused model (TorchEmbedder.fuse: about
#: 2 s of CPU to trace and check at batch 8, repaid within a few hundred photos where it is kept)
FUSE_MIN_IMAGES = 512

#: one image's outcome in a replica: its vector, or why it has none
Embedded = tuple[WorkItem, Union[np.ndarray, Failure]]

# -- in each replica ------------------------------------------------------------------------
_replica: tuple[Embedder, SplitPreprocess | None, int] | None = None


def _init_replica(embedder: Embedder, split: SplitPreprocess | None, batch_size: int) -> None:
    """Replica start (forked: the model is inherited, never pickled): one intra-op thread."""
    global _replica
    _replica = (embedder, split, batch_size)
    faulthandler.disable()  # the parent's crash journal fault file is not this process's
    exit_with_parent()  # a kill -9'd indexer leaves no replicas behind
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _embed_group(items: list[WorkItem]) -> list[Embedded]:
    """Replica: decode, preprocess and embed `items` (one batch at most), failures as values."""
    assert _replica is not None
    embedder, split, batch_size = _replica
    preprocess: Preprocess = split if split is not None else embedder.preprocess
    by_key = {it.key: it for it in items}
    out: dict[str, Embedded] = {}

    def vectors(keys: list[str], vecs: np.ndarray) -> None:
        for key, v in zip(keys, vecs):
            out[key] = (by_key[key], v)

    def failure(item: WorkItem, why: Failure) -> None:
        out[item.key] = (item, why)

    embed_stream(embedder, (prepare(it, preprocess) for it in items), batch_size, vectors, failure, split)
    return [out[it.key] for it in items]


# -- in the calling process -----------------------------------------------------------------
def replica_stream(items: Sequence[WorkItem], embedder: Embedder, cfg: PipelineConfig) -> Iterator[list[Embedded]]:
    """Each batch of `items` embedded by one of cfg.workers replicas, yielded in item order,
    at most replica_ahead(cfg) batches in flight."""
    split = split_preprocess(embedder)
    size = max(1, cfg.batch_size)
    ctx = mp.get_context("fork")  # the model is inherited: no pickling, replicas start in milliseconds

    def start() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max(1, cfg.workers), mp_context=ctx, initializer=_init_replica,
                                   initargs=(embedder, split, size))

    pool: RespawningPool[WorkItem, Embedded] = RespawningPool(start, _embed_group, lambda it, why: (it, why))
    groups = (list(items[i:i + size]) for i in range(0, len(items), size))
    return in_order(pool, groups, replica_ahead(cfg))


class ReplicaExecutor:
    """cfg.workers single-threaded replicas of the model, each embedding whole batches."""

    def __init__(self, embedder: Embedder, cfg: PipelineConfig) -> None:
        self.embedder, self.cfg = embedder, cfg

    @property
    def horizon(self) -> int:
        return (replica_ahead(self.cfg) + 1) * self.cfg.batch_size

    def run(self, items: Sequence[WorkItem], on_vectors: OnVectors, on_failure: OnFailure) -> dict[str, float]:
        # the fused model is made here, for one thread, and inherited by every replica
        fuse = getattr(self.embedder, "fuse", None) if len(items) >= FUSE_MIN_IMAGES else None
        fused = bool(fuse(self.cfg.batch_size)) if fuse is not None else False
        log.info("replicas", extra={"workers": self.cfg.workers, "batch_size": self.cfg.batch_size, "fused": fused})
        try:
            with contextlib.closing(replica_stream(items, self.embedder, self.cfg)) as results:
                for done in results:
                    keys, rows = [], []
                    for item, res in done:
                        if isinstance(res, str):
                            on_failure(item, res)
                        else:
                            keys.append(item.key)
                            rows.append(res)
                    if keys:
                        on_vectors(keys, np.stack(rows))
        finally:
            if fused:
                self.embedder.unfuse()  # type: ignore[attr-defined]
        return {}
