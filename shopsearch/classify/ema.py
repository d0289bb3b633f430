"""Exponential moving average of a model's weights, with a warmed-up decay.

A fixed decay of 0.998 has a time constant of ~500 steps: after a short CPU run of a
hundred or so steps most of the average is still the first step's weights (a near-random
head). The decay therefore starts low and rises, min(decay, (1 + t) / (10 + t)), so the
average follows the weights early and smooths them late."""
from __future__ import annotations

import copy

import torch
from torch import nn


def warmed_decay(decay: float, step: int) -> float:
    """The decay used at update number `step` (0-based)."""
    return min(decay, (1.0 + step) / (10.0 + step))


class WeightAverage:
    """An EMA copy of `model` (parameters and floating-point buffers such as BatchNorm
    statistics); integer buffers are copied as they are."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = warmed_decay(self.decay, self.updates)
        self.updates += 1
        mine = dict(self.module.named_parameters()) | dict(self.module.named_buffers())
        for name, value in list(model.named_parameters()) + list(model.named_buffers()):
            avg = mine[name]
            if avg.is_floating_point():
                avg.lerp_(value.detach().to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(value)
