"""The query model: the fastest form of the image tower whose vectors match fp32's, chosen by
measuring; catalogue vectors (encode_images) never change; searches use it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from shopsearch.config import Settings
from shopsearch.embedders import query_model
from shopsearch.embedders.query_model import MIN_COSINE, candidates, choose
from shopsearch.embedders.torch_base import TorchEmbedder
from shopsearch.errors import ConfigError
from shopsearch.search import query_vectors


class FakeClock:
    """Time that moves only when a form runs, by that form's cost: timing without timed tests."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def form(self, cost: float, out: torch.Tensor):
        def run(x: torch.Tensor) -> torch.Tensor:
            self.now += cost
            return out[: len(x)]
        return run


def _vectors(seed: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))


def test_the_fastest_form_with_matching_vectors_is_chosen():
    clock, ref = FakeClock(), _vectors(0)
    forms = {"fp32": clock.form(0.010, ref), "bf16": clock.form(0.004, ref * 1.5), "slow": clock.form(0.020, ref)}
    _, choice = choose(forms, torch.zeros(2, 3, 4, 4), clock=clock)
    assert choice.name == "bf16"
    assert choice.ms == {"fp32": 10.0, "bf16": 4.0, "slow": 20.0}
    assert choice.cosine["bf16"] == pytest.approx(1.0)


def test_a_faster_form_whose_vectors_stray_is_refused():
    clock, ref = FakeClock(), _vectors(0)
    forms = {"fp32": clock.form(0.010, ref), "bf16": clock.form(0.001, _vectors(1))}
    fwd, choice = choose(forms, torch.zeros(2, 3, 4, 4), clock=clock)
    assert choice.name == "fp32" and "bf16" in choice.refused and "bf16" not in choice.ms
    assert choice.cosine["bf16"] < MIN_COSINE
    assert fwd is forms["fp32"]


def test_forced_bf16_leaves_fp32_out_of_the_race():
    clock, ref = FakeClock(), _vectors(0)
    forms = {"fp32": clock.form(0.001, ref), "bf16": clock.form(0.010, ref)}
    assert choose(forms, torch.zeros(2, 3, 4, 4), clock=clock, precision="bf16")[1].name == "bf16"
    assert choose(forms, torch.zeros(2, 3, 4, 4), clock=clock)[1].name == "fp32"


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def test_candidates_offer_bf16_only_where_the_cpu_has_it(monkeypatch):
    sample = torch.randn(2, 3, 16, 16)
    monkeypatch.setattr(query_model, "cpu_has_bf16", lambda: False)
    assert list(candidates(_cnn(), sample)) == ["fp32", "fp32-frozen", "fp32-fused"]
    assert list(candidates(_cnn(), sample, "bf16")) == ["fp32"]  # nothing to force: fp32 serves
    monkeypatch.setattr(query_model, "cpu_has_bf16", lambda: True)
    assert list(candidates(_cnn(), sample, "fp32")) == ["fp32", "fp32-frozen", "fp32-fused"]
    assert list(candidates(_cnn(), sample, "bf16")) == ["fp32", "bf16-fused"]  # fp32 only as the reference
    assert list(candidates(_cnn(), sample)) == ["fp32", "bf16-fused"]  # the plain fp32 model races it

    def no_torchscript(*args):
        raise RuntimeError("torch.jit is gone")

    # an optional form that fails is left out; bf16 falls back from fused to frozen to eager
    monkeypatch.setattr(query_model, "fused", no_torchscript)
    assert list(candidates(_cnn(), sample)) == ["fp32", "bf16-frozen"]
    monkeypatch.setattr(query_model, "_frozen_bf16", no_torchscript)
    assert list(candidates(_cnn(), sample)) == ["fp32", "bf16"]
    monkeypatch.setattr(query_model, "_frozen_fp32", no_torchscript)
    monkeypatch.setattr(query_model, "cpu_has_bf16", lambda: False)
    assert list(candidates(_cnn(), sample)) == ["fp32"]
    assert not torch.jit.onednn_fusion_enabled()  # the process-wide switch is back as it was


