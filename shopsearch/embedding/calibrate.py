"""int8 calibration from image files: decode a sample exactly as the pipeline does, gather
the activation ranges (shopsearch.embedders.int8) and save them where `+int8` specs look."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from shopsearch.embedders import load_embedder, parse_spec
from shopsearch.embedders.int8 import (DEFAULT_CALIBRATION_IMAGES, calibrate_tensors, calibration_path,
                                       check_int8_device, input_size, save_calibration)
from shopsearch.embedders.torch_base import TorchEmbedder
from shopsearch.embedding.pipeline import WorkItem, prepare
from shopsearch.embedding.preprocess import split_preprocess
from shopsearch.errors import ConfigError

log = logging.getLogger("shopsearch.calibrate")

#: below this many decodable images the activation ranges are guesswork
MIN_CALIBRATION_IMAGES = 8
_BATCH = 32


@dataclass(frozen=True)
class CalibrationReport:
    model: str  # the int8 spec to use, e.g. "efficientnet-lite0+int8"
    path: str
    images: int
    skipped: int  # sampled files that could not be decoded
    fingerprint: str  # of the int8 embedder this calibration defines
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def sample_evenly(paths: Sequence[str], count: int) -> list[str]:
    """`count` paths spread evenly over `paths` (all of them when there are fewer)."""
    if count >= len(paths):
        return list(paths)
    step = len(paths) / count
    return [paths[int(i * step)] for i in range(count)]


def _batches(base: TorchEmbedder, paths: Sequence[str], count: int, skipped: list[str]) -> list[torch.Tensor]:
    """The first `count` of `paths` that decode, as model-input batches (failures noted in `skipped`)."""
    split = split_preprocess(base)
    arrays: list[np.ndarray] = []
    for p in paths:
        if len(arrays) == count:
            break
        _, res = prepare(WorkItem("", p), split if split is not None else base.preprocess)
        if isinstance(res, str):
            skipped.append(f"{p}: {res}")
        else:
            arrays.append(res)
    chunks = [np.stack(arrays[i:i + _BATCH]) for i in range(0, len(arrays), _BATCH)]
    return [split.finish(c) if split is not None else torch.from_numpy(c) for c in chunks]


def calibrate_int8(model: str, paths: Sequence[str], count: int = DEFAULT_CALIBRATION_IMAGES,
                   models_dir: str | Path | None = None, out: str | Path | None = None,
                   overwrite: bool = False) -> CalibrationReport:
    """Calibrate the int8 form of `model` on up to `count` of `paths` (sampled evenly, in the
    order given: pass them in a stable order, e.g. by content hash, to get the same file
    from the same catalogue) and save it to `out` (default: where `model+int8` is looked for
    in `models_dir`). An existing calibration is replaced only with `overwrite`: indexes
    built with it would no longer match their model."""
    spec = parse_spec(model)
    if spec.kind in ("colorhist", "auto"):
        raise ConfigError(f"int8 calibration needs a named neural model, not {spec.kind!r}")
    if spec.precision not in ("fp32", "int8"):
        raise ConfigError(f"calibrate the fp32 model, not {model!r}")
    base_spec = str(replace(spec, precision="fp32"))
    target = Path(out) if out else calibration_path(base_spec, models_dir)
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} exists (indexes built with {base_spec}+int8 depend on it); pass --force to "
                          "replace it")
    if not paths:
        raise ConfigError("no images to calibrate on: the catalogue (or the --from folder) has none")
    check_int8_device("cpu")
    if count < MIN_CALIBRATION_IMAGES:
        raise ConfigError(f"int8 calibration needs at least {MIN_CALIBRATION_IMAGES} images, not {count}")
    t0 = time.perf_counter()
    base = load_embedder(base_spec, "cpu", Path(models_dir) if models_dir else None)
    if not isinstance(base, TorchEmbedder):
        raise ConfigError(f"{base_spec} is not a torch model; it has no int8 form")
    # Over-sample a little: a file that no longer decodes is replaced by the next one.
    skipped: list[str] = []
    batches = _batches(base, sample_evenly(list(paths), count + max(4, count // 8)), count, skipped)
    n = sum(int(b.shape[0]) for b in batches)
    if n < MIN_CALIBRATION_IMAGES:
        raise ConfigError(f"only {n} of the sampled images could be decoded; int8 calibration needs "
                          f"{MIN_CALIBRATION_IMAGES} (skipped: {'; '.join(skipped[:3])})")
    cal = calibrate_tensors(base, batches, input_size(base))
    path = save_calibration(cal, target)
    report = CalibrationReport(f"{base_spec}+int8", str(path), cal.images, len(skipped),
                               f"{base.fingerprint}+int8:c{cal.digest}", round(time.perf_counter() - t0, 2))
    log.info("int8 calibration saved", extra=report.to_dict())
    return report
