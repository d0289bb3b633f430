"""A newcomer's probe of the CLI, pinned down: Ctrl-C/SIGTERM after `index build` published its
build (exit 0, said); `search -k` capped as the API caps k; an unknown `--category` a usage
error naming how to list them; `search --json` in the API's shape; `bench throughput` finding
the dataset from any directory and saying when it times generated images; `serve --front none`
on a public address warned about; a misspelt `--index` refused before any model loads."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexer.cli import cli
from shopsearch.index import IndexStore
from tests.conftest import REPO, jitter, make_image


def _run(data: Path, *args: str, ok: bool = True):
    res = CliRunner().invoke(cli, ["--data-dir", str(data), *args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


@pytest.fixture
def catalogue(tmp_path) -> Path:
    """A data dir whose catalogue holds 6 products (2 categories) with generated images, not indexed."""
    (tmp_path / "imgs").mkdir()
    rows = ["sku,title,price,currency,category,images"]
    for i in range(6):
        make_image(i).save(tmp_path / "imgs" / f"{i}.png")
        rows.append(f"S{i},Item {i},{i}.50,EUR,{'Red' if i % 2 else 'Blue'}/Thing,imgs/{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = tmp_path / "data"
    _run(data, "catalogue", "import", str(tmp_path / "m.csv"), "--format", "csv")
    return data


@pytest.fixture
def indexed(catalogue) -> Path:
    _run(catalogue, "index", "build", "--model", "colorhist", "--workers", "1")
    return catalogue


# -- 1. a signal after publication ------------------------------------------------------------
@pytest.fixture
def handlers():
    """The SIGINT/SIGTERM handlers before the test, checked to be back after it."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def _signal_when_recorded(monkeypatch, sig: int) -> None:
    """Send `sig` to this process as the builder records its published build as complete."""
    from indexer.build_stages import BuildStages

    record = BuildStages._record

    def recording(self, build_id, itype, count, status):
        if status == "complete":
            os.kill(os.getpid(), sig)
        return record(self, build_id, itype, count, status)

    monkeypatch.setattr(BuildStages, "_record", recording)


