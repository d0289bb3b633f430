"""int8 image towers for CPUs without bf16 (AVX2-only x86): static post-training quantization.

The image tower is exported with a dynamic batch (torch.export), quantized by torchao's PT2E
flow with the X86InductorQuantizer (int8 per-channel weights, uint8 per-tensor activations),
and compiled by inductor into oneDNN int8 kernels. Activation ranges come from a
*calibration*: observer statistics gathered over a sample of the catalogue's own images
(shopsearch/embedding/calibrate.py), saved to `<data dir>/models/<model>.int8.pt`, so that
the index build and every later query rebuild the very same quantized model. The
fingerprint carries the calibration's digest: vectors from another calibration are refused.

On AVX2-only CPUs the int8 model runs faster than fp32 compiled;
benchmarks/RESULTS.md has the measured figures, the end-to-end throughput and the Grocery
Store recall against fp32."""
from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from PIL import Image
from torch import nn

from shopsearch.embedders.torch_base import TorchEmbedder, cxx_available, hash_tensors
from shopsearch.errors import ConfigError, ModelUnavailableError

log = logging.getLogger("shopsearch.embedders")

CALIBRATION_FORMAT = 1
#: images a calibration looks at by default: more changed nothing measurable on the benchmark
DEFAULT_CALIBRATION_IMAGES = 128
#: the batch the bulk graph is compiled for when the pipeline does not say (see Int8Embedder.compile)
DEFAULT_BATCH = 32
_MAX_BATCH = 65536
_OBSERVER_KEY = "activation_post_process"
#: layers kept in fp32. The last convolution (timm's `conv_head`) feeds the pooled embedding:
#: quantizing its output rounds every embedding value to one of 256 levels, which cost 1.5
#: points of recall@1 on the Grocery Store benchmark; it is ~5% of EfficientNet-Lite0's work.
FP32_LAYERS = ("conv_head",)
#: 7-bit activations. On CPUs without VNNI (AVX2 only), oneDNN's int8 kernels add pairs of
#: u8 x s8 products in saturating int16; with 8-bit activations that clipped the stem
#: convolution (cosine to the fp32 vectors 0.85, against 0.99 with 7 bits). Used on every
#: CPU, so that one calibration gives the same vectors on any machine.
REDUCE_RANGE = True
_export_lock = threading.Lock()


@dataclass(frozen=True)
class Calibration:
    """Observer statistics of one quantization: what makes the int8 model reproducible."""

    base_fingerprint: str  # the fp32 embedder it was made for
    images: int
    state: dict  # observer name -> tensor (min/max/histogram)

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.base_fingerprint.encode())
        h.update(f"reduce_range={REDUCE_RANGE};fp32={','.join(FP32_LAYERS)}".encode())  # how it is applied
        hash_tensors(h, self.state)
        return h.hexdigest()[:12]


def _torchao():
    # torchao registers an Enum with torch's pytree at import, which torch logs as deprecated: noise here
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as exc:
        raise ModelUnavailableError("int8 models need the `torchao` package (pip install torchao==0.18.0)") from exc
    return prepare_pt2e, convert_pt2e, xiq


def check_int8_device(device: str) -> None:
    """int8 runs on the CPU only (through inductor, which needs a C++ compiler)."""
    if torch.device(device).type != "cpu":
        raise ConfigError(f"int8 is a CPU precision; on {device} use fp32 or bf16")
    if not cxx_available():
        raise ModelUnavailableError("int8 models are compiled by torch inductor, which needs a C++ compiler "
                                    "(g++) on PATH")


