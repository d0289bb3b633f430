"""Adapter: a square matrix W applied as v -> W v / |W v|, saved beside an index build.

The adapted vectors are a different embedding space, so a build made with an adapter
carries its own fingerprint (the model's plus the adapter's hash): a query model without
the same adapter is refused by `check_model` like any other model mismatch."""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from shopsearch.embedders.base import Embedder, l2_normalize
from shopsearch.errors import IndexCorruptError, ModelMismatchError

#: the adapter's file in a build folder
ADAPTER_FILE = "adapter.npz"


@dataclass(frozen=True)
class Adapter:
    """W (dim x dim, float32) for vectors of the model with `base_fingerprint`."""

    matrix: np.ndarray = field(repr=False)
    base_fingerprint: str
    info: dict[str, Any] = field(default_factory=dict, compare=False)  # how it was trained (for people)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def sha256(self) -> str:
        h = hashlib.sha256(self.base_fingerprint.encode())
        h.update(np.ascontiguousarray(self.matrix, dtype=np.float32).tobytes())
        return h.hexdigest()

    @property
    def fingerprint(self) -> str:
        """The adapted space's fingerprint: the model's, plus this adapter's hash."""
        return f"{self.base_fingerprint}+adapter-{self.sha256[:12]}"

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Model vectors (N, dim) -> adapted unit vectors."""
        return l2_normalize(np.asarray(vectors, dtype=np.float32) @ self.matrix.T)

    def unapply(self, vectors: np.ndarray) -> np.ndarray:
        """Adapted unit vectors -> the model's unit vectors (W is invertible; scale drops out
        in the normalisation), e.g. for query vectors logged by an adapted build."""
        return l2_normalize(np.linalg.solve(self.matrix.astype(np.float64), np.asarray(vectors, np.float64).T).T)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, matrix=self.matrix.astype(np.float32), base_fingerprint=np.array(self.base_fingerprint),
                 info=np.array(json.dumps(self.info, default=str)))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "adapter") -> "Adapter":
        try:
            with np.load(io.BytesIO(data)) as z:
                matrix = np.asarray(z["matrix"], dtype=np.float32)
                base, info = str(z["base_fingerprint"]), json.loads(str(z["info"]))
        except (OSError, ValueError, KeyError) as e:
            raise IndexCorruptError(f"{where} is unreadable: {e}") from None
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise IndexCorruptError(f"{where}: expected a square matrix, got shape {matrix.shape}")
        return cls(matrix, base, info)

    def save(self, path: Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> "Adapter":
        return cls.from_bytes(Path(path).read_bytes(), str(path))


def build_adapter(build_dir: Path) -> Adapter | None:
    """The adapter stored with an index build (None: the build uses the model's own vectors)."""
    path = Path(build_dir) / ADAPTER_FILE
    return Adapter.load(path) if path.is_file() else None


class AdaptedEmbedder:
    """An Embedder whose vectors pass through an adapter: what a build made with that
    adapter is searched with. Everything else (name, preprocessing, device) is the model's."""

    def __init__(self, base: Embedder, adapter: Adapter) -> None:
        if adapter.base_fingerprint != base.fingerprint:
            raise ModelMismatchError(
                f"the adapter was trained for model fingerprint {adapter.base_fingerprint}, not for "
                f"{base.name!r} ({base.fingerprint})")
        self.base = base
        self.adapter = adapter
        self.name = base.name  # the model to load; the fingerprint tells the spaces apart

    @property
    def dim(self) -> int:
        return self.base.dim

    @property
    def fingerprint(self) -> str:
        return self.adapter.fingerprint

    @property
    def has_text(self) -> bool:
        return self.base.has_text

    @property
    def device(self) -> str:
        return self.base.device

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.base.preprocess(image)

    def encode_batch(self, batch: np.ndarray) -> np.ndarray:
        return self.adapter.apply(self.base.encode_batch(batch))

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        return self.adapter.apply(self.base.encode_images(images, batch_size))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        # text vectors live in the image space of a CLIP model: they follow the gallery
        return self.adapter.apply(self.base.encode_texts(texts))

    def __getattr__(self, name: str) -> Any:
        # optional extras of the model (warm_up, ...) stay reachable
        if name in ("base", "adapter"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)


def with_build_adapter(embedder: Embedder, build_dir: Path) -> Embedder:
    """`embedder` as a build expects it: wrapped in the build's adapter when it has one."""
    adapter = build_adapter(build_dir)
    return embedder if adapter is None else AdaptedEmbedder(embedder, adapter)
