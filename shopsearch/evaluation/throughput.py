"""Throughput benchmark: our pipeline vs a naive loop, same images, same run.

Our pipeline = shopsearch.embedding.pipeline.embed_items (decode workers with PIL draft, tuned batch,
channels-last, bf16 where the hardware has it, vectors written to a VectorCache).
Naive loop = PIL decode at full size, the model's own transform, batches of 64, fp32,
no workers, vectors kept in memory and saved once at the end."""
from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from shopsearch.config import GpuTuning, Settings
from shopsearch.embedders import load_embedder, parse_spec, resolve_device
from shopsearch.embedders.base import Embedder
from shopsearch.embedders.precision import faster_precision, precision_candidates, with_precision
from shopsearch.evaluation.machine import cpu_model
from shopsearch.errors import ConfigError

log = logging.getLogger("shopsearch.bench")

NAIVE_BATCH = 64


@dataclass(frozen=True)
class ThroughputResult:
    model: str
    device: str
    images: int
    images_per_s: float
    naive_images_per_s: float | None
    ratio: float | None
    precision: str
    batch_size: int
    workers: int
    executor: str
    source: str
    image_size: str
    cpus: int
    load_avg_1m: float | None
    machine: str
    #: CPU seconds this process (all threads, and decode processes) spent per image: unlike
    #: images/s it barely moves when other jobs share the cores
    cpu_s_per_image: float | None = None
    naive_cpu_s_per_image: float | None = None
    compiled: bool = False  # the model ran through torch.compile (TorchEmbedder.compile)
    runs_s: tuple[float, ...] = ()  # seconds of each repeat; the first pays any compilation
    gpu_stages_s: dict[str, float] | None = None  # where the GPU executor spent the fastest repeat
    #: precision "auto" with candidates to time (precision_candidates): ms per probe batch (16 images) of each, the fastest chosen
    precision_probe_ms: dict[str, float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


#: where the Grocery Store dataset sits beside a checkout (the callers' default)
DEFAULT_GROCERY = Path("../shared/datasets/grocerystore")


def grocery_jpegs(n: int, grocery: Path = DEFAULT_GROCERY) -> list[Path]:
    """Up to n Grocery Store photos (train then test split), in a fixed order."""
    root = Path(grocery) / "dataset"
    out: list[Path] = []
    for split in ("train", "test"):
        f = root / f"{split}.txt"
        if f.is_file():
            out += [root / line.split(",")[0].strip() for line in f.read_text().splitlines() if line.strip()]
    return [p for p in out if p.is_file()][:n]


def _synthetic_one(args: tuple[Path, int, int, int]) -> None:
    p, w, h, seed = args
    if p.is_file():
        return
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-8, 9, size=(h, w, 1), dtype=np.int16)
    tmp = p.with_suffix(".tmp")
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(tmp, format="JPEG", quality=90)
    os.replace(tmp, p)


def synthetic_jpegs(n: int, out_dir: Path, size: tuple[int, int] = (1600, 1200), seed: int = 0) -> list[Path]:
    """n phone-photo-like JPEGs (smooth colour fields + grain, quality 90) under out_dir,
    each drawn from its own seed (the same files whatever the number of processes)."""
    from concurrent.futures import ProcessPoolExecutor

    out_dir.mkdir(parents=True, exist_ok=True)
    w, h = size
    jobs = [(out_dir / f"synthetic_{w}x{h}_{i:05d}.jpg", w, h, seed * 1_000_003 + i) for i in range(n)]
    if n >= 256 and (os.cpu_count() or 1) > 2:
        with ProcessPoolExecutor() as pool:
            list(pool.map(_synthetic_one, jobs, chunksize=32))
    else:
        for j in jobs:
            _synthetic_one(j)
    return [j[0] for j in jobs]


