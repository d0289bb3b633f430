"""`index build/update --metrics-file`: the run's figures for Prometheus' textfile collector."""
from __future__ import annotations

import json

from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from indexer.cli import cli


def _run(args, data_dir):
    res = CliRunner().invoke(cli, ["--data-dir", str(data_dir), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def _values(text: str) -> dict[str, tuple[dict, float]]:
    return {s.name: (s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_build_and_update_write_their_figures(tmp_path, image_dir):
    paths = image_dir(5)
    rows = ["sku,title,images"] + [f"S{i},Item {i},imgs/{p.name}" for i, p in enumerate(paths)]
    rows.append("BAD,Bad,imgs/nope.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = tmp_path / "data"
    _run(["catalogue", "import", str(tmp_path / "m.csv")], data)
    prom = tmp_path / "textfile" / "shopsearch.prom"
    build = json.loads(_run(["index", "build", "--model", "colorhist", "--workers", "1", "--json",
                             "--metrics-file", str(prom)], data).stdout)
    got = _values(prom.read_text())
    assert got["shopsearch_index_build_info"] == (
        {"build_id": build["build_id"], "model": "colorhist", "index_type": "flat", "mode": "full"}, 1.0)
    assert got["shopsearch_index_build_vectors"][1] == 5 and got["shopsearch_index_build_images_embedded"][1] == 5
    assert got["shopsearch_index_build_duration_seconds"][1] > 0
    assert got["shopsearch_index_build_last_success_timestamp_seconds"][1] > 1.7e9
    assert not list(prom.parent.glob("*.tmp*"))  # written atomically: no temporary left behind
    # update, to stdout
    out = _run(["index", "update", "--workers", "1", "--metrics-file", "-"], data).stdout
    got = _values(out)
    assert got["shopsearch_index_build_info"][0]["mode"] == "up-to-date"  # nothing changed: nothing published
    assert got["shopsearch_index_build_up_to_date"][1] == 1
    assert got["shopsearch_index_build_images_embedded"][1] == 0 and got["shopsearch_index_build_vectors"][1] == 5
