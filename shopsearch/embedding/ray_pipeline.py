"""Embedding on a Ray cluster with Ray Data: the same stages as `embed_items`, spread over nodes.

    catalogue items -> read + decode + preprocess (CPU tasks) -> embed (actor pool, one GPU
    per actor where the cluster has GPUs) -> vectors written by content hash into the vector
    cache, a chunk per batch, straight from the actor

On a cluster without GPUs the two stages are fused: each actor holds a node's CPUs (up to
CPU_ACTOR_CPUS), reads and decodes its batch's images in threads while its model runs, as
the local engine does on a small machine, and only keys and paths cross the object store.
Separate decode tasks would move every image's pixels through it and compete with the
actor for the same cores (on 2 cores the two-stage pipeline ran at a third of the local
engine's speed, benchmarks/RESULTS.md).

The cache folder must be storage every node reaches (a shared file system); the driver
checks that first (`check_shared_folder`). Only (key, failure reason) pairs come back to
the driver, for its progress bar and failure records, so the driver's memory does not grow
with the catalogue. A task whose worker dies (a killed process, a lost node) is retried by
Ray; a block that dies on every try (an image that crashes its decoder) is set aside, and
its images are run again one image per task, so only the culprit fails (reported as
`shopsearch.workers.DIED` and quarantined by content hash, as on one machine).

`ray` is imported inside the functions: importing this module does not import Ray."""
from __future__ import annotations

import logging
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from shopsearch.embedders.base import Embedder
from shopsearch.embedding.cache import write_chunk_file
from shopsearch.embedding.journal import CrashJournal
from shopsearch.embedding.pipeline import EmbedReport, Preprocess, WorkItem, embed_batch, prepare
from shopsearch.embedding.preprocess import decode_source, split_preprocess
from shopsearch.errors import ClusterError, InvalidImageError
from shopsearch.workers import DIED

log = logging.getLogger("shopsearch.ray")

#: times Ray runs a task again after its worker died, before its block is set aside
TASK_RETRIES = 2
#: the same when each image runs alone (one retry forgives a worker killed by something else)
ISOLATED_RETRIES = 1
#: CPUs one fused CPU actor uses (decode threads and torch threads): a model's intra-op
#: threads stop paying beyond a few cores, so a bigger node runs several actors
CPU_ACTOR_CPUS = 4


@dataclass(frozen=True)
class RaySizing:
    """How the embedding stage uses the cluster."""

    actors: int  # embedding actors (one model copy each)
    batch_size: int  # images per model call (and, two-stage, per cache chunk)
    gpus_per_actor: float
    cpus_per_actor: float  # fused: also the actor's decode threads and torch threads
    cpus_per_decode_task: float  # two-stage only
    decode_batch: int  # images per decode task (two-stage) or per actor call and cache chunk (fused)
    fused: bool = False  # each actor decodes its own images (CPU clusters); else decode tasks feed the actors