def _faster_precision(model: str, device: str, paths: Sequence[Path], models_dir: Path,
                      candidates: Sequence[str] = ("fp32", "bf16"), batch: int = 16) -> tuple[str, dict[str, float]]:
    """precision.faster_precision on a batch of `batch` of the benchmark's own photos."""
    from shopsearch.embedding.items import decode_source

    fp32 = load_embedder(with_precision(model, "fp32", device), device, models_dir)
    x = np.stack([fp32.preprocess(decode_source(str(p))) for p in paths[:batch]])
    return faster_precision(model, device, x, models_dir, candidates)


def fp32_spec(model: str) -> str:
    spec = parse_spec(model)
    base = str(spec)
    return base[: -len("+" + spec.precision)] if spec.precision != "fp32" else base


def _cpu_seconds() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def naive_loop(embedder: Embedder, paths: Sequence[Path], out: Path) -> float:
    """Seconds the naive loop takes: full-size decode, the model's transform, batch 64, fp32."""
    import torch

    model, transform = getattr(embedder, "model", None), getattr(embedder, "transform", None)
    if model is not None:  # a plain model: our loader made it channels-last, the naive loop would not
        import copy

        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    t0 = time.perf_counter()
    vecs = []
    for i in range(0, len(paths), NAIVE_BATCH):
        imgs = [Image.open(p).convert("RGB") for p in paths[i:i + NAIVE_BATCH]]
        if model is None or transform is None:  # model-free embedders: their own preprocess
            vecs.append(embedder.encode_images(imgs, batch_size=NAIVE_BATCH))
            continue
        x = torch.stack([transform(im) for im in imgs]).to(embedder.device)
        with torch.no_grad():
            vecs.append(model(x).float().cpu().numpy())
    np.save(out, np.concatenate(vecs))
    return time.perf_counter() - t0


def pipeline_run(embedder: Embedder, paths: Sequence[Path], cache_dir: Path, batch_size: int | None,
                 workers: int | None, executor: str, compile: str | None = None,
                 gpu: GpuTuning | None = None) -> tuple[float, object, dict[str, float]]:
    """Seconds our pipeline takes from JPEG files to vectors saved in a fresh VectorCache, its
    configuration, and the GPU executor's seconds per stage (empty on the CPU)."""
    from shopsearch.embedding.pipeline import WorkItem, embed_items, tuned_config
    from shopsearch.embedding.cache import VectorCache

    cfg = tuned_config(embedder, batch_size, workers, executor, images=len(paths), compile=compile, gpu=gpu)
    # Keys are cheap stand-ins for content hashes: hashing is the catalogue import's job.
    items = [WorkItem(f"{i:064x}", str(p)) for i, p in enumerate(paths)]
    if cache_dir.exists():  # a timed run must embed everything: never reuse an earlier run's vectors
        import shutil

        shutil.rmtree(cache_dir)
    cache = VectorCache(cache_dir, embedder.fingerprint, embedder.dim)
    t0 = time.perf_counter()
    rep = embed_items(embedder, items, cache, cfg.batch_size, cfg.workers, progress=False, executor=cfg.executor,
                      compile=compile, gpu=gpu)
    secs = time.perf_counter() - t0
    if rep.failed:
        log.warning("throughput run had failures", extra={"failed": len(rep.failed)})
    return secs, cfg, rep.gpu_stages


def warm_up(embedder: Embedder, paths: Sequence[Path], n: int) -> None:
    """One small batch through the model (lazy init, oneDNN kernel selection) before timing."""
    from shopsearch.embedding.items import decode_source

    arr = [embedder.preprocess(decode_source(str(p))) for p in paths[:n]]
    for _ in range(2):
        embedder.encode_batch(np.stack(arr))


