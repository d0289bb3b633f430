"""The model a shopper's photo runs through on a CPU: the fastest of a few forms of the
(batch-norm folded) image tower, measured once when the service loads.

A single query is a batch of one: latency, not throughput. Candidates are the folded fp32
model, as the reference, and: on CPUs with bfloat16 instructions (AVX512-BF16, AMX) one bf16
copy, traced with oneDNN Graph fusion (onednn_fusion: convolution, bias and activation as one
kernel; the bf16 frozen copy where fusion fails); elsewhere the model frozen by TorchScript
(weights as constants, convolutions prepacked for oneDNN: a few ms less CPU per query on an AVX2
CPU, load_search_ab_query7 in benchmarks/RESULTS.md) and the same with oneDNN Graph fusion. Each candidate must give
vectors within MIN_COSINE of the fp32 model's on a sample before it is timed; the one with the
lowest single-image time wins. The index and its fingerprint are untouched: catalogue vectors
always come from the fp32 model, only the query side may be bf16. benchmarks/RESULTS.md has the
measured times and the Grocery Store check of top-1 results."""
from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from shopsearch.config import QUERY_PRECISIONS
from shopsearch.embedders.onednn_fusion import fused
from shopsearch.evaluation.machine import cpu_has_bf16
from shopsearch.errors import ConfigError

log = logging.getLogger("shopsearch.embedders")

#: a candidate's vectors must be at least this close (cosine) to the fp32 model's; bf16
#: Lite0 gives ~0.9998 on one image
MIN_COSINE = 0.999

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class QueryChoice:
    """Which form serves queries, and what was measured to choose it."""

    name: str  # "fp32", "fp32-frozen", "fp32-fused", "bf16", "bf16-frozen" or "bf16-fused"
    ms: dict[str, float] = field(default_factory=dict)  # best single-image time per candidate
    cosine: dict[str, float] = field(default_factory=dict)  # worst cosine to fp32 on the sample
    refused: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not timed


def _bf16(model: nn.Module) -> Forward:
    bf = copy.deepcopy(model).to(torch.bfloat16).to(memory_format=torch.channels_last)
    return lambda x: bf(x.to(torch.bfloat16))


def _frozen(model: nn.Module, sample: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the fastest here
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, sample[:1])))


def _frozen_fp32(model: nn.Module, sample: torch.Tensor) -> Forward:
    return _frozen(copy.deepcopy(model).to(memory_format=torch.channels_last), sample.float())


def _frozen_bf16(model: nn.Module, sample: torch.Tensor) -> Forward:
    bf = copy.deepcopy(model).to(torch.bfloat16).to(memory_format=torch.channels_last)
    frozen = _frozen(bf, sample.to(torch.bfloat16))
    return lambda x: frozen(x.to(torch.bfloat16))


#: batch sizes a query runs at (a photo; a photo and its mirror for test-time augmentation): the
#: fused forms are warmed up at each, since the executor fuses per input shape
QUERY_BATCHES = (1, 2)


def candidates(model: nn.Module, sample: torch.Tensor, precision: str = "auto") -> dict[str, Forward]:
    """The forms worth trying for `precision` on this CPU: the fp32 model always (the reference);
    on a CPU that runs bf16 natively (unless fp32 is forced) one bf16 form; elsewhere the fp32
    TorchScript forms (frozen, fused). Emulated bf16 is slower than fp32, so never offered."""
    if precision not in QUERY_PRECISIONS:
        raise ConfigError(f"query precision must be one of {', '.join(QUERY_PRECISIONS)}, not {precision!r}")
    out: dict[str, Forward] = {"fp32": model}
    bf16 = precision != "fp32" and cpu_has_bf16()
    # where bf16 runs natively its fused form was twice as fast as the fp32 TorchScript forms
    # wherever measured, and each form costs start-up time: only the plain model races it there
    if not bf16 and precision != "bf16":
        for name, make in (("fp32-frozen", lambda: _frozen_fp32(model, sample)),
                           ("fp32-fused", lambda: fused(model, sample, torch.float32, QUERY_BATCHES))):
            try:
                out[name] = make()
            except Exception as e:  # noqa: BLE001 - TorchScript may refuse a model, or be gone from torch
                log.info("query model: no %s form (%s)", name, e)
    if not bf16:
        return out
    # one bf16 form, so that start-up stays short: fused, else frozen, else eager (in the order
    # they were measured fastest)
    for name, make in (("bf16-fused", lambda: fused(model, sample, torch.bfloat16, QUERY_BATCHES)),
                       ("bf16-frozen", lambda: _frozen_bf16(model, sample)), ("bf16", lambda: _bf16(model))):
        try:
            out[name] = make()
            break
        except Exception as e:  # noqa: BLE001 - TorchScript may refuse a model, or be gone from torch
            log.info("query model: no %s form (%s)", name, e)
    return out


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1).min())


def choose(forms: dict[str, Forward], sample: torch.Tensor, rounds: int = 3, precision: str = "auto",
           clock: Callable[[], float] = time.perf_counter) -> tuple[Forward, QueryChoice]:
    """The fastest form whose vectors match fp32's on `sample` (one image per call, timed in
    turns, best of `rounds`: the minimum shrugs off other jobs' interruptions). `precision`
    bf16 leaves fp32 out of the race where a bf16 form passed the check."""
    with torch.inference_mode():
        ref = forms["fp32"](sample)
        cosine, refused, ok = {}, {}, {}
        for name, fwd in forms.items():
            try:
                cosine[name] = round(_cosine(fwd(sample), ref), 6)
            except Exception as e:  # noqa: BLE001 - a form that cannot run is simply not chosen
                refused[name] = f"{type(e).__name__}: {e}"
                continue
            if cosine[name] >= MIN_COSINE:
                ok[name] = fwd
            else:
                refused[name] = f"cosine {cosine[name]} < {MIN_COSINE}"
        if precision == "bf16" and len(ok) > 1:
            ok.pop("fp32", None)
        one = sample[:1]
        best = {name: float("inf") for name in ok}
        for r in range(rounds + 1):
            for name, fwd in ok.items():
                t0 = clock()
                fwd(one)
                if r:  # the first round warms oneDNN's kernel choice (and TorchScript's profiling) up
                    best[name] = min(best[name], clock() - t0)
    ms = {name: round(t * 1000, 2) for name, t in best.items()}
    name = min(ms, key=lambda n: ms[n])
    return ok[name], QueryChoice(name, ms, cosine, refused)
