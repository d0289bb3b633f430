"""The Embedder protocol: images (and texts, where the model has a text tower) to
L2-normalised float32 vectors. Every implementation has a stable fingerprint that
is recorded with the index it builds."""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image


@runtime_checkable
class Embedder(Protocol):
    """What the index, the search service and the indexer need from a model."""

    #: the spec the user gave, e.g. "efficientnet-lite0" or "openclip:ViT-B-32/laion2b_s34b_b79k"
    name: str

    @property
    def dim(self) -> int:
        """Length of every vector this embedder returns."""

    @property
    def fingerprint(self) -> str:
        """Stable id of (architecture, weights, preprocessing). Same fingerprint => same vectors."""

    @property
    def has_text(self) -> bool:
        """True when encode_texts works (CLIP-style models)."""

    @property
    def device(self) -> str:
        """"cpu" or "cuda[:n]"."""

    def preprocess(self, image: Image.Image) -> "np.ndarray":
        """One RGB PIL image -> the model's input tensor as a CHW float32 array.

        Separate from encode so the indexer can run it in worker processes."""

    def encode_batch(self, batch: "np.ndarray") -> np.ndarray:
        """A stacked NCHW float32 batch from `preprocess` -> (N, dim) normalised float32."""

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """RGB PIL images -> (N, dim) float32, each row L2-normalised."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, dim) float32, L2-normalised. Raises CapabilityError without a text tower."""


@runtime_checkable
class TransformEmbedder(Protocol):
    """An embedder whose `preprocess` is a torchvision transform: the pipeline may replay it
    in parts (split across decode workers and the batch, or on the GPU)."""

    #: the torchvision transform `preprocess` applies (Resize, CenterCrop, ToTensor, Normalize)
    transform: object


@runtime_checkable
class TensorEmbedder(TransformEmbedder, Protocol):
    """A transform embedder that also takes whole batches as torch tensors: the pipeline
    normalises a batch of decoded pixels itself and hands it over without a numpy copy."""

    def encode_tensor(self, x: object) -> np.ndarray:
        """A normalised NCHW torch tensor (on any device) -> (N, dim) unit vectors."""


@runtime_checkable
class BatchEmbedder(TensorEmbedder, Protocol):
    """Everything the embedding pipeline uses beyond `Embedder` (torch models, `TorchEmbedder`):
    batches as tensors, compilation, CUDA graphs, precision. The pipeline checks for these
    protocols, and uses a model's plain `preprocess`/`encode_batch` where it has none."""

    @property
    def precision(self) -> str:
        """"fp32", "bf16" or "int8" (int8 models only run compiled)."""

    def compile(self, batch_size: int) -> bool:
        """Compile the model for batches of this size; False when it cannot be."""

    def capture_cuda_graph(self, sample: object) -> bool:
        """Replay the model from a CUDA graph captured for `sample`'s shape; False when not possible."""


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation to float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
