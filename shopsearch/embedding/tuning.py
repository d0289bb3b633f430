"""How a pipeline run is shaped on this machine: batch size, workers, executor, compilation
(measured defaults), and how far ahead of the model its decoders may run."""
from __future__ import annotations

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
    executor: str  # "thread" | "process" | "inline" | "gpu" (nvJPEG decoding on the model's GPU)
    chunk_size: int = 512
    compile: bool = False  # torch.compile the model for this job (TorchEmbedder.compile)
    gpu: GpuTuning = field(default_factory=GpuTuning)  # the GPU executor's knobs (Settings.gpu)


# -- tuning -----------------------------------------------------------------------------
def tuned_config(embedder: Embedder, batch_size: int | None = None, workers: int | None = None,
                 executor: str = "auto", chunk_size: int = 512, images: int = 0,
                 compile: str | None = None, gpu: GpuTuning | None = None) -> PipelineConfig:
    """Measured defaults (benchmarks/RESULTS.md, benchmarks/results/throughput_*.json).

    CPU: batches of 16 keep the activations in cache (larger batches were slower for both
    EfficientNet-Lite0 and ViT-B-32); with <= 4 cores, decode threads beat processes because
    PIL and torch release the GIL and nothing is pickled between processes.
    GPU: large batches, JPEGs decoded by nvJPEG on the GPU, file reads in threads."""
    cpus = available_cpus()  # torch-free: a colorhist update never imports torch
    on_gpu = str(embedder.device).startswith("cuda")
    if executor == "auto":
        if on_gpu:
            executor = "gpu" if gpu_transform_for(embedder) is not None else "process"
        else:
            executor = "thread" if cpus <= 4 else "process"
    if batch_size is None:
        batch_size = 256 if on_gpu else 16
    if workers is None:
        workers = max(2, cpus - 1) if (on_gpu or executor == "process") else max(1, min(cpus, 4))
    mode = (compile or "auto").lower()
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile must be one of {', '.join(COMPILE_MODES)}, not {mode!r}")
    # auto: CPU only (unmeasured on GPUs) and only where the job repays the compilation
    use_compile = mode == "on" or (mode == "auto" and not on_gpu and images >= COMPILE_MIN_IMAGES)
    # int8 models only exist compiled: they are told the batch to compile for whatever the mode
    batch = isinstance(embedder, BatchEmbedder)
    use_compile = use_compile or (batch and embedder.precision == "int8")
    return PipelineConfig(int(batch_size), int(workers), executor, int(chunk_size), use_compile and batch,
                          gpu or GpuTuning())


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
