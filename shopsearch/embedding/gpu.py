"""GPU path of the embedding pipeline: each batch's JPEGs decoded partly by nvJPEG on the
model's GPU and partly by CPU decode processes writing into shared memory (cpu_lane), the
model's resize / crop / normalise replayed on the GPU (gpu_decode), large batches under
the embedder's precision, the model replayed from a CUDA graph.

Two lanes: a decode thread prepares batch i+1 while the calling thread runs the model on
batch i. Images nvJPEG cannot take (PNG, WebP, CMYK or truncated JPEGs...) go to the CPU
decoders; every failure is reported, never raised."""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from shopsearch.config import GpuTuning
from shopsearch.embedders.base import BatchEmbedder, Embedder, TensorEmbedder
from shopsearch.embedding.cpu_lane import CpuDecodeLane
from shopsearch.embedding.executor import OnFailure, OnVectors
from shopsearch.embedding.gpu_decode import GpuTransform, gpu_transform_for, nvjpeg_decode, read_for_nvjpeg
from shopsearch.embedding.items import WorkItem, prepare_list
from shopsearch.embedding.preprocess import split_preprocess
from shopsearch.embedding.tuning import LOOKAHEAD, PipelineConfig, gpu_horizon


log = logging.getLogger("shopsearch.pipeline")

#: host cores left to the read threads, the nvJPEG calls and the model thread when the
#: rest decode on the CPU lane (measured defaults: benchmarks/RESULTS.md)
HOST_CORES = 4
#: the lane thread waiting longer than this for the CPU share means the processes lag
CPU_LAG_S = 0.002
#: the stages a run reports seconds for: read/decode/transform run in the decode lane,
#: model_wait is the model lane idling on it
STAGE_NAMES = ("read_wait", "decode", "transform", "cpu_decode_wait", "model_wait", "model", "write")
_DONE = object()


class GpuExecutor:
    """nvJPEG and CPU decode lanes feeding the model on its GPU (run_gpu_batches)."""

    def __init__(self, embedder: Embedder, cfg: PipelineConfig) -> None:
        self.embedder, self.cfg = embedder, cfg

    @property
    def horizon(self) -> int:
        return gpu_horizon(self.cfg)

    def run(self, items: Sequence[WorkItem], on_vectors: OnVectors, on_failure: OnFailure) -> dict[str, float]:
        return run_gpu_batches(self.embedder, items, self.cfg, on_vectors, on_failure)


