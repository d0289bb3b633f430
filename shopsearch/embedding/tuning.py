"""How a pipeline run is shaped on this machine: batch size, workers, executor, compilation
(measured defaults), and how far ahead of the model its decoders may run."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from shopsearch.config import COMPILE_MODES, GpuTuning, available_cpus
from shopsearch.embedders.base import BatchEmbedder, Embedder
from shopsearch.embedding.gpu_decode import gpu_transform_for
from shopsearch.errors import ConfigError

#: batches the GPU executor hands to its CPU decode lane ahead of the one being assembled, so
#: the lane's processes never wait for the lane thread (which holds slot ranges LOOKAHEAD + 1)
LOOKAHEAD = 2
#: items handed to a worker at once (fewer round trips through the process pool)
GROUP = 8
#: CPU jobs at least this big torch.compile the model: the compilation pays for itself after
#: a few thousand images on CPUs without bf16 (benchmarks/RESULTS.md)
COMPILE_MIN_IMAGES = 4096


@dataclass(frozen=True)
class PipelineConfig:
    """How to run the pipeline on this machine; `tuned_config` picks measured defaults."""

    batch_size: int
    workers: int
    #: "replicas" (single-threaded model copies in processes, replicas.py) | "thread" | "process" |
    #: "inline" | "gpu" (nvJPEG decoding on the model's GPU)
    executor: str
    chunk_size: int = 512
    compile: bool = False  # torch.compile the model for this job (TorchEmbedder.compile)
    gpu: GpuTuning = field(default_factory=GpuTuning)  # the GPU executor's knobs (Settings.gpu)


# -- tuning -----------------------------------------------------------------------------
def tuned_config(embedder: Embedder, batch_size: int | None = None, workers: int | None = None,
                 executor: str = "auto", chunk_size: int = 512, images: int = 0,
                 compile: str | None = None, gpu: GpuTuning | None = None) -> PipelineConfig:
    """Measured defaults (benchmarks/RESULTS.md, benchmarks/results/throughput_*.json).

    CPU: batches of 16 keep the activations in cache (larger batches were slower for both
    EfficientNet-Lite0 and ViT-B-32); with <= 4 cores on Linux Lite0 (`replicas_fit`) runs as one
    single-threaded replica per core in batches of 8 (replicas.py, with the oneDNN-fused model
    where it is faster: half the CPU per photo of one model on all cores beside decode threads,
    bulk_replicas_ab in benchmarks/RESULTS.md), other models with decode threads (PIL and the
    model release the GIL, nothing is pickled); with more cores decode processes.
    GPU: large batches, JPEGs decoded by nvJPEG on the GPU, file reads in threads."""
    cpus = available_cpus()  # torch-free: a colorhist update never imports torch
    on_gpu = str(embedder.device).startswith("cuda")
    mode = (compile or "auto").lower()
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile must be one of {', '.join(COMPILE_MODES)}, not {mode!r}")
    # auto: CPU only (unmeasured on GPUs) and only where the job repays the compilation
    use_compile = mode == "on" or (mode == "auto" and not on_gpu and images >= COMPILE_MIN_IMAGES)
    # int8 models only exist compiled: they are told the batch to compile for whatever the mode
    batch = isinstance(embedder, BatchEmbedder)
    use_compile = batch and (use_compile or embedder.precision == "int8")
    if executor == "auto":
        if on_gpu:
            executor = "gpu" if gpu_transform_for(embedder) is not None else "process"
        elif cpus > 4:
            executor = "process"
        else:  # a compiled model would be compiled again in every replica
            executor = "replicas" if replicas_fit(embedder) and not use_compile else "thread"
    if executor == "replicas" and (use_compile or on_gpu or not sys.platform.startswith("linux")):
        raise ConfigError("the replicas executor needs a CPU model run uncompiled (not int8, compile off), on "
                          "Linux, where each replica is forked with the model")
    if batch_size is None:  # a replica's fused bf16 Lite0 took 9 ms of CPU per photo at 8, 14 at 16
        batch_size = 256 if on_gpu else (8 if executor == "replicas" else 16)
    if workers is None:
        workers = max(2, cpus - 1) if (on_gpu or executor == "process") else max(1, min(cpus, 4))
    return PipelineConfig(int(batch_size), int(workers), executor, int(chunk_size), use_compile,
                          gpu or GpuTuning())


def replicas_fit(embedder: Embedder) -> bool:
    """Replicas by default: a CPU torch model that says it gains from them (`bulk_replicas`:
    EfficientNet-Lite0, measured; ViT-B-32 did not) and runs as it is loaded (not compiled:
    int8 exists compiled only, and each replica would compile it again), on Linux, where
    replicas are forked with it."""
    return (sys.platform.startswith("linux") and getattr(embedder, "bulk_replicas", False)
            and isinstance(embedder, BatchEmbedder)
            and not str(embedder.device).startswith("cuda") and embedder.precision != "int8"
            and not getattr(embedder, "compiled", False))


def replica_ahead(cfg: PipelineConfig) -> int:
    """Batches handed to the replicas at once: one running and one queued per replica, so
    none waits for the calling process."""
    return 2 * max(1, cfg.workers)


def inflight_horizon(cfg: PipelineConfig) -> int:
    """How many images past the last one reported the decoders may reach: the batch being
    assembled plus what the executor prepares ahead (prepared_stream's window, or the GPU
    executor's queued and planned batches)."""
    if cfg.executor == "gpu":
        return gpu_horizon(cfg)
    return cfg.batch_size + cpu_window(cfg) + 2 * GROUP


def cpu_window(cfg: PipelineConfig) -> int:
    return max(4 * cfg.batch_size, 8 * cfg.workers * GROUP)


def gpu_horizon(cfg: PipelineConfig) -> int:
    """Images the GPU executor may be decoding past the last one it reported: the batch in
    the model, the queued ones, and those planned ahead on the CPU lane."""
    return (LOOKAHEAD + cfg.gpu.prefetch + 2) * cfg.batch_size
