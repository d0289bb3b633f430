"""Decoding and preprocessing shared by the pipeline and by queries: JPEGs decoded at
the model's draft scale, and a torchvision transform split into its PIL geometry (run in
decode workers) and its arithmetic (run once per batch)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from shopsearch.embedders.base import Embedder
from shopsearch.images import DEFAULT_MAX_PIXELS, load_image

#: decode JPEGs at reduced scale (PIL draft, DCT scaling): the models need ~224 px
DRAFT_SIZE = 320


def decode_source(source: bytes | str | Path, draft_size: int | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> object:
    """Bytes or a path -> upright RGB PIL image; JPEGs decoded by PIL draft straight at the
    smallest scale whose both sides stay >= draft_size, anything larger than twice
    DRAFT_SIZE shrunk to it."""
    img = load_image(source, draft_size=draft_size or DRAFT_SIZE, max_pixels=max_pixels)
    if max(img.size) > 2 * DRAFT_SIZE:
        img.thumbnail((2 * DRAFT_SIZE, 2 * DRAFT_SIZE))
    return img


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

    def __init__(self, pil_steps: list, mean: Sequence[float], std: Sequence[float],
                 draft_size: int | None = None) -> None:
        self.pil_steps = pil_steps
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
    """The split form of a torch embedder's transform, or None (then `embedder.preprocess` is used)."""
    tf = getattr(embedder, "transform", None)
    if tf is None or (require_encode_tensor and not hasattr(embedder, "encode_tensor")):
        return None
    try:
        from torchvision import transforms as T
    except ImportError:  # pragma: no cover
        return None
    pil, mean, std, tensor_seen = [], None, None, False
    for st in getattr(tf, "transforms", [tf]):
        name = type(st).__name__
        if isinstance(st, (T.Resize, T.CenterCrop)) and not tensor_seen:
            pil.append(st)
        elif name in ("ToTensor", "MaybeToTensor"):
            tensor_seen = True
        elif name == "MaybeConvertMode" or "rgb" in getattr(st, "__name__", "").lower():
            continue  # conversion to RGB: our decoder already returns RGB
        elif isinstance(st, T.Normalize) and tensor_seen:
            mean, std = st.mean, st.std
        else:
            return None
    if not tensor_seen or mean is None:
        return None
    sizes = [st.size for st in pil if isinstance(st, T.Resize)]
    draft = sizes[0] if sizes and isinstance(sizes[0], int) else None
    return SplitPreprocess(pil, [float(m) for m in mean], [float(s) for s in std], draft)
