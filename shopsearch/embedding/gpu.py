"""GPU path of the embedding pipeline: JPEGs decoded by nvJPEG on the model's GPU
(torchvision.io.decode_jpeg, EXIF orientation applied), the model's resize / crop /
normalise replayed on the GPU, large batches under the embedder's precision.

Only file reads stay on the CPU (threads), so one host feeds an H100 without a process
pool pickling decoded pixels. Images nvJPEG cannot take (PNG, WebP, CMYK JPEGs...) fall
back to the CPU decoder one by one; every failure is reported, never raised."""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from shopsearch.embedders.base import Embedder
from shopsearch.images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from shopsearch.embedding.pipeline import GROUP, _make_executor, _prepare_group, _prepare_list
from shopsearch.embedding.preprocess import split_preprocess

log = logging.getLogger("shopsearch.pipeline")

GpuTransform = Callable[[list], "object"]

#: concurrent nvJPEG calls per batch (each does its Huffman decoding on a CPU thread)
DECODE_SPLIT = int(os.environ.get("SHOPSEARCH_NVJPEG_SPLIT", "4"))
#: decoded batches waiting for the model (each ~150 MB of float pixels at batch 256)
PREFETCH = int(os.environ.get("SHOPSEARCH_GPU_PREFETCH", "2"))
#: seconds spent per stage in the last GPU run (reported by the throughput benchmark);
#: read/decode/transform run in the decode lane, model_wait is the model lane idling on it
STAGES: dict[str, float] = {k: 0.0 for k in ("read_wait", "decode", "transform", "cpu_decode_wait",
                                             "model_wait", "model", "write")}
_DONE = object()


def gpu_transform_for(embedder: Embedder, device: str | None = None) -> GpuTransform | None:
    """A batched GPU twin of the embedder's torchvision transform, or None when the
    transform has a step we cannot replay exactly (then the CPU workers are used).
    `device` overrides the embedder's (tests replay it on the CPU)."""
    import torch
    import torch.nn.functional as F
    from torchvision import transforms as T

    tf = getattr(embedder, "transform", None)
    device = device or str(getattr(embedder, "device", "cpu"))
    if tf is None or (device == str(getattr(embedder, "device", "cpu")) and not device.startswith("cuda")):
        return None
    steps = list(getattr(tf, "transforms", [tf]))
    resize = crop = None
    mean = std = None
    for st in steps:
        name = type(st).__name__
        if isinstance(st, T.Resize) and st.max_size is None and st.interpolation.value in ("bicubic", "bilinear"):
            resize = (st.size if isinstance(st.size, int) else (st.size[0] if len(st.size) == 1 else tuple(st.size)),
                      st.interpolation.value)
        elif isinstance(st, T.CenterCrop):
            crop = tuple(st.size)
        elif isinstance(st, T.Normalize):
            mean, std = st.mean, st.std
        elif name in ("ToTensor", "MaybeToTensor", "MaybeConvertMode") or "rgb" in getattr(st, "__name__", "").lower():
            continue
        else:
            return None
    if resize is None or crop is None or mean is None:
        return None
    dev = torch.device(device)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    size, mode = resize
    ch, cw = crop

    def one(img: "torch.Tensor") -> "torch.Tensor":
        """(N, 3, H, W) uint8 of one size -> (N, 3, ch, cw) float in [0, 255]."""
        h, w = img.shape[-2:]
        if isinstance(size, int):  # shorter side -> size, like torchvision
            if h <= w:
                nh, nw = size, max(1, int(size * w / h))
            else:
                nh, nw = max(1, int(size * h / w)), size
        else:
            nh, nw = size
        x = img.float()
        x = F.interpolate(x, size=(nh, nw), mode=mode, align_corners=False, antialias=True).clamp_(0, 255)
        top, left = int(round((nh - ch) / 2.0)), int(round((nw - cw) / 2.0))
        if top < 0 or left < 0:  # smaller than the crop: pad like CenterCrop does
            x = F.pad(x, (max(0, -left), max(0, cw - nw + max(0, -left)), max(0, -top), max(0, ch - nh + max(0, -top))))
            top, left = max(0, top), max(0, left)
        return x[..., top:top + ch, left:left + cw]

    def run(images: list) -> "torch.Tensor":
        # Images of one size are resized together (one kernel, not one per image); the
        # output keeps the input order. PIL rounds to uint8 after resizing; we keep floats.
        by_shape: dict[tuple, list[int]] = {}
        for j, im in enumerate(images):
            by_shape.setdefault(tuple(im.shape), []).append(j)
        out = torch.empty((len(images), 3, ch, cw), dtype=torch.float32, device=dev)
        for idx in by_shape.values():
            stacked = torch.stack([images[j] for j in idx])
            out[idx] = one(stacked)
        return (out / 255.0 - mean_t) / std_t

    return run


