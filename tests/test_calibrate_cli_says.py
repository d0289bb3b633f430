"""`shopsearch index calibrate` says when --near-duplicates is not used, and the library's warnings
reach a CLI user as readable lines (JSON log records on request, and for `serve`)."""
from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from indexer.cli import cli
from shopsearch import logs
from tests.conftest import jitter, make_image


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """12 products x 3 catalogue photos, indexed with colorhist; 36 labelled shopper photos and 3."""
    root = tmp_path_factory.mktemp("cal")
    (root / "imgs").mkdir()
    rows, many, few = ["sku,title,images"], ["image,sku"], ["image,sku"]
    for i in range(12):
        names = []
        for j in range(3):
            p = root / "imgs" / f"p{i}_{j}.png"
            (make_image(i) if j == 0 else jitter(make_image(i), seed=10 * i + j, amount=5)).save(p)
            names.append(f"imgs/{p.name}")
            q = root / "imgs" / f"shopper{i}_{j}.jpg"
            jitter(make_image(i), seed=500 + 10 * i + j, amount=12).save(q, quality=85)
            many.append(f"imgs/{q.name},S{i}")
            if i < 3 and j == 0:
                few.append(f"imgs/{q.name},S{i}")
        rows.append(f"S{i},Thing {i},{'|'.join(names)}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    (root / "many.csv").write_text("\n".join(many) + "\n")
    (root / "few.csv").write_text("\n".join(few) + "\n")
    data = root / "data"
    _run(data, "catalogue", "import", str(root / "m.csv"), "--format", "csv")
    _run(data, "index", "build", "--model", "colorhist", "--json", "--workers", "1")
    return root, data


def _run(data, *args, env=None):
    res = CliRunner().invoke(cli, ["--data-dir", str(data), *args], catch_exceptions=False, env=env)
    assert res.exit_code == 0, res.output
    return res


def test_near_duplicates_with_labelled_photos_is_said_not_used(shop):
    root, data = shop
    res = _run(data, "index", "calibrate", "--photos", str(root / "many.csv"), "--near-duplicates", "0.995")
    assert "calibrated on 36 labelled shopper photos" in res.stdout
    assert ("warning: --near-duplicates 0.995 was not used: the fit is on labelled shopper photos, which are not in "
            "the index") in res.stderr
    out = json.loads(_run(data, "index", "calibrate", "--photos", str(root / "many.csv"), "--near-duplicates",
                          "0.995", "--json").stdout)
    assert out["method"] == "labelled" and out["near_duplicates_used"] is False and out["near_duplicate"] is None
    assert out["warnings"] == [w for w in out["warnings"] if "--near-duplicates 0.995 was not used" in w] != []
    # the remembered photos (no --photos) are labelled photos too
    again = json.loads(_run(data, "index", "calibrate", "--near-duplicates", "0.995", "--json").stdout)
    assert again["method"] == "labelled" and again["near_duplicates_used"] is False and again["warnings"]
    # a catalogue fit uses it, and says nothing
    only = _run(data, "index", "calibrate", "--catalogue-only", "--near-duplicates", "0.995", "--json")
    out = json.loads(only.stdout)
    assert out["source"] == "catalogue" and out["near_duplicates_used"] is True and out["near_duplicate"] == 0.995
    assert "warnings" not in out and "was not used" not in only.stderr
    plain = json.loads(_run(data, "index", "calibrate", "--catalogue-only", "--json").stdout)
    assert plain["near_duplicates_used"] is False and "warnings" not in plain
    assert out["samples"] < plain["samples"] == 36  # the burst shots it left out


def test_too_few_labelled_photos_is_one_readable_warning_line_and_uses_near_duplicates(shop):
    root, data = shop
    res = _run(data, "index", "calibrate", "--photos", str(root / "few.csv"), "--near-duplicates", "0.995")
    lines = [x for x in res.stderr.splitlines() if "too few labelled photos" in x]
    assert len(lines) == 1 and lines[0].startswith("warning: too few labelled photos; calibrating on the catalogue (")
    assert "reason: only 3" in lines[0] and '"level"' not in res.stderr and '{"ts"' not in res.stderr
    assert "was not used" not in res.stderr  # the catalogue fallback did leave near-duplicates out
    assert "too few usable labelled photos" in res.stdout and "no labelled photos given" not in res.stdout
    out = json.loads(_run(data, "index", "calibrate", "--photos", str(root / "few.csv"), "--near-duplicates",
                          "0.995", "--json").stdout)
    assert out["method"] != "labelled" and out["near_duplicates_used"] is True and out["samples"] < 36
    # structured records on request: the option, or its variable
    for args, env in ((("--log-format", "json"), None), ((), {"SHOPSEARCH_LOG_FORMAT": "json"})):
        res = _run(data, *args, "index", "calibrate", "--photos", str(root / "few.csv"), env=env)
        records = [json.loads(x) for x in res.stderr.splitlines() if x.startswith("{")]
        assert [(r["level"], r["logger"], r["msg"]) for r in records] == \
            [("WARNING", "shopsearch.confidence", "too few labelled photos; calibrating on the catalogue")]
        assert records[0]["reason"].startswith("only 3")


def test_choose_format_and_the_text_formatter():
    assert logs.choose_format("auto", "WARNING", "index") == "text"
    assert logs.choose_format("auto", "warning", "classify") == "text"
    assert logs.choose_format("auto", "WARNING", "serve") == "json"  # the web app's records stay structured
    assert logs.choose_format("auto", "INFO", "catalogue") == "json"  # a diagnostic stream
    assert logs.choose_format("text", "DEBUG", "serve") == "text" and logs.choose_format("json", "ERROR", "x") == "json"
    rec = logging.LogRecord("shopsearch.x", logging.WARNING, __file__, 1, "line one\nline two", (), None)
    rec.reason = "only 3"
    rec.image_count = 4
    assert logs.TextFormatter().format(rec) == "warning: line one line two (reason: only 3; image count: 4)"
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        import sys

        rec = logging.LogRecord("shopsearch.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert logs.TextFormatter().format(rec) == "error: failed [ValueError: bad thing]"


def test_serve_keeps_structured_logs(tmp_path, monkeypatch):
    """`serve` (the web app and its gunicorn workers, which inherit the master's set-up) logs JSON
    by default; another command at the default level logs text."""
    from shopsearch.config import SERVING_THREAD_ENV

    for k, v in SERVING_THREAD_ENV.items():  # serve pins these for itself: keep the test process's
        monkeypatch.setenv(k, v)
    logger = logging.getLogger("shopsearch")
    _run(tmp_path / "data", "serve", "--print-nginx-config")
    assert [type(h.formatter) for h in logger.handlers] == [logs.JsonFormatter]
    _run(tmp_path / "data", "classify", "--help")
    assert [type(h.formatter) for h in logger.handlers] == [logs.TextFormatter]
    _run(tmp_path / "data", "--log-format", "text", "serve", "--print-nginx-config")
    assert [type(h.formatter) for h in logger.handlers] == [logs.TextFormatter]