def run_gpu_batches(embedder: Embedder, todo: Sequence[WorkItem], cfg: PipelineConfig, on_vectors: OnVectors,
                    on_failure: OnFailure, device: str | None = None, cpu_decoders: int | None = None,
                    cpu_share: float | None = None) -> dict[str, float]:
    """Embed `todo` (WorkItems) in batches of cfg.batch_size with GPU decoding; returns the
    seconds spent per stage (STAGE_NAMES) and the CPU lane's final share.

    Two lanes: a decode thread reads, decodes (nvJPEG) and transforms batch i+1 on its own
    CUDA stream while the calling thread runs the model on batch i, so the run costs
    max(decode, model) per batch instead of their sum (nvJPEG's hardware engine and the
    SMs are separate units). At most cfg.gpu.prefetch decoded batches wait in GPU memory.

    nvJPEG through torchvision (one decoder behind one lock) tops out well below what a
    model replayed from a CUDA graph eats (benchmarks/RESULTS.md), so a share of each
    batch goes to `cpu_decoders`
    processes (PIL draft decoding into shared memory, see cpu_lane) at the same time; the
    share shrinks when the lane has to wait for it and grows when it does not.
    The knobs come from cfg.gpu (Settings.gpu); `cpu_decoders` and `cpu_share` (0..1, pins
    the share: experiments, tests) override them.
    `device` overrides the embedder's (tests run this on the CPU)."""
    import torch

    transform = gpu_transform_for(embedder, device)
    if transform is None:
        raise RuntimeError("gpu executor needs a torchvision Resize/CenterCrop/Normalize transform")
    encode = embedder.encode_tensor if isinstance(embedder, TensorEmbedder) else None
    dev = torch.device(device or embedder.device)
    stages = dict.fromkeys(STAGE_NAMES, 0.0)
    bs = cfg.batch_size
    groups = [list(todo[i:i + bs]) for i in range(0, len(todo), bs)]
    # both lanes gave the best figure measured and about nvJPEG alone's elsewhere, and they
    # keep PNG/WebP catalogues off the host process (benchmarks/RESULTS.md,
    # benchmarks/results/throughput_openclip-ViT-B-32_cuda_runs.json)
    tuning = cfg.gpu
    if tuning.cpu_decoders is None:
        from shopsearch.config import available_cpus

        tuning = replace(tuning, cpu_decoders=max(0, available_cpus() - HOST_CORES))
    if cpu_decoders is not None:
        tuning = replace(tuning, cpu_decoders=cpu_decoders)
    if cpu_share is not None:
        tuning = replace(tuning, cpu_share=cpu_share)
    lane = _DecodeLane(embedder, transform, dev, cfg, tuning, stages)
    batches: queue.Queue = queue.Queue(maxsize=tuning.prefetch)
    stop = threading.Event()
    producer = threading.Thread(target=lane.produce, args=(groups, batches, stop), name="gpu-decode", daemon=True)
    producer.start()
    graphs = dev.type == "cuda" and isinstance(embedder, BatchEmbedder) and tuning.cuda_graphs
    try:
        while True:
            t0 = time.perf_counter()
            got = batches.get()
            stages["model_wait"] += time.perf_counter() - t0
            if got is _DONE:
                break
            if isinstance(got, BaseException):
                raise got
            keys, batch, failures = got
            for it, reason in failures:  # reported from this thread: callers need not be thread-safe
                on_failure(it, reason)
            if batch is None:
                continue
            if graphs and batch.shape[0] == bs:
                # the first full batch: capture the model for this shape (eager until then), once
                graphs = False
                embedder.capture_cuda_graph(batch)  # type: ignore[union-attr] - a BatchEmbedder
            t1 = time.perf_counter()
            vecs = encode(batch) if encode else embedder.encode_batch(batch.cpu().numpy())
            vecs = np.asarray(vecs, dtype=np.float32)
            t2 = time.perf_counter()
            stages["model"] += t2 - t1
            del batch  # vectors are on the host, so the model's stream is done with the pixels
            on_vectors(keys, vecs)
            stages["write"] += time.perf_counter() - t2
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            try:
                batches.get_nowait()
            except queue.Empty:
                pass
            producer.join(timeout=0.05)
        lane.close()
    stages["cpu_share"] = lane.share
    log.info("gpu stage seconds", extra={k: round(v, 3) for k, v in stages.items()})
    return stages


