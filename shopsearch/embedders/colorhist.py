"""`ColorHistogramEmbedder` ("colorhist"): a tiny, deterministic, model-free embedder.

The image is resized to 64x64 RGB and cut into a 4x4 grid; each 16x16 cell gets an
8-bin histogram per RGB channel (16 cells x 3 channels x 8 bins = 384 dims). Counts
are turned into frequencies, square-rooted (Hellinger) and L2-normalised, so a dot
product is the mean Bhattacharyya coefficient of the cell histograms.
Good for unit tests and CI-speed demos; no torch needed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from shopsearch.embedders.base import l2_normalize
from shopsearch.errors import CapabilityError

SIZE = 64
GRID = 4
BINS = 8
CHANNELS = 3
CELL = SIZE // GRID
DIM = GRID * GRID * CHANNELS * BINS  # 384


class ColorHistogramEmbedder:
    """Spatial RGB histograms, Hellinger-mapped and L2-normalised (dim 384)."""

    name = "colorhist"

    @property
    def dim(self) -> int:
        """384."""
        return DIM

    @property
    def fingerprint(self) -> str:
        """Changes whenever the feature definition changes."""
        return f"colorhist:v1:{SIZE}px-bilinear:{GRID}x{GRID}grid:rgb{BINS}bins:hellinger"

    @property
    def has_text(self) -> bool:
        """No text tower."""
        return False

    @property
    def device(self) -> str:
        """Always "cpu"."""
        return "cpu"

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """PIL image -> (3, 64, 64) float32 array with values in [0, 1]."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        small = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        arr = np.asarray(small, dtype=np.float32) / 255.0
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def encode_batch(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, 64, 64) batch in [0, 1] -> (N, 384) L2-normalised float32."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (CHANNELS, SIZE, SIZE):
            raise ValueError(f"colorhist expects (N, 3, {SIZE}, {SIZE}), got {batch.shape}")
        n = batch.shape[0]
        if n == 0:
            return np.zeros((0, DIM), dtype=np.float32)
        bins = np.clip((batch * BINS).astype(np.int64), 0, BINS - 1)
        # (N, C, gy, y, gx, x) -> (N, gy, gx, C, pixels)
        cells = bins.reshape(n, CHANNELS, GRID, CELL, GRID, CELL).transpose(0, 2, 4, 1, 3, 5)
        cells = cells.reshape(n, GRID * GRID, CHANNELS, CELL * CELL)
        cell_idx = np.arange(GRID * GRID).reshape(1, -1, 1, 1)
        chan_idx = np.arange(CHANNELS).reshape(1, 1, -1, 1)
        img_idx = np.arange(n).reshape(-1, 1, 1, 1)
        flat = ((img_idx * GRID * GRID + cell_idx) * CHANNELS + chan_idx) * BINS + cells
        counts = np.bincount(flat.ravel(), minlength=n * DIM).reshape(n, DIM)
        freqs = counts.astype(np.float32) / float(CELL * CELL)
        return l2_normalize(np.sqrt(freqs))

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """PIL images -> (N, 384) float32; (0, 384) for no images."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        chunks = [
            self.encode_batch(np.stack([self.preprocess(im) for im in images[i : i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, DIM), dtype=np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Always raises CapabilityError."""
        raise CapabilityError("the colorhist embedder has no text tower")

    def __repr__(self) -> str:
        return f"<ColorHistogramEmbedder dim={DIM}>"