def _read(path: str) -> tuple[str, object]:
    """Read-thread stage: ("jpeg", uint8 tensor) for nvJPEG, ("cpu", None) for the CPU
    decoder, or ("fail", reason)."""
    import torch

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return "fail", f"cannot read file: {e}"
    if data[:3] == b"\xff\xd8\xff" and _jpeg_size_ok(data):
        return "jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return "cpu", None


def _jpeg_size_ok(data: bytes) -> bool:
    """Cheap header check before nvJPEG: same limits as the CPU decoder (bombs, strips)."""
    from PIL import Image
    import io

    try:
        w, h = Image.open(io.BytesIO(data)).size
    except Exception:  # noqa: BLE001 - the CPU fallback gives the precise reason
        return False
    return 0 < w * h <= DEFAULT_MAX_PIXELS and max(w, h) <= DEFAULT_MAX_SIDE


def run_gpu_batches(embedder: Embedder, todo: Sequence, cfg, on_vectors: Callable, on_failure: Callable,
                    device: str | None = None, cpu_decoders: int | None = None) -> None:
    """Embed `todo` (WorkItems) in batches of cfg.batch_size with GPU decoding.

    Two lanes: a decode thread reads, decodes (nvJPEG) and transforms batch i+1 on its own
    CUDA stream while the calling thread runs the model on batch i, so the run costs
    max(decode, model) per batch instead of their sum (nvJPEG's hardware engine and the
    SMs are separate units). At most PREFETCH decoded batches wait in GPU memory.

    nvJPEG alone tops out below what the model eats (on an H100 it decoded ~3,900 640x480
    images/s while ViT-B-32 embeds ~18,700), so a share of each batch's JPEGs can go to
    `cpu_decoders` processes (PIL with draft scaling, uint8 pixels back) at the same time,
    the share adapting to whichever side finishes first; measured slower on a 16-core host
    before the lanes were split, so off unless asked for.
    `device` overrides the embedder's (tests run this on the CPU)."""
    import torch

    transform = gpu_transform_for(embedder, device)
    if transform is None:
        raise RuntimeError("gpu executor needs a torchvision Resize/CenterCrop/Normalize transform")
    encode = getattr(embedder, "encode_tensor", None)
    dev = torch.device(device or embedder.device)
    for k in STAGES:
        STAGES[k] = 0.0
    bs = cfg.batch_size
    groups = [list(todo[i:i + bs]) for i in range(0, len(todo), bs)]
    if cpu_decoders is None:
        # Off by default: on the H100 host (16 cores) 10 decode processes beside nvJPEG made the
        # run slower (1,587 vs 2,745 img/s): they starve the read threads and the CPU side of
        # nvJPEG (benchmarks/results/throughput_openclip-ViT-B-32_cuda_hybrid.json).
        cpu_decoders = int(os.environ.get("SHOPSEARCH_GPU_CPU_DECODERS", "0"))
    lane = _DecodeLane(embedder, transform, dev, cfg, cpu_decoders, on_failure)
    batches: queue.Queue = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()
    producer = threading.Thread(target=lane.produce, args=(groups, batches, stop), name="gpu-decode", daemon=True)
    producer.start()
    try:
        while True:
            t0 = time.perf_counter()
            got = batches.get()
            STAGES["model_wait"] += time.perf_counter() - t0
            if got is _DONE:
                break
            if isinstance(got, BaseException):
                raise got
            keys, batch, failures = got
            for it, reason in failures:  # reported from this thread: callers need not be thread-safe
                on_failure(it, reason)
            if batch is None:
                continue
            t1 = time.perf_counter()
            vecs = encode(batch) if encode else embedder.encode_batch(batch.cpu().numpy())
            vecs = np.asarray(vecs, dtype=np.float32)
            t2 = time.perf_counter()
            STAGES["model"] += t2 - t1
            del batch  # vectors are on the host, so the model's stream is done with the pixels
            on_vectors(keys, vecs)
            STAGES["write"] += time.perf_counter() - t2
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            try:
                batches.get_nowait()
            except queue.Empty:
                pass
            producer.join(timeout=0.05)
        lane.close()
    STAGES["cpu_share"] = lane.share
    log.info("gpu stage seconds", extra={k: round(v, 3) for k, v in STAGES.items()})


