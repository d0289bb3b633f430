"""Fine-tuning code path (one tiny CPU step on generated images) and the fine-tuned embedder."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from indexer.cli import cli
from shopsearch.classify.artefact import load_artefact
from shopsearch.classify.data import imagefolder
from shopsearch.classify.finetune_config import FinetuneConfig
from shopsearch.classify.router import load_router_for
from shopsearch.classify.training import finetune_artefact
from shopsearch.config import Settings
from shopsearch.embedders import load_embedder
from shopsearch.errors import ClassifierError, ModelUnavailableError
from tests.conftest import jitter, make_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny training steps (tests/conftest.py)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    for c, cat in enumerate(["Fruit/Apple", "Fruit/Pear", "Dairy/Milk"]):
        (root / "imgs" / cat).mkdir(parents=True)
        for j in range(3):
            jitter(make_image(c, size=(48, 40)), seed=10 * c + j).save(root / "imgs" / cat / f"{j}.png")
    items = imagefolder(root / "imgs")
    cfg = FinetuneConfig(epochs=1, batch_size=4, img_size=32, max_steps=1, mix_prob=1.0, ema_decay=0.9,
                         frozen_blocks=2)
    art = finetune_artefact(items, items, cfg, "cpu", base_fingerprint="base", name="tiny", progress=False)
    return art, art.save(root / "models" / "tiny.pt"), root


def test_finetune_step_makes_a_usable_artefact(tiny_model):
    art, path, root = tiny_model
    assert art.kind == "finetuned" and art.backbone is not None and art.backbone.img_size == 32
    assert len(art.labels.fine) == 3 and art.metrics["best_epoch"] == 1 and art.metrics["val"]["samples"] == 9
    assert all(v.dtype == torch.float16 for v in art.backbone.state.values() if v.is_floating_point())
    # the CPU's forward/backward precision ("auto": bf16 only where a probe timed it faster) is recorded
    cfg = art.metrics["config"]
    assert cfg["precision"] == "auto" and cfg["autocast"] in ("fp32", "bf16")
    assert cfg["autocast"] == "fp32" or cfg["precision_probe_s"]["bf16"] * 1.1 <= cfg["precision_probe_s"]["fp32"]
    back = load_artefact(path)
    assert back.fingerprint == art.fingerprint and back.fingerprint.startswith("finetuned:timm-tf_efficientnet_lite0:32")


def test_finetuned_embedder_and_its_router(tiny_model):
    art, path, root = tiny_model
    emb = load_embedder(f"finetuned:{path}", "cpu")
    assert emb.fingerprint == art.fingerprint and emb.dim == 1280 and emb.name == f"finetuned:{path}"
    vec = emb.encode_images([make_image(1, size=(48, 40))])
    assert vec.shape == (1, 1280) and np.isclose(np.linalg.norm(vec), 1.0)
    router = load_router_for(Settings(data_dir=root / "nodata"), emb)  # the artefact's own head
    pred, _ = router.route(vec[0])
    assert pred.category in art.labels.fine and 0 < pred.confidence <= 1


def test_finetuned_refusals(tiny_model, tmp_path):
    art, path, _ = tiny_model
    with pytest.raises(ModelUnavailableError):
        load_embedder(f"finetuned:{tmp_path / 'nope.pt'}", "cpu")
    # weights that do not match the recorded fingerprint are refused
    d = torch.load(path, weights_only=True)
    name = next(k for k, v in d["backbone"]["state"].items() if v.is_floating_point())
    d["backbone"]["state"][name] = d["backbone"]["state"][name] + 1
    torch.save(d, tmp_path / "tampered.pt")
    with pytest.raises(ClassifierError, match="fingerprint"):
        load_embedder(f"finetuned:{tmp_path / 'tampered.pt'}", "cpu")


def test_tune_chooses_an_installed_models_serving_settings_on_val(tiny_model, tmp_path):
    art, path, root = tiny_model
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    shutil.copyfile(path, data / "models" / "tiny.pt")
    imgs = f"imagefolder:{root / 'imgs'}"
    res = CliRunner().invoke(cli, ["--data-dir", str(data), "classify", "tune", "--model", "finetuned:tiny",
                                   "--train", imgs, "--val", imgs, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    back = load_artefact(data / "models" / "tiny.pt")
    # the trained head's figure kept, the served one (vote and fusion weight chosen on val) beside it
    assert back.metrics["val_head"] == art.metrics["val"] and out["val"]["samples"] == 9
    assert "knn_vote" in back.metrics and "fusion_val_precision_at_1" in back.metrics
    assert back.metrics["best_epoch"] == 1 and back.fingerprint == art.fingerprint
    emb = load_embedder(f"finetuned:{data / 'models' / 'tiny.pt'}", "cpu")  # still a valid model
    assert emb.fingerprint == art.fingerprint


def test_cli_finetune_ends_with_the_serving_settings_chosen_on_val(tiny_model, tmp_path):
    _, _, root = tiny_model
    imgs = f"imagefolder:{root / 'imgs'}"
    res = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "data"), "classify", "train", "--finetune", "--name", "t",
                                   "--train", imgs, "--val", imgs, "--max-steps", "1", "--epochs", "1",
                                   "--batch-size", "4", "--img-size", "32", "--workers", "0", "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)["metrics"]  # stderr: the far-below-the-frozen-head warning of one step
    assert m["val_head"]["samples"] == 9 and m["val"]["samples"] == 9 and "knn_vote" in m
    assert load_artefact(tmp_path / "data" / "models" / "t.pt").metrics["knn_vote"] == m["knn_vote"]


def test_finetune_main_trains_with_torch_alone_and_its_loaders_follow_the_device(tiny_model, tmp_path, capsys):
    """The GPU machine's entry point (no click, no database): an installable artefact, and with
    no --workers the device's loader count (2 on a CPU), said in the saved config."""
    from indexer import finetune_main

    _, _, root = tiny_model
    imgs = f"imagefolder:{root / 'imgs'}"
    out = tmp_path / "m.pt"
    assert finetune_main.main(["--train", imgs, "--val", imgs, "--out", str(out), "--device", "cpu",
                               "--max-steps", "1", "--epochs", "1", "--batch-size", "4", "--img-size", "32"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["config"]["workers"] == 2 and summary["config"]["img_size"] == 32
    art = load_artefact(out)
    assert art.kind == "finetuned" and art.fingerprint == summary["fingerprint"]
    res = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "data"), "classify", "install", str(out),
                                   "--name", "gpu", "--json"], catch_exceptions=False)
    assert res.exit_code == 0 and json.loads(res.stdout)["model"] == "finetuned:gpu"


def test_finetune_main_says_what_is_wrong_with_its_data(tmp_path, capsys):
    from indexer import finetune_main

    rc = finetune_main.main(["--train", f"grocerystore:{tmp_path / 'nowhere'}:train", "--val",
                             f"grocerystore:{tmp_path / 'nowhere'}:val", "--out", str(tmp_path / "m.pt"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "error:" in err and "Traceback" not in err and not (tmp_path / "m.pt").exists()
