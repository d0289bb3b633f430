"""The fine-tuning options (FinetuneConfig), apart from the torch code that uses them, so the
CLI can build its options from the fields without importing torch."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

from shopsearch.errors import ConfigError


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
    # a time budget: after each epoch the run plans only as many more epochs (up to `epochs`)
    # as its measured epoch time fits in this many minutes from the start; the schedule follows
    minutes: float | None = None
    augment: str = "trivial"  # "basic" (crop, flip, colour) | "trivial" (+ TrivialAugmentWide, random erasing)
    mix_prob: float = 0.5  # share of batches mixed with MixUp or CutMix (half each)
    ema_decay: float = 0.998  # > 0: also keep an exponential moving average of the weights (decay warmed up)
    preload: bool = False  # decode every training image once, before the workers fork
    # forward/backward precision: "auto" = bf16 autocast on CUDA, and on a CPU with AMX or
    # AVX512-BF16 when a probe on the first batch times it faster; fp32 otherwise
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.minutes is not None and not self.minutes > 0:  # NaN too: no epoch could ever be planned
            raise ConfigError(f"the fine-tune's time budget must be a positive number of minutes, not {self.minutes}")


#: The CPU recipe, chosen automatically when fine-tuning runs on a CPU (the GPU recipe is
#: the dataclass's defaults). 224 px instead of 288 (about a third of the time per image),
#: batches of 32 and the stem plus the first two blocks frozen: those early, high-resolution
#: stages hold most of the activations a backward pass keeps, and at 288 px x 64 images
#: they are gigabytes that the allocator maps and unmaps every step (the memory swinging
#: by gigabytes, the high system time). Fewer epochs with a short warm-up, light
#: augmentation (heavy augmentation needs the long schedule to pay off), and the weight
#: average's warmed-up decay so a short run's average is usable. The epoch count is sized by
#: time, not fixed: 2-core CPUs differ by 1.5x and more in training speed (the
#: cpu_finetune_grocerystore runs in benchmarks/RESULTS.md), so the run measures its epochs and plans as
#: many as fit in 25 minutes (at most 20), which leaves the 30-minute budget room for the
#: frozen reference and the serving choices around the training. Forward/backward in fp32
#: unless bf16 is timed faster on the machine (`precision`, "auto").
CPU_RECIPE: dict[str, Any] = {"epochs": 20, "minutes": 25.0, "batch_size": 32, "img_size": 224,
                              "frozen_blocks": 2, "augment": "basic", "mix_prob": 0.2, "warmup_epochs": 0.5,
                              "patience": 4, "lr_backbone": 5e-4, "lr_head": 2e-3, "min_scale": 0.5}


class LrSchedule:
    """The learning-rate factor per optimiser step: a linear warm-up over `warmup` steps, then a
    cosine to 0 at `total()` steps. `total` is read at every step (a time budget re-plans the
    epochs), and after the warm-up the factor never rises: a plan that grows (the first epoch
    is the slowest) would otherwise step the rate back up mid-run."""

    def __init__(self, warmup: int, total: Callable[[], int]) -> None:
        self.warmup = warmup
        self.total = total
        self._last = 1.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / max(1, self.warmup)
        progress = min(1.0, (step - self.warmup) / max(1, self.total() - self.warmup))
        self._last = min(self._last, 0.5 * (1 + math.cos(math.pi * progress)))
        return self._last


def planned_epochs(cap: int, done: int, elapsed_s: float, epoch_s: float, minutes: float | None) -> int:
    """How many epochs a run should have in all, `done` of them taking `epoch_s` each on
    average and `elapsed_s` since the start: `cap` without a budget, else as many as still fit
    in `minutes` (never fewer than `done`, never more than `cap`)."""
    if minutes is None or done <= 0 or epoch_s <= 0:
        return cap
    more = int(max(0.0, minutes * 60.0 - elapsed_s) // epoch_s)
    return max(done, min(cap, done + more))


def loader_workers(device: str) -> int:
    """Data-loading processes for a fine-tune on `device` when none are asked for: 2 on a CPU
    (decoding and augmenting is a few percent of a CPU step), and on a GPU the cores less one, at
    most 16: augmenting a photo at 288 px takes about 5 ms of one core, so a few processes feed a
    few hundred photos a second, far below what a GPU trains on."""
    if str(device).startswith("cpu"):
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(2, min(16, cores - 1))


def recipe_for(device: str, **explicit: Any) -> FinetuneConfig:
    """The recipe for a device ("cpu": CPU_RECIPE; else the GPU defaults), then the
    settings the user gave explicitly; `workers=None` asks for loader_workers(device)."""
    base = CPU_RECIPE if str(device).startswith("cpu") else {}
    if "workers" in explicit and explicit["workers"] is None:
        explicit = {**explicit, "workers": loader_workers(device)}
    return FinetuneConfig(**{**base, **explicit})
