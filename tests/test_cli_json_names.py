"""The CLI's --json outputs name one concept one way, the way /api/v1 and /healthz do: `model`,
`fingerprint`, `build_id`, `vectors` (in the build), `reused` (from the vector cache) and
`calibration`, on `index build`, `index update`, `index status`, `search`, `stats`, `index list`
and `index rollback` of one tiny catalogue."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from indexer.cli import cli
from tests.conftest import jitter, make_image


def _json(data: Path, *args: str) -> dict:
    res = CliRunner().invoke(cli, ["--data-dir", str(data), *args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _manifest(tmp_path: Path, n: int) -> Path:
    """n products of two photos each: enough held-out photos (30) for the build's calibration to fit."""
    (tmp_path / "imgs").mkdir(exist_ok=True)
    rows = ["sku,title,price,currency,category,images"]
    for i in range(n):
        make_image(i).save(tmp_path / "imgs" / f"{i}.png")
        jitter(make_image(i), seed=100 + i).save(tmp_path / "imgs" / f"{i}b.png")
        rows.append(f"S{i},Item {i},{i}.50,EUR,{'Red' if i % 2 else 'Blue'}/Thing,imgs/{i}.png|imgs/{i}b.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "m.csv"


def test_build_update_status_and_search_name_the_build_alike(tmp_path):
    from shopsearch.config import Settings
    from webapp import create_app

    data = tmp_path / "data"
    _json(data, "catalogue", "import", str(_manifest(tmp_path, 16)), "--format", "csv")
    build = _json(data, "index", "build", "--model", "colorhist", "--workers", "1")
    _json(data, "catalogue", "import", str(_manifest(tmp_path, 17)), "--format", "csv")  # one product more
    update = _json(data, "index", "update", "--workers", "1")
    status = _json(data, "index", "status")
    query = tmp_path / "q.jpg"
    jitter(make_image(3), seed=7).save(query, quality=90)
    found = _json(data, "search", str(query), "-k", "3")
    app = create_app({"TESTING": True, "SETTINGS": Settings(data_dir=data), "RELOAD_CHECK_S": 0})
    health = app.test_client().get("/healthz").get_json()

    old_names = {"model_name", "model_fingerprint", "indexed", "count", "skipped", "current", "previous"}
    for report in (build, update):
        assert {"build_id", "model", "fingerprint", "index_type", "vectors", "embedded", "reused",
                "calibration"} <= set(report) and not old_names & set(report)
    assert (build["vectors"], build["embedded"], build["reused"]) == (32, 32, 0)
    assert (update["mode"], update["vectors"], update["embedded"], update["reused"]) == ("delta", 34, 2, 0)
    assert update["previous_build"] == build["build_id"] and update["fingerprint"] == build["fingerprint"]
    # the update's calibration is its own build's (carried over from the base), as a build's is
    assert build["calibration"]["status"] == "calibrated" and build["calibration"]["build_id"] == build["build_id"]
    assert update["calibration"] == {**build["calibration"], "build_id": update["build_id"]}
    # status and /healthz describe the serving build, the update's, under the same names
    assert not old_names & set(status)
    for key in ("build_id", "model", "index_type", "vectors"):
        assert status[key] == update[key] == health[key], key
    assert status["previous_build"] == update["previous_build"]
    assert (status["images_ok"], status["images_failed"]) == (34, 0)
    # the search answers from that build, with its calibration
    for key in ("build_id", "model", "calibration"):
        assert found[key] == update[key], key

    stats = _json(data, "stats")
    assert {k: stats["index"][k] for k in ("build_id", "model", "fingerprint", "vectors")} == \
        {k: update[k] for k in ("build_id", "model", "fingerprint", "vectors")}
    assert stats["images_ok"] == status["images_ok"] and not old_names & set(stats["index"])
    [listed] = [b for b in _json(data, "index", "list")["builds"] if b["current"]]
    assert (listed["build_id"], listed["model"], listed["vectors"]) == (update["build_id"], update["model"], 34)
    back = _json(data, "index", "rollback")
    assert back == {"build_id": build["build_id"], "previous_build": update["build_id"], "vectors": 32}
