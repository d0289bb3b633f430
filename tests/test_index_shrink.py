"""A build that would drop most of the serving index (catalogue share not mounted, wrong
database, images that no longer decode) is not published unless --max-shrink allows it;
a catalogue that really shrank still can be, and nothing embedded on the way is lost."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

from indexer.build import IndexBuilder
from indexer.cli import cli
from indexer.shrink import check_shrink
from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.errors import IndexShrinkError, NothingToIndexError
from shopsearch.index import IndexStore
from tests.conftest import FakeEmbedder, make_image


def _catalogue(cat: CatalogueStore, root, n: int, start: int = 0, size=(96, 96)) -> list:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = root / f"p{i}.png"
        make_image(i, size).save(p)
        paths.append(p)
    import_catalogue(cat, [ProductRecord(f"P{i}", f"product {i}", images=(ImageRecord(str(p)),))
                           for i, p in zip(range(start, start + n), paths)], progress=False, workers=1)
    return paths


def _served(store: IndexStore) -> tuple[str | None, int]:
    m = store.current_manifest()
    return (m.build_id, m.count) if m else (None, 0)


def test_an_unmounted_share_is_refused_and_publishes_once_it_is_back(tmp_path, sqlite_catalogue):
    cat = sqlite_catalogue
    _catalogue(cat, tmp_path / "share", 20)
    store = IndexStore(tmp_path / "index")
    emb = FakeEmbedder()
    b = IndexBuilder(emb, cat, store, tmp_path / "vectors")
    first = b.build(progress=False)
    assert first.vectors == 20

    shutil.move(tmp_path / "share", tmp_path / "elsewhere")  # the share is not mounted
    for run in (b.update, b.build):
        with pytest.raises(IndexShrinkError) as e:
            run(progress=False)
        msg = str(e.value)
        assert "0 vectors against the serving build's 20 (100% fewer, the limit is 50%)" in msg
        assert "20 of its images have missing or unusable files" in msg and "--max-shrink 1" in msg
        assert _served(store) == (first.build_id, 20)  # still serving
    assert emb.calls == 20  # refused before anything was embedded

    shutil.move(tmp_path / "elsewhere", tmp_path / "share")
    back = b.update(progress=False)
    assert back.vectors == 20 and back.embedded == 0 and back.rescan.restored == 20
    assert _served(store) == (back.build_id, 20)


def test_a_wrong_database_is_refused_and_a_real_shrink_can_be_allowed(tmp_path, catalogue):
    _catalogue(catalogue, tmp_path / "imgs", 10)
    store = IndexStore(tmp_path / "index")
    b = IndexBuilder(FakeEmbedder(), catalogue, store, tmp_path / "vectors")
    first = b.build(progress=False)

    catalogue.delete_products([f"P{i}" for i in range(4)])  # 40%: within the default limit
    assert b.update(progress=False).vectors == 6
    catalogue.delete_products([f"P{i}" for i in range(4, 9)])  # 5 of the 6 left
    with pytest.raises(IndexShrinkError, match="1 vectors against the serving build's 6 .*5 of its images left"):
        b.update(progress=False)
    assert _served(store)[1] == 6
    assert b.update(progress=False, max_shrink=0.9).vectors == 1  # a limit that allows it

    empty = CatalogueStore.open(f"sqlite:///{tmp_path / 'other.db'}")  # --database-url of another shop
    with pytest.raises(IndexShrinkError, match="1 of its images left the catalogue.*never published"):
        IndexBuilder(FakeEmbedder(), empty, store, tmp_path / "vectors").build(progress=False)
    with pytest.raises(NothingToIndexError, match="holds no products .*--database-url"):  # not even "any shrink"
        IndexBuilder(FakeEmbedder(), empty, store, tmp_path / "vectors").build(progress=False, max_shrink=None)
    assert first.build_id != store.current_id() and _served(store)[1] == 1


class NoSmallImages(FakeEmbedder):
    """Fails on 64x64 images at embedding time, after the import and rescan found them fine."""

    def preprocess(self, image: Image.Image):
        if image.size == (64, 64):
            raise ValueError("unsupported layout")
        return super().preprocess(image)


def test_images_that_fail_to_embed_are_counted_after_embedding(tmp_path, sqlite_catalogue):
    cat = sqlite_catalogue
    _catalogue(cat, tmp_path / "imgs", 4)
    store = IndexStore(tmp_path / "index")
    b = IndexBuilder(NoSmallImages(), cat, store, tmp_path / "vectors")
    first = b.build(progress=False)
    _catalogue(cat, tmp_path / "imgs", 12, start=4, size=(64, 64))
    for i in range(4):
        cat.delete_products([f"P{i}"])
    _catalogue(cat, tmp_path / "imgs", 1, start=100)
    # the plan (13 images) passed the check; what embedded (1 of 4) did not, and is kept
    with pytest.raises(IndexShrinkError, match="1 vectors against the serving build's 4 .*4 of its images left"):
        b.build(progress=False)
    assert _served(store) == (first.build_id, 4)
    assert [(bd.status, bd.vector_count) for bd in cat.builds()] == [("failed", 1), ("complete", 4)]
    assert len(b.cache) == 4 + 1  # the one good new image was cached: a rerun does not embed it again


def test_check_shrink_limits():
    class Emptied:  # a catalogue that lost every image
        def images(self):
            return []

    check_shrink(10, range(10), range(5), None, 0.5)  # exactly at the limit: the catalogue is not read
    check_shrink(10, range(10), [], None, 1.0)
    check_shrink(10, range(10), [], None, None)
    check_shrink(0, [], [], None, 0.0)  # nothing served
    with pytest.raises(IndexShrinkError, match="4 vectors against the serving build's 10 \\(60% fewer.*6 of its "
                                               "images left the catalogue"):
        check_shrink(10, range(10), range(4), Emptied(), 0.5)
    with pytest.raises(IndexShrinkError):
        check_shrink(10, range(10), range(9), Emptied(), 0.0)


def test_cli_refuses_with_a_clear_error_and_max_shrink_allows(tmp_path):
    data = tmp_path / "data"
    runner = CliRunner()
    data.mkdir()
    cat = CatalogueStore.open(f"sqlite:///{data / 'catalogue.db'}")
    _catalogue(cat, tmp_path / "imgs", 8)
    base = ["--data-dir", str(data), "index"]
    first = runner.invoke(cli, base + ["build", "--model", "colorhist", "--json"])
    assert first.exit_code == 0, first.output
    cat.delete_products([f"P{i}" for i in range(6)])

    refused = runner.invoke(cli, base + ["update", "--json"])
    assert refused.exit_code == 1
    assert "Error: not published: the new build would hold 2 vectors" in refused.output
    assert "[index_shrink]" in refused.output
    assert json.loads(runner.invoke(cli, base + ["status", "--json"]).output)["vectors"] == 8

    allowed = runner.invoke(cli, base + ["update", "--json"], env={"SHOPSEARCH_MAX_SHRINK": "0.8"})
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.stdout)["vectors"] == 2
    bad = runner.invoke(cli, base + ["update", "--max-shrink", "1.5"])
    assert bad.exit_code == 2 and "1.5 is not in the range" in bad.output
    cat.close()


def test_an_empty_index_is_never_published(tmp_path, sqlite_catalogue):
    """An update or build that would serve no vector is refused, whatever --max-shrink allows:
    an empty catalogue (first build or not), every product deleted, every file gone. The
    serving build stays, the refused build is recorded as failed, and a catalogue with
    products again builds as before."""
    cat, store = sqlite_catalogue, IndexStore(tmp_path / "index")
    b = IndexBuilder(FakeEmbedder(), cat, store, tmp_path / "vectors")
    for run in (b.build, b.update):  # nothing serves yet and nothing to index
        with pytest.raises(NothingToIndexError, match="holds no products, .* nothing was published. Import products"):
            run(progress=False)
    assert _served(store) == (None, 0) and store.list_builds() == []

    paths = _catalogue(cat, tmp_path / "imgs", 3)
    first = b.build(progress=False)
    cat.delete_products(["P0", "P1", "P2"])  # delete everything, then update "allowing any shrink"
    for run in (b.update, b.build):
        with pytest.raises(NothingToIndexError, match=r"serving build \(3 vectors\) is unchanged"):
            run(progress=False, max_shrink=1.0)
        assert _served(store) == (first.build_id, 3)

    _catalogue(cat, tmp_path / "imgs", 3)  # the same files back in the catalogue: served again
    back = b.update(progress=False, max_shrink=1.0)
    assert back.vectors == 3 and _served(store) == (back.build_id, 3)
    for p in paths:  # every file gone: the rescan alone sees it (update_plan.rescan_diff)
        p.unlink()
    with pytest.raises(NothingToIndexError, match="none of the catalogue's 3 images is usable"):
        b.update(progress=False, max_shrink=1.0)
    assert _served(store) == (back.build_id, 3)


def test_the_cli_refuses_an_empty_index_with_one_line_and_exit_1(tmp_path):
    data = tmp_path / "data"
    runner = CliRunner()
    base = ["--data-dir", str(data), "index"]
    for cmd in (["build", "--model", "colorhist"], ["update", "--model", "colorhist", "--max-shrink", "1"]):
        res = runner.invoke(cli, base + cmd)
        assert res.exit_code == 1, res.output
        assert "Error: not published: the catalogue holds no products" in res.output
        assert "[nothing_to_index]" in res.output and "Traceback" not in res.output
        assert "model:" not in res.output and "updating" not in res.output  # refused before loading a model
    assert json.loads(runner.invoke(cli, base + ["list", "--json"]).output) == {"builds": []}
    status = runner.invoke(cli, base + ["status"])  # what to do first: import, not build
    assert status.exit_code == 0 and "import a catalogue first: `shopsearch catalogue import FILE`" in status.output
