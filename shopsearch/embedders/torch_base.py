"""`TorchEmbedder`: the Embedder protocol for any torch image model (plus an optional
text tower). Model-specific loaders (efficientnet.py, openclip.py) build one of these."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
import time
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from shopsearch.config import available_cpus, cxx_compilers, threads_pinned
from shopsearch.embedders.base import l2_normalize
from shopsearch.errors import CapabilityError, ConfigError

log = logging.getLogger("shopsearch.embedders")

PRECISIONS = ("fp32", "bf16")

_threads_lock = threading.Lock()
_threads_done = False


def configure_torch_threads() -> None:
    """Once per process: lower torch's intra-op threads to the usable CPUs (torch counts
    the host's cores, not a container's quota), unless OMP_NUM_THREADS/MKL_NUM_THREADS
    is set. Never raises the count (torch's default skips hyper-threads)."""
    global _threads_done
    with _threads_lock:
        if _threads_done:
            return
        _threads_done = True
        if threads_pinned():
            return
        n = available_cpus()
        if torch.get_num_threads() > n:
            torch.set_num_threads(n)
            log.debug("torch intra-op threads set to %d", n)


def hash_tensors(h: "hashlib._Hash", state: dict[str, torch.Tensor]) -> None:
    """Feed names, shapes, dtypes and bytes of `state` (sorted by name) into hash `h`."""
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def cxx_available() -> bool:
    """True when a C++ compiler for inductor (torch.compile on the CPU) is installed."""
    return any(shutil.which(c) for c in cxx_compilers())


class TorchEmbedder:
    """An Embedder backed by a torch image tower (and optionally a text tower).

    `model` maps an NCHW float batch to (N, dim) features; `transform` maps one RGB
    PIL image to a CHW tensor. With precision "bf16" on a CPU the weights are converted
    to bfloat16 once, here, and inputs cast per batch (bf16 autocast re-casts every weight
    on every forward and made ViT-B-32 slower than fp32); on CUDA the forward passes run
    under bf16 autocast (the CUDA graph capture relies on it). Vectors are always float32.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        transform: Callable[[Image.Image], torch.Tensor],
        dim: int,
        fingerprint: str,
        device: str = "cpu",
        text_encoder: Callable[[list[str]], torch.Tensor] | None = None,
        precision: str = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        configure_torch_threads()
        self.name = name
        self._device = str(device)
        self._dim = int(dim)
        self._precision = precision
        self._fingerprint = fingerprint if precision == "fp32" else f"{fingerprint}+{precision}"
        self._channels_last = torch.device(self._device).type == "cpu"
        self._input_dtype = torch.bfloat16 if precision == "bf16" and self._channels_last else torch.float32
        model = model.eval().to(self._device)
        self.transform = transform
        # eager CPU batches and single queries run a copy with the batch norms folded in (same
        # function, fewer ops); compilation, CUDA graphs and int8 take `model` itself
        eager = self._folded(model) if self._channels_last and self.fold_batch_norms else None
        if self._input_dtype == torch.bfloat16:
            model = model.to(torch.bfloat16)
            eager = eager.to(torch.bfloat16) if eager is not None else None
        if self._channels_last:
            model = model.to(memory_format=torch.channels_last)
            eager = eager.to(memory_format=torch.channels_last) if eager is not None else None
        self.model = model
        self._eager = eager if eager is not None else model
        self._text_encoder = text_encoder
        self._compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._compile_batch = 0
        self._graph = None  # cuda_graph.GraphedForward for the GPU pipeline's batch size
        self._fused: Callable[[torch.Tensor], torch.Tensor] | None = None  # fuse()'s bulk CPU form
        self._query: Callable[[torch.Tensor], torch.Tensor] | None = None  # prepare_queries' choice
        self.query_choice = None  # query_model.QueryChoice, once prepare_queries ran
        self._query_precision = ""

    #: fold batch norms into convolutions for eager CPU inference (subclasses whose model is
    #: not a plain module graph turn it off)
    fold_batch_norms = True
    #: bulk CPU embedding on few cores runs this model as single-threaded replicas by default
    #: (embedding/replicas.py): on where measured faster (EfficientNet-Lite0); ViT-B-32 took 1.26x
    #: more CPU per photo that way than on the thread executor (bulk_replicas_vit_b32_check)
    bulk_replicas = False

    def _folded(self, model: nn.Module) -> nn.Module | None:
        """`model` with its batch norms folded (fold.py), checked on a random batch shaped like
        this model's input; None when it has none to fold."""
        from shopsearch.embedders.fold import fold_conv_bn, has_pairs

        if not has_pairs(model):
            return None
        try:
            shape = self.preprocess(Image.new("RGB", (256, 256))).shape
            sample = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0)).to(self._device)
            return fold_conv_bn(model, sample)
        except Exception as e:  # noqa: BLE001 - an optimisation must never stop a model loading
            log.info("batch norms not folded: %s", e)
            return None

    # -- protocol properties ---------------------------------------------------------
    @property
    def dim(self) -> int:
        """Length of every vector."""
        return self._dim

    @property
    def fingerprint(self) -> str:
        """Stable id of architecture, weights, preprocessing and (non-fp32) precision."""
        return self._fingerprint

    @property
    def has_text(self) -> bool:
        """True when a text tower was given."""
        return self._text_encoder is not None

    @property
    def device(self) -> str:
        """The torch device the model lives on."""
        return self._device

    @property
    def precision(self) -> str:
        """"fp32" or "bf16"."""
        return self._precision

    # -- helpers -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """inference_mode, plus bf16 autocast for bf16 on CUDA (CPU weights are bf16 already)."""
        with torch.inference_mode():
            if self._precision == "bf16" and self._input_dtype != torch.bfloat16:
                dev_type = torch.device(self._device).type
                with torch.autocast(device_type=dev_type, dtype=torch.bfloat16):
                    yield
            else:
                yield

    def _to_numpy(self, feats: torch.Tensor) -> np.ndarray:
        out = feats.detach().float().cpu().numpy()
        if out.ndim != 2 or out.shape[1] != self._dim:
            raise RuntimeError(f"{self.name}: model returned shape {out.shape}, expected (N, {self._dim})")
        return l2_normalize(out)

    # -- protocol methods -------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> CHW float32 array (the model's transform applied)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        x = self.transform(image)
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        return np.ascontiguousarray(x, dtype=np.float32)

    def encode_batch(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 batch from `preprocess` -> (N, dim) L2-normalised float32."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise ValueError(f"encode_batch expects an NCHW array, got shape {batch.shape}")
        if batch.shape[0] == 0:
            return np.zeros((0, self._dim), dtype=np.float32)
        return self.encode_tensor(torch.from_numpy(np.ascontiguousarray(batch)))

    def encode_tensor(self, x: torch.Tensor) -> np.ndarray:
        """NCHW float tensor (any device, e.g. decoded on the GPU) -> (N, dim) L2-normalised float32."""
        with self._inference():
            feats = self._forward(self._model_input(x))
        return self._to_numpy(feats)

    def _model_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the model's device, in its layout and (bf16 weights) dtype."""
        x = x.to(self._device, non_blocking=True)
        if x.is_floating_point() and x.dtype != self._input_dtype and x.device.type == "cpu":
            x = x.to(self._input_dtype)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # -- compiled forward (bulk embedding) ---------------------------------------------
    def compile(self, batch_size: int) -> bool:
        """Run the image tower through torch.compile (inductor, weights frozen into the
        graph) at a fixed batch size, for bulk embedding: faster on CPUs without bf16
        (figures: benchmarks/RESULTS.md); the first batch pays the compilation, so the
        pipeline asks only for big jobs. Vectors match
        eager ones within 1e-5, so the fingerprint is unchanged. False, eager kept, when
        no C++ compiler is found (inductor's CPU backend needs one)."""
        if self._compiled is not None:
            return True
        if torch.device(self._device).type == "cpu" and not cxx_available():
            log.info("torch.compile skipped: no C++ compiler on PATH")
            return False
        try:
            self._compiled = torch.compile(self.model, dynamic=False, options={"freezing": True})
        except Exception as e:  # noqa: BLE001 - an optimisation must never stop a run
            log.warning("torch.compile unavailable, running eager: %s", e)
            return False
        self._compile_batch = max(1, int(batch_size))
        return True

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def fuse(self, batch_size: int) -> bool:
        """For bulk CPU batches of `batch_size` on one intra-op thread (the replicas executor
        forks after this): a oneDNN-fused copy of the eager model (onednn_fusion.bulk_form),
        kept only where it matches the eager vectors and runs faster; batches are padded to
        `batch_size`. False, eager kept, off the CPU, when compiled or fusion fails."""
        if not self._channels_last or self._compiled is not None:
            return False
        from shopsearch.embedders.onednn_fusion import bulk_form

        size, threads = max(1, int(batch_size)), torch.get_num_threads()
        torch.set_num_threads(1)  # oneDNN sizes the fused kernels for the threads of this call
        try:
            one = self._model_input(torch.randn((1, *self.preprocess(Image.new("RGB", (256, 256))).shape),
                                                generator=torch.Generator().manual_seed(0)))
            self._fused = bulk_form(self._eager, one.expand(size, *one.shape[1:]).contiguous(
                memory_format=torch.channels_last))
        except Exception as e:  # noqa: BLE001 - an optimisation must never stop a run
            log.info("oneDNN fusion unavailable, running eager: %s", e)
            self._fused = None
        finally:
            torch.set_num_threads(threads)
        self._compile_batch = size if self._fused is not None else self._compile_batch
        return self._fused is not None

    def unfuse(self) -> None:
        """Back to the eager model (the fused kernels were sized for one thread)."""
        self._fused = None

    def capture_cuda_graph(self, sample: torch.Tensor) -> bool:
        """Capture the image tower as a CUDA graph for batches shaped like `sample` (the GPU
        pipeline's; see cuda_graph). Same kernels as eager, so vectors and the fingerprint
        are unchanged. False, eager kept, off CUDA or when capture fails."""
        if self._graph is not None and self._graph.fits(sample):
            return True
        if not sample.is_cuda or self._compiled is not None:
            return False
        from shopsearch.embedders.cuda_graph import capture

        x = sample.to(self._device)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self._graph = capture(self.model, x, self._precision)
        return self._graph is not None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        graph = self._graph
        if graph is not None and graph.fits(x):
            return graph(x)
        compiled, size = self._compiled or self._fused, self._compile_batch
        if compiled is None:
            return self._eager(x)
        try:
            outs = []
            fmt = torch.channels_last if self._channels_last else torch.contiguous_format
            for start in range(0, x.shape[0], size):
                part = x[start:start + size]
                n = part.shape[0]
                if 2 * n < size:  # a few images (a single query): padding would waste the batch
                    outs.append(self._eager(part))
                    continue
                # Every input is a fresh inference-mode tensor of one shape and layout: a
                # padded last batch, or a tensor made outside inference mode, would fail
                # dynamo's guards and compile the model again.
                if n < size:
                    part = torch.cat([part, part.new_zeros((size - n, *part.shape[1:]))])
                outs.append(compiled(part.clone(memory_format=fmt))[:n])
            return torch.cat(outs) if len(outs) > 1 else outs[0]
        except Exception as e:  # noqa: BLE001 - compilation failed at the first call: fall back for good
            log.warning("compiled model failed, running eager from now on: %s", e)
            self._compiled = self._fused = None
            return self._eager(x)

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """PIL images -> (N, dim) float32, rows L2-normalised; (0, dim) for no images."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        chunks = []
        for start in range(0, len(images), batch_size):
            arrays = [self.preprocess(im) for im in images[start : start + batch_size]]
            chunks.append(self.encode_batch(np.stack(arrays)))
        if not chunks:
            return np.zeros((0, self._dim), dtype=np.float32)
        return np.concatenate(chunks, axis=0)

    # -- shoppers' photos --------------------------------------------------------------
    def prepare_queries(self, precision: str = "auto") -> object:
        """Choose, by measuring here, the form of the model that `encode_query` runs (see
        query_model: bf16 where the CPU has it and it is faster); returns the QueryChoice, or
        None where queries keep the eager model (CUDA, bf16 or unfolded weights)."""
        from shopsearch.embedders.query_model import candidates, choose

        if not self._channels_last or self._input_dtype != torch.float32:
            return None
        if self.query_choice is not None and self._query_precision == precision:
            return self.query_choice  # the same model behind a new index build: measured already
        sample = self._model_input(torch.randn((2, *self.preprocess(Image.new("RGB", (256, 256))).shape),
                                               generator=torch.Generator().manual_seed(0)))
        # timed on one intra-op thread in this thread's CPU time: all the work is then this thread's,
        # and CPU time barely moves when other jobs share the cores, where wall time with two
        # OpenMP threads waiting on each other at every op did (fp32 picked, 38 s spent, at load 20)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._query, self.query_choice = choose(candidates(self._eager, sample, precision), sample,
                                                    precision=precision, clock=time.thread_time)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - an optimisation must never stop a service loading
            log.warning("query model not chosen, queries run the eager model: %s", e)
            return None
        finally:
            torch.set_num_threads(threads)
        self._query_precision = precision
        log.info("query model chosen", extra={"choice": self.query_choice.name, "ms": self.query_choice.ms,
                                              "cosine": self.query_choice.cosine})
        return self.query_choice

    def encode_query(self, images: Sequence[Image.Image]) -> np.ndarray:
        """One shopper's photo (or a photo and its mirror) -> unit vectors, on the form of the
        model prepare_queries chose (the eager model before it ran). Never for catalogue
        vectors: those always come from encode_images/encode_tensor."""
        query = self._query
        if query is None or not images:
            return self.encode_images(images)
        x = self._model_input(torch.from_numpy(np.stack([self.preprocess(im) for im in images])))
        with torch.inference_mode():
            return self._to_numpy(query(x))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, dim) float32 L2-normalised; CapabilityError without a text tower."""
        if self._text_encoder is None:
            raise CapabilityError(f"model {self.name!r} has no text tower; text search needs a CLIP model")
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        with self._inference():
            feats = self._text_encoder(texts)
        return self._to_numpy(feats)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} dim={self._dim} device={self._device} {self._precision}>"
