"""Embedding pipeline: read + decode + preprocess in workers, embed in batches, write chunks.

The stages are separate functions so they can be moved onto other executors (a Ray Data
map_batches per stage, see docs/scaling.md):

    (read) -> decode_image -> prepare (the model's preprocess) -> embed_batch -> write_chunk

and the last one, merging chunks into an index, lives in indexer/build.py. `embed_items`
wires them on one machine: workers prepare images while the main thread runs the model,
and every `chunk_size` vectors, or every CHUNK_FLUSH_S seconds on a slow machine, are
persisted, so a killed run loses at most one chunk or ten seconds of work."""
from __future__ import annotations

import faulthandler
import functools
import logging
import multiprocessing as mp
import sys
import time
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from shopsearch.config import GpuTuning
from shopsearch.embedders.base import Embedder
from shopsearch.errors import InvalidImageError
from shopsearch.images import DEFAULT_MAX_PIXELS
from shopsearch.workers import DIED, RespawningPool, exit_with_parent
from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.journal import CrashJournal
from shopsearch.embedding.preprocess import SplitPreprocess, decode_source, split_preprocess
from shopsearch.embedding.tuning import (  # noqa: F401 - PipelineConfig and tuned_config are re-exported
    COMPILE_MIN_IMAGES, GROUP, PipelineConfig, cpu_window, inflight_horizon, tuned_config)

log = logging.getLogger("shopsearch.pipeline")

Preprocess = Callable[[object], np.ndarray]

#: vectors embedded this long ago are saved even when the chunk is not full (a kill -9 on a
#: slow CPU would otherwise lose minutes of work)
CHUNK_FLUSH_S = 10.0


@dataclass(frozen=True)
class WorkItem:
    key: str  # content sha256 (cache key)
    path: str
    image_id: int | None = None


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


