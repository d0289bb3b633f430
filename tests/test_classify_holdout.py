"""`classify train`'s held-out photos: a small catalogue (5 photos a category at the default
--val-fraction 0.1) still holds out one photo of each category, never a category's last; when
nothing can be held out the CLI says so on stderr and in --json's report."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from click.testing import CliRunner

from indexer.cli import cli
from shopsearch.classify.data import LabelledImage, stratified_holdout
from tests.conftest import jitter, make_image


def _items(per_category: dict[str, int]) -> list[LabelledImage]:
    return [LabelledImage(f"/x/{cat}/{j}.jpg", cat, None) for cat, n in per_category.items() for j in range(n)]


def test_small_categories_each_hold_out_one_photo():
    items = _items({f"Shelf/C{i:02d}": 5 for i in range(81)})  # 81 products x 5 photos
    train, val = stratified_holdout(items, 0.1)
    assert len(val) == 81 and len(train) == 324
    assert Counter(i.category for i in val) == Counter({f"Shelf/C{i:02d}": 1 for i in range(81)})
    assert {i.path for i in train} | {i.path for i in val} == {i.path for i in items}


def test_holdout_never_takes_a_category_s_last_photo():
    items = _items({"A": 1, "B": 2, "C": 3, "D": 40})
    train, val = stratified_holdout(items, 0.1)
    assert Counter(i.category for i in val) == {"B": 1, "C": 1, "D": 4}  # 40 x 0.1 rounds to 4 as before
    assert Counter(i.category for i in train) == {"A": 1, "B": 1, "C": 2, "D": 36}
    _, all_single = stratified_holdout(_items({"A": 1, "B": 1}), 0.5)
    assert all_single == []


def test_zero_fraction_holds_out_nothing():
    train, val = stratified_holdout(_items({"A": 5, "B": 5}), 0.0)
    assert val == [] and len(train) == 10


def test_holdout_is_stable():
    items = _items({"A": 5, "B": 7})
    assert stratified_holdout(items, 0.1) == stratified_holdout(list(reversed(items)), 0.1)


def _catalogue(tmp_path, photos_per_category: int):
    shop = tmp_path / "shop"
    for c, cat in enumerate(["Fruit/Apple", "Fruit/Banana", "Dairy/Milk"]):
        (shop / cat).mkdir(parents=True)
        for s in range(photos_per_category):
            jitter(make_image(c), seed=100 * c + s, amount=20).save(shop / cat / f"{s}.png")
    data = tmp_path / "data"
    for args in (["catalogue", "import", str(shop), "--format", "imagefolder", "--json"],
                 ["index", "build", "--model", "colorhist", "--json"]):
        res = CliRunner().invoke(cli, ["--data-dir", str(data), *args], catch_exceptions=False)
        assert res.exit_code == 0, res.output
    return data


def _train(data, *extra):
    res = CliRunner().invoke(cli, ["--data-dir", str(data), "classify", "train", "--views", "0", *extra],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


@pytest.mark.usefixtures("one_torch_thread")
def test_five_photos_a_category_are_validated_at_the_default_fraction(tmp_path):
    data = _catalogue(tmp_path, 5)
    res = _train(data, "--json")
    out = json.loads(res.stdout)
    assert out["thresholds"]["val_samples"] == 3  # one photo of each of the three categories
    assert "warnings" not in out and "warning" not in res.stderr


@pytest.mark.usefixtures("one_torch_thread")
def test_nothing_held_out_is_a_warning_on_stderr_and_in_the_json_report(tmp_path):
    data = _catalogue(tmp_path, 1)  # a single photo a category: none can be held out
    res = _train(data, "--json")
    out = json.loads(res.stdout)
    assert out["thresholds"]["val_samples"] == 0
    (warning,) = out["warnings"]
    assert "every category has a single photo" in warning and "routing" in warning and "fusion" in warning
    assert f"warning: {warning}" in res.stderr.splitlines()
    text = _train(data)
    assert f"warning: {warning}" in text.stderr.splitlines() and "warning" not in text.stdout
    zero = _train(data, "--val-fraction", "0", "--json")
    assert "--val-fraction is 0" in json.loads(zero.stdout)["warnings"][0]
