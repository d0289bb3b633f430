"""Batch norms folded into the convolutions before them, for eager CPU inference.

In eval mode a BatchNorm2d right after a Conv2d is an affine map per channel, which the
convolution's weights and bias can absorb: one op fewer per layer (EfficientNet-Lite0 has
49 such pairs), so a single query and an eager batch cost less. The folded copy computes
the same function up to float rounding; `fold_conv_bn` checks that on a sample input and
returns None when it does not hold (a model whose conv and batch norm are registered side
by side but not applied one after the other), so a caller keeps the original."""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

log = logging.getLogger("shopsearch.embedders")

#: the folded model must give vectors at least this close (cosine) to the original's
MIN_COSINE = 0.9999


class BatchNormRemainder(nn.Module):
    """What is left of a folded batch norm: timm's BatchNormAct2d also holds a dropout and an
    activation, applied after the normalisation (both kept; a plain BatchNorm2d has neither)."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.drop = getattr(bn, "drop", None) or nn.Identity()
        self.act = getattr(bn, "act", None) or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            and bn.running_mean is not None and bn.num_features == conv.out_channels
            and conv.weight.dtype == torch.float32)


def fold_pairs(model: nn.Module) -> int:
    """Fold, in place, every batch norm registered right after a convolution in the same parent
    module (how timm and torchvision CNNs are built); returns how many were folded."""
    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if _foldable(conv, bn):
                _fold_pair(conv, bn)  # type: ignore[arg-type]
                setattr(parent, bn_name, BatchNormRemainder(bn))  # type: ignore[arg-type]
                folded += 1
    return folded


def has_pairs(model: nn.Module) -> bool:
    """True when `fold_pairs` would fold something (checked before copying a model)."""
    for parent in model.modules():
        children = list(parent.children())
        if any(_foldable(a, b) for a, b in zip(children, children[1:])):
            return True
    return False


def fold_conv_bn(model: nn.Module, sample: torch.Tensor) -> nn.Module | None:
    """A folded copy of `model` (eval mode), or None when there is nothing to fold or the copy's
    outputs on `sample` (an input batch of the model's shape) stray from the original's."""
    if model.training or not has_pairs(model):
        return None
    folded = copy.deepcopy(model)
    n = fold_pairs(folded)
    if n == 0:
        return None
    with torch.inference_mode():
        ref, out = model(sample).float(), folded(sample).float()
    cos = torch.nn.functional.cosine_similarity(ref.flatten(1), out.flatten(1), dim=1).min().item()
    if not cos >= MIN_COSINE:
        log.warning("batch norm folding changed the model's outputs (cosine %.6f); kept unfolded", cos)
        return None
    log.debug("folded %d batch norms into convolutions", n)
    return folded.eval()
