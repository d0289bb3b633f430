"""`shopsearch classify ...` and tagging on import, end to end on generated images (colorhist)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from indexer.cli import cli
from tests.conftest import jitter, make_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny fits (tests/conftest.py)

CATS = ["Fruit/Apple", "Fruit/Banana", "Dairy/Milk"]


def _run(args, data_dir):
    res = CliRunner().invoke(cli, ["--data-dir", str(data_dir), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_train_eval_tag_on_import(tmp_path):
    data = tmp_path / "data"
    for c, cat in enumerate(CATS):
        for split, seeds in (("shop", range(6)), ("held", range(50, 53))):
            d = tmp_path / split / cat
            d.mkdir(parents=True, exist_ok=True)
            for s in seeds:
                jitter(make_image(c), seed=100 * c + s, amount=20).save(d / f"{s}.png")
    _run(["catalogue", "import", str(tmp_path / "shop"), "--format", "imagefolder", "--json"], data)
    _run(["index", "build", "--model", "colorhist", "--json"], data)
    out = json.loads(_run(["classify", "train", "--val", f"imagefolder:{tmp_path / 'held'}", "--json"], data))
    assert out["kind"] == "head" and out["fine_classes"] == 3 and out["metrics"]["val"]["fine"]["top1"] == 1.0
    assert out["metrics"]["train_view_vectors"] == 18  # one synthetic view of each image by default
    views = [d for d in (data / "vectors").iterdir() if (d / "FINGERPRINT").read_text().strip().endswith("+photoview0")]
    assert len(views) == 1
    ev = json.loads(_run(["classify", "eval", "--data", f"imagefolder:{tmp_path / 'held'}", "--json"], data))
    assert ev["samples"] == 9 and ev["fine"]["top1"] == 1.0 and ev["most_confused"] == []
    tta = json.loads(_run(["classify", "eval", "--data", f"imagefolder:{tmp_path / 'held'}", "--tta", "on", "--json"],
                          data))
    assert tta["tta"] is True and ev["tta"] is False and tta["samples"] == 9
    # the mirrored photos were embedded once, into their own cache beside the model's
    flips = [d for d in (data / "vectors").iterdir() if (d / "FINGERPRINT").read_text().strip().endswith("+hflip")]
    assert len(flips) == 1 and len(list(flips[0].glob("chunk-*.npz"))) >= 1
    assert out["metrics"]["head"] == "logistic-cv" and "fusion" in out["thresholds"]
    base = json.loads(_run(["classify", "eval", "--data", f"imagefolder:{tmp_path / 'held'}", "--baseline",
                            "--json"], data))
    assert base["baseline"]["samples"] == 9 and base["baseline"]["train_samples"] == 18
    assert base["baseline"]["fine"]["top1"] == 1.0
    text = _run(["classify", "eval", "--data", f"imagefolder:{tmp_path / 'held'}", "--baseline"], data)
    assert "logistic-regression probe (baseline)" in text
    # new products without a category are tagged on import; the merchant's ones never change
    rows = ["sku,title,category,images"]
    for c in range(3):
        p = tmp_path / f"new{c}.png"
        jitter(make_image(c), seed=999 + c, amount=20).save(p)
        rows.append(f"N{c},new {c},,{p.name}")
    rows.append(f"M0,mislabelled,Dairy/Milk,{tmp_path / 'new0.png'}")
    (tmp_path / "new.csv").write_text("\n".join(rows) + "\n")
    rep = json.loads(_run(["catalogue", "import", str(tmp_path / "new.csv"), "--format", "csv", "--json"], data))
    assert rep["tagging"]["tagged"] == 3
    for c, cat in enumerate(CATS):
        shown = json.loads(_run(["catalogue", "show", f"N{c}"], data))
        assert (shown["predicted_category"], shown["category_source"]) == (cat, "predicted")
    m0 = json.loads(_run(["catalogue", "show", "M0"], data))
    assert (m0["category"], m0["category_source"], m0["predicted_category"]) == ("Dairy/Milk", "merchant", None)
    again = json.loads(_run(["classify", "tag", "--retag", "--json"], data))
    assert again["tagged"] == 3 and again["merchant"] == 19


def test_single_level_taxonomy_and_unreachable_threshold_are_said_plainly(tmp_path):
    data = tmp_path / "data"
    for c, cat in enumerate(["Apple", "Milk", "Bread"]):  # one level: no coarse level to report
        for split, seeds in (("shop", range(5)), ("held", range(50, 51))):  # 3 held: too few for a threshold
            d = tmp_path / split / cat
            d.mkdir(parents=True, exist_ok=True)
            for s in seeds:
                jitter(make_image(c), seed=100 * c + s, amount=20).save(d / f"{s}.png")
    _run(["catalogue", "import", str(tmp_path / "shop"), "--format", "imagefolder", "--json"], data)
    _run(["index", "build", "--model", "colorhist", "--json"], data)
    text = _run(["classify", "train", "--val", f"imagefolder:{tmp_path / 'held'}", "--target", "1.0"], data)
    assert "single-level categories (no coarse level)" in text and "coarse (" not in text
    assert "1.010" not in text and "filter: never (100% not reachable)" in text