@pytest.mark.parametrize("sig,says", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_a_signal_after_publication_lets_the_build_finish_and_exits_0(catalogue, monkeypatch, handlers, sig, says):
    _signal_when_recorded(monkeypatch, sig)
    res = _run(catalogue, "index", "build", "--model", "colorhist", "--workers", "1", "--json")
    build_id = json.loads(res.stdout)["build_id"]  # the report was printed in full
    assert IndexStore(catalogue / "index").current_id() == build_id
    assert f"{says} arrived after build {build_id} was published: it is complete and serving" in res.stderr
    assert "Aborted!" not in res.output and "stopped" not in res.output
    status = json.loads(_run(catalogue, "index", "status", "--json").stdout)
    assert status["build_id"] == build_id and status["up_to_date"]


def test_ctrl_c_while_the_report_is_printed_is_held(catalogue, monkeypatch, handlers):
    """After the builder returned (sigterm_as_interrupt has ended): Ctrl-C used to print Aborted!, 130."""
    from indexer.cli import index_cmds

    calibration_of = index_cmds._calibration_of

    def interrupted(c, build_id):
        os.kill(os.getpid(), signal.SIGINT)
        return calibration_of(c, build_id)

    monkeypatch.setattr(index_cmds, "_calibration_of", interrupted)
    res = _run(catalogue, "index", "build", "--model", "colorhist", "--workers", "1")
    build_id = IndexStore(catalogue / "index").current_id()
    assert res.stdout.startswith(f"build {build_id} (full): 6 vectors")
    assert f"Ctrl-C arrived after build {build_id} was published" in res.stderr


def test_ctrl_c_inside_publish_after_the_pointer_moved_counts_as_published(catalogue, monkeypatch, handlers):
    """Publishing ends by pruning old builds, after CURRENT names the new one."""
    def prune(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(IndexStore, "_prune", prune)
    res = _run(catalogue, "index", "build", "--model", "colorhist", "--workers", "1", "--json")
    build_id = json.loads(res.stdout)["build_id"]
    assert IndexStore(catalogue / "index").current_id() == build_id
    assert f"Ctrl-C arrived after build {build_id} was published" in res.stderr


def test_ctrl_c_before_publication_still_stops_the_build(catalogue, monkeypatch, handlers):
    def publish(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(IndexStore, "publish", publish)
    res = _run(catalogue, "index", "build", "--model", "colorhist", "--workers", "1", ok=False)
    assert res.exit_code == 130 and "stopped (interrupt)" in res.stderr and "arrived after" not in res.stderr
    assert IndexStore(catalogue / "index").current_id() is None


def test_a_shadow_build_interrupted_after_staging_says_it_is_not_serving(indexed, monkeypatch, handlers):
    _signal_when_recorded(monkeypatch, signal.SIGINT)
    serving = IndexStore(indexed / "index").current_id()
    res = _run(indexed, "index", "build", "--shadow", "--workers", "1")
    shadow = IndexStore(indexed / "index").shadow_id()
    assert shadow and shadow != serving and IndexStore(indexed / "index").current_id() == serving
    assert f"Ctrl-C arrived after build {shadow} was staged as the shadow build: it is complete (not serving)" \
        in res.stderr


def test_an_update_interrupted_after_publication_exits_0(indexed, tmp_path, monkeypatch, handlers):
    make_image(9).save(tmp_path / "imgs" / "9.png")
    (tmp_path / "more.csv").write_text("sku,title,category,images\nS9,Item 9,Red/Thing,imgs/9.png\n")
    _run(indexed, "catalogue", "import", str(tmp_path / "more.csv"), "--format", "csv")
    _signal_when_recorded(monkeypatch, signal.SIGINT)
    res = _run(indexed, "index", "update", "--json")
    build_id = json.loads(res.stdout)["build_id"]
    assert IndexStore(indexed / "index").current_id() == build_id
    assert f"Ctrl-C arrived after build {build_id} was published" in res.stderr and "Aborted!" not in res.output
    assert _run(indexed, "index", "update", "--index", "bogus", ok=False).exit_code == 2


# -- 7. options checked before the model loads --------------------------------------------------
@pytest.mark.parametrize("bad", ["bogus", "IVF,Flat"])
def test_an_unknown_index_type_is_refused_before_the_model_loads(catalogue, monkeypatch, bad):
    import shopsearch.app

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(shopsearch.app, "model_for_build", no_model)
    res = _run(catalogue, "index", "build", "--index", bad, ok=False)
    assert res.exit_code == 2 and res.output.rstrip().endswith("[config_error]")
    assert f"--index {bad!r} is not an index type" in res.output and len(res.output.strip().splitlines()) == 1


def test_known_names_and_factory_strings_pass_the_early_check():
    from indexer.cli.build_guard import check_index_option

    for ok in ("keep", "auto", "flat", "hnsw", "ivfpq", "ivfflat", "IVF16,Flat", "HNSW16,Flat", "PQ13"):
        check_index_option(ok)  # PQ13 fits a 13-dim model: the dimension is checked at the build


# -- 2, 3, 4. search ---------------------------------------------------------------------------
def test_search_k_is_capped_as_the_api_caps_k(indexed, tmp_path):
    from shopsearch.config import MAX_K
    from webapp.config import DEFAULTS

    assert DEFAULTS["MAX_K"] == MAX_K == 100
    img = str(tmp_path / "imgs" / "1.png")
    res = _run(indexed, "search", img, "-k", str(MAX_K + 1), ok=False)
    assert res.exit_code == 2 and f"1<=x<={MAX_K}" in res.output
    assert json.loads(_run(indexed, "search", img, "-k", str(MAX_K), "--json").stdout)["k"] == MAX_K
    assert f"1<=x<={MAX_K}" in _run(indexed, "search", "--help").stdout


def test_an_unknown_category_is_a_usage_error_naming_how_to_list_them(indexed, tmp_path, monkeypatch):
    import shopsearch.app

    def no_service(*a, **k):
        raise AssertionError("the model and index were loaded")

    monkeypatch.setattr(shopsearch.app, "open_search_service", no_service)
    res = _run(indexed, "search", str(tmp_path / "imgs" / "1.png"), "--category", "nosuch", ok=False)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "there is no category 'nosuch' in this shop" in res.output
    assert "`shopsearch search --list-categories` lists them" in res.output
    assert res.output.rstrip().endswith("[unknown_category]")
    listed = _run(indexed, "search", "--list-categories")  # no IMAGE needed
    assert listed.stdout.splitlines() == ["Blue", "Blue > Thing", "Red", "Red > Thing"]


def test_search_json_has_the_apis_query_fields(indexed, tmp_path):
    from shopsearch.config import Settings
    from webapp import create_app

    query = tmp_path / "q.jpg"
    jitter(make_image(3), seed=7).save(query, quality=90)
    args = ["-k", "3", "--category", "red > thing", "--min-price", "1"]
    cli_out = json.loads(_run(indexed, "search", str(query), *args, "--json").stdout)
    app = create_app({"TESTING": True, "SETTINGS": Settings(data_dir=indexed), "RELOAD_CHECK_S": 0})
    with open(query, "rb") as f:
        api = app.test_client().post("/api/v1/search", data={"image": (f, "q.jpg"), "k": "3",
                                                              "category": "red > thing", "min_price": "1"})
    assert api.status_code == 200, api.get_json()
    api_out = api.get_json()
    assert set(api_out) <= set(cli_out)  # every key of the API's answer (regions only come with objects=auto)
    for key in ("k", "count", "filters", "crop", "model", "build_id"):
        assert cli_out[key] == api_out[key], key
    assert cli_out["filters"] == {"category": "Red/Thing", "min_price": 1.0, "max_price": None}
    assert cli_out["count"] == len(cli_out["results"]) and cli_out["request_id"] is None
    assert [h["sku"] for h in cli_out["results"]] == [h["sku"] for h in api_out["results"]]
    assert "path" in cli_out["results"][0]["matched_image"]  # the CLI's own keys stay


# -- 5. bench throughput's dataset ---------------------------------------------------------------
def test_the_grocery_default_is_found_from_any_directory(tmp_path, monkeypatch):
    from indexer.cli.datasets import default_grocery

    monkeypatch.chdir(tmp_path)
    assert default_grocery() == REPO.parent / "shared" / "datasets" / "grocerystore"


def _throughput(tmp_path, *args: str):
    return _run(tmp_path / "d", "bench", "throughput", "--model", "colorhist", "--device", "cpu", "--images", "16",
                "--no-naive", "--json", *args)


def test_throughput_says_when_it_falls_back_to_generated_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHOPSEARCH_GROCERY_DIR", raising=False)
    empty = tmp_path / "no-dataset"
    empty.mkdir()
    res = _throughput(tmp_path, "--grocery-dir", str(empty))
    out = json.loads(res.stdout)
    assert out["synthetic_fallback"] is True and out["source"].startswith("synthetic")
    assert out["grocery_dir"] == str(empty.resolve())
    assert f"no Grocery Store photos under {empty.resolve()}: timing generated" in res.stderr
    refused = _run(tmp_path / "d", "bench", "throughput", "--source", "grocery", "--grocery-dir", str(empty), ok=False)
    assert refused.exit_code == 2 and refused.output.rstrip().endswith("[config_error]")
    for folder in (tmp_path / "not-there", empty):  # a folder of images that is missing, or holds none
        res = _run(tmp_path / "d", "bench", "throughput", "--model", "colorhist", "--source", str(folder), ok=False)
        assert res.exit_code == 2 and "no JPEG or PNG images" in res.output and "Traceback" not in res.output


def test_throughput_uses_the_dataset_it_is_pointed_at(tmp_path, monkeypatch):
    ds = tmp_path / "grocery" / "dataset"
    (ds / "train").mkdir(parents=True)
    for i in range(16):
        make_image(i, (160, 120)).save(ds / "train" / f"{i}.jpg")
    (ds / "train.txt").write_text("".join(f"train/{i}.jpg, 0, 0\n" for i in range(16)))
    monkeypatch.chdir(tmp_path / "grocery")  # the old default, ../shared/..., resolved from here found nothing
    monkeypatch.setenv("SHOPSEARCH_GROCERY_DIR", str(tmp_path / "grocery"))
    res = _throughput(tmp_path)
    out = json.loads(res.stdout)
    assert out["synthetic_fallback"] is False and out["source"].startswith("grocerystore:")
    assert out["images"] == 16 and out["image_size"] == "160x120" and "generated" not in res.stderr


# -- 6. serve without a front on a public address ---------------------------------------------------
@pytest.mark.parametrize("bind,warned", [("0.0.0.0:8123", True), ("127.0.0.1:8123", False)])
def test_front_none_on_a_public_address_is_warned_about(tmp_path, monkeypatch, bind, warned):
    import prometheus_client  # noqa: F401  (serve then makes no metrics folder of its own here)
    import webapp.server
    from indexer.cli import serve_cmds

    served = []
    monkeypatch.setattr(serve_cmds, "pin_serving_threads", lambda: {})  # no thread settings left behind
    monkeypatch.setattr(webapp.server, "serve_gunicorn", lambda *a, **k: served.append(a[1]))
    res = _run(tmp_path / "d", "serve", "--front", "none", "--bind", bind)
    assert served == [bind]
    line = f"warning: --front none on {bind.split(':')[0]}, so gunicorn serves alone: a few slow clients can stall it"
    assert (line in res.stderr) is warned