def run_throughput(model: str, device: str = "auto", images: int = 512, precision: str = "auto",
                   source: str = "auto", batch_size: int | None = None, workers: int | None = None,
                   executor: str = "auto", naive: bool = True, work_dir: Path | None = None,
                   repeats: int = 1, synthetic_size: tuple[int, int] = (1600, 1200),
                   compile: str | None = None, grocery: Path = DEFAULT_GROCERY,
                   settings: Settings | None = None) -> ThroughputResult:
    """Time our pipeline (best of `repeats` runs, each into a fresh cache) and, unless
    naive=False, the naive loop on the same `images` files. With the model compiled, the
    first run includes the compilation (see runs_s). `settings` gives the models folder
    (int8 calibrations, fine-tuned models) and the GPU executor's knobs."""
    settings = settings or Settings()
    import platform

    import torch

    dev = resolve_device(device)
    tmp = tempfile.TemporaryDirectory(prefix="shopsearch-bench-")
    root = Path(work_dir) if work_dir else Path(tmp.name)
    try:
        if source == "auto":
            source = "grocery" if grocery_jpegs(1, grocery) else "synthetic"
        if source == "grocery":
            paths = grocery_jpegs(images, grocery)
            src_desc = f"grocerystore:{Path(grocery).resolve()}"
        elif source == "synthetic":
            paths = synthetic_jpegs(images, root / "images", synthetic_size)
            src_desc = f"synthetic-{synthetic_size[0]}x{synthetic_size[1]}-jpeg"
        else:
            paths = sorted(p for p in Path(source).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:images]
            src_desc = str(source)
        if not paths:  # a folder that is not there, or holds no JPEG/PNG: a usage error, in one line
            raise ConfigError(f"--source {source}: no JPEG or PNG images "
                              f"{'in' if Path(source).is_dir() else 'at'} {Path(source).resolve()}")
        for p in paths:  # both runs read from the page cache, so neither pays the first read
            p.read_bytes()
        with Image.open(paths[0]) as im:
            size = f"{im.size[0]}x{im.size[1]}"
        probe = None
        candidates = precision_candidates(model, dev, settings.models_dir) if precision == "auto" else ()
        if len(candidates) > 1:
            precision, probe = _faster_precision(model, dev, paths, settings.models_dir, candidates)
        spec = with_precision(model, precision, dev)
        fast = load_embedder(spec, dev, settings.models_dir)
        warm_up(fast, paths, 16)
        runs = []
        for r in range(max(1, repeats)):
            c0 = _cpu_seconds()
            secs, cfg, stages = pipeline_run(fast, paths, root / f"cache{r}", batch_size, workers, executor,
                                             compile, settings.gpu)
            runs.append((secs, cfg, (_cpu_seconds() - c0) / len(paths), stages))
        secs, cfg, cpu_ours, stages = min(runs, key=lambda t: t[0])
        ours = len(paths) / secs
        naive_ips = cpu_naive = None
        if naive:
            slow = load_embedder(fp32_spec(model), dev, settings.models_dir)
            warm_up(slow, paths, 8)
            c0 = _cpu_seconds()
            naive_ips = len(paths) / naive_loop(slow, paths, root / "naive.npy")
            cpu_naive = (_cpu_seconds() - c0) / len(paths)
        if dev.startswith("cuda"):
            machine = torch.cuda.get_device_name(torch.device(dev))
        else:
            machine = f"{platform.processor() or platform.machine()} ({cpu_model()})"
        from shopsearch.config import available_cpus

        return ThroughputResult(
            model=model, device=dev, images=len(paths), images_per_s=round(ours, 2),
            naive_images_per_s=round(naive_ips, 2) if naive_ips else None,
            ratio=round(ours / naive_ips, 2) if naive_ips else None,
            precision=parse_spec(spec).precision, batch_size=cfg.batch_size, workers=cfg.workers,
            executor=cfg.executor, source=src_desc, image_size=size, cpus=available_cpus(),
            load_avg_1m=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None, machine=machine,
            cpu_s_per_image=round(cpu_ours, 4), naive_cpu_s_per_image=round(cpu_naive, 4) if cpu_naive else None,
            compiled=bool(getattr(fast, "compiled", False)), runs_s=tuple(round(t[0], 2) for t in runs),
            gpu_stages_s={k: round(v, 3) for k, v in stages.items()} or None, precision_probe_ms=probe)
    finally:
        tmp.cleanup()