def size_for(resources: dict[str, float], batch_size: int | None = None, actors: int | None = None,
             node_cpus: Sequence[float] = ()) -> RaySizing:
    """Sizing from the cluster's resources (`ray.cluster_resources()`, and each alive node's
    CPUs, `alive_node_cpus()`); explicit values win.

    GPUs: one actor per GPU, 256-image batches, decode tasks on the CPUs. CPUs only: fused
    actors of min(CPU_ACTOR_CPUS, the smallest node's CPUs) CPUs each, as many as the nodes
    hold, 16-image model batches (the local engine's measured CPU batch), 128 images a call."""
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if gpus:
        return RaySizing(actors or gpus, batch_size or 256, 1.0, 1.0, 1.0, 64)
    nodes = [int(c) for c in node_cpus if c >= 1] or [cpus]
    per = max(1, min(CPU_ACTOR_CPUS, *nodes))
    return RaySizing(actors or max(1, sum(n // per for n in nodes)), batch_size or 16, 0.0, float(per), 0.0, 128,
                     fused=True)


def alive_node_cpus() -> list[float]:
    """CPUs of each alive node of the connected cluster (nodes without CPUs included as 0)."""
    import ray

    return [float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]


# -- stages (run on the workers) ----------------------------------------------------------
def read_source(path: str) -> bytes | str:
    """A local or shared path as is; a URI (s3://, gs://, hdfs://...) read through pyarrow's file systems."""
    if "://" not in path or path.startswith("file://"):
        return path[len("file://"):] if path.startswith("file://") else path
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(path)
    with filesystem.open_input_file(inner) as f:
        return f.read()


def prepare_source(key: str, path: str, preprocess: Preprocess) -> np.ndarray | str:
    """Read + decode + preprocess one image: the model input, or the reason it failed."""
    if "://" not in path:
        return prepare(WorkItem(key, path), preprocess)[1]  # the local engine's own stage
    try:
        data = read_source(path)
        return preprocess(decode_source(data, getattr(preprocess, "draft_size", None)))
    except InvalidImageError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - one bad file must never stop the job
        return f"{type(e).__name__}: {e}"


def decode_batch(batch: dict[str, np.ndarray], preprocess: Preprocess) -> dict[str, np.ndarray]:
    """Ray Data CPU stage: rows (key, path) -> (key, path, pixels as bytes + shape + dtype, reason)."""
    pixels, shapes, dtypes, reasons = [], [], [], []
    for key, path in zip(batch["key"], batch["path"]):
        res = prepare_source(str(key), str(path), preprocess)
        if isinstance(res, str):
            pixels.append(b"")
            shapes.append("")
            dtypes.append("")
            reasons.append(res or "unreadable")  # an empty reason would read as a good row
        else:
            arr = np.ascontiguousarray(res)
            pixels.append(arr.tobytes())
            shapes.append(",".join(map(str, arr.shape)))
            dtypes.append(arr.dtype.str)
            reasons.append("")
    return {"key": batch["key"], "path": batch["path"], "pixels": np.array(pixels, dtype=object),
            "shape": np.array(shapes), "dtype": np.array(dtypes), "reason": np.array(reasons)}


class EmbedActor:
    """Ray Data actor stage: loads the model once, embeds the good rows of each batch and
    writes their vectors into the cache folder as one chunk; returns (key, reason, ready) rows."""

    def __init__(self, make_embedder: Callable[[], Embedder], folder: str) -> None:
        self.embedder = make_embedder()
        self.split = split_preprocess(self.embedder)
        self.folder = Path(folder)
        self.ready = time.time()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = [j for j, r in enumerate(batch["reason"]) if not r]
        if good:
            x = np.stack([np.frombuffer(batch["pixels"][j], dtype=np.dtype(str(batch["dtype"][j])))
                          .reshape(tuple(int(d) for d in str(batch["shape"][j]).split(","))) for j in good])
            if self.split is not None:  # uint8 pixels, normalised once per batch as embed_items does
                vecs = self.embedder.encode_tensor(self.split.finish(x))  # type: ignore[attr-defined]
            else:
                vecs = embed_batch(self.embedder, list(x))
            write_chunk_file(self.folder, [str(batch["key"][j]) for j in good], np.asarray(vecs))
        return {"key": batch["key"], "reason": batch["reason"], "ready": np.full(len(batch["key"]), self.ready)}


def _use_threads(n: int) -> None:
    """Torch's intra-op threads in this actor = the CPUs it was given (Ray's OMP_NUM_THREADS
    says 1 for a fractional CPU, and the machine's count elsewhere)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(max(1, n))


class DecodeEmbedActor:
    """Ray Data actor stage of a CPU cluster (fused): reads, decodes and preprocesses its
    batch's images in `threads` threads while the model embeds the ones already prepared,
    writes the batch's vectors as one cache chunk; returns (key, reason, ready) rows, ready
    being when this actor had its model (the driver reports start-up apart)."""

    def __init__(self, make_embedder: Callable[[], Embedder], preprocess: Preprocess, folder: str, threads: int,
                 model_batch: int) -> None:
        _use_threads(threads)
        self.embedder = make_embedder()
        _use_threads(threads)  # the embedder may have set its own count while loading
        self.split = split_preprocess(self.embedder)
        self.preprocess = preprocess
        self.folder = Path(folder)
        self.model_batch = max(1, model_batch)
        # PIL decodes and resizes without the GIL: threads overlap with torch, nothing is pickled
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="decode")
        self.ready = time.time()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = [str(k) for k in batch["key"]]
        prepared = self.pool.map(prepare_source, keys, [str(p) for p in batch["path"]],
                                 [self.preprocess] * len(keys))
        reasons = [""] * len(keys)
        done_keys: list[str] = []
        vecs: list[np.ndarray] = []
        pending: list[int] = []
        arrays: list[np.ndarray] = []
        for j, res in enumerate(prepared):  # in order, as the threads finish them
            if isinstance(res, str):
                reasons[j] = res or "unreadable"
                continue
            pending.append(j)
            arrays.append(res)
            if len(arrays) >= self.model_batch:
                vecs.append(self._embed(arrays))
                done_keys += [keys[i] for i in pending]
                pending, arrays = [], []
        if arrays:
            vecs.append(self._embed(arrays))
            done_keys += [keys[i] for i in pending]
        if vecs:
            write_chunk_file(self.folder, done_keys, np.concatenate(vecs))
        return {"key": batch["key"], "reason": np.array(reasons), "ready": np.full(len(keys), self.ready)}

    def _embed(self, arrays: list[np.ndarray]) -> np.ndarray:
        if self.split is not None:  # uint8 pixels, normalised once per batch as embed_items does
            return np.asarray(self.embedder.encode_tensor(self.split.finish(np.stack(arrays))))  # type: ignore[attr-defined]
        return np.asarray(embed_batch(self.embedder, arrays))


# -- the driver -------------------------------------------------------------------------------
@dataclass
class RayEmbedReport(EmbedReport):
    """EmbedReport plus the job's start-up: from the call until the first actor held its
    model (Ray Data planning, actor processes started, model loaded)."""

    started: float = 0.0  # wall clock (time.time) at the call
    first_ready: float = math.inf  # wall clock when the first actor had its model

    @property
    def startup_s(self) -> float:
        return max(0.0, self.first_ready - self.started) if math.isfinite(self.first_ready) else 0.0

    @property
    def steady_images_per_s(self) -> float:
        """Images/s once an actor is ready: the engine's throughput without its start-up."""
        rest = self.seconds - self.startup_s
        return self.embedded / rest if rest > 0 else 0.0


def check_shared_folder(folder: Path) -> int:
    """Every alive node reads a token the driver wrote into `folder` and writes one back,
    named after itself, that the driver then reads; ClusterError naming each node that
    cannot (a node-local disk, a missing mount). Returns the number of nodes checked."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    probe = Path(folder) / f".ray-probe-{token}"
    probe.write_text(token)

    @ray.remote(num_cpus=0, max_retries=0)
    def answer(path: str, token: str, node: str) -> str:
        try:
            seen = Path(path).read_text()
            Path(f"{path}.{node}").write_text(seen)
        except OSError as e:
            return f"{e.strerror or e}"
        return "" if seen == token else "reads another file at that path"

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    try:
        refs = [answer.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
                .remote(str(probe), token, n) for n in nodes]
        answers = ray.get(refs, timeout=120)
        problems = [f"node {n} ({why})" if why else f"node {n} (its reply did not reach the driver)"
                    for n, why in zip(nodes, answers)
                    if why or not Path(f"{probe}.{n}").is_file()]
    finally:
        for p in [probe, *Path(folder).glob(f".ray-probe-{token}.*")]:
            p.unlink(missing_ok=True)
    if problems:
        raise ClusterError(f"the vector cache {folder} is not shared storage every Ray node reaches: "
                           f"{'; '.join(problems)}. Put --data-dir on a file system every node mounts at the same path")
    return len(nodes)


def embed_on_ray(items: Sequence[WorkItem], make_embedder: Callable[[], Embedder], preprocess: Preprocess,
                 folder: Path, sizing: RaySizing, progress: bool = True) -> RayEmbedReport:
    """Embed `items` (not yet cached, deduplicated by the caller) on the connected Ray cluster,
    vectors into the cache `folder`. Failures come back as values, never as an exception."""
    report = RayEmbedReport(started=time.time())
    if not items:
        return report
    journal = CrashJournal(folder)
    t0 = time.perf_counter()
    bar = tqdm(total=len(items), desc="embedding (ray)", unit="img", disable=not progress, smoothing=0.1)
    try:
        done = _run(items, make_embedder, preprocess, folder, sizing, sizing.decode_batch, TASK_RETRIES, bar,
                    report)
        lost = [it for it in items if it.key not in done]
        if lost:  # blocks that died on every try: one image per task finds the culprit
            log.warning("Ray tasks died on every try; running their images one per task",
                        extra={"images": len(lost)})
            done = _run(lost, make_embedder, preprocess, folder, sizing, 1, ISOLATED_RETRIES, bar, report)
            for it in lost:
                if it.key not in done:
                    report.failed.append((it, DIED))
                    journal.quarantine(it.key, it.path, DIED)
                    bar.update(1)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - t0
    log.info("embedded on ray", extra={"embedded": report.embedded, "failed": len(report.failed),
                                       "seconds": round(report.seconds, 2), "startup_s": round(report.startup_s, 2),
                                       "images_per_s": round(report.images_per_s, 1)})
    return report


def _run(items: Sequence[WorkItem], make_embedder: Callable[[], Embedder], preprocess: Preprocess,
         folder: Path, sizing: RaySizing, per_block: int, retries: int, bar: Any, report: RayEmbedReport) -> set[str]:
    """One Ray Data pass; the keys that came out of it (embedded or failed as a value)."""
    import ray

    by_key = {it.key: it for it in items}
    ctx = ray.data.DataContext.get_current()
    before = ctx.max_errored_blocks, ctx.enable_progress_bars
    ctx.max_errored_blocks = -1  # a block whose task died on every try is set aside, not the job
    ctx.enable_progress_bars = False  # the driver shows one bar (tqdm) for the whole job
    try:
        return _stream(items, by_key, make_embedder, preprocess, folder, sizing, per_block, retries, bar, report)
    finally:
        ctx.max_errored_blocks, ctx.enable_progress_bars = before


def _stream(items: Sequence[WorkItem], by_key: dict[str, WorkItem], make_embedder: Callable[[], Embedder],
            preprocess: Preprocess, folder: Path, sizing: RaySizing, per_block: int, retries: int, bar: Any,
            report: RayEmbedReport) -> set[str]:
    import ray

    # at least two blocks per actor, so every actor has work and none finishes long after the others
    blocks = min(len(items), max(math.ceil(len(items) / per_block), 2 * sizing.actors))
    per_block = math.ceil(len(items) / blocks)
    ds = ray.data.from_items([{"key": it.key, "path": it.path} for it in items], override_num_blocks=blocks)
    if sizing.fused:
        # One image per task is the culprit hunt: an actor that dies takes down every task queued
        # on it, so with several in flight an innocent image died beside the culprit on each try
        # and was quarantined too. One task in flight per actor makes each death its own image's.
        in_flight = 1 if per_block == 1 else None
        ds = ds.map_batches(DecodeEmbedActor, fn_constructor_kwargs={
            "make_embedder": make_embedder, "preprocess": preprocess, "folder": str(folder),
            "threads": max(1, int(sizing.cpus_per_actor)), "model_batch": sizing.batch_size},
            batch_size=per_block, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=sizing.actors, max_tasks_in_flight_per_actor=in_flight),
            num_cpus=sizing.cpus_per_actor, max_restarts=-1, max_task_retries=retries)
    else:
        ds = ds.map_batches(decode_batch, fn_kwargs={"preprocess": preprocess}, batch_size=per_block,
                            batch_format="numpy", num_cpus=sizing.cpus_per_decode_task, max_retries=retries)
        ds = ds.map_batches(EmbedActor, fn_constructor_kwargs={"make_embedder": make_embedder, "folder": str(folder)},
                            batch_size=sizing.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=sizing.actors),
                            num_cpus=sizing.cpus_per_actor, num_gpus=sizing.gpus_per_actor,
                            max_restarts=-1, max_task_retries=TASK_RETRIES)
    done: set[str] = set()
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if len(out["key"]):
            report.first_ready = min(report.first_ready, float(np.min(out["ready"])))
        for key, reason in zip(out["key"], out["reason"]):
            key, reason = str(key), str(reason)
            if key in done:
                continue  # a retried task's rows seen twice
            done.add(key)
            if reason:
                report.failed.append((by_key[key], reason))
            else:
                report.embedded += 1
            bar.update(1)
    return done
