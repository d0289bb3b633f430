"""An image tower captured as one CUDA graph for the bulk batch size.

Why: in the GPU pipeline the model thread shares the host process's GIL with the read
and decode threads. An eager ViT-B-32 forward is a few hundred kernel launches from
Python, each needing the GIL, so the model stage took about twice its GPU work
(benchmarks/RESULTS.md). A graph replay is one call."""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

import torch

log = logging.getLogger("shopsearch.embedders")


@contextlib.contextmanager
def graph_inference(precision: str) -> Iterator[None]:
    """inference_mode plus bf16 autocast without its weight cache (a cached cast made
    during capture would be freed behind the graph's back)."""
    with torch.inference_mode():
        if precision == "bf16":
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False):
                yield
        else:
            yield


class GraphedForward:
    """`model` replayed from a CUDA graph for inputs shaped like `sample` with up to
    `sample.shape[0]` rows (fewer are zero-padded). The output is a view of the graph's
    own buffer: copy it before the next call."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], sample: torch.Tensor, precision: str) -> None:
        self.batch = int(sample.shape[0])
        self.static_in = torch.zeros_like(sample)
        side = torch.cuda.Stream(sample.device)
        side.wait_stream(torch.cuda.current_stream(sample.device))
        with torch.cuda.stream(side), graph_inference(precision):
            for _ in range(3):  # warm-up on a side stream, as capture requires (cuDNN/cuBLAS pick kernels)
                model(self.static_in)
        torch.cuda.current_stream(sample.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the decode lane keeps making CUDA calls from its own thread meanwhile
        with graph_inference(precision), torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.static_out = model(self.static_in)

    def fits(self, x: torch.Tensor) -> bool:
        """Worth replaying for x: same image shape and device, and at least half a batch
        (a query of one image would pay for a whole batch)."""
        return (x.device == self.static_in.device and x.dtype == self.static_in.dtype
                and x.shape[1:] == self.static_in.shape[1:] and self.batch // 2 <= x.shape[0] <= self.batch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        self.static_in[:n].copy_(x)
        if n < self.batch:
            self.static_in[n:].zero_()
        self.graph.replay()
        return self.static_out[:n]


def capture(model: Callable[[torch.Tensor], torch.Tensor], sample: torch.Tensor,
            precision: str) -> GraphedForward | None:
    """A GraphedForward, or None (eager kept) when the model cannot be captured."""
    try:
        return GraphedForward(model, sample, precision)
    except Exception as e:  # noqa: BLE001 - an optimisation must never stop a run
        log.warning("CUDA graph capture failed, running eager: %s", e)
        return None
