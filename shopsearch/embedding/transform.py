"""One description of an embedder's torchvision transform (resize, crop, mean/std, draft
size), read once per transform object. The CPU split preprocess (preprocess.py), the GPU
replay (gpu_decode.py) and the JPEG draft size of queries and catalogue files all come
from it, so the three can never read the same transform differently."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

#: names of the conversion steps our decoder makes unnecessary (it returns RGB already)
_RGB_STEPS = ("MaybeConvertMode",)
_TENSOR_STEPS = ("ToTensor", "MaybeToTensor")
#: interpolations the GPU replays exactly like PIL (F.interpolate with antialias)
_GPU_MODES = ("bicubic", "bilinear")


@dataclass(frozen=True)
class TransformSpec:
    """What a [Resize, CenterCrop, ToTensor, Normalize] transform does.

    `pil_steps` are the geometric steps (run as they are by the split preprocess, so the pixels
    match the transform bit for bit); `resize` is the last Resize as (size, interpolation), size an
    int (shorter side) or (h, w); `crop` the last CenterCrop's (h, w). `cpu_split` says the
    transform can be cut into PIL geometry + batch normalisation, `gpu` that its resize and
    crop can be replayed on the GPU."""

    pil_steps: tuple[Any, ...] = field(compare=False)
    resize: tuple[int | tuple[int, ...], str] | None
    crop: tuple[int, int] | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    cpu_split: bool
    gpu: bool
    #: with a split: the shorter side the model resizes to (decoding JPEGs at >= this size loses nothing)
    draft_size: int | None = None


_specs: "weakref.WeakKeyDictionary[Any, TransformSpec | None]" = weakref.WeakKeyDictionary()


def describe_transform(tf: Any) -> TransformSpec | None:
    """The description of a torchvision transform, or None when it has a step neither the
    split preprocess nor the GPU can replay (then the embedder's own preprocess is used).
    Computed once per transform object."""
    if tf is None:
        return None
    try:
        return _specs[tf]
    except (KeyError, TypeError):  # TypeError: a transform that cannot be weakly referenced
        pass
    spec = _describe(tf)
    try:
        _specs[tf] = spec
    except TypeError:
        pass
    return spec


def _describe(tf: Any) -> TransformSpec | None:
    try:
        from torchvision import transforms as T
    except ImportError:  # pragma: no cover - torchvision ships with the torch models
        return None
    pil: list = []
    resize = crop = mean = std = None
    tensor_seen = False
    split_ok = gpu_ok = True
    for st in getattr(tf, "transforms", [tf]):
        name = type(st).__name__
        if isinstance(st, T.Resize):
            split_ok &= not tensor_seen
            if st.max_size is None and st.interpolation.value in _GPU_MODES:
                resize = (st.size if isinstance(st.size, int) else
                          (st.size[0] if len(st.size) == 1 else tuple(st.size)), st.interpolation.value)
            else:
                gpu_ok = False
            pil.append(st)
        elif isinstance(st, T.CenterCrop):
            split_ok &= not tensor_seen
            crop = tuple(st.size)
            pil.append(st)
        elif name in _TENSOR_STEPS:
            tensor_seen = True
        elif name in _RGB_STEPS or "rgb" in getattr(st, "__name__", "").lower():
            continue
        elif isinstance(st, T.Normalize):
            split_ok &= tensor_seen
            mean, std = tuple(float(m) for m in st.mean), tuple(float(s) for s in st.std)
        else:
            return None
    split_ok = split_ok and tensor_seen and mean is not None
    gpu_ok = gpu_ok and resize is not None and crop is not None and mean is not None
    if not (split_ok or gpu_ok):
        return None
    sizes = [st.size for st in pil if isinstance(st, T.Resize)]
    draft = sizes[0] if split_ok and sizes and isinstance(sizes[0], int) else None
    return TransformSpec(tuple(pil), resize, crop, mean, std, split_ok, gpu_ok, draft)  # type: ignore[arg-type]
