"""`shopsearch bench throughput --json`: one JSON object, both loops timed on the same images."""
from __future__ import annotations

import json

import pytest

from click.testing import CliRunner

from indexer.cli import cli
from shopsearch.embedders.precision import with_precision
from shopsearch.evaluation.throughput import fp32_spec
from tests.conftest import make_image


def test_bench_throughput_json(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(20):
        make_image(i, (160, 120)).save(imgs / f"{i}.jpg")
    res = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"), "bench", "throughput", "--model", "colorhist",
                                   "--device", "cpu", "--images", "16", "--source", str(imgs), "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"model", "device", "images", "images_per_s", "naive_images_per_s", "ratio"} <= set(out)
    assert (out["model"], out["device"], out["images"], out["image_size"]) == ("colorhist", "cpu", 16, "160x120")
    assert out["images_per_s"] > 0 and out["naive_images_per_s"] > 0
    assert abs(out["ratio"] - out["images_per_s"] / out["naive_images_per_s"]) < 0.02 * out["ratio"] + 0.01


def test_precision_specs():
    assert with_precision("efficientnet-lite0", "bf16", "cpu") == "efficientnet-lite0+bf16"
    assert with_precision("efficientnet-lite0+fp32", "bf16", "cpu") == "efficientnet-lite0+fp32"
    assert with_precision("openclip:ViT-B-32", "fp32", "cpu") == "openclip:ViT-B-32"
    assert fp32_spec("openclip:ViT-B-32+bf16") == "openclip:ViT-B-32"


# precision auto on a CPU with bf16: both precisions are timed and the faster is kept (and said)
@pytest.mark.slow
def test_bench_throughput_auto_precision_reports_its_probe(tmp_path):
    from shopsearch.embedders.precision import best_precision

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(16):
        make_image(i, (160, 120)).save(imgs / f"{i}.jpg")
    res = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"), "bench", "throughput", "--model",
                                   "efficientnet-lite0", "--device", "cpu", "--images", "16", "--source", str(imgs),
                                   "--no-naive", "--compile", "off", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    probe = out["precision_probe_ms"]
    if best_precision("cpu") != "bf16":
        assert probe is None and out["precision"] == "fp32"
        return
    assert set(probe) == {"fp32", "bf16"} and all(v > 0 for v in probe.values())
    assert out["precision"] == min(probe, key=probe.get)


def test_auto_times_int8_only_where_a_calibration_exists(tmp_path, monkeypatch):
    """precision auto on a CPU: fp32 always, bf16 where the CPU has it, int8 once the model was
    quantized (its calibration file exists) and inductor has a compiler; a spec that names its
    precision, a GPU and colorhist leave nothing to choose."""
    from shopsearch.embedders import torch_base
    from shopsearch.embedders.int8 import calibration_path
    from shopsearch.embedders import precision

    monkeypatch.setattr(precision, "best_precision", lambda device: "fp32")  # an AVX2-only CPU
    monkeypatch.setattr(torch_base, "cxx_available", lambda: True)
    models = tmp_path / "models"
    assert precision.precision_candidates("efficientnet-lite0", "cpu", models) == ("fp32",)
    path = calibration_path("efficientnet-lite0", models)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"calibration")
    assert precision.precision_candidates("efficientnet-lite0", "cpu", models) == ("fp32", "int8")
    assert precision.precision_candidates("openclip:ViT-B-32", "cpu", models) == ("fp32",)  # not quantized
    assert precision.precision_candidates("efficientnet-lite0+fp32", "cpu", models) == ("fp32",)
    assert precision.precision_candidates("efficientnet-lite0", "cuda", models) == ("fp32",)
    assert precision.precision_candidates("colorhist", "cpu", models) == ("fp32",)
    monkeypatch.setattr(torch_base, "cxx_available", lambda: False)
    assert precision.precision_candidates("efficientnet-lite0", "cpu", models) == ("fp32",)
    monkeypatch.setattr(precision, "best_precision", lambda device: "bf16")
    assert precision.precision_candidates("efficientnet-lite0", "cpu", models) == ("fp32", "bf16")
