"""torch.compile for bulk embedding: same vectors as eager, one compilation whatever the
batch sizes (the last batch is padded), eager again when compiling is impossible, and the
pipeline asks for it only where a job repays it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shopsearch.config import Settings
from shopsearch.embedders import torch_base
from shopsearch.embedders.torch_base import TorchEmbedder
from shopsearch.embedding.pipeline import COMPILE_MIN_IMAGES, tuned_config
from shopsearch.errors import ConfigError
from tests.conftest import FakeEmbedder


def _tiny() -> TorchEmbedder:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 16, 3, groups=8),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net[1].running_mean.uniform_(-0.5, 0.5)  # frozen BatchNorm statistics that matter
    return TorchEmbedder("tiny", net, transform=lambda im: im, dim=16, fingerprint="tiny-1")


def _batch(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.mark.skipif(not torch_base.cxx_available(), reason="inductor needs a C++ compiler")
def test_compiled_matches_eager_with_one_compilation():
    from torch._dynamo.utils import counters

    eager, fast = _tiny(), _tiny()
    torch._dynamo.reset()
    counters.clear()
    assert fast.compile(batch_size=4) and fast.compiled
    for n, seed in ((4, 1), (3, 2), (9, 3), (1, 4)):  # full, padded, several batches, one image (eager)
        x = _batch(n, seed)
        np.testing.assert_allclose(fast.encode_batch(x), eager.encode_batch(x), atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1  # padding kept one shape: compiled once
    assert fast.fingerprint == eager.fingerprint


def test_a_single_query_is_not_padded_to_the_compiled_batch():
    emb = _tiny()
    sizes = []
    emb._compiled, emb._compile_batch = (lambda x: sizes.append(x.shape[0]) or emb.model(x)), 16
    emb.encode_batch(_batch(1, 0))
    emb.encode_batch(_batch(9, 0))
    emb.encode_batch(_batch(20, 0))  # 16 compiled + 4 eager
    assert sizes == [16, 16]


def test_no_compiler_means_eager(monkeypatch):
    emb = _tiny()
    monkeypatch.setattr(torch_base.shutil, "which", lambda name: None)
    assert emb.compile(batch_size=4) is False and not emb.compiled
    assert emb.encode_batch(_batch(2, 0)).shape == (2, 16)


def test_a_failing_compiled_call_falls_back_for_good():
    emb, ref = _tiny(), _tiny()
    calls = []

    def broken(x):
        calls.append(x.shape[0])
        raise RuntimeError("C++ compile error (simulated)")

    emb._compiled, emb._compile_batch = broken, 4
    x = _batch(3, 5)
    np.testing.assert_allclose(emb.encode_batch(x), ref.encode_batch(x), atol=1e-6)
    assert not emb.compiled and calls == [4]  # tried once, padded to the compiled size
    emb.encode_batch(x)
    assert calls == [4]


def test_pipeline_compiles_only_big_cpu_jobs(monkeypatch):
    monkeypatch.setenv("SHOPSEARCH_COMPILE", "on")  # read by Settings at the edges only, never here
    emb = _tiny()
    assert not tuned_config(emb, images=COMPILE_MIN_IMAGES - 1).compile
    assert tuned_config(emb, images=COMPILE_MIN_IMAGES).compile
    assert tuned_config(emb, images=10, compile="on").compile
    assert not tuned_config(emb, images=10**6, compile="off").compile
    assert not tuned_config(FakeEmbedder(), images=10**6, compile="on").compile  # nothing to compile
    assert tuned_config(emb, images=10, compile=Settings.from_env().pipeline.compile).compile
    with pytest.raises(ConfigError, match="SHOPSEARCH_COMPILE"):
        Settings.from_env({"SHOPSEARCH_COMPILE": "fast"})
    with pytest.raises(ConfigError, match="auto, on, off"):
        tuned_config(emb, compile="fast")
