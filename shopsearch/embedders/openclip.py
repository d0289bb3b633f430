"""OpenCLIP models (image + text towers) as embedders.

Weights come from, in this order: an explicit local checkpoint file; a pretrained tag
already in the local Hugging Face cache (or ~/.cache/clip); a download (unless
HF_HUB_OFFLINE=1). With neither tag nor checkpoint the model gets random weights,
drawn from a fixed seed, for tests and throughput benchmarks only.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import torch
from torch import nn

from shopsearch import config
from shopsearch.embedders.torch_base import TorchEmbedder
from shopsearch.errors import ConfigError, ModelUnavailableError

log = logging.getLogger("shopsearch.embedders")

RANDOM_SEED = 0
_CHUNK = 1 << 20


class ImageTower(nn.Module):
    """forward = CLIP.encode_image(x, normalize=True)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(x, normalize=True)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def hf_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), or huggingface_hub's own
    configuration, forbids downloads."""
    if config.hf_offline():
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


@contextlib.contextmanager
def skipped_init(skip: bool) -> Iterator[None]:
    """With `skip`, torch.nn.init's fills do nothing while a model is built: weights about to be
    overwritten by a checkpoint (open_clip loads it strictly: every parameter and persistent
    buffer) need no random draw, which took longer than reading the file."""
    if not skip:
        yield
        return
    from torch.nn import init

    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}
    try:
        for n in names:
            setattr(init, n, _keep)
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)


def _keep(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return tensor


def _open_clip():
    try:
        import open_clip
    except ImportError as exc:
        raise ModelUnavailableError("OpenCLIP models need the `open_clip_torch` package") from exc
    return open_clip


def check_arch(arch: str) -> None:
    """ConfigError (with suggestions) unless open_clip knows the architecture."""
    valid = _open_clip().list_models()
    if arch not in valid:
        close = difflib.get_close_matches(arch, valid, n=5, cutoff=0.5)
        examples = close or ["ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50", "ViT-S-32-alt"]
        raise ConfigError(f"unknown OpenCLIP architecture {arch!r}; valid ones include: {', '.join(examples)}")


def _hf_candidates(cfg: dict) -> tuple[str, list[str]] | None:
    """(repo_id, filenames to try) for a tag hosted on the HF hub, safetensors first."""
    hub = cfg.get("hf_hub")
    if not hub:
        return None
    repo_id, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    names = [filename]
    if filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    if filename == "open_clip_pytorch_model.bin":
        names.insert(0, "open_clip_model.safetensors")
    return repo_id, list(dict.fromkeys(names))


def cached_tag_weights(arch: str, tag: str) -> str | None:
    """Local path of a pretrained tag's weights when already cached, else None."""
    cfg = _open_clip().get_pretrained_cfg(arch, tag)
    if cfg.get("file") and os.path.isfile(cfg["file"]):
        return cfg["file"]
    hf = _hf_candidates(cfg)
    if hf is not None:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo_id, names = hf
            for name in names:
                found = try_to_load_from_cache(repo_id, name)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
    url = cfg.get("url")
    if url:
        legacy = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if legacy.is_file():
            return str(legacy)
    return None


def _how_to_provide(arch: str, tag: str, cfg: dict, offline: bool = False) -> str:
    """How to give this machine the weights; `offline`: HF_HUB_OFFLINE forbade the download."""
    hf = _hf_candidates(cfg)
    where = f"https://huggingface.co/{hf[0]}" if hf else (cfg.get("url") or "the OpenCLIP model zoo")
    return (
        f"download the checkpoint on a connected machine (from {where}), copy it here and use the "
        f"spec 'openclip:{arch}@/path/to/checkpoint' (e.g. open_clip_pytorch_model.bin), or "
        + ("pre-populate the Hugging Face cache (HF_HOME) and unset HF_HUB_OFFLINE" if offline else
           "copy a Hugging Face cache holding them here (HF_HOME), or run again where the download works")
    )


#: seconds the hub has to answer one request before a download: huggingface_hub retries a hub it
#: cannot reach 5 times per file with back-off (open_clip asks for two files: ~50 s), so an
#: unreachable one is found out first, once, without retries
HUB_PROBE_TIMEOUT_S = 10.0


