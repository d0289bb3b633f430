"""`shopsearch demo --no-serve` on a miniature Grocery Store tree: import, index, head, calibration."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexer.cli import cli
from shopsearch.classify.artefact import load_artefact
from tests.test_bench_recall import make_grocery

ROOT = Path(__file__).resolve().parent.parent

# the demo's head fit and calibration are small: one intra-op thread (tests/conftest.py says why)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _demo(data_dir, root, *extra):
    return CliRunner().invoke(cli, ["--data-dir", str(data_dir), "demo", "--dataset", str(root), "--model",
                                    "colorhist", "--no-serve", *extra], catch_exceptions=False)


def test_demo_chooses_the_heads_settings_on_shopper_photos_it_does_not_train_on(tmp_path):
    root = make_grocery(tmp_path / "grocery")
    ds = root / "dataset"
    (ds / "val.txt").write_text((ds / "test.txt").read_text())  # labelled shopper photos
    res = _demo(tmp_path / "var", root)
    assert res.exit_code == 0, res.output
    assert "val top-1" in res.output, res.output
    arts = [load_artefact(p) for p in (tmp_path / "var" / "classifiers").rglob("*.pt")]
    assert len(arts) == 1
    metrics = arts[0].metrics
    val_photos = len((ds / "val.txt").read_text().splitlines())
    assert metrics["val"]["samples"] == val_photos
    # chosen on the val photos, never refitted on them (the confidence is calibrated on them next):
    # trained on the catalogue's images alone (iconic + 2 train photos of each of 6 products)
    assert "refit" not in metrics and metrics["train_samples"] == 18


def test_demo_without_shopper_photos_holds_out_catalogue_images(tmp_path):
    root = make_grocery(tmp_path / "grocery")
    # the demo's sample search photo, where the real dataset has it
    sample = root / "dataset" / "test" / "Fruit" / "Banana" / "Banana_004.jpg"
    sample.parent.mkdir(parents=True, exist_ok=True)
    next((root / "dataset" / "test").rglob("*_000.png")).replace(sample)  # not in test.txt: only this search reads it
    res = _demo(tmp_path / "var", root, "--calibration-split", "none")
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("sample search Banana_004.jpg: "))
    # each hit ranked, with its calibrated chance (as the page shows it), or its plain similarity in
    # [-1, 1] where the build is uncalibrated; never the fused score (it mixes in a log-probability)
    shown = re.findall(r"([123])\. \S+ \((?:similarity (-?[0-9.]+)|([0-9]+)% likely)\)", line)
    assert [rank for rank, _, _ in shown] == ["1", "2", "3"], line
    assert all(-1.0 <= float(sim) <= 1.0 if sim else 0 <= int(pct) <= 100 for _, sim, pct in shown), line
    assert "held-out top-1" in res.output, res.output
    arts = [load_artefact(p) for p in (tmp_path / "var" / "classifiers").rglob("*.pt")]
    # a catalogue of 3 images a product: one of each held out to choose the head's settings on
    assert len(arts) == 1 and arts[0].metrics["val"]["samples"] == 6 and arts[0].thresholds.val_samples == 6


def test_demo_builds_in_the_precision_index_build_would_pick(tmp_path):
    """The demo's index is built as `index build` builds it: a spec without a precision runs in the
    one SHOPSEARCH_PRECISION (or auto's timing) picks, recorded with the build, and the head and
    the sample search use that same model."""
    from shopsearch.config import Settings
    from shopsearch.index.store import IndexStore

    root = make_grocery(tmp_path / "grocery")
    res = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "var"), "demo", "--dataset", str(root), "--model",
                                   "efficientnet-lite0", "--no-serve", "--calibration-split", "none"],
                             env={"SHOPSEARCH_PRECISION": "bf16"}, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "model: efficientnet-lite0+bf16 on cpu" in res.output, res.output
    settings = Settings.from_env({"SHOPSEARCH_DATA_DIR": str(tmp_path / "var")})
    assert IndexStore(settings.index_dir).current_manifest().model_name == "efficientnet-lite0+bf16"
    arts = [load_artefact(p) for p in (tmp_path / "var" / "classifiers").rglob("*.pt")]
    assert len(arts) == 1 and arts[0].embedder_name == "efficientnet-lite0+bf16"


def test_demo_without_the_dataset_is_one_line_with_its_code(tmp_path):
    res = _demo(tmp_path / "var", tmp_path / "no-grocery")
    assert res.exit_code == 1 and "Grocery Store dataset not found" in res.output and "Traceback" not in res.output
    assert res.output.rstrip().endswith("[manifest_error]")


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("env,args,dataset", [
    ({}, [], "../shared/datasets/grocerystore"),
    ({"SHOPSEARCH_DEMO_DATASET": "/elsewhere/grocery"}, [], "/elsewhere/grocery"),  # README: the variable works
    ({"SHOPSEARCH_DEMO_DATASET": "/elsewhere/grocery"}, ["GROCERY=/mine"], "/mine"),  # GROCERY= wins
])
def test_make_demo_takes_the_dataset_from_grocery_or_the_environment(env, args, dataset):
    base = {k: v for k, v in os.environ.items() if k not in ("GROCERY", "SHOPSEARCH_DEMO_DATASET", "MAKEFLAGS")}
    out = subprocess.run(["make", "-n", "demo", *args], cwd=ROOT, env={**base, **env}, capture_output=True,
                         text=True, check=True).stdout
    (line,) = [x for x in out.splitlines() if " demo " in x]
    assert line.endswith(f"demo --dataset {dataset}"), out
