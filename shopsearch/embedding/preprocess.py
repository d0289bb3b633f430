"""Preprocessing shared by the pipeline and by queries: a torchvision transform split into
its PIL geometry (run in decode workers) and its arithmetic (run once per batch), and
query photos decoded exactly as the pipeline decodes catalogue files."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from shopsearch.embedders.base import Embedder, TensorEmbedder, TransformEmbedder
from shopsearch.embedding.items import DRAFT_SIZE, decode_source
from shopsearch.embedding.transform import TransformSpec, describe_transform
from shopsearch.images import DEFAULT_MAX_PIXELS

__all__ = ["DRAFT_SIZE", "SplitPreprocess", "decode_query", "decode_source", "draft_size_for", "split_preprocess"]


def draft_size_for(embedder: Embedder) -> int:
    """The JPEG draft size the pipeline decodes this embedder's images at (see embed_items)."""
    split = split_preprocess(embedder)
    return split.draft_size if split is not None and split.draft_size else DRAFT_SIZE


def decode_query(source: bytes | str | Path, embedder: Embedder, max_pixels: int = DEFAULT_MAX_PIXELS) -> object:
    """Decode a query photo exactly as the pipeline decodes catalogue files for `embedder`,
    so searching with a catalogue image finds its own vector at similarity 1."""
    return decode_source(source if isinstance(source, bytes) else str(source), draft_size_for(embedder), max_pixels)


# -- split preprocessing: geometry in the workers, arithmetic once per batch -----------------
class SplitPreprocess:
    """A torchvision transform [Resize, CenterCrop, ToTensor, Normalize] cut in two.

    Workers run the PIL steps and hand back uint8 HWC pixels (4x fewer bytes than float32
    to move between processes, no torch ops in decode threads); the main thread turns a
    whole batch into the normalised NCHW tensor with the same float32 operations as
    ToTensor + Normalize, so the model sees bit-identical input. The NHWC pixels permuted
    to NCHW are already channels-last in memory, which is what the CPU model wants."""

    def __init__(self, pil_steps: Sequence, mean: Sequence[float], std: Sequence[float],
                 draft_size: int | None = None) -> None:
        self.pil_steps = list(pil_steps)
        #: the model resizes the shorter side to this: decoding JPEGs at >= this size loses nothing
        self.draft_size = draft_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, img) -> np.ndarray:  # type: ignore[no-untyped-def]
        if img.mode != "RGB":
            img = img.convert("RGB")
        for step in self.pil_steps:
            img = step(img)
        return np.asarray(img, dtype=np.uint8)

    def finish(self, pixels: np.ndarray):  # type: ignore[no-untyped-def]
        """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 torch tensor, normalised."""
        import torch

        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)


def split_preprocess(embedder: Embedder, require_encode_tensor: bool = True) -> SplitPreprocess | None:
    """The split form of a torch embedder's transform, or None (then `embedder.preprocess` is
    used). The batch is finished as a tensor, so by default only a TensorEmbedder gets one;
    the GPU executor normalises on the device and asks without that requirement."""
    if not isinstance(embedder, TensorEmbedder if require_encode_tensor else TransformEmbedder):
        return None
    spec = describe_transform(embedder.transform)
    return split_of(spec) if spec is not None else None


def split_of(spec: TransformSpec) -> SplitPreprocess | None:
    """The split preprocess a transform description allows, or None."""
    if not spec.cpu_split or spec.mean is None or spec.std is None:
        return None
    return SplitPreprocess(spec.pil_steps, spec.mean, spec.std, spec.draft_size)