def test_frozen_fp32_form_gives_the_eager_models_vectors():
    """The frozen fp32 form is the same function (weights packed once, not per call)."""
    model, sample = _cnn(), torch.randn(3, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    frozen = candidates(model, sample, "fp32")["fp32-frozen"]
    with torch.inference_mode():
        assert torch.allclose(frozen(sample), model(sample), atol=1e-5)
        assert torch.allclose(frozen(sample[:1]), model(sample[:1]), atol=1e-5)  # traced on one image, any batch
    with pytest.raises(ConfigError):
        candidates(_cnn(), sample, "int4")


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, None)])
def test_fused_forms_give_the_eager_models_vectors(monkeypatch, dtype, atol):
    """oneDNN Graph fusion changes how the tower runs, not what it computes: fp32 to rounding,
    bf16 within the query model's cosine bound; at the warmed-up batch sizes and any other."""
    monkeypatch.setattr(query_model, "cpu_has_bf16", lambda: True)
    model, sample = _cnn(), torch.randn(3, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    name = "fp32-fused" if dtype == torch.float32 else "bf16-fused"
    fused = candidates(model, sample, "fp32" if dtype == torch.float32 else "bf16")[name]
    with torch.inference_mode():
        for n in (1, 2, 3):
            got, want = fused(sample[:n]).float(), model(sample[:n])
            assert got.shape == want.shape
            if atol is not None:
                assert torch.allclose(got, want, atol=atol)
            else:
                assert float(torch.nn.functional.cosine_similarity(got, want).min()) >= 0.99
    assert not torch.jit.onednn_fusion_enabled()


def _embedder() -> TorchEmbedder:
    def transform(im: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(im.resize((16, 16)), dtype=np.float32) / 255.0).permute(2, 0, 1)

    return TorchEmbedder("tiny", _cnn(), transform, 8, "tiny:v1")


def _photos() -> list[Image.Image]:
    rng = np.random.default_rng(2)
    return [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(3)]


def test_queries_run_the_chosen_form_and_catalogue_vectors_stay_fp32():
    emb, photos = _embedder(), _photos()
    before = emb.encode_images(photos)
    np.testing.assert_array_equal(emb.encode_query(photos[:1]), emb.encode_images(photos[:1]))  # eager until chosen
    threads = torch.get_num_threads()
    choice = emb.prepare_queries("auto")  # timed on one thread, then the process's count is back
    assert torch.get_num_threads() == threads
    assert choice is not None and choice.name in choice.ms
    assert emb.prepare_queries("auto") is choice  # measured once per model
    np.testing.assert_array_equal(emb.encode_images(photos), before)
    assert emb.fingerprint == "tiny:v1"
    q = emb.encode_query(photos)
    assert q.shape == before.shape and q.dtype == np.float32
    assert (np.sum(q * before, axis=1) >= MIN_COSINE).all()


def test_search_helpers_use_the_query_model_where_there_is_one():
    class Stub:
        def encode_query(self, images):
            return np.full((len(images), 4), 0.5, np.float32)

        def encode_images(self, images):
            raise AssertionError("the query path must not use encode_images")

    class Plain:
        def encode_images(self, images):
            return np.ones((len(images), 4), np.float32)

    im = Image.new("RGB", (8, 8))
    assert query_vectors(Stub(), [im])[0][0] == 0.5
    assert query_vectors(Plain(), [im, im]).shape == (2, 4)


def test_query_precision_setting():
    assert Settings.from_env({}).query_precision == "auto"
    assert Settings.from_env({"SHOPSEARCH_QUERY_PRECISION": " FP32 "}).query_precision == "fp32"
    with pytest.raises(ConfigError, match="SHOPSEARCH_QUERY_PRECISION"):
        Settings.from_env({"SHOPSEARCH_QUERY_PRECISION": "int8"})