class _DecodeLane:
    """The producer side of run_gpu_batches: for each batch, a share of the files goes to
    the CPU decode processes (handed over LOOKAHEAD batches ahead), the rest is read by
    threads and decoded by nvJPEG; then resize/crop/normalise on the GPU."""

    def __init__(self, embedder: Embedder, transform: GpuTransform, dev, cfg: PipelineConfig, tuning: GpuTuning,
                 stages: dict[str, float]) -> None:
        import torch

        self.transform, self.dev, self.workers, self.bs = transform, dev, cfg.workers, cfg.batch_size
        self.split = split_preprocess(embedder, require_encode_tensor=False)
        self.cpu_pre = self.split or embedder.preprocess
        self.tuning = tuning
        self.stages = stages  # seconds per stage, shared with run_gpu_batches
        cpu_decoders, cpu_share = tuning.cpu_decoders, tuning.cpu_share
        self.fixed_share = None if cpu_share is None else min(1.0, max(0.0, cpu_share))
        # slot range i % (LOOKAHEAD + 1) belongs to batch i: batches i+1..i+LOOKAHEAD decode
        # into the others while batch i is read back
        self.cpu = (CpuDecodeLane(cpu_decoders, (LOOKAHEAD + 1) * self.bs,
                                  self.split.draft_size if self.split else None) if cpu_decoders > 0 else None)
        self.share = (self.fixed_share if self.fixed_share is not None else 0.5) if self.cpu else 0.0
        self.mean = self.std = None
        if self.split is not None:
            self.mean = torch.tensor(self.split.mean, device=dev).view(1, 3, 1, 1)
            self.std = torch.tensor(self.split.std, device=dev).view(1, 3, 1, 1)
        # transforms on a side stream, so they never queue behind the model's kernels
        self.stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        self._staging: "torch.Tensor | None" = None  # pinned host buffer for the CPU lane's pixels

    def close(self) -> None:
        if self.cpu:
            self.cpu.close()

    def produce(self, groups: list, out: "queue.Queue", stop: threading.Event) -> None:
        """Put (keys, batch tensor or None, failures) per group, then _DONE; an exception is
        put instead of raised so the model thread re-raises it."""
        import torch

        def put(obj) -> bool:
            while not stop.is_set():
                try:
                    out.put(obj, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            with ThreadPoolExecutor(max(2, min(self.workers, self.tuning.read_threads)),
                                    thread_name_prefix="read") as pool, \
                    ThreadPoolExecutor(self.tuning.decode_split, thread_name_prefix="nvjpeg") as dec_pool, \
                    (torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()):
                plans = [self._plan(groups[i], i, pool) for i in range(min(len(groups), LOOKAHEAD))]
                for gi in range(len(groups)):
                    if stop.is_set():
                        return
                    if gi + LOOKAHEAD < len(groups):
                        plans.append(self._plan(groups[gi + LOOKAHEAD], gi + LOOKAHEAD, pool))
                    cur = plans.pop(0)
                    t0 = time.perf_counter()
                    datas = [f.result() for f in cur.reads]
                    self.stages["read_wait"] += time.perf_counter() - t0
                    if not put(self._decode_group(cur, datas, pool, dec_pool)):
                        return
        except BaseException as e:  # noqa: BLE001 - handed to the model thread, which re-raises
            put(e)
            return
        put(_DONE)

    def _plan(self, group: list, gi: int, pool: ThreadPoolExecutor) -> "_Plan":
        """Send this batch's CPU share to the decode processes and start reading the rest.
        Item j of the batch owns slot base + j."""
        n_cpu = int(round(self.share * len(group))) if self.cpu else 0
        base = (gi % (LOOKAHEAD + 1)) * self.bs
        futs = self.cpu.submit([(base + j, group[j].path) for j in range(n_cpu)]) if n_cpu else []
        return _Plan(group, base, n_cpu, futs, [pool.submit(read_for_nvjpeg, it.path) for it in group[n_cpu:]])

    def _decode_group(self, plan: "_Plan", datas: list, pool: ThreadPoolExecutor, dec_pool: ThreadPoolExecutor):
        import torch

        failures, jpeg_pos, jpeg_data, other = [], [], [], []
        for j, (kind, val) in enumerate(datas, start=plan.n_cpu):
            if kind == "fail":
                failures.append((plan.group[j], val))
            elif kind == "jpeg":
                jpeg_pos.append(j)
                jpeg_data.append(val)
            else:
                other.append(j)
        t1 = time.perf_counter()
        tensors, keys = [], []
        if jpeg_data:
            try:
                tensors = nvjpeg_decode(jpeg_data, self.dev, dec_pool, self.tuning.decode_split)
                keys = [plan.group[j].key for j in jpeg_pos]
            except RuntimeError as e:  # one odd JPEG fails the batch call: decode those on the CPU
                log.debug("nvJPEG batch failed (%s); CPU fallback", e)
                other = jpeg_pos + other
        t2 = time.perf_counter()
        self.stages["decode"] += t2 - t1
        parts = [self.transform(tensors)] if tensors else []
        t3 = time.perf_counter()
        self.stages["transform"] += t3 - t2
        cpu_futs = plan.cpu_futs
        futs = []
        if other and self.cpu:  # PNG, WebP, CMYK...: into their own slots on the CPU lane
            cpu_futs = cpu_futs + self.cpu.submit([(plan.base + j, plan.group[j].path) for j in other])
        elif other:  # no CPU lane: decoded in the read threads
            futs.append(pool.submit(prepare_list, [plan.group[j] for j in other], self.cpu_pre))
        cpu_waited = False
        if cpu_futs:
            t4 = time.perf_counter()
            futures_wait(plan.cpu_futs)
            cpu_waited = time.perf_counter() - t4 > CPU_LAG_S
            pix_keys, pixels = self._collect_cpu(plan, cpu_futs, failures)
            if pixels:
                parts.append(self.transform(pixels))
                keys += pix_keys
        arrays, akeys = [], []
        for f in futs:
            for it, res in f.result():
                if isinstance(res, str):
                    failures.append((it, res))
                else:
                    arrays.append(res)
                    akeys.append(it.key)
        if arrays:
            x = torch.from_numpy(np.stack(arrays)).to(self.dev)
            if x.dtype == torch.uint8:  # split preprocess: NHWC pixels, normalise here
                x = (x.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
            parts.append(x)
            keys += akeys
        if self.cpu and plan.n_cpu and self.fixed_share is None:
            # The CPU share was handed over LOOKAHEAD batches early: if it is still not done
            # when nvJPEG is, the processes are the bottleneck and get less of the next
            # batch to plan; if it is, they get more.
            self.share = max(0.05, self.share - 0.05) if cpu_waited else min(0.95, self.share + 0.05)
        batch = (torch.cat(parts) if len(parts) > 1 else parts[0]) if parts else None
        if self.stream is not None:
            # this thread waits, not the model's: the batch is ready when queued, and the
            # pinned staging buffer is free for the next batch
            self.stream.synchronize()
        self.stages["cpu_decode_wait"] += time.perf_counter() - t3
        return keys, batch, failures

    def _collect_cpu(self, plan: "_Plan", futs: list, failures: list) -> tuple[list, list]:
        """Wait for the batch's CPU-lane share; its pixels go to the device as uint8 (3, H, W)
        tensors, one host-to-device copy per image size (from pinned memory on CUDA)."""
        import torch

        by_shape: dict[tuple[int, int], list[int]] = {}
        for f in futs:
            for slot, res in self.cpu.result(f):
                if isinstance(res, str):
                    failures.append((plan.group[slot - plan.base], res))
                else:
                    by_shape.setdefault(res, []).append(slot)
        keys, pixels = [], []
        for k, ((h, w), slots) in enumerate(by_shape.items()):
            host = self._host_buffer(len(slots), h, w, pinned=k == 0)
            # copying out of the arena frees these slots for batch i + LOOKAHEAD + 1
            np.stack([self.cpu.pixels(s, (h, w)) for s in slots], out=host.numpy())
            x = host.to(self.dev, non_blocking=True).permute(0, 3, 1, 2)
            pixels.extend(x.unbind(0))
            keys.extend(plan.group[s - plan.base].key for s in slots)
        return keys, pixels

    def _host_buffer(self, n: int, h: int, w: int, pinned: bool) -> "torch.Tensor":
        """An (n, h, w, 3) uint8 host buffer, pinned when asked for and the device is a GPU
        (an asynchronous copy at full PCIe speed). There is one pinned buffer, for the
        batch's first image size: it is free again once the stream is synchronised at the
        end of the batch. Other sizes in the same batch get plain memory."""
        import torch

        size = n * h * w * 3
        if not pinned or self.dev.type != "cuda":
            return torch.empty((n, h, w, 3), dtype=torch.uint8)
        if self._staging is None or self._staging.numel() < size:
            self._staging = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        return self._staging[:size].view(n, h, w, 3)


@dataclass(frozen=True)
class _Plan:
    group: list  # the batch's WorkItems; item j owns slot base + j
    base: int
    n_cpu: int  # items [0, n_cpu) went to the CPU lane, the rest are read for nvJPEG
    cpu_futs: list
    reads: list
