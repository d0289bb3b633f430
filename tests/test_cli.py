"""The `shopsearch` CLI end to end: import -> index -> search, errors at the edge."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from indexer.cli import cli
from tests.conftest import GROCERY, jitter, make_image, needs_grocery


def _run(args, data_dir, ok=True):
    res = CliRunner().invoke(cli, ["--data-dir", str(data_dir), *args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def _json(res) -> dict:
    return json.loads(res.stdout)


def test_import_index_search_on_generated_catalogue(tmp_path, image_dir):
    paths = image_dir(8)
    rows = ["sku,title,price,currency,category,images"]
    rows += [f"SKU{i},Item {i},{i}.50,EUR,{'Red' if i % 2 else 'Blue'}/Thing,imgs/{p.name}" for i, p in enumerate(paths)]
    rows.append("GHOST,Ghost,1,EUR,Red,imgs/nope.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = tmp_path / "data"
    rep = _json(_run(["catalogue", "import", str(tmp_path / "m.csv"), "--format", "csv", "--json"], data))
    assert rep["products_created"] == 9 and rep["images_failed"] == 1
    assert rep["problems"][0]["sku"] == "GHOST" and "no such file" in rep["problems"][0]["reason"]
    build = _json(_run(["index", "build", "--model", "colorhist", "--json", "--workers", "1"], data))
    assert build["vectors"] == 8 and build["embedded"] == 8 and build["model"] == "colorhist"
    query = tmp_path / "q.jpg"
    jitter(make_image(3), seed=7).save(query, quality=90)
    res = _json(_run(["search", str(query), "-k", "3", "--json"], data))
    assert [r["sku"] for r in res["results"]][0] == "SKU3" and len(res["results"]) == 3
    assert res["results"][0]["category"] == "Red/Thing" and res["results"][0]["price"] == 3.5
    assert res["build_id"] == build["build_id"] and res["model"] == "colorhist"
    # --fusion asked for by name where no category head exists: said, and the answer is the same
    fused = _run(["search", str(query), "-k", "3", "--json", "--fusion"], data)
    assert "--fusion does nothing here" in fused.stderr and _json(fused)["results"] == res["results"]
    assert "--fusion" not in _run(["search", str(query), "-k", "3", "--json"], data).stderr
    filtered = _json(_run(["search", str(query), "--category", "Blue", "--json"], data))
    assert filtered["results"] and all(r["category"].startswith("Blue") for r in filtered["results"])
    # the API's spellings: any case, `A > B`, a leaf name when only one category ends that way
    spelled = _json(_run(["search", str(query), "--category", "blue > THING", "--json"], data))
    assert spelled["results"] and {r["category"] for r in spelled["results"]} == {"Blue/Thing"}
    ambiguous = _run(["search", str(query), "--category", "thing"], data, ok=False)
    assert ambiguous.exit_code == 2 and "Blue > Thing" in ambiguous.output and "Red > Thing" in ambiguous.output
    unknown = _run(["search", str(query), "--category", "Green"], data, ok=False)
    assert unknown.exit_code == 2 and "this shop's categories: Blue, Blue > Thing" in unknown.output
    stats = _json(_run(["stats", "--json"], data))
    assert stats["products"] == 9 and stats["images_failed"] == 1 and stats["index"]["vectors"] == 8
    problems = _json(_run(["catalogue", "problems", "--json"], data))["images"]
    assert [(p["sku"], p["status"], Path(p["path"]).name) for p in problems] == [("GHOST", "missing", "nope.png")]
    assert "no such file" in problems[0]["error"]
    text = _run(["catalogue", "problems"], data)
    assert text.stdout.startswith("GHOST\tmissing\t") and "1 image(s) not indexed" in text.stderr
    # deleting a product is reported; unknown SKUs are named
    out = _json(_run(["catalogue", "delete", "SKU0", "NOPE", "--json"], data))
    assert out == {"deleted": ["SKU0"], "not_found": ["NOPE"]}


def test_errors_are_clear_one_liners(tmp_path, image_dir):
    data = tmp_path / "data"
    (p,) = image_dir(1)
    res = _run(["search", str(p)], data, ok=False)
    assert res.exit_code == 1 and "there is no catalogue at" in res.output and "Traceback" not in res.output
    (tmp_path / "m.csv").write_text(f"sku,images\nA,{p}\n")
    _run(["catalogue", "import", str(tmp_path / "m.csv"), "--format", "csv"], data)
    _run(["index", "build", "--model", "colorhist", "--workers", "1"], data)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    res = _run(["search", str(bad)], data, ok=False)
    assert res.exit_code == 1 and "not an image format" in res.output
    res = _run(["search", str(p), "--model", "efficientnet-lite0"], data, ok=False)
    assert res.exit_code == 1 and "model_mismatch" in res.output
    res = _run(["index", "build", "--model", "nonsense:thing"], data, ok=False)
    assert res.exit_code == 2 and "unknown model spec" in res.output


@needs_grocery
def test_grocerystore_end_to_end_with_offline_model(tmp_path):
    """A few dozen real images: catalogue photos of 8 products, shopper photo finds its product."""
    ds = GROCERY / "dataset"
    names = ["Banana", "Granny-Smith", "Lemon", "Cucumber", "Red-Bell-Pepper", "Oatly-Oat-Milk", "Kiwi", "Carrots"]
    rows = ["sku,title,category,images"]
    classes = {l.split(",")[0]: l.split(",") for l in (ds / "classes.csv").read_text().splitlines()[1:]}
    train = [l.split(",")[0] for l in (ds / "train.txt").read_text().splitlines()]
    for n in names:
        iconic = ds / classes[n][4].lstrip("/")
        refs = [str(ds / t) for t in train if Path(t).parent.name == n][:3]
        rows.append(f"{n},{n},{Path(classes[n][4]).parent.parent.name},{iconic}|{'|'.join(refs)}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = tmp_path / "data"
    rep = _json(_run(["catalogue", "import", str(tmp_path / "m.csv"), "--format", "csv", "--json"], data))
    assert rep["products_created"] == 8 and rep["images_failed"] == 0
    build = _json(_run(["index", "build", "--model", "efficientnet-lite0", "--json", "--workers", "1"], data))
    assert build["vectors"] == 32
    res = _json(_run(["search", str(ds / "test/Fruit/Banana/Banana_004.jpg"), "-k", "5", "--json"], data))
    assert res["results"][0]["sku"] == "Banana"


def test_the_cli_passes_settings_down_and_leaves_the_environment_alone(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("SHOPSEARCH_DATA_DIR", raising=False)
    before = dict(os.environ)
    assert _json(_run(["index", "list", "--json"], tmp_path / "d")) == {"builds": []}
    assert dict(os.environ) == before  # --data-dir reached the library as an argument, not a variable


def test_ctrl_c_before_the_embedding_run_exits_130_not_1(tmp_path, monkeypatch):
    """Ctrl-C while `index build` still loads its model: 130 as the README says for a stopped
    build (click's own handling said "Aborted!" with 1, the code of an error)."""
    import shopsearch.app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    (tmp_path / "shop" / "Fruit").mkdir(parents=True)  # something to index: an empty catalogue is refused first
    make_image(0).save(tmp_path / "shop" / "Fruit" / "apple.png")
    _run(["catalogue", "import", str(tmp_path / "shop"), "--workers", "1"], tmp_path / "data")
    monkeypatch.setattr(shopsearch.app, "model_for_build", interrupted)
    res = _run(["index", "build", "--model", "colorhist"], tmp_path / "data", ok=False)
    assert res.exit_code == 130, res.output
    assert "Aborted!" in res.stderr


def test_the_entry_point_makes_openmp_threads_wait_passively_unless_told_otherwise(monkeypatch):
    """OpenMP threads spinning at each barrier burnt CPU beside bulk embedding's decode threads
    (omp_wait_ab_lite0_xeon_amx_idle): `shopsearch` sets OMP_WAIT_POLICY=PASSIVE before torch
    loads, and leaves an operator's own setting alone."""
    import os
    import sys

    import pytest

    from indexer.cli import main

    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        if given is None:
            monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        else:
            monkeypatch.setenv("OMP_WAIT_POLICY", given)
        monkeypatch.setattr(sys, "argv", ["shopsearch", "--version"])
        with pytest.raises(SystemExit) as exit_:
            main()
        assert exit_.value.code == 0
        assert os.environ["OMP_WAIT_POLICY"] == expected


def test_the_catalogue_groups_help_names_only_commands_it_has():
    """It said "Import, list and delete" of a group without a `list` command."""
    from indexer.cli.catalogue_cmds import catalogue

    res = CliRunner().invoke(cli, ["catalogue", "--help"])
    assert res.exit_code == 0
    words = {w.strip(",;:.") for w in catalogue.help.lower().split()}
    named = words & {"import", "list", "show", "delete", "problems", "update"}
    assert named and named <= set(catalogue.commands), (named, sorted(catalogue.commands))
    assert catalogue.help in " ".join(res.output.split())
