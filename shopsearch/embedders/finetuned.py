"""Fine-tuned image backbones (from `shopsearch classify train --finetune`) as embedders.

Spec `finetuned:NAME` reads `<data dir>/models/NAME.pt`; `finetuned:/path/to/file.pt` reads
that file. The fingerprint hashes the architecture, preprocessing and every weight, so an
index built with one fine-tuned model refuses queries embedded by any other."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from shopsearch.embedders.torch_base import TorchEmbedder, hash_tensors
from shopsearch.errors import ClassifierError, ConfigError, ModelUnavailableError

DEFAULT_ARCH = "tf_efficientnet_lite0"


class FinetunedEmbedder(TorchEmbedder):
    """A TorchEmbedder that knows the artefact it came from (its head routes searches)."""

    #: the EfficientNet-Lite0 network, fine-tuned: bulk embedding as single-threaded replicas as Lite0's
    bulk_replicas = True

    artefact_path: Path | None = None


def create_backbone(arch: str = DEFAULT_ARCH) -> nn.Module:
    """A timm network without classifier: forward -> pooled features."""
    try:
        import timm
    except ImportError as exc:
        raise ModelUnavailableError("fine-tuned backbones need the `timm` package") from exc
    return timm.create_model(arch, pretrained=False, num_classes=0)


def imagenet_backbone(weights_path: str | Path | None = None) -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights (the package's file, or a copy of it,
    e.g. an fp16 copy carried to a training machine), classifier removed."""
    import timm

    from shopsearch.embedders import efficientnet as eff

    path = str(weights_path) if weights_path else eff.weights_file()
    src = OrderedDict(torch.load(path, map_location="cpu", weights_only=True))
    net = timm.create_model(eff.TIMM_ARCH, pretrained=False, num_classes=1000)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v
                         for k, v in eff._map_state(src, OrderedDict(net.state_dict())).items()}, strict=True)
    net.reset_classifier(0)
    return net


def backbone_fingerprint(arch: str, img_size: int, crop_pct: float, state: dict[str, torch.Tensor]) -> str:
    """Stable id of (architecture, preprocessing, all weights)."""
    h = hashlib.sha256()
    hash_tensors(h, state)
    return f"finetuned:timm-{arch}:{img_size}:bicubic-crop{crop_pct}:w{h.hexdigest()[:16]}"


def resolve_artefact(target: str, models_dir: Path | None = None) -> Path:
    """NAME -> <models_dir>/NAME.pt (Settings.models_dir); a path (with / or .pt) is taken as is."""
    if "/" in target or target.endswith(".pt"):
        return Path(target).expanduser().resolve()
    if models_dir is None:
        raise ConfigError(f"fine-tuned model {target!r} is a name: it needs the models folder (models_dir), "
                          "or give the path of its .pt file")
    return Path(models_dir) / f"{target}.pt"


def load_finetuned(target: str, device: str = "cpu", precision: str = "fp32",
                   models_dir: Path | None = None) -> FinetunedEmbedder:
    """The embedder a fine-tuned artefact defines."""
    from shopsearch.classify.artefact import load_artefact
    from shopsearch.classify.transforms import eval_transform

    path = resolve_artefact(target, models_dir)
    if not path.is_file():
        raise ModelUnavailableError(f"no fine-tuned model at {path} (train one with "
                                    "`shopsearch classify train --finetune --name NAME`)")
    art = load_artefact(path)
    if art.backbone is None:
        raise ClassifierError(f"{path} is a head-only classifier, not a fine-tuned model")
    bb = art.backbone
    net = create_backbone(bb.arch)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in bb.state.items()}, strict=True)
    fp = backbone_fingerprint(bb.arch, bb.img_size, bb.crop_pct, bb.state)
    if fp != art.fingerprint:
        raise ClassifierError(f"{path}: backbone weights do not match the artefact's fingerprint (file altered?)")
    emb = FinetunedEmbedder(name=f"finetuned:{target}", model=net, transform=eval_transform(bb.img_size, bb.crop_pct),
                            dim=int(net.num_features), fingerprint=fp, device=device, precision=precision)
    emb.artefact_path = path
    return emb

