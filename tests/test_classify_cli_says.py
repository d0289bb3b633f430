"""What `shopsearch classify train` tells its user is what the run does: the fine-tune's
defaults per device, one bar (and one figure) for the far-below-the-frozen-head warning, a
single-level taxonomy said once, and what searches do with the head (fusion is on by default)."""
from __future__ import annotations

import json
import logging
import re
from dataclasses import fields

import pytest
from click.testing import CliRunner

from indexer.cli import cli
from indexer.cli.classify_text import routing_lines
from shopsearch.classify.artefact import load_artefact
from shopsearch.classify.finetune_config import FinetuneConfig, recipe_for
from shopsearch.classify.thresholds import RoutingThresholds
from shopsearch.classify.training import REFERENCE_MARGIN, below_reference
from shopsearch.config import Settings
from tests.conftest import jitter, make_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny fits (tests/conftest.py)


def _invoke(data, *args, env=None):
    res = CliRunner().invoke(cli, ["--data-dir", str(data), *args], catch_exceptions=False, env=env)
    assert res.exit_code == 0, res.output
    return res


def _folders(root, cats, shop=5, held=2):
    for c, cat in enumerate(cats):
        for split, seeds in (("shop", range(shop)), ("held", range(50, 50 + held))):
            d = root / split / cat
            d.mkdir(parents=True, exist_ok=True)
            for s in seeds:
                jitter(make_image(c), seed=100 * c + s, amount=20).save(d / f"{s}.png")


def _catalogue(root, cats):
    _folders(root, cats)
    data = root / "data"
    _invoke(data, "catalogue", "import", str(root / "shop"), "--format", "imagefolder", "--json")
    _invoke(data, "index", "build", "--model", "colorhist", "--json")
    return data


def test_train_help_names_both_recipes_defaults_not_the_gpus_alone(tmp_path):
    """Every fine-tune option's help says the CPU and the GPU recipe's value (what recipe_for
    gives a run on either device), and the epilog says which device gets which."""
    text = " ".join(CliRunner().invoke(cli, ["classify", "train", "--help"]).output.split())
    cpu, gpu = recipe_for("cpu"), recipe_for("cuda")
    assert "[default: CPU recipe 224, GPU recipe 288]" in text  # --img-size
    assert "[default: CPU recipe 32, GPU recipe 64]" in text  # --batch-size
    assert "[default: CPU recipe 20, GPU recipe 50]" in text and "[default: CPU recipe 4, GPU recipe 20]" in text
    assert "[default: 288]" not in text and "[default: 50]" not in text  # the GPU's alone, as before
    assert "On a CPU, the CPU recipe: as many epochs as fit in 25 minutes (at most 20) at 224 px, batches of 32" in text
    assert "On a GPU, the GPU recipe: 50 epochs at 288 px, batches of 64" in text

    def shown(v):
        return "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    for f in fields(FinetuneConfig):
        if f.name in ("max_steps", "workers", "preload"):
            continue
        c, g = getattr(cpu, f.name), getattr(gpu, f.name)
        said = f"CPU recipe {shown(c)}, GPU recipe {shown(g)}]" if c != g else f"{shown(g)} (both recipes)]"
        assert f"--{f.name.replace('_', '-')} " in text and said in text, f.name


def test_a_cpu_finetune_without_options_runs_the_cpu_recipe_the_help_names(tmp_path):
    _folders(tmp_path, ["Apple", "Pear", "Milk"], shop=3, held=0)
    imgs = f"imagefolder:{tmp_path / 'shop'}"
    res = _invoke(tmp_path / "data", "--device", "cpu", "classify", "train", "--finetune", "--name", "t",
                  "--train", imgs, "--val", imgs, "--max-steps", "1", "--epochs", "1", "--batch-size", "4",
                  "--img-size", "32", "--workers", "0", "--json")
    config = json.loads(res.stdout)["metrics"]["config"]
    cpu = recipe_for("cpu")
    # not given: the CPU recipe's (not the GPU recipe's 20, 0, 0.35, trivial); given: as given
    assert (config["patience"], config["frozen_blocks"], config["min_scale"], config["augment"], config["minutes"]) == \
        (cpu.patience, cpu.frozen_blocks, cpu.min_scale, cpu.augment, cpu.minutes) == (4, 2, 0.5, "basic", 25.0)
    assert (config["img_size"], config["batch_size"], config["epochs"]) == (32, 4, 1)


def test_the_far_below_warning_has_one_bar_and_is_not_logged_by_the_library():
    ref = 0.84
    assert below_reference(ref - REFERENCE_MARGIN - 0.001, ref) and below_reference(ref - REFERENCE_MARGIN + 0.001, ref) == []
    msg = below_reference(0.40, 0.50)[0]
    assert "(40.0%)" in msg and "(50.0%)" in msg and f"more than {REFERENCE_MARGIN * 100:g} points below" in msg
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger = logging.getLogger("shopsearch.classify")
    logger.addHandler(handler)
    try:
        below_reference(0.1, 0.9)
    finally:
        logger.removeHandler(handler)
    assert seen == []  # the caller says it, once