def hub_unreachable(cfg: dict, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub hosting a tag's weights cannot be reached (a network error or
    time-out on one request, no retries), else None: it answered (even "no such file"), or the
    tag is not hosted there."""
    hf = _hf_candidates(cfg)
    if hf is None:
        return None
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        return None  # open_clip then downloads from its URL, or says what is missing
    repo_id, names = hf
    url = hf_hub_url(repo_id, names[0])
    try:
        get_hf_file_metadata(url, timeout=timeout)
    except HfHubHTTPError:  # an HTTP answer (a missing file, a gated repo): the download says more
        return None
    except Exception as exc:  # noqa: BLE001 - DNS, connection refused, time-out, proxy, TLS
        return f"{urlsplit(url).netloc} cannot be reached: {type(exc).__name__}: {exc}"
    return None


def resolve_tag_weights(arch: str, tag: str) -> str:
    """Local file for a pretrained tag: the cache, or a download when allowed."""
    open_clip = _open_clip()
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ConfigError(
            f"unknown pretrained tag {tag!r} for OpenCLIP {arch}; known tags: {', '.join(tags) or 'none'}"
        )
    path = cached_tag_weights(arch, tag)
    if path:
        return path
    if hf_offline():
        raise ModelUnavailableError(
            f"weights for openclip:{arch}/{tag} are not cached and HF_HUB_OFFLINE is set; "
            + _how_to_provide(arch, tag, cfg, offline=True)
        )
    unreachable = hub_unreachable(cfg)
    if unreachable:
        raise ModelUnavailableError(
            f"weights for openclip:{arch}/{tag} are not cached and cannot be downloaded ({unreachable}); "
            + _how_to_provide(arch, tag, cfg)
        )
    try:
        path = open_clip.download_pretrained(cfg)
    except Exception as exc:  # network errors, HTTP errors, checksum errors
        raise ModelUnavailableError(
            f"cannot download weights for openclip:{arch}/{tag} ({exc}); " + _how_to_provide(arch, tag, cfg)
        ) from exc
    if not path or not os.path.isfile(path):
        raise ModelUnavailableError(f"no weights file for openclip:{arch}/{tag}; " + _how_to_provide(arch, tag, cfg))
    return path


def load_openclip(
    arch: str,
    pretrained: str | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
) -> TorchEmbedder:
    """Build an OpenCLIP embedder. Give at most one of `pretrained` (a tag) and
    `checkpoint` (a local file); with neither, weights are random (seeded)."""
    open_clip = _open_clip()
    if pretrained and checkpoint:
        raise ConfigError("give either a pretrained tag or a checkpoint path, not both")
    check_arch(arch)

    kwargs: dict = {}
    if checkpoint:
        path = str(Path(checkpoint).expanduser())
        if not os.path.isfile(path):
            raise ModelUnavailableError(f"OpenCLIP checkpoint file not found: {path}")
        weights_id = f"file-sha256-{file_sha256(path)[:16]}"
    elif pretrained:
        path = resolve_tag_weights(arch, pretrained)
        cfg = open_clip.get_pretrained_cfg(arch, pretrained)
        # what open_clip itself would take from the tag (it loses this for a file path)
        for key, arg in (("mean", "image_mean"), ("std", "image_std"),
                         ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")):
            if cfg.get(key) is not None:
                kwargs[arg] = cfg[key]
        if cfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
        weights_id = f"{pretrained}-sha256-{file_sha256(path)[:16]}"
    else:
        path = None
        weights_id = f"random-init-seed{RANDOM_SEED}-UNTRAINED-not-for-search"

    try:
        with torch.random.fork_rng(devices=[]), skipped_init(path is not None):
            torch.manual_seed(RANDOM_SEED)
            clip, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=path, **kwargs)
        tokenizer = open_clip.get_tokenizer(arch)
    except (ConfigError, ModelUnavailableError):
        raise
    except Exception as exc:  # state-dict mismatch, corrupt file, missing tokenizer files...
        source = path or "random init"
        raise ModelUnavailableError(f"cannot build OpenCLIP {arch} from {source}: {exc}") from exc
    if path is None:
        log.warning("openclip:%s has RANDOM weights: fine for tests/benchmarks, useless for search", arch)

    clip.eval()
    dim = int(getattr(clip, "embed_dim", 0) or open_clip.get_model_config(arch)["embed_dim"])
    size = getattr(clip.visual, "image_size", None)
    size = size[0] if isinstance(size, (tuple, list)) else size
    quick = "-quickgelu" if kwargs.get("force_quick_gelu") else ""
    fingerprint = f"openclip:{arch}{quick}:{weights_id}:{size}"
    spec_name = f"openclip:{arch}" + (f"/{pretrained}" if pretrained else f"@{checkpoint}" if checkpoint else "")
    tower = ImageTower(clip)

    def encode_text(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(texts).to(tower_device())
        return clip.encode_text(tokens, normalize=True)

    def tower_device() -> torch.device:
        return next(clip.parameters()).device

    return TorchEmbedder(
        name=spec_name,
        model=tower,
        transform=preprocess,
        dim=dim,
        fingerprint=fingerprint,
        device=device,
        text_encoder=encode_text,
        precision=precision,
    )
