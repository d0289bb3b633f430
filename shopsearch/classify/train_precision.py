"""Which precision fine-tuning runs its forward and backward passes in.

On CUDA: bf16 autocast (the GPU recipe). On a CPU: bf16 autocast only where the CPU runs
bfloat16 natively (AMX or AVX512-BF16) *and* a short probe on the first training batch
times it faster than fp32 here (interleaved, best of a few, on a copy of the model so the
run's weights and BatchNorm statistics are untouched); fp32 everywhere else, so an
AVX2-only CPU never pays for the probe nor for emulated bf16. The master weights, the
optimiser state, the head's loss and the weight average stay fp32 either way."""
from __future__ import annotations

import copy
import logging
import time
from typing import Callable

import torch
from torch import nn

from shopsearch.evaluation.machine import cpu_has_bf16

log = logging.getLogger("shopsearch.classify")

PRECISIONS = ("auto", "fp32", "bf16")
#: bf16 is kept only when at least this much faster than fp32 (a close call is not worth the rounding)
DECISIVE = 1.1


def candidates(requested: str, device: torch.device) -> tuple[str, ...]:
    """What the run may use: one entry means nothing to time."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return (requested,)
    if device.type == "cuda":
        return ("bf16",)
    return ("fp32", "bf16") if device.type == "cpu" and cpu_has_bf16() else ("fp32",)


def _step_seconds(precision: str, step: Callable[[], None]) -> float:
    """Wall seconds of one call of `step` (run in `precision`)."""
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def probe(net: nn.Module, head: nn.Module, x: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
          options: tuple[str, ...], rounds: int = 2) -> tuple[str, dict[str, float]]:
    """(the faster precision, seconds per forward + backward of each) on batch `x`, timed on
    copies of `net` and `head` (one untimed call each first), interleaved, best of `rounds`."""
    if len(options) == 1:
        return options[0], {}
    n2, h2 = copy.deepcopy(net), copy.deepcopy(head)

    def step(bf16: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                feats = n2(x)
            loss_fn(*h2(feats.float())).backward()
            n2.zero_grad(set_to_none=True)
            h2.zero_grad(set_to_none=True)
        return run

    steps = {p: step(p == "bf16") for p in options}
    for s in steps.values():
        s()
    best = {p: float("inf") for p in options}
    for _ in range(rounds):
        for p, s in steps.items():
            best[p] = min(best[p], _step_seconds(p, s))
    chosen = "bf16" if "bf16" in best and best["fp32"] >= DECISIVE * best["bf16"] else "fp32"
    log.info("finetune precision probe", extra={**{f"{k}_s": round(v, 3) for k, v in best.items()}, "chosen": chosen})
    return chosen, {k: round(v, 3) for k, v in best.items()}
