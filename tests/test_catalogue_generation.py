"""The catalogue generation (migration 0004): every change to what an index holds moves it, so
a build or update with nothing changed is decided without reading image rows, and any
import, delete, rescan or image-set change makes the next build do work. Both databases."""
from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from indexer.build import IndexBuilder
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.index import IndexStore
from tests.conftest import FakeEmbedder, make_image, sha


def _img(tmp_path, name: str, seed: int) -> ImageRecord:
    p = tmp_path / "imgs" / f"{name}.png"
    p.parent.mkdir(exist_ok=True)
    make_image(seed).save(p)
    st = p.stat()
    return ImageRecord(str(p), sha256=sha(p), width=96, height=96, file_size=st.st_size, file_mtime_ns=st.st_mtime_ns)


def _product(tmp_path, i: int, seed: int | None = None, price: str | None = None) -> ProductRecord:
    from decimal import Decimal

    return ProductRecord(f"P{i}", f"product {i}", price=Decimal(price) if price else None,
                         images=(_img(tmp_path, f"p{i}", i if seed is None else seed),))


def test_every_write_to_indexed_images_moves_the_generation_and_nothing_else_does(tmp_path, catalogue):
    g0 = catalogue.generation()
    catalogue.upsert_products([_product(tmp_path, i) for i in range(4)])
    g1 = catalogue.generation()
    assert g1 > g0
    catalogue.upsert_products([_product(tmp_path, i) for i in range(4)])  # unchanged: nothing written
    assert catalogue.generation() == g1
    catalogue.upsert_product(_product(tmp_path, 1, price="9.99"))  # a price is not in any index
    assert catalogue.generation() == g1
    catalogue.upsert_product(_product(tmp_path, 2, seed=202))  # new content for P2's picture
    g2 = catalogue.generation()
    assert g2 > g1
    img = catalogue.get_product("P0").images[0]
    catalogue.update_image_file(img.id, "ok", img.sha256, img.width, img.height, 1, 2)  # stat only
    assert catalogue.generation() == g2
    catalogue.update_image_file(img.id, "missing", error="gone")
    g3 = catalogue.generation()
    assert g3 > g2
    catalogue.mark_image_failed(catalogue.get_product("P1").images[0].id, "cannot decode")
    g4 = catalogue.generation()
    assert g4 > g3
    replaced = ProductRecord("P3", "product 3", images=(_img(tmp_path, "p3b", 33),))
    assert catalogue.upsert_product(replaced).images_removed == 1  # image set replaced
    g5 = catalogue.generation()
    assert g5 > g4
    assert catalogue.delete_products(["P2"]) == ["P2"]
    g6 = catalogue.generation()
    assert g6 > g5
    with catalogue.engine.begin() as conn:  # by hand, the images going by the foreign key's cascade
        conn.execute(text("DELETE FROM products WHERE sku = 'P3'"))
    assert catalogue.generation() > g6
    assert not [i for i in catalogue.images() if i.path.endswith("p3b.png")]


def _no_rows(*_a, **_k):
    raise AssertionError("an image row was read")


def test_nothing_changed_is_decided_without_reading_rows_and_any_change_does_work(tmp_path, catalogue,
                                                                                  monkeypatch):
    catalogue.upsert_products([_product(tmp_path, i) for i in range(6)])
    store = IndexStore(tmp_path / "index")
    b = IndexBuilder(FakeEmbedder(), catalogue, store, tmp_path / "vectors")
    first = b.build(progress=False, rescan=False)
    assert catalogue.build_generation(first.build_id) == catalogue.generation()

    with monkeypatch.context() as m:
        m.setattr(type(catalogue), "indexable_images", _no_rows)
        m.setattr(type(catalogue), "images", _no_rows)
        m.setattr(type(catalogue), "indexable_keys", _no_rows)
        assert b.build(progress=False, rescan=False).up_to_date
        up = b.update(progress=False, rescan=False)
        assert up.up_to_date and up.update.unchanged == 6
    assert not b.build(progress=False, rescan=False, index_type="hnsw").up_to_date  # another type: work

    def changes_do_work(change, index_type: str = "hnsw", reads_rows: bool = True) -> None:
        change()
        with monkeypatch.context() as m:  # the generation moved: the rows are read, the change applied
            calls = []
            real = type(catalogue).indexable_keys
            m.setattr(type(catalogue), "indexable_keys", lambda self: calls.append(1) or real(self))
            r = b.update(progress=False, index_type=index_type)
            assert bool(calls) == reads_rows and not r.up_to_date
        want = {img.id for img in catalogue.indexable_images()}
        assert set(store.load_current()[0].ids().tolist()) == want
        assert b.build(progress=False, index_type=index_type).up_to_date  # and then it is current again

    changes_do_work(lambda: catalogue.upsert_product(_product(tmp_path, 10)))  # import of a new product
    changes_do_work(lambda: catalogue.delete_products(["P4"]))  # delete
    changes_do_work(lambda: catalogue.upsert_product(  # image-set replacement
        ProductRecord("P5", "product 5", images=(_img(tmp_path, "p5b", 55),))))

    def rewrite_on_disk() -> None:  # found by the rescan only: a file replaced in place
        path = catalogue.get_product("P1").images[0].path
        make_image(101).save(path)
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    # the rescan's own writes are the whole change: applied from its findings, no id or hash read
    changes_do_work(rewrite_on_disk, reads_rows=False)


@pytest.mark.parametrize("cmd", ["build", "update"])
def test_a_failed_embedding_is_not_recorded_as_current(tmp_path, catalogue, cmd):
    catalogue.upsert_products([_product(tmp_path, i) for i in range(3)])
    bad = tmp_path / "imgs" / "bad.png"
    bad.write_bytes(b"not an image")
    st = bad.stat()
    # recorded as usable (a hash and a stat), so only the embedder finds out it is not
    catalogue.upsert_product(ProductRecord("BAD", "bad", images=(
        ImageRecord(str(bad), sha256=sha(bad), file_size=st.st_size, file_mtime_ns=st.st_mtime_ns),)))
    store = IndexStore(tmp_path / "index")
    b = IndexBuilder(FakeEmbedder(), catalogue, store, tmp_path / "vectors")
    r = b.build(progress=False, rescan=False) if cmd == "build" else b.update(progress=False, rescan=False)
    assert r.vectors == 3 and r.failed
    assert catalogue.build_generation(r.build_id) != catalogue.generation()
    again = b.build(progress=False, rescan=False)  # the rows decide, find it current, record it
    assert again.up_to_date and catalogue.build_generation(r.build_id) == catalogue.generation()
