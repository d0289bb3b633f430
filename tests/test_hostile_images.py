"""Files that make Pillow raise ValueError (a zTXt chunk inflating to 50 MB, a truncated
IHDR, a TIFF with strips of no height) are one invalid image each: reported per row and
skipped by an import, a failure record at index time, a 400 for an upload; never a crash."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from indexer.build import IndexBuilder
from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.readers import RowProblem, read_source
from shopsearch.errors import InvalidImageError
from shopsearch.images import inspect_image, load_image
from shopsearch.index import IndexStore
from tests.conftest import FakeEmbedder, make_image
from tests.hostile_images import HOSTILE
from tests.test_webapp import api_search, app, assert_no_traceback, client, page_search, site  # noqa: F401

NAMES = sorted(HOSTILE)


def _write_hostile(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in NAMES:
        (folder / name).write_bytes(HOSTILE[name]())
        paths.append(folder / name)
    return paths


@pytest.mark.parametrize("name", NAMES)
def test_hostile_files_are_invalid_images(tmp_path, name):
    data = HOSTILE[name]()
    with pytest.raises(InvalidImageError):
        load_image(data)
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InvalidImageError):
        inspect_image(tmp_path / name)


def test_import_reports_each_hostile_file_and_imports_the_rest(tmp_path, catalogue):
    bad = _write_hostile(tmp_path / "imgs")
    make_image(1).save(tmp_path / "imgs" / "good.png")
    rows = ["sku,title,images", "GOOD,Good,imgs/good.png"] + [f"BAD{i},Bad,imgs/{p.name}" for i, p in enumerate(bad)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    problems: list[RowProblem] = []
    # two worker processes, as the CLI runs it: the exception used to escape the pool
    report = import_catalogue(catalogue, read_source(tmp_path / "m.csv", "csv", problems), problems, workers=2,
                              progress=False)
    # the unusable files are recorded (the product page and `stats` show them), not counted as added
    assert (report.products_created, report.images_added, report.images_failed) == (4, 1, 3)
    assert sorted(Path(p.where).name for p in report.problems) == NAMES  # each file named
    assert {p.sku for p in report.problems} == {"BAD0", "BAD1", "BAD2"}
    assert all(p.reason for p in report.problems)
    assert [i.status for i in catalogue.get_product("GOOD").images] == ["ok"]
    assert [b.sku for b in catalogue.unusable_images()] == ["BAD0", "BAD1", "BAD2"]


@pytest.mark.parametrize("rescan", [True, False])
def test_index_build_records_hostile_files_as_failures(tmp_path, catalogue, rescan):
    """Good files at import, replaced on disk by hostile ones before the build: the rescan
    (or, without it, the decoder) records each as unusable and the build completes."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = [folder / f"good{i}.png" for i in range(3)] + [folder / n for n in NAMES]
    for i, p in enumerate(paths):
        make_image(i).save(p, "PNG" if p.suffix == ".png" else "TIFF")
    rows = ["sku,images"] + [f"S{i},imgs/{p.name}" for i, p in enumerate(paths)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    problems: list[RowProblem] = []
    rep = import_catalogue(catalogue, read_source(tmp_path / "m.csv", "csv", problems), problems, workers=1,
                           progress=False)
    assert rep.images_failed == 0
    _write_hostile(folder)
    builder = IndexBuilder(FakeEmbedder(), catalogue, IndexStore(tmp_path / "index"), tmp_path / "vectors")
    report = builder.build(progress=False, workers=2, rescan=rescan, max_shrink=1)
    assert report.vectors == 3
    assert sorted(Path(path).name for _, path, _ in report.failed) == NAMES
    assert sorted(Path(b.path).name for b in catalogue.unusable_images()) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_hostile_uploads_are_400_without_a_logged_traceback(client, caplog, name):  # noqa: F811
    data = HOSTILE[name]()
    with caplog.at_level(logging.ERROR):
        r = api_search(client, data)
        assert r.status_code == 400, r.json
        assert r.json["error"]["code"] == "invalid_image" and r.json["error"]["message"]
        page = page_search(client, data)
        assert page.status_code == 400
        assert_no_traceback(page.get_data(as_text=True))
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
