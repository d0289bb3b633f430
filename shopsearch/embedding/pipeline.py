"""Embedding pipeline: read + decode + preprocess in workers, embed in batches, write chunks.

The stages are separate functions so they can be moved onto other executors (a Ray Data
map_batches per stage, see docs/scaling.md):

    (read) -> decode_source -> prepare (the model's preprocess) -> embed_batch -> write_chunk

(items.py, cpu.py) and the last one, merging chunks into an index, lives in indexer/build.py.
`embed_items` runs them on one machine in four parts, each with one job: `plan_work` (what
to embed, what to re-check after a crash, what is quarantined), an executor (executor.py:
CPU workers or the GPU) that decodes and embeds, a `ChunkWriter` that persists every
`chunk_size` vectors or every CHUNK_FLUSH_S seconds, so a killed run loses at most one chunk
or ten seconds of work, and a `JournalWindow` that keeps the crash journal one step ahead
of the decoders."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Container, Mapping, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from shopsearch.config import GpuTuning
from shopsearch.embedders.base import BatchEmbedder, Embedder
from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.cpu import CpuExecutor, IsolatedExecutor, embed_batch
from shopsearch.embedding.executor import EmbedExecutor
from shopsearch.embedding.gpu import GpuExecutor
from shopsearch.embedding.items import (Failure, Preprocess, WorkItem, decode, prepare,
                                        prepare_list)
from shopsearch.embedding.journal import CrashJournal, Quarantined
from shopsearch.embedding.replicas import ReplicaExecutor
from shopsearch.embedding.tuning import COMPILE_MIN_IMAGES, PipelineConfig, tuned_config
from shopsearch.workers import DIED

# the pipeline's stages and settings, importable from here by the executors on other machines (Ray)
__all__ = ["COMPILE_MIN_IMAGES", "ChunkWriter", "EmbedReport", "JournalWindow", "PipelineConfig", "Preprocess",
           "WorkItem", "WorkPlan", "decode", "embed_batch", "embed_items", "executor_for",
           "plan_work", "prepare", "prepare_list", "tuned_config", "write_chunk"]

log = logging.getLogger("shopsearch.pipeline")

#: vectors embedded this long ago are saved even when the chunk is not full (a kill -9 on a
#: slow CPU would otherwise lose minutes of work)
CHUNK_FLUSH_S = 10.0


@dataclass
class EmbedReport:
    embedded: int = 0
    skipped: int = 0
    failed: list[tuple[WorkItem, str]] = field(default_factory=list)
    seconds: float = 0.0
    gpu_stages: dict[str, float] = field(default_factory=dict)  # the GPU executor's seconds per stage

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def write_chunk(cache: VectorCache, keys: list[str], vectors: np.ndarray) -> None:
    """Persist one chunk atomically (VectorCache.put)."""
    cache.put(keys, vectors)


# -- 1. plan the work ---------------------------------------------------------------------
@dataclass(frozen=True)
class WorkPlan:
    todo: tuple[WorkItem, ...]  # to embed, in this order, each content once
    suspects: tuple[WorkItem, ...]  # a crashed run had these in flight: decoded in separate processes first
    held: tuple[tuple[WorkItem, Failure], ...]  # quarantined by an earlier run: reported, not decoded
    skipped: int  # already in the cache

    @property
    def images(self) -> int:
        """How many images will be decoded."""
        return len(self.todo) + len(self.suspects)


def plan_work(items: Sequence[WorkItem], cached: Container[str], quarantined: Mapping[str, Quarantined],
              suspect_keys: Container[str]) -> WorkPlan:
    """Every item not already in the cache, each content once: those that crashed a decoder
    before are held until their content changes, those a dead run had in flight are
    suspects (journal.py), the rest is the todo list."""
    fresh = [it for it in items if it.key not in cached]
    skipped = len(items) - len(fresh)
    seen: set[str] = set()
    fresh = [it for it in fresh if not (it.key in seen or seen.add(it.key))]  # type: ignore[func-returns-value]
    held = tuple((it, quarantined[it.key].describe()) for it in fresh if it.key in quarantined)
    suspects = tuple(it for it in fresh if it.key in suspect_keys and it.key not in quarantined)
    todo = tuple(it for it in fresh if it.key not in quarantined and it.key not in suspect_keys)
    return WorkPlan(todo, suspects, held, skipped)


# -- 2. write chunks ----------------------------------------------------------------------
class ChunkWriter:
    """Collects vectors and writes them to the cache every `chunk_size` vectors, or when the
    oldest unsaved ones are `flush_s` seconds old (`clock`: tests pass their own)."""

    def __init__(self, cache: VectorCache, chunk_size: int, flush_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cache, self.chunk_size, self.flush_s, self.clock = cache, chunk_size, flush_s, clock
        self.keys: list[str] = []
        self.vectors: list[np.ndarray] = []
        self.flushed_at = clock()

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        self.vectors.append(vectors)
        self.keys.extend(keys)
        if len(self.keys) >= self.chunk_size or self.clock() - self.flushed_at >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write what is pending as one chunk (nothing when nothing is)."""
        self.flushed_at = self.clock()
        if self.keys:
            write_chunk(self.cache, list(self.keys), np.concatenate(self.vectors))
            self.keys.clear()
            self.vectors.clear()


# -- 3. advance the journal window --------------------------------------------------------
class WindowJournal(Protocol):
    def window(self, keys: Sequence[str]) -> None: ...


