"""Batch norms folded into convolutions for eager CPU inference: the same vectors as the
unfolded model, batch norms gone from the copy that runs, the original kept for what needs
it (compilation, int8 export), and no fold where conv and batch norm are not applied in turn."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from shopsearch.embedders.fold import BatchNormRemainder, fold_conv_bn, fold_pairs
from shopsearch.embedders.torch_base import TorchEmbedder


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU6(),
                        nn.Conv2d(8, 8, 3, groups=8, bias=False), nn.BatchNorm2d(8),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for bn in (net[1], net[4]):  # statistics and affine terms that change the output
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


def _to_chw(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im.resize((32, 32)), dtype=np.float32) / 255.0).permute(2, 0, 1)


def _photos(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def test_folded_copy_computes_the_same_function_without_batch_norms():
    net = _net()
    x = torch.randn(4, 3, 32, 32)
    folded = fold_conv_bn(net, x)
    assert folded is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 2  # the original is untouched
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


def test_a_conv_and_batch_norm_side_by_side_but_not_in_turn_is_not_folded():
    class Branches(nn.Module):
        """conv and bn registered next to each other, but bn applies to the input, not to conv's output."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) + self.bn(x)

    net = Branches()
    net.bn.running_mean.fill_(0.7)
    net.bn.weight.data.fill_(3.0)
    net.eval()
    assert fold_pairs(Branches()) == 1  # the pairing alone would fold it ...
    assert fold_conv_bn(net, torch.randn(2, 3, 8, 8)) is None  # ... the output check refuses it


def test_nothing_to_fold_in_training_mode_or_without_batch_norms():
    assert fold_conv_bn(_net().train(), torch.randn(2, 3, 32, 32)) is None
    assert fold_conv_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), torch.randn(2, 3, 32, 32)) is None


def test_remainder_keeps_an_activation_held_by_the_batch_norm():
    bn = nn.BatchNorm2d(2)
    bn.act = nn.ReLU()  # as timm's BatchNormAct2d holds its activation
    x = torch.tensor([-1.0, 2.0]).view(1, 2, 1, 1)
    assert BatchNormRemainder(bn)(x).flatten().tolist() == [0.0, 2.0]


def test_embedder_runs_the_folded_copy_with_the_same_vectors():
    emb = TorchEmbedder("tiny", _net(), transform=_to_chw, dim=8, fingerprint="tiny-1")
    plain = TorchEmbedder("tiny", _net(), transform=_to_chw, dim=8, fingerprint="tiny-1")
    plain._eager = plain.model  # the unfolded forward, for reference
    assert not any(isinstance(m, nn.BatchNorm2d) for m in emb._eager.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in emb.model.modules())  # compile and int8 take this one
    photos = _photos(5)
    np.testing.assert_allclose(emb.encode_images(photos), plain.encode_images(photos), atol=1e-5)
    assert emb.fingerprint == plain.fingerprint


def test_bf16_embedder_folds_then_converts():
    emb = TorchEmbedder("tiny", _net(), transform=_to_chw, dim=8, fingerprint="tiny-1", precision="bf16")
    ref = TorchEmbedder("tiny", _net(), transform=_to_chw, dim=8, fingerprint="tiny-1")
    assert all(p.dtype == torch.bfloat16 for p in emb._eager.parameters())
    photos = _photos(3)
    cos = (emb.encode_images(photos) * ref.encode_images(photos)).sum(1)
    assert cos.min() > 0.99
