"""Image transforms shared by fine-tuning and the fine-tuned embedder, so training,
validation and serving see identical preprocessing."""
from __future__ import annotations

from typing import Callable

import torch
from PIL import Image

MEAN = STD = (0.5, 0.5, 0.5)  # tf_efficientnet_lite0's normalisation
CROP_PCT = 0.875


def eval_transform(img_size: int, crop_pct: float = CROP_PCT) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the shorter side to img_size/crop_pct (bicubic), centre-crop, normalise."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(int(round(img_size / crop_pct)), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(img_size),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])


def train_transform(img_size: int, min_scale: float = 0.35, augment: str = "basic"
                    ) -> Callable[[Image.Image], torch.Tensor]:
    """Random resized crop, horizontal flip and colour jitter without hue shifts (hue tells
    a Granny Smith from a Golden Delicious); "trivial" adds TrivialAugmentWide's geometric
    and photometric ops and random erasing."""
    from torchvision import transforms as T

    if augment not in ("basic", "trivial"):
        raise ValueError(f"augment must be 'basic' or 'trivial', got {augment!r}")
    ops = [T.RandomResizedCrop(img_size, scale=(min_scale, 1.0), interpolation=T.InterpolationMode.BICUBIC),
           T.RandomHorizontalFlip(),
           T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.2)]
    if augment == "trivial":
        ops.append(T.TrivialAugmentWide(interpolation=T.InterpolationMode.BILINEAR))
    ops += [T.ToTensor(), T.Normalize(MEAN, STD)]
    if augment == "trivial":
        ops.append(T.RandomErasing(p=0.25, value=0))
    return T.Compose(ops)
