"""Pixels for one batch on the GPU: cheap JPEG header checks, nvJPEG decoding, and the
embedder's resize / crop / normalise replayed as batched tensor ops."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from shopsearch.embedders.base import Embedder, TransformEmbedder
from shopsearch.embedding.transform import TransformSpec, describe_transform
from shopsearch.images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE

GpuTransform = Callable[[list], "object"]

#: nvJPEG calls per batch. torchvision serialises them behind one decoder and one mutex, so
#: splitting only adds calls: 1 was faster than 4 (benchmarks/RESULTS.md)
DECODE_SPLIT = 1


def gpu_transform_for(embedder: Embedder, device: str | None = None) -> GpuTransform | None:
    """A batched GPU twin of the embedder's torchvision transform, or None when the
    transform has a step we cannot replay exactly (then the CPU workers are used).
    `device` overrides the embedder's (tests replay it on the CPU)."""
    own = str(embedder.device)
    device = device or own
    if not isinstance(embedder, TransformEmbedder) or (device == own and not device.startswith("cuda")):
        return None
    spec = describe_transform(embedder.transform)
    if spec is None or not spec.gpu:
        return None
    return replay_on(spec, device)


def replay_on(spec: TransformSpec, device: str) -> GpuTransform:
    """The resize / crop / normalise `spec` describes as batched tensor ops on `device`."""
    import torch
    import torch.nn.functional as F

    assert spec.resize is not None and spec.crop is not None and spec.mean is not None and spec.std is not None
    mean, std = spec.mean, spec.std
    dev = torch.device(device)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    size, mode = spec.resize
    ch, cw = spec.crop

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


def read_for_nvjpeg(path: str) -> tuple[str, object]:
    """Read-thread stage: ("jpeg", uint8 tensor) for nvJPEG, ("cpu", None) for the CPU
    decoder, or ("fail", reason)."""
    import torch

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return "fail", f"cannot read file: {e}"
    # nvJPEG decodes a truncated JPEG without a word (grey where data is missing), so only
    # whole ones (ending in EOI) go there; the CPU decoder reports the rest or decodes
    # those with trailing bytes
    if data[:3] == b"\xff\xd8\xff" and _ends_with_eoi(data) and _jpeg_size_ok(data):
        return "jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return "cpu", None


def _ends_with_eoi(data: bytes) -> bool:
    """EOI as the last marker, zero padding allowed (only padded files pay for a copy)."""
    if data[-2:] == b"\xff\xd9":
        return True
    return data[-1:] == b"\0" and data.rstrip(b"\0")[-2:] == b"\xff\xd9"


def _jpeg_size_ok(data: bytes) -> bool:
    """Cheap header check before nvJPEG: same limits as the CPU decoder (bombs, strips).
    Walks the JPEG markers to the frame header in a few slices (PIL's parser would hold
    the GIL far longer, and the model thread needs it)."""
    size = jpeg_frame_size(data)
    if size is None:
        return False
    w, h = size
    return 0 < w * h <= DEFAULT_MAX_PIXELS and max(w, h) <= DEFAULT_MAX_SIDE


#: start-of-frame markers (baseline, extended, progressive, lossless...; not DHT/JPG/DAC)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, or None if the stream does not reach one."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length field
            i += 2
            continue
        seg = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF:
            if i + 9 > n:
                return None
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        if marker == 0xDA or seg < 2:  # scan data before any frame header: not a valid JPEG
            return None
        i += 2 + seg
    return None


def nvjpeg_decode(data: list, dev, dec_pool: ThreadPoolExecutor, split: int = DECODE_SPLIT) -> list:
    """Decode JPEG byte tensors on the GPU in a few concurrent sub-batches (order kept)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    n = max(1, min(split, len(data) // 32))
    parts = [data[k::n] for k in range(n)]
    outs = list(dec_pool.map(lambda part: decode_jpeg(part, mode=ImageReadMode.RGB, device=dev,
                                                      apply_exif_orientation=True), parts))
    decoded: list = [None] * len(data)
    for k, out in enumerate(outs):
        for j, im in zip(range(k, len(data), n), out):
            decoded[j] = im
    return decoded