class JournalWindow:
    """Keeps the crash journal naming the images the decoders may be working on. They never
    run more than `horizon` images past the last one reported, so a journal naming
    [done, done + 2 * horizon) stays true until done passes its middle: it is rewritten
    once per `horizon` images, not per batch."""

    def __init__(self, journal: WindowJournal, order: Sequence[str], horizon: int) -> None:
        self.journal, self.order, self.horizon = journal, list(order), horizon
        self.done = self.mark = 0

    def advance(self, n: int) -> None:
        """`n` more images were reported (embedded or failed)."""
        self.done += n
        if self.mark <= self.done < len(self.order):
            self.journal.window(self.order[self.done:self.done + 2 * self.horizon])
            self.mark = self.done + self.horizon


# -- 4. run an executor -------------------------------------------------------------------
def executor_for(embedder: Embedder, cfg: PipelineConfig) -> EmbedExecutor:
    """The executor cfg.executor names: "gpu" (nvJPEG on the model's GPU), "replicas"
    (single-threaded model copies in processes) or CPU decode workers."""
    if cfg.executor == "gpu":
        return GpuExecutor(embedder, cfg)
    return ReplicaExecutor(embedder, cfg) if cfg.executor == "replicas" else CpuExecutor(embedder, cfg)


class RunSink:
    """Where an executor's results go: vectors to the chunk writer, failures to the report
    (those that killed a decoder also to the quarantine), both to the progress bar and the
    journal window (None while suspects run in processes of their own)."""

    def __init__(self, report: EmbedReport, writer: ChunkWriter, journal: CrashJournal, bar: tqdm,
                 window: JournalWindow | None = None) -> None:
        self.report, self.writer, self.journal, self.bar, self.window = report, writer, journal, bar, window

    def vectors(self, keys: list[str], vecs: np.ndarray) -> None:
        self.writer.add(keys, vecs)
        self.report.embedded += len(keys)
        self.bar.update(len(keys))
        if self.window is not None:
            self.window.advance(len(keys))

    def failure(self, item: WorkItem, reason: Failure) -> None:
        self.report.failed.append((item, reason))
        self.bar.update(1)
        if reason == DIED:
            self.journal.quarantine(item.key, item.path, reason)
        if self.window is not None:
            self.window.advance(1)


def run_executor(executor: EmbedExecutor, items: Sequence[WorkItem], sink: RunSink) -> dict[str, float]:
    """Embed `items` through `executor` into `sink`; the executor's stage seconds."""
    if sink.window is not None:
        sink.window.advance(0)  # the first window, before any decoder starts
    return executor.run(items, sink.vectors, sink.failure)


# -- the whole pipeline -------------------------------------------------------------------
def embed_items(embedder: Embedder, items: Sequence[WorkItem], cache: VectorCache, batch_size: int | None = None,
                workers: int | None = None, chunk_size: int = 512, progress: bool = True,
                executor: str = "auto", compile: str | None = None, gpu: GpuTuning | None = None) -> EmbedReport:
    """Embed every item not already in the cache; failures are reported, never raised.

    Vectors reach the cache every `chunk_size` images, each chunk atomically, so a run
    killed at any point resumes where it stopped (already-cached keys are skipped).
    `compile`: auto (default: big CPU jobs) | on | off; `gpu`: the GPU executor's knobs
    (Settings.pipeline.compile and Settings.gpu at the edges)."""
    journal = CrashJournal(cache.dir)
    stale, suspect_keys = journal.stale()
    keys = [it.key for it in items]
    cached = {k for k, hit in zip(keys, cache.present(keys).tolist()) if hit}  # one lookup, no vector read
    plan = plan_work(items, cached, journal.quarantined(), suspect_keys)
    report = EmbedReport(skipped=plan.skipped, failed=list(plan.held))
    cfg = tuned_config(embedder, batch_size, workers, executor, chunk_size, images=plan.images, compile=compile,
                       gpu=gpu)
    if cfg.compile and plan.images and isinstance(embedder, BatchEmbedder):
        cfg = replace(cfg, compile=embedder.compile(cfg.batch_size))
    log.info("embedding", extra={"model": embedder.name, "todo": len(plan.todo), "cached": report.skipped,
                                 "batch_size": cfg.batch_size, "workers": cfg.workers, "executor": cfg.executor,
                                 "compile": cfg.compile, "quarantined": len(report.failed),
                                 "suspects": len(plan.suspects)})
    t0 = time.perf_counter()
    bar = tqdm(total=plan.images, desc="embedding", unit="img", disable=not progress, smoothing=0.1)
    writer = ChunkWriter(cache, cfg.chunk_size, CHUNK_FLUSH_S)
    try:
        if plan.suspects:
            log.warning("an earlier run died while decoding; decoding the images it had in flight in separate "
                        "processes first", extra={"suspects": len(plan.suspects)})
            run_executor(IsolatedExecutor(embedder, cfg), plan.suspects, RunSink(report, writer, journal, bar))
            writer.flush()
        journal.forget(stale)  # every suspect is embedded, failed, or was not in this run's work
        journal.arm()  # from here on, a fatal signal in this process is recorded as a crash
        main = executor_for(embedder, cfg)
        window = JournalWindow(journal, [it.key for it in plan.todo], main.horizon)
        report.gpu_stages = run_executor(main, plan.todo, RunSink(report, writer, journal, bar, window))
    finally:
        writer.flush()  # whatever was embedded before an error is kept
        cache.save_index()  # the next run finds these chunks' keys without reading them
        bar.close()
        journal.close()  # this process is alive: nothing it had in flight crashed it
    report.seconds = time.perf_counter() - t0
    log.info("embedded", extra={"model": embedder.name, "embedded": report.embedded, "failed": len(report.failed),
                                "seconds": round(report.seconds, 2), "images_per_s": round(report.images_per_s, 1)})
    return report