def test_a_finetune_says_its_far_below_warning_once_with_the_figure_it_reports(tmp_path, monkeypatch):
    """The head alone and the model as served (with its vote) validate differently: only the
    served figure, the one the validation line prints, is warned about, in one readable line."""
    import indexer.cli.classify_cmds as cmds

    _folders(tmp_path, ["Apple", "Pear", "Milk"], shop=3, held=0)
    imgs = f"imagefolder:{tmp_path / 'shop'}"
    args = ["--device", "cpu", "classify", "train", "--finetune", "--name", "t", "--train", imgs, "--val", imgs,
            "--max-steps", "1", "--epochs", "1", "--batch-size", "4", "--img-size", "32", "--workers", "0"]
    monkeypatch.setattr(cmds, "_frozen_reference", lambda *a, **k: 1.5)  # a bar no model clears
    res = _invoke(tmp_path / "data", *args)
    warned = [x for x in res.stderr.splitlines() if "below the frozen head" in x]
    assert len(warned) == 1 and warned[0].startswith("warning: the fine-tuned model's validation top-1 (")
    assert '"level"' not in res.stderr and '{"ts"' not in res.stderr
    printed = float(re.search(r"^validation: \d+ images; top-1 ([\d.]+)%", res.stdout, re.M).group(1))
    quoted = float(re.search(r"validation top-1 \(([\d.]+)%\)", warned[0]).group(1))
    assert abs(printed - quoted) < 0.06 and "(150.0%)" in warned[0]
    monkeypatch.setattr(cmds, "_frozen_reference", lambda *a, **k: 0.0)  # cleared: no warning at all
    res = _invoke(tmp_path / "data", *args[:6], "t2", *args[7:], "--json")
    out = json.loads(res.stdout)
    assert "below the frozen head" not in res.stderr and "warnings" not in out and out["metrics"]["warnings"] == []


def test_single_level_is_said_once_and_no_coarse_level_is_shown(tmp_path):
    data = _catalogue(tmp_path, ["Apple", "Milk", "Bread"])
    res = _invoke(data, "classify", "train", "--val", f"imagefolder:{tmp_path / 'held'}")
    assert res.stdout.count("single-level") == 1 and "3 single-level categories (no coarse level)" in res.stdout
    assert "coarse (" not in res.stdout and " fine / " not in res.stdout and "fine (" not in res.stdout
    out = json.loads(_invoke(data, "classify", "train", "--val", f"imagefolder:{tmp_path / 'held'}", "--json").stdout)
    assert out["single_level"] is True and out["fine_classes"] == out["coarse_classes"] == 3
    ev = _invoke(data, "classify", "eval", "--data", f"imagefolder:{tmp_path / 'held'}").stdout
    assert ev.count("single-level") == 1 and "coarse (" not in ev


def test_two_levels_show_both(tmp_path):
    data = _catalogue(tmp_path, ["Food/Fruit/Apple", "Food/Fruit/Pear", "Food/Dairy/Milk"])  # coarse: 2 levels
    res = _invoke(data, "classify", "train", "--train", f"imagefolder:{tmp_path / 'shop'}",  # folder paths
                  "--val", f"imagefolder:{tmp_path / 'held'}")
    assert ": 3 fine / 2 coarse categories" in res.stdout and "coarse (2 classes) top-1" in res.stdout
    assert "single-level" not in res.stdout


def test_train_says_what_searches_will_do_with_the_head(tmp_path):
    """Fusion is on by default (Settings), so the train command never tells the user to turn it on;
    with SHOPSEARCH_FUSION=off it says the weight goes unused and the thresholds route."""
    assert Settings.from_env({}).fusion is True
    data = _catalogue(tmp_path, ["Fruit/Apple", "Fruit/Pear", "Dairy/Milk"])
    res = _invoke(data, "classify", "train", "--val", f"imagefolder:{tmp_path / 'held'}")
    th = load_artefact(next((data / "classifiers").rglob("*.pt"))).thresholds
    assert "search with --fusion" not in res.stdout
    assert [x for x in res.stdout.splitlines() if "fusion" in x or "routing (" in x] == routing_lines(th, True)
    off = _invoke(data, "classify", "train", "--val", f"imagefolder:{tmp_path / 'held'}",
                  env={"SHOPSEARCH_FUSION": "off"})
    assert [x for x in off.stdout.splitlines() if "routing (" in x] == routing_lines(th, False)
    assert "fuse the predicted category" not in off.stdout


def test_routing_lines_say_what_each_setting_does():
    th = RoutingThresholds(filter=0.6, top2=1.01, target=0.97, val_samples=30, fusion=0.1)
    fused = routing_lines(th, True)
    assert fused[0].startswith("searches fuse the predicted category into the ranking (fusion is on by default; "
                               "weight 0.1")
    assert fused[1].startswith("with fusion off (SHOPSEARCH_FUSION=off, search --no-fusion, fusion=off per query): "
                               "routing (precision target 97% on validation): filter when p >= 0.600")
    assert "top two: never (97% not reachable)" in fused[1]
    off = routing_lines(th, False)
    assert len(off) == 1 and "fusion weight 0.1 not used: fusion is off" in off[0]
    plain = routing_lines(RoutingThresholds(filter=0.6, val_samples=30, fusion=0.0), True)
    assert plain[0].startswith("fusion weight 0 (validation preferred plain similarity)")
    assert "rank by similarity alone" in plain[0]
    none = routing_lines(RoutingThresholds(), True)  # no validation: nothing chosen, nothing claimed
    assert none == ["routing (precision target 97% on validation): filter: never (97% not reachable); "
                    "top two: never (97% not reachable)"]