def staticize_same_pad(model: nn.Module, size: int) -> int:
    """Replace timm's Conv2dSame (TF "SAME" padding computed from the input at run time, which
    torch.export cannot trace) by a fixed ZeroPad2d + Conv2d for `size`-pixel inputs: the
    model's transform always crops to that size. Same arithmetic; returns how many were swapped."""
    try:
        from timm.layers.conv2d_same import Conv2dSame
    except ImportError:
        return 0
    seen: dict[str, tuple[int, int]] = {}
    hooks = [mod.register_forward_pre_hook(lambda m, a, n=name: seen.__setitem__(n, tuple(a[0].shape[-2:])))
             for name, mod in model.named_modules() if isinstance(mod, Conv2dSame)]
    if not hooks:
        return 0
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    for name, hw in seen.items():
        mod = model.get_submodule(name)
        pads = []
        for x, k, s, d in zip(hw, mod.kernel_size, mod.stride, mod.dilation):
            p = max((math.ceil(x / s) - 1) * s + (k - 1) * d + 1 - x, 0)
            pads.append((p // 2, p - p // 2))
        conv = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, 0, mod.dilation,
                         mod.groups, mod.bias is not None)
        conv.load_state_dict(mod.state_dict())
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                nn.Sequential(nn.ZeroPad2d((pads[1][0], pads[1][1], pads[0][0], pads[0][1])), conv))
    return len(seen)


def prepare_observed(base: TorchEmbedder, size: int) -> nn.Module:
    """The base tower exported (dynamic batch) with int8 observers inserted, fp32 throughout."""
    import copy

    prepare_pt2e, _, xiq = _torchao()
    model = copy.deepcopy(base.model).float().to(memory_format=torch.contiguous_format).eval()
    staticize_same_pad(model, size)
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    with _export_lock, torch.no_grad():  # export is not thread-safe (global tracing state)
        exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(reduce_range=REDUCE_RANGE))
    for name, _ in model.named_modules():
        if any(name == layer or name.endswith("." + layer) for layer in FP32_LAYERS):
            quantizer.set_module_name_qconfig(name, None)
    return prepare_pt2e(exported, quantizer)


def calibrate_tensors(base: TorchEmbedder, batches: Iterable[torch.Tensor], size: int) -> Calibration:
    """Run NCHW float batches (the model's normalised input) through the observers."""
    observed = prepare_observed(base, size)
    n = 0
    with torch.no_grad():
        for x in batches:
            observed(x.float().contiguous())
            n += int(x.shape[0])
    if n == 0:
        raise ConfigError("int8 calibration needs at least one image")
    state = {k: v.detach().clone() for k, v in observed.state_dict().items() if _OBSERVER_KEY in k}
    return Calibration(base.fingerprint, n, state)


def save_calibration(cal: Calibration, path: str | Path) -> Path:
    """Write atomically (a half-written calibration must never be read)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CALIBRATION_FORMAT, "base_fingerprint": cal.base_fingerprint, "images": cal.images,
                "state": cal.state}, tmp)
    os.replace(tmp, path)
    return path


def load_calibration(path: str | Path) -> Calibration:
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ModelUnavailableError(f"cannot read int8 calibration {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != CALIBRATION_FORMAT:
        raise ModelUnavailableError(f"{path} is not an int8 calibration of format {CALIBRATION_FORMAT}")
    return Calibration(str(raw["base_fingerprint"]), int(raw["images"]), dict(raw["state"]))


def calibration_path(model_spec: str, models_dir: str | Path | None = None) -> Path:
    """`<models_dir>/<model spec, made a file name>.int8.pt` (models_dir: Settings.models_dir)."""
    if models_dir is None:
        raise ConfigError(f"int8 calibrations live in the models folder: loading {model_spec}+int8 needs models_dir")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_spec).strip("_")
    return Path(models_dir) / f"{safe}.int8.pt"


class _Tower(nn.Module):
    """Holds the converted graph as a submodule (its eval()/train() are not to be called)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True) -> "_Tower":  # exported graphs refuse mode switches
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


