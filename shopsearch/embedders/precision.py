"""Which precision a model runs in: "auto" times the candidates on this machine.

No precision is the fastest for every model on every CPU (bf16: small ops, weight layouts;
int8: AVX2 kernels), so "auto" measures: one batch in each candidate, interleaved, best of a
few, and keeps the fastest. `choose_precision` (what `index build` uses) remembers the
answer per model family, CPU and torch version in a small JSON file, so that only the first
build on a machine pays the probe.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from shopsearch.embedders.registry import evict, load_embedder, parse_spec, resolved_spec
from shopsearch.evaluation.machine import cpu_has_bf16, cpu_model

log = logging.getLogger("shopsearch.embedders")

SUFFIXES = ("fp32", "bf16", "int8")


def best_precision(device: str) -> str:
    """bf16 where the hardware runs it natively (CUDA with bf16, CPUs with AMX or AVX512-BF16), else fp32."""
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def names_precision(model: str) -> bool:
    """True when the spec ends in a precision suffix (+fp32, +bf16, +int8)."""
    return "+" in model and model.rpartition("+")[2].lower() in SUFFIXES


def with_precision(model: str, precision: str, device: str) -> str:
    """The model spec with a precision suffix, unless the spec already names one."""
    if names_precision(model):
        return model
    if precision == "auto":
        precision = "fp32" if parse_spec(model).kind == "colorhist" else best_precision(device)
    return model if precision == "fp32" else f"{model}+{precision}"


def precision_candidates(model: str, device: str, models_dir: Path | None, int8: bool = True) -> tuple[str, ...]:
    """What precision "auto" times on a CPU: fp32, bf16 where the CPU runs it natively, and (int8)
    int8 where this model has a calibration (`shopsearch model quantize`) and inductor can compile
    it. One candidate means nothing to time."""
    if device != "cpu" or parse_spec(model).kind == "colorhist" or names_precision(model):
        return ("fp32",)
    out = ["fp32"]
    if best_precision(device) == "bf16":
        out.append("bf16")
    if int8:
        from shopsearch.embedders.int8 import calibration_path
        from shopsearch.embedders.torch_base import cxx_available

        if models_dir is not None and cxx_available() and calibration_path(str(parse_spec(model)), models_dir).is_file():
            out.append("int8")
    return tuple(out)


def faster_precision(model: str, device: str, batch: np.ndarray, models_dir: Path | None,
                     candidates: Sequence[str] = ("fp32", "bf16"), rounds: int = 4) -> tuple[str, dict[str, float]]:
    """Time `batch` (NCHW, preprocessed) in each candidate, interleaved, best of `rounds` (after one
    untimed call: lazy initialisation, kernel choice, int8's compilation), and keep the fastest;
    returns (the choice, ms per batch of each)."""
    embs = {prec: load_embedder(with_precision(model, prec, device), device, models_dir) for prec in candidates}
    best_t = {prec: float("inf") for prec in embs}
    for emb in embs.values():
        emb.encode_batch(batch)
    for _ in range(rounds):  # interleaved, best of `rounds` each: robust to other jobs sharing the cores
        for prec, emb in embs.items():
            t0 = time.perf_counter()
            emb.encode_batch(batch)
            best_t[prec] = min(best_t[prec], time.perf_counter() - t0)
    log.info("precision probe", extra={k: round(v, 4) for k, v in best_t.items()})
    return min(best_t, key=best_t.get), {k: round(v * 1000, 1) for k, v in best_t.items()}  # type: ignore[arg-type]


@dataclass(frozen=True)
class PrecisionChoice:
    """The spec to load, the precision it names, the probe's ms per batch (None: nothing was
    timed, one candidate) and whether the answer came from the cache file."""

    spec: str
    precision: str
    probe_ms: dict[str, float] | None = None
    cached: bool = False


#: the probe's answer is remembered only when the winner was at least this much faster: a close
#: call (or one skewed by other jobs on the cores) is measured again at the next build
DECISIVE = 1.15


def _decisive(probe_ms: dict[str, float]) -> bool:
    times = sorted(probe_ms.values())
    return len(times) < 2 or times[1] >= DECISIVE * times[0]


def _family(model: str) -> str:
    """What the speed depends on: the architecture and its input size, not the weights (nor the
    crop: the network sees the same number of pixels)."""
    spec = parse_spec(model)
    if spec.kind == "openclip":
        return f"openclip:{spec.arch}"
    if spec.kind == "efficientnet-lite0" and spec.input_size is not None:
        return f"efficientnet-lite0@{spec.input_size}"  # 288 px costs ~1.6x the convolutions of 224
    return "efficientnet-lite0" if spec.kind == "finetuned" else spec.kind


def _machine_key(device: str) -> str:
    import torch

    from shopsearch.config import available_cpus

    return f"{device}|{cpu_model()}|bf16={cpu_has_bf16()}|{available_cpus()} cpus|torch {torch.__version__}"


def _probe_batch(model: str, device: str, models_dir: Path | None, n: int) -> np.ndarray:
    """n random inputs shaped like the model's (matrix products take as long on noise as on photos)."""
    from PIL import Image

    emb = load_embedder(model, device, models_dir)
    shape = emb.preprocess(Image.new("RGB", (256, 256))).shape
    return np.random.default_rng(0).standard_normal((n, *shape), dtype=np.float32)


def choose_precision(model: str, device: str, models_dir: Path | None, cache_file: Path | None,
                     batch: int = 4) -> PrecisionChoice:
    """The spec "auto" precision runs `model` in on `device`: a spec naming its precision as named,
    bf16 on a GPU that has it, fp32 on a CPU without bf16, else the faster of fp32 and bf16 on a
    batch of `batch` inputs, remembered in `cache_file` when the margin is decisive (int8 needs a
    calibration and compiles: ask for it by name). The loser is unloaded again."""
    candidates = precision_candidates(model, device, models_dir, int8=False)
    if len(candidates) < 2:  # nothing to time: GPUs run bf16 where they have it, CPUs without bf16 fp32
        chosen = with_precision(model, "auto" if device.startswith("cuda") else "fp32", device)
        return PrecisionChoice(chosen, parse_spec(chosen).precision)
    # "auto" is remembered as the architecture it loads here, so it shares the answer with its name
    key = f"{_family(resolved_spec(model, device, models_dir))}|{_machine_key(device)}"
    table: dict = {}
    if cache_file is not None and cache_file.is_file():
        try:
            table = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            table = {}
    hit = table.get(key)
    if isinstance(hit, dict) and hit.get("precision") in candidates:
        return PrecisionChoice(with_precision(model, hit["precision"], device), hit["precision"],
                               hit.get("probe_ms"), cached=True)
    x = _probe_batch(model, device, models_dir, batch)
    choice, probe = faster_precision(model, device, x, models_dir, candidates, rounds=2)
    for prec in candidates:
        if prec != choice:
            evict(with_precision(model, prec, device), device, models_dir)
    if cache_file is not None and _decisive(probe):
        table[key] = {"precision": choice, "probe_ms": probe, "batch": batch,
                      "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, cache_file)
        except OSError as e:  # a read-only home: measure again next time
            log.info("precision choice not saved: %s", e)
    return PrecisionChoice(with_precision(model, choice, device), choice, probe)
