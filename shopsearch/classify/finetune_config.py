"""The fine-tuning options (FinetuneConfig), apart from the torch code that uses them, so the
CLI can build its options from the fields without importing torch."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 50
    batch_size: int = 64
    img_size: int = 288
    lr_backbone: float = 3e-4
    lr_head: float = 1e-3
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    coarse_weight: float = 1.0
    min_scale: float = 0.35
    warmup_epochs: float = 1.0
    patience: int = 20  # epochs without a better validation score before stopping
    frozen_blocks: int = 0  # freeze the stem and this many of the first blocks ("last blocks" fine-tuning)
    workers: int = 0
    seed: int = 0
    max_steps: int | None = None  # stop after this many optimiser steps (tests)
    augment: str = "trivial"  # "basic" (crop, flip, colour) | "trivial" (+ TrivialAugmentWide, random erasing)
    mix_prob: float = 0.5  # share of batches mixed with MixUp or CutMix (half each)
    ema_decay: float = 0.998  # > 0: evaluate and keep an exponential moving average of the weights
    preload: bool = False  # decode every training image once, before the workers fork