class _DecodeLane:
    """The producer side of run_gpu_batches: read -> nvJPEG (+ CPU fallback) -> transform."""

    def __init__(self, embedder: Embedder, transform: GpuTransform, dev, cfg, cpu_decoders: int,
                 on_failure: Callable) -> None:
        import torch

        self.transform, self.dev, self.workers = transform, dev, cfg.workers
        self.split = split_preprocess(embedder, require_encode_tensor=False)
        self.procs = _make_executor("process", cpu_decoders, self.split) if (self.split and cpu_decoders) else None
        self.share = 0.5 if self.procs else 0.0
        self.cpu_pre = self.split or embedder.preprocess
        self.mean = self.std = None
        if self.split is not None:
            self.mean = torch.tensor(self.split.mean, device=dev).view(1, 3, 1, 1)
            self.std = torch.tensor(self.split.std, device=dev).view(1, 3, 1, 1)
        # transforms on a side stream, so they never queue behind the model's kernels
        self.stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None

    def close(self) -> None:
        if self.procs:
            self.procs.shutdown(wait=True, cancel_futures=True)

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
            with ThreadPoolExecutor(max(2, self.workers), thread_name_prefix="read") as pool, \
                    ThreadPoolExecutor(DECODE_SPLIT, thread_name_prefix="nvjpeg") as dec_pool, \
                    (torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()):
                nxt = [pool.submit(_read, it.path) for it in groups[0]] if groups else []
                for gi, group in enumerate(groups):
                    if stop.is_set():
                        return
                    t0 = time.perf_counter()
                    datas = [f.result() for f in nxt]
                    if gi + 1 < len(groups):  # read the next batch while this one is decoded
                        nxt = [pool.submit(_read, it.path) for it in groups[gi + 1]]
                    STAGES["read_wait"] += time.perf_counter() - t0
                    if not put(self._decode_group(group, datas, pool, dec_pool)):
                        return
        except BaseException as e:  # noqa: BLE001 - handed to the model thread, which re-raises
            put(e)
            return
        put(_DONE)

    def _decode_group(self, group: list, datas: list, pool: ThreadPoolExecutor, dec_pool: ThreadPoolExecutor):
        import torch

        failures, jpeg_items, jpeg_data, cpu_items = [], [], [], []
        for it, (kind, val) in zip(group, datas):
            if kind == "fail":
                failures.append((it, val))
            elif kind == "jpeg":
                jpeg_items.append(it)
                jpeg_data.append(val)
            else:
                cpu_items.append(it)
        t1 = time.perf_counter()
        n_cpu = int(round(self.share * len(jpeg_items)))
        cpu_items = jpeg_items[:n_cpu] + cpu_items
        jpeg_items, jpeg_data = jpeg_items[n_cpu:], jpeg_data[n_cpu:]
        futs = ([self.procs.submit(_prepare_group, cpu_items[i:i + GROUP]) for i in range(0, len(cpu_items), GROUP)]
                if self.procs else [])
        tensors, keys = [], []
        if jpeg_data:
            try:
                tensors = _nvjpeg(jpeg_data, self.dev, dec_pool)
                keys = [it.key for it in jpeg_items]
            except RuntimeError as e:  # one odd JPEG fails the batch call: decode those on the CPU
                log.debug("nvJPEG batch failed (%s); CPU fallback", e)
                futs += [pool.submit(_prepare_list, jpeg_items, self.cpu_pre)]
        t2 = time.perf_counter()
        STAGES["decode"] += t2 - t1
        parts = [self.transform(tensors)] if tensors else []
        t3 = time.perf_counter()
        STAGES["transform"] += t3 - t2
        cpu_done_first = all(f.done() for f in futs)
        if not self.procs and cpu_items:  # no process pool: decode the rest in the read threads
            futs += [pool.submit(_prepare_list, cpu_items, self.cpu_pre)]
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
        if self.procs and cpu_items:  # give the CPU more of the next batch if it was waiting on nvJPEG
            self.share = min(0.95, self.share + 0.05) if cpu_done_first else max(0.05, self.share - 0.05)
        batch = (torch.cat(parts) if len(parts) > 1 else parts[0]) if parts else None
        if self.stream is not None:
            self.stream.synchronize()  # this thread waits, not the model's: the batch is ready when queued
        STAGES["cpu_decode_wait"] += time.perf_counter() - t3
        return keys, batch, failures


def _nvjpeg(data: list, dev, dec_pool: ThreadPoolExecutor) -> list:
    """Decode JPEG byte tensors on the GPU in a few concurrent sub-batches (order kept)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    n = max(1, min(DECODE_SPLIT, len(data) // 32))
    parts = [data[k::n] for k in range(n)]
    outs = list(dec_pool.map(lambda part: decode_jpeg(part, mode=ImageReadMode.RGB, device=dev,
                                                      apply_exif_orientation=True), parts))
    decoded: list = [None] * len(data)
    for k, out in enumerate(outs):
        for j, im in zip(range(k, len(data), n), out):
            decoded[j] = im
    return decoded