class Int8Embedder(TorchEmbedder):
    """A TorchEmbedder whose image tower always runs the compiled int8 graph.

    The graph is compiled for two batch sizes only: the bulk batch (`compile(batch_size)`,
    a short last batch padded to it when at least half full) and 1 (queries and other
    stragglers, one at a time). Every image's vector is the same whichever way it went, so
    a query photo finds its own indexed vector at similarity 1."""

    fold_batch_norms = False  # the quantized graph has its batch norms folded already

    def __init__(self, base: TorchEmbedder, calibration: Calibration, size: int) -> None:
        check_int8_device(base.device)
        if calibration.base_fingerprint != base.fingerprint:
            raise ModelUnavailableError(
                f"the int8 calibration was made for {calibration.base_fingerprint}, not for "
                f"{base.fingerprint}; quantize this model again (`shopsearch model quantize`)")
        _, convert_pt2e, _ = _torchao()
        observed = prepare_observed(base, size)
        missing = set(k for k in observed.state_dict() if _OBSERVER_KEY in k) ^ set(calibration.state)
        if missing:
            raise ModelUnavailableError(f"the int8 calibration does not fit this model ({len(missing)} observers differ)")
        observed.load_state_dict(calibration.state, strict=False)
        graph = convert_pt2e(observed)
        super().__init__(name=base.name, model=_Tower(graph), transform=base.transform, dim=base.dim,
                         fingerprint=base.fingerprint, device="cpu", text_encoder=base._text_encoder)
        self._precision = "int8"
        self._fingerprint = f"{base.fingerprint}+int8:c{calibration.digest}"
        self.calibration = calibration
        self._graph = torch.compile(self.model, dynamic=False)
        self._batch = DEFAULT_BATCH
        self._compiled_sizes: set[int] = set()
        self._compile_lock = threading.Lock()

    def compile(self, batch_size: int) -> bool:
        """Set the bulk batch the graph is compiled for (it is always compiled)."""
        self._batch = max(1, int(batch_size))
        return True

    @property
    def compiled(self) -> bool:
        return True

    def warm_up(self) -> None:
        """Compile the one-image graph now (it takes seconds), so that the first query does not wait."""
        self.encode_images([Image.new("RGB", (256, 256), (128, 128, 128))])

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone(memory_format=torch.channels_last)
        n = int(x.shape[0])
        try:
            if n in self._compiled_sizes:
                return self._graph(x)
            with self._compile_lock:  # one compilation at a time (web server threads)
                out = self._compile_and_run(x)
                self._compiled_sizes.add(n)
                return out
        except Exception as exc:  # noqa: BLE001 - reported as what it is: the int8 model cannot run here
            raise ModelUnavailableError(f"the int8 model failed to compile or run: {exc}") from exc

    def _compile_and_run(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        # Freezing folds the int8 weights into prepacked oneDNN kernels; it must be set in
        # inductor's global config while compiling (per-compile options miss the int8 passes),
        # hence the lock: the patch is process-wide.
        with inductor_config.patch(freezing=True), warnings.catch_warnings():
            # inductor's int8 lowering copies a tensor the way torch itself warns against
            warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
            return self._graph(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        size, outs = self._batch, []
        for start in range(0, x.shape[0], size):
            part = x[start:start + size]
            n = part.shape[0]
            if n == size:
                outs.append(self._run(part))
            elif 2 * n >= size:
                outs.append(self._run(torch.cat([part, part.new_zeros((size - n, *part.shape[1:]))]))[:n])
            else:
                outs.extend(self._run(part[i:i + 1]) for i in range(n))
        return torch.cat(outs) if len(outs) > 1 else outs[0]


def input_size(base: TorchEmbedder) -> int:
    """The square side the base model's transform crops to."""
    probe = base.preprocess(Image.new("RGB", (300, 260)))
    h, w = probe.shape[-2:]
    if h != w:
        raise ConfigError(f"int8 needs a fixed square model input, {base.name} gives {h}x{w}")
    return int(h)


def load_int8(base: TorchEmbedder, path: str | Path, base_spec: str) -> Int8Embedder:
    """The int8 embedder for `base`, from the calibration at `path`."""
    try:
        cal = load_calibration(path)
    except FileNotFoundError:
        raise ModelUnavailableError(
            f"{base_spec}+int8 has no calibration at {path}: run `shopsearch model quantize --model {base_spec}` "
            "(it samples the catalogue's images) first") from None
    return Int8Embedder(base, cal, input_size(base))
