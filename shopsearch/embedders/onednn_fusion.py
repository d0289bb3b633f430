"""oneDNN Graph fusion of a CPU image tower: the model traced and frozen by TorchScript, with
torch's oneDNN Graph fuser on while the profiling executor optimises it, so that convolution,
bias and activation (and, in bf16, the casts between them) run as single oneDNN kernels.

The fuser is a process-wide switch that torch reads when it optimises a graph for an input
shape; it is turned on only around the warm-up calls made here, at the batch sizes the caller
will use, and put back at once: the fused plans stay with the frozen module afterwards. A call
at another shape still runs correctly (the executor re-profiles it, unfused). Vectors equal the
eager model's to rounding in fp32; bf16 differs from eager bf16 by bf16 rounding only.
Used for the query model (query_model.py); figures: benchmarks/RESULTS.md. Bulk embedding stays eager: a
fused batch model gave no measurable end-to-end gain in index builds (issue 18 note, 2026-11-30)."""
from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]

#: warm-up calls per batch size: the profiling executor's profiled runs, then the fused plan's first run
WARMUP_CALLS = 3

_switch = threading.Lock()


@contextlib.contextmanager
def fusion_enabled() -> Iterator[None]:
    """oneDNN Graph fusion on for TorchScript graphs optimised meanwhile, then as it was before
    (serialised: two threads warming up models must not leave the switch on between them)."""
    with _switch:
        before = torch.jit.onednn_fusion_enabled()
        torch.jit.enable_onednn_fusion(True)
        try:
            yield
        finally:
            torch.jit.enable_onednn_fusion(before)


def fused(model: nn.Module, sample: torch.Tensor, dtype: torch.dtype, batches: Sequence[int]) -> Forward:
    """A fused copy of `model` (weights in `dtype`, channels-last), warmed up at each batch size in
    `batches` with images shaped like `sample`'s; the returned forward casts its input to `dtype`.
    Raises whatever TorchScript raises for a model it cannot trace."""
    net = copy.deepcopy(model).to(dtype).to(memory_format=torch.channels_last)
    one = sample[:1].to(dtype).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(), torch.inference_mode(), fusion_enabled():
        warnings.simplefilter("ignore")  # torch.jit is deprecated (still the fastest here); tracer warnings
        frozen = torch.jit.freeze(torch.jit.trace(net, one))

        def forward(x: torch.Tensor) -> torch.Tensor:
            return frozen(x.to(dtype))

        for n in batches:
            batch = one.expand(n, *one.shape[1:]).contiguous(memory_format=torch.channels_last)
            for _ in range(WARMUP_CALLS):
                forward(batch)
    return forward