# -- stages ---------------------------------------------------------------------------
def decode_image(item: WorkItem, data: bytes | None = None, draft_size: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> object:
    """Stage 2 (reads the file unless given its bytes) -> upright RGB PIL image at reduced scale (see preprocess.decode_source)."""
    return decode_source(data if data is not None else item.path, draft_size, max_pixels)


def decode(item: WorkItem, draft_size: int | None = None) -> tuple[WorkItem, object]:
    """Stage 2 with failures as values: (item, image) or (item, reason)."""
    try:
        return item, decode_image(item, draft_size=draft_size)
    except InvalidImageError as e:
        return item, str(e)
    except Exception as e:  # noqa: BLE001 - a worker must report, never die, on one bad file
        return item, f"{type(e).__name__}: {e}"


def prepare(item: WorkItem, preprocess: Preprocess) -> tuple[WorkItem, np.ndarray | str]:
    """Stages 1-3 for one item: (item, CHW float32 model input) or (item, failure reason)."""
    try:
        return item, preprocess(decode_image(item, draft_size=getattr(preprocess, "draft_size", None)))
    except InvalidImageError as e:
        return item, str(e)
    except Exception as e:  # noqa: BLE001 - one bad file must never stop the run
        return item, f"{type(e).__name__}: {e}"


def embed_batch(embedder: Embedder, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Stage 4: stacked model inputs -> (N, dim) unit vectors."""
    return embedder.encode_batch(np.stack(arrays))


def write_chunk(cache: VectorCache, keys: list[str], vectors: np.ndarray) -> None:
    """Stage 5: persist one chunk atomically (VectorCache.put)."""
    cache.put(keys, vectors)


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


def _prepare_group(items: list[WorkItem]) -> list[tuple[WorkItem, np.ndarray | str]]:
    assert _worker_preprocess is not None
    return [prepare(it, _worker_preprocess) for it in items]


def prepare_list(items: list[WorkItem], preprocess: Preprocess) -> list[tuple[WorkItem, np.ndarray | str]]:
    """Decode and prepare `items` in this thread (failures as reason strings)."""
    return [prepare(it, preprocess) for it in items]


def _make_executor(kind: str, workers: int, preprocess: Preprocess) -> Executor:
    if kind == "process":
        # fork: the preprocess function (and the model object it may belong to) is inherited,
        # never pickled; elsewhere spawn pickles it.
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(preprocess,))
    return ThreadPoolExecutor(workers, thread_name_prefix="decode")


def prepared_stream(items: Sequence[WorkItem], preprocess: Preprocess, workers: int = 2,
                    executor: str = "thread", window: int = 64) -> Iterator[tuple[WorkItem, np.ndarray | str]]:
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
    pool: RespawningPool[WorkItem, tuple[WorkItem, np.ndarray | str]] = RespawningPool(
        lambda: _make_executor(executor, workers, preprocess), fn, lambda item, why: (item, why))
    pending: deque[Future] = deque()
    try:
        it = iter(groups)
        for g in it:
            pending.append(pool.submit(g))
            if len(pending) >= ahead:
                break
        while pending:
            done = pool.result(pending.popleft())
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(nxt))
            yield from done
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown()


# -- the whole pipeline -----------------------------------------------------------------
def embed_items(embedder: Embedder, items: Sequence[WorkItem], cache: VectorCache, batch_size: int | None = None,
                workers: int | None = None, chunk_size: int = 512, progress: bool = True,
                executor: str = "auto", compile: str | None = None, gpu: GpuTuning | None = None) -> EmbedReport:
    """Embed every item not already in the cache; failures are reported, never raised.

    Vectors reach the cache every `chunk_size` images, each chunk atomically, so a run
    killed at any point resumes where it stopped (already-cached keys are skipped).
    `compile`: auto (default: big CPU jobs) | on | off; `gpu`: the GPU executor's knobs
    (Settings.pipeline.compile and Settings.gpu at the edges)."""
    report = EmbedReport()
    todo = [it for it in items if it.key not in cache]
    report.skipped = len(items) - len(todo)
    seen: set[str] = set()
    todo = [it for it in todo if not (it.key in seen or seen.add(it.key))]  # type: ignore[func-returns-value]
    # images that crashed a decoder before are not decoded again until their content changes,
    # and those a dead run had in flight are decoded in separate processes first (journal.py)
    journal = CrashJournal(cache.dir)
    held = journal.quarantined()
    report.failed.extend((it, held[it.key].describe()) for it in todo if it.key in held)
    stale, suspect_keys = journal.stale()
    suspects = [it for it in todo if it.key in suspect_keys and it.key not in held]
    todo = [it for it in todo if it.key not in held and it.key not in suspect_keys]
    cfg = tuned_config(embedder, batch_size, workers, executor, chunk_size, images=len(todo) + len(suspects),
                       compile=compile, gpu=gpu)
    if cfg.compile and (todo or suspects):
        cfg = replace(cfg, compile=embedder.compile(cfg.batch_size))  # type: ignore[attr-defined]
    log.info("embedding", extra={"model": embedder.name, "todo": len(todo), "cached": report.skipped,
                                 "batch_size": cfg.batch_size, "workers": cfg.workers, "executor": cfg.executor,
                                 "compile": cfg.compile, "quarantined": len(report.failed),
                                 "suspects": len(suspects)})
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo) + len(suspects), desc="embedding", unit="img", disable=not progress, smoothing=0.1)
    pend_keys: list[str] = []
    pend_vecs: list[np.ndarray] = []
    flushed_at = time.monotonic()
    # the decoders never run more than `horizon` images past the last one reported, so a
    # journal naming [done, done + 2 * horizon) stays true until done passes its middle
    horizon = inflight_horizon(cfg)
    order = [it.key for it in todo]
    done, mark, tracking = 0, 0, False

    def advance(n: int) -> None:
        nonlocal done, mark
        if not tracking:  # suspects are decoded in other processes: nothing to journal
            return
        done += n
        if done >= mark and done < len(order):
            journal.window(order[done:done + 2 * horizon])
            mark = done + horizon

    def on_vectors(keys: list[str], vecs: np.ndarray) -> None:
        pend_vecs.append(vecs)
        pend_keys.extend(keys)
        report.embedded += len(keys)
        bar.update(len(keys))
        if len(pend_keys) >= cfg.chunk_size or time.monotonic() - flushed_at >= CHUNK_FLUSH_S:
            flush_chunk()
        advance(len(keys))

    def on_failure(item: WorkItem, reason: str) -> None:
        report.failed.append((item, reason))
        bar.update(1)
        if reason == DIED:
            journal.quarantine(item.key, item.path, reason)
        advance(1)

    def flush_chunk() -> None:
        nonlocal flushed_at
        flushed_at = time.monotonic()
        if pend_keys:
            write_chunk(cache, list(pend_keys), np.concatenate(pend_vecs))
            pend_keys.clear()
            pend_vecs.clear()

    try:
        if suspects:
            log.warning("an earlier run died while decoding; decoding the images it had in flight in separate "
                        "processes first", extra={"suspects": len(suspects)})
            split = split_preprocess(embedder)
            _embed_stream(embedder, isolated_stream(suspects, split or embedder.preprocess, cfg.workers),
                          cfg.batch_size, on_vectors, on_failure, split)
            flush_chunk()
        journal.forget(stale)  # every suspect is embedded, failed, or was not in this run's work
        journal.arm()  # from here on, a fatal signal in this process is recorded as a crash
        tracking = True
        advance(0)
        if cfg.executor == "gpu":
            from shopsearch.embedding.gpu import run_gpu_batches

            report.gpu_stages = run_gpu_batches(embedder, todo, cfg, on_vectors, on_failure)
        else:
            _run_cpu_batches(embedder, todo, cfg, on_vectors, on_failure)
    finally:
        flush_chunk()  # whatever was embedded before an error is kept
        bar.close()
        journal.close()  # this process is alive: nothing it had in flight crashed it
    report.seconds = time.perf_counter() - t0
    log.info("embedded", extra={"model": embedder.name, "embedded": report.embedded, "failed": len(report.failed),
                                "seconds": round(report.seconds, 2), "images_per_s": round(report.images_per_s, 1)})
    return report


def isolated_stream(items: Sequence[WorkItem], preprocess: Preprocess,
                    workers: int = 2) -> Iterator[tuple[WorkItem, np.ndarray | str]]:
    """Model inputs prepared one task per image in worker processes, in item order: an image
    that kills its process gets shopsearch.workers.DIED and harms nothing else."""
    pool: RespawningPool[WorkItem, tuple[WorkItem, np.ndarray | str]] = RespawningPool(
        lambda: _make_executor("process", max(1, workers), preprocess), _prepare_group, lambda it, why: (it, why))
    try:
        for i in range(0, len(items), 64):
            yield from pool.run_each(items[i:i + 64])
    finally:
        pool.shutdown()


def _run_cpu_batches(embedder: Embedder, todo: Sequence[WorkItem], cfg: PipelineConfig,
                     on_vectors: Callable[[list[str], np.ndarray], None],
                     on_failure: Callable[[WorkItem, str], None]) -> None:
    split = split_preprocess(embedder)
    preprocess = split if split is not None else embedder.preprocess
    stream = prepared_stream(todo, preprocess, cfg.workers, cfg.executor, cpu_window(cfg))
    _embed_stream(embedder, stream, cfg.batch_size, on_vectors, on_failure, split)


def _embed_stream(embedder: Embedder, stream: Iterator[tuple[WorkItem, np.ndarray | str]], batch_size: int,
                  on_vectors: Callable[[list[str], np.ndarray], None],
                  on_failure: Callable[[WorkItem, str], None], split: SplitPreprocess | None = None) -> None:
    """Batch prepared inputs through the model; failures are passed on as they come. `split`:
    the split preprocess the stream was prepared with (its normalisation runs here)."""
    batch: list[np.ndarray] = []
    keys: list[str] = []

    def run_model() -> None:
        if split is not None:
            vecs = embedder.encode_tensor(split.finish(np.stack(batch)))  # type: ignore[attr-defined]
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
