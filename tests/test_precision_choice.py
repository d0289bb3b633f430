"""Precision "auto" for index builds: measured once per machine, remembered, and a serving
build's precision kept; OpenCLIP checkpoints load without a random draw first."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from shopsearch import app, embedders
from shopsearch.config import Settings
from shopsearch.embedders import precision
from shopsearch.errors import ConfigError


@pytest.fixture
def probe(monkeypatch):
    """A CPU with bf16 whose probe finds bf16 faster; counts the probes and the evictions."""
    calls = SimpleNamespace(probes=[], evicted=[])

    def faster(model, device, batch, models_dir, candidates, rounds=4):
        calls.probes.append((model, tuple(candidates), batch.shape))
        return "bf16", {"fp32": 20.0, "bf16": 10.0}

    monkeypatch.setattr(precision, "best_precision", lambda device: "bf16" if device == "cpu" else "fp32")
    monkeypatch.setattr(precision, "faster_precision", faster)
    monkeypatch.setattr(precision, "_probe_batch", lambda model, device, models_dir, n: torch.zeros(n, 3, 8, 8).numpy())
    monkeypatch.setattr(precision, "evict", lambda spec, device, models_dir: calls.evicted.append(spec))
    return calls


def test_auto_times_once_per_architecture_then_reads_the_cache(tmp_path, probe, monkeypatch):
    cache = tmp_path / "cache" / "precision.json"
    first = precision.choose_precision("openclip:ViT-B-32@/w/a.pt", "cpu", None, cache)
    assert first == precision.PrecisionChoice("openclip:ViT-B-32@/w/a.pt+bf16", "bf16",
                                              {"fp32": 20.0, "bf16": 10.0}, cached=False)
    assert probe.probes == [("openclip:ViT-B-32@/w/a.pt", ("fp32", "bf16"), (4, 3, 8, 8))]
    assert probe.evicted == ["openclip:ViT-B-32@/w/a.pt"]  # the fp32 model the probe loaded
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["precision"] == "bf16"
    # other weights of the same architecture: the same speed, no second probe
    again = precision.choose_precision("openclip:ViT-B-32@/w/b.pt", "cpu", None, cache)
    assert again.spec == "openclip:ViT-B-32@/w/b.pt+bf16" and again.cached
    assert len(probe.probes) == 1
    # another architecture is timed on its own
    precision.choose_precision("efficientnet-lite0", "cpu", None, cache)
    assert len(probe.probes) == 2 and len(json.loads(cache.read_text())) == 2
    # the same network fed another input size is another speed: timed on its own, once; a crop of
    # the same size, and "@224" (plain Lite0), read the answers already there
    precision.choose_precision("efficientnet-lite0@288", "cpu", None, cache)
    assert len(probe.probes) == 3 and len(json.loads(cache.read_text())) == 3
    assert precision.choose_precision("efficientnet-lite0@288/1.0", "cpu", None, cache).cached
    assert precision.choose_precision("efficientnet-lite0@224", "cpu", None, cache).cached
    assert len(probe.probes) == 3
    # "auto" is the architecture it loads on this machine: Lite0 offline, whose answer is there
    monkeypatch.setattr(precision, "resolved_spec", lambda spec, device, models_dir: "efficientnet-lite0")
    auto = precision.choose_precision("auto", "cpu", None, cache)
    assert auto.cached and auto.spec == "auto+bf16" and len(probe.probes) == 3
    assert not any(key.startswith("auto|") for key in json.loads(cache.read_text()))


def test_a_close_call_is_not_remembered(tmp_path, probe, monkeypatch):
    monkeypatch.setattr(precision, "faster_precision", lambda *a, **k: ("bf16", {"fp32": 10.5, "bf16": 10.0}))
    cache = tmp_path / "precision.json"
    assert precision.choose_precision("efficientnet-lite0", "cpu", None, cache).precision == "bf16"
    assert not cache.exists()


def test_auto_has_nothing_to_time_on_gpus_without_bf16_cpus_or_with_a_named_precision(tmp_path, probe, monkeypatch):
    cache = tmp_path / "precision.json"
    assert precision.choose_precision("efficientnet-lite0+fp32", "cpu", None, cache).spec == "efficientnet-lite0+fp32"
    assert precision.choose_precision("efficientnet-lite0", "cuda", None, cache).spec == "efficientnet-lite0"  # no bf16
    monkeypatch.setattr(precision, "best_precision", lambda device: "bf16")  # a GPU with bf16: no probe either
    assert precision.choose_precision("efficientnet-lite0", "cuda", None, cache).spec == "efficientnet-lite0+bf16"
    assert precision.choose_precision("colorhist", "cpu", None, cache).spec == "colorhist"
    monkeypatch.setattr(precision, "best_precision", lambda device: "fp32")  # an AVX2-only CPU
    assert precision.choose_precision("openclip:ViT-B-32", "cpu", None, cache) == \
        precision.PrecisionChoice("openclip:ViT-B-32", "fp32")
    assert probe.probes == [] and not cache.exists()


def test_index_build_model_precision(tmp_path, probe, monkeypatch):
    """--precision fixes it (a suffix in the spec wins); auto keeps a serving build's precision
    for the same model (its cached vectors stay usable), else asks choose_precision."""
    monkeypatch.setattr(app, "load_model", lambda settings, spec: spec)
    settings = Settings(data_dir=tmp_path / "d", device="cpu", cache_dir=tmp_path / "cache")
    empty = SimpleNamespace(current_manifest=lambda: None)
    assert app.model_for_build(settings, empty, "efficientnet-lite0", "fp32")[0] == "efficientnet-lite0"
    assert app.model_for_build(settings, empty, "efficientnet-lite0", "bf16")[0] == "efficientnet-lite0+bf16"
    assert app.model_for_build(settings, empty, "efficientnet-lite0+fp32", "bf16")[0] == "efficientnet-lite0+fp32"
    assert probe.probes == []
    spec, choice = app.model_for_build(settings, empty, "efficientnet-lite0", None)  # settings.precision: auto
    assert spec == "efficientnet-lite0+bf16" and choice.probe_ms and len(probe.probes) == 1
    assert (tmp_path / "cache" / "precision.json").is_file()
    fp32_serving = SimpleNamespace(current_manifest=lambda: SimpleNamespace(model_name="openclip:ViT-B-32@/w.pt+fp32"))
    assert app.model_for_build(settings, fp32_serving, "openclip:ViT-B-32@/w.pt", "auto")[0] == \
        "openclip:ViT-B-32@/w.pt"  # fp32: the spec without a suffix
    fp32_plain = SimpleNamespace(current_manifest=lambda: SimpleNamespace(model_name="openclip:ViT-B-32@/w.pt"))
    assert app.model_for_build(settings, fp32_plain, "openclip:ViT-B-32@/w.pt", "auto")[0] == "openclip:ViT-B-32@/w.pt"
    assert len(probe.probes) == 1
    other = SimpleNamespace(current_manifest=lambda: SimpleNamespace(model_name="colorhist"))
    assert app.model_for_build(settings, other, "openclip:ViT-B-32@/w.pt", "auto")[0] == "openclip:ViT-B-32@/w.pt+bf16"
    # the model "auto" is read as what it loads here: the demo's fp32 Lite0 build stays fp32 when
    # `index build` runs with the defaults (else its head and cached vectors would be left behind)
    monkeypatch.setattr(embedders, "resolved_spec", lambda spec, device, models_dir: "efficientnet-lite0")
    lite0_fp32 = SimpleNamespace(current_manifest=lambda: SimpleNamespace(model_name="efficientnet-lite0"))
    assert app.model_for_build(settings, lite0_fp32, "auto", "auto")[0] == "efficientnet-lite0"
    lite0_bf16 = SimpleNamespace(current_manifest=lambda: SimpleNamespace(model_name="efficientnet-lite0+bf16"))
    assert app.model_for_build(settings, lite0_bf16, "auto", "auto")[0] == "efficientnet-lite0+bf16"
    assert len(probe.probes) == 2  # neither timed anything


def test_resolved_spec_names_the_model_auto_loads_and_leaves_others_alone():
    from shopsearch.embedders import resolved_spec

    assert resolved_spec("colorhist") == "colorhist"
    assert resolved_spec("openclip:ViT-B-32@/nowhere.pt+bf16") == "openclip:ViT-B-32@/nowhere.pt+bf16"  # not loaded
    assert resolved_spec("auto", "cpu") == "efficientnet-lite0"  # offline: the CLIP weights are not at hand


def test_precision_setting_is_checked():
    assert Settings.from_env({}).precision == "auto"
    assert Settings.from_env({"SHOPSEARCH_PRECISION": "BF16"}).precision == "bf16"
    with pytest.raises(ConfigError, match="SHOPSEARCH_PRECISION"):
        Settings.from_env({"SHOPSEARCH_PRECISION": "fp16"})
    assert Settings.from_env({"SHOPSEARCH_CACHE_DIR": "/x/y"}).cache_dir.as_posix() == "/x/y"
    assert Settings.from_env({"XDG_CACHE_HOME": "/c"}).cache_dir.as_posix() == "/c/shopsearch"


def test_skipped_init_leaves_tensors_alone_and_restores_init():
    from shopsearch.embedders.openclip import skipped_init

    t = torch.zeros(4)
    with skipped_init(True):
        torch.nn.init.normal_(t)
        torch.nn.init.kaiming_uniform_(t.view(2, 2))
    assert torch.equal(t, torch.zeros(4))
    with skipped_init(False):
        torch.nn.init.ones_(t)
    assert torch.equal(t, torch.ones(4))
    torch.nn.init.normal_(t)
    assert not torch.equal(t, torch.ones(4))


def test_cpu_bf16_weights_are_converted_once_not_per_batch(monkeypatch):
    """A bf16 CPU embedder holds bfloat16 weights from load on and runs batches without
    autocast (which cast every weight again on every forward): the weight tensors a batch
    uses are the very ones converted at load."""
    from torch import nn

    from shopsearch.embedders.torch_base import TorchEmbedder

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.GELU(), nn.Linear(16, 8))
    emb = TorchEmbedder("tiny", net, transform=lambda im: torch.zeros(3, 4, 4), dim=8, fingerprint="t",
                        precision="bf16")
    weights = {n: (p.dtype, p.data_ptr()) for n, p in emb.model.named_parameters()}
    assert {d for d, _ in weights.values()} == {torch.bfloat16}

    def no_autocast(*args, **kwargs):
        raise AssertionError("autocast on a CPU bf16 batch")

    monkeypatch.setattr(torch, "autocast", no_autocast)
    out = emb.encode_batch(np.random.default_rng(0).standard_normal((5, 3, 4, 4), dtype=np.float32))
    assert out.dtype == np.float32 and out.shape == (5, 8)
    assert {n: (p.dtype, p.data_ptr()) for n, p in emb.model.named_parameters()} == weights


def test_a_rebuild_keeps_the_serving_model_unless_one_is_asked_for(tmp_path):
    """model_to_build: the serving build's model without its precision (model_for_build keeps
    that), never settings.model, which only a first build runs."""
    settings = Settings(data_dir=tmp_path / "d", model="colorhist")
    empty = SimpleNamespace(current_manifest=lambda: None)
    bf16 = SimpleNamespace(model_name="efficientnet-lite0+bf16", build_id="b1")
    serving = SimpleNamespace(current_manifest=lambda: bf16)
    assert app.model_to_build(settings, empty) == ("colorhist", None)
    assert app.model_to_build(settings, serving) == ("efficientnet-lite0", bf16)
    assert app.model_to_build(settings, serving, "openclip:ViT-B-32@/w.pt") == ("openclip:ViT-B-32@/w.pt", None)
