"""oneDNN Graph fusion of a CPU image tower: the model traced and frozen by TorchScript, with
torch's oneDNN Graph fuser on while the profiling executor optimises it, so that convolution,
bias and activation (and, in bf16, the casts between them) run as single oneDNN kernels.

The fuser is a process-wide switch that torch reads when it optimises a graph for an input
shape; it is turned on only around the warm-up calls made here, at the batch sizes the caller
will use, and put back at once: the fused plans stay with the frozen module afterwards. A call
at another shape still runs correctly (the executor re-profiles it, unfused). Vectors equal the
eager model's to rounding in fp32; bf16 differs from eager bf16 by bf16 rounding only.
Used for the query model (query_model.py) and by the single-threaded replicas of bulk embedding
(replicas.py, `bulk_form`): in bf16 on the Xeon with AMX the eager model spent half its time in
ReLU6 (a separate pass over every activation); fused, a batch of 8 took 5 ms of CPU per photo
instead of 11 (issue 18). Figures: benchmarks/RESULTS.md."""
from __future__ import annotations

import contextlib
import copy
import threading
import time
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



#: a bulk form must give vectors this close (cosine, per image) to the eager model's, so that a
#: catalogue embedded partly fused and partly eager stays one index (bf16 Lite0: 0.99995)
BULK_MIN_COSINE = 0.9999


def bulk_form(model: nn.Module, batch: torch.Tensor, rounds: int = 3) -> Forward | None:
    """For bulk embedding on this thread's intra-op threads: the fused copy of `model` at
    `batch`'s size and dtype when its vectors are within BULK_MIN_COSINE of the eager model's
    on `batch` and it runs `batch` in less CPU time (best of `rounds`, in turns); else None."""
    fwd = fused(model, batch, batch.dtype, (batch.shape[0],))
    with torch.inference_mode():
        a, b = model(batch).float(), fwd(batch).float()
        if float(torch.nn.functional.cosine_similarity(a, b, dim=1).min()) < BULK_MIN_COSINE:
            return None
        best = {"fused": float("inf"), "eager": float("inf")}
        for _ in range(rounds):
            for name, f in (("fused", fwd), ("eager", model)):
                t0 = time.thread_time()
                f(batch)
                best[name] = min(best[name], time.thread_time() - t0)
    return fwd if best["fused"] < best["eager"] else None
