"""The stored row digest (migration 0005): a re-import skips unchanged rows without reading
a file or comparing a row, any change to a row or its files is imported, and whatever else
writes what a digest covers clears it. Both databases."""
from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import inspect, text

import shopsearch.catalogue.importers as importers
from shopsearch.catalogue import db as dbmod
from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.readers import RowProblem, read_source
from shopsearch.catalogue.store import CatalogueStore


def _run(store, path: Path):
    problems: list[RowProblem] = []
    return import_catalogue(store, read_source(path, "csv", problems), problems, workers=1, progress=False)


def _manifest(tmp_path: Path, paths: list[Path], prices: dict[int, str] | None = None,
              images: dict[int, str] | None = None) -> Path:
    """A manifest of one product per image in `paths` (made once: writing them again moves their mtime)."""
    rows = ["sku,title,price,category,images,colour"]
    for i, p in enumerate(paths):
        rows.append(f"S{i},Product {i},{(prices or {}).get(i, f'{i}.50')},Cat{i % 3},"
                    f"{(images or {}).get(i, f'imgs/{p.name}')},red")
    path = tmp_path / "m.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _digests(store) -> dict[str, str | None]:
    with store.engine.connect() as conn:
        return dict(conn.execute(text("SELECT sku, row_digest FROM products")).all())


class _Upserts:
    """Counts the records handed to the row-by-row comparison and upsert."""

    def __init__(self, monkeypatch, store) -> None:
        self.records: list[str] = []
        real = store.upsert_products

        def counting(records):
            self.records += [r.sku for r in records]
            return real(records)

        monkeypatch.setattr(store, "upsert_products", counting)


def test_an_unchanged_manifest_is_skipped_by_digest_and_a_changed_row_is_imported(tmp_path, catalogue,
                                                                                  image_dir, monkeypatch):
    paths = image_dir(8)
    m = _manifest(tmp_path, paths)
    assert _run(catalogue, m).products_created == 8
    stored = _digests(catalogue)
    assert all(d and len(d) == 32 for d in stored.values()) and len(set(stored.values())) == 8

    def no_decoding(path):
        raise AssertionError(f"{path} was decoded")

    monkeypatch.setattr(importers, "inspect_image", no_decoding)
    ups = _Upserts(monkeypatch, catalogue)
    again = _run(catalogue, m)
    assert ups.records == []
    assert (again.products_unchanged, again.products_updated, again.images_ok, again.images_unchanged,
            again.images_decoded) == (8, 0, 8, 8, 0)

    m = _manifest(tmp_path, paths, prices={5: "99.99"})  # one row's price moved
    r = _run(catalogue, m)
    assert ups.records == ["S5"] and (r.products_updated, r.products_unchanged) == (1, 7)
    assert str(catalogue.get_product("S5").price) == "99.99"
    now = _digests(catalogue)
    assert now["S5"] not in (None, stored["S5"]) and {k: v for k, v in now.items() if k != "S5"} == \
        {k: v for k, v in stored.items() if k != "S5"}
    ups.records.clear()
    assert _run(catalogue, m).products_unchanged == 8 and ups.records == []


def test_a_touched_file_is_checked_again_and_its_new_stat_stored(tmp_path, catalogue, image_dir, monkeypatch):
    m = _manifest(tmp_path, image_dir(5))
    _run(catalogue, m)
    p = tmp_path / "imgs" / "img_0002.png"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same bytes, stat moved
    ups = _Upserts(monkeypatch, catalogue)
    r = _run(catalogue, m)
    assert ups.records == ["S2"] and (r.images_decoded, r.images_unchanged, r.products_unchanged) == (1, 4, 5)
    ups.records.clear()
    assert _run(catalogue, m).images_decoded == 0 and ups.records == []


def test_other_writers_clear_the_digest_and_the_next_import_restores_the_row(tmp_path, catalogue, image_dir):
    m = _manifest(tmp_path, image_dir(6))
    _run(catalogue, m)
    img = catalogue.get_product("S1").images[0]
    catalogue.update_image_file(img.id, "missing", error="gone")  # a rescan while the file was away
    with catalogue.engine.begin() as conn:  # by hand: a title, and an image row deleted
        conn.execute(text("UPDATE products SET title = 'edited' WHERE sku = 'S2'"))
        conn.execute(text("DELETE FROM product_images WHERE product_id = "
                          "(SELECT id FROM products WHERE sku = 'S3')"))
    digests = _digests(catalogue)
    assert [k for k, v in digests.items() if v is None] == ["S1", "S2", "S3"]
    r = _run(catalogue, m)
    assert (r.products_updated, r.products_unchanged) == (3, 3)
    assert catalogue.get_product("S1").images[0].status == "ok"
    assert catalogue.get_product("S2").title == "Product 2"
    assert len(catalogue.get_product("S3").images) == 1
    after = _digests(catalogue)
    assert None not in after.values()
    assert {k: v for k, v in after.items() if k not in ("S1", "S2", "S3")} == \
        {k: v for k, v in digests.items() if k not in ("S1", "S2", "S3")}


def test_a_row_with_an_unusable_image_is_checked_and_reported_every_time(tmp_path, catalogue, image_dir):
    m = _manifest(tmp_path, image_dir(3), images={1: "imgs/nowhere.png"})
    assert _run(catalogue, m).images_failed == 1
    assert _digests(catalogue)["S1"] is None
    again = _run(catalogue, m)
    assert again.images_failed == 1 and [p.sku for p in again.problems] == ["S1"]


def test_migration_0005_up_and_down_keeps_the_catalogue(db_url, tmp_path, image_dir):
    engine = dbmod.make_engine(db_url)
    dbmod.upgrade(engine, "0004")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO products (sku, title, attributes, created_at, updated_at) "
                          "VALUES ('OLD', 'old', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO product_images (product_id, path, role, status, created_at) "
                          "SELECT id, '/x.png', 'catalogue', 'ok', CURRENT_TIMESTAMP FROM products"))
    dbmod.upgrade(engine)
    store = CatalogueStore(engine)
    assert _digests(store) == {"OLD": None}  # imported before digests: compared in full next time
    _run(store, _manifest(tmp_path, image_dir(2)))
    assert _digests(store)["S0"] is not None
    dbmod.downgrade(engine, "0004")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM product_images")).scalar() == 3
        assert "row_digest" not in [c["name"] for c in inspect(conn).get_columns("products")]
    dbmod.upgrade(engine)
    engine.dispose()


def test_the_digest_covers_every_field_and_each_image_stat_and_role():
    from decimal import Decimal

    from shopsearch.catalogue.records import ImageRecord, ProductRecord
    from shopsearch.catalogue.row_digest import stored_digest

    im = ImageRecord("/a.png", file_size=10, file_mtime_ns=20)
    base = ProductRecord("A", "t", "d", "b", Decimal("1.00"), "EUR", ("X", "Y"), {"k": 1}, (im,))
    variants = [ProductRecord("A", "t2", "d", "b", Decimal("1.00"), "EUR", ("X", "Y"), {"k": 1}, (im,)),
                ProductRecord("A", "t", "d", "b", Decimal("1.01"), "EUR", ("X", "Y"), {"k": 1}, (im,)),
                ProductRecord("A", "t", "d", "b", Decimal("1.00"), "EUR", ("X", "Z"), {"k": 1}, (im,)),
                ProductRecord("A", "t", "d", "b", Decimal("1.00"), "EUR", ("X", "Y"), {"k": 2}, (im,)),
                ProductRecord("A", "t", "d", "b", Decimal("1.00"), "EUR", ("X", "Y"), {"k": 1},
                              (ImageRecord("/a.png", file_size=10, file_mtime_ns=21),)),
                ProductRecord("A", "t", "d", "b", Decimal("1.00"), "EUR", ("X", "Y"), {"k": 1},
                              (ImageRecord("/a.png", role="reference", file_size=10, file_mtime_ns=20),))]
    digests = {stored_digest(v) for v in variants}
    assert len(digests) == len(variants) and stored_digest(base) not in digests
    assert stored_digest(base) == stored_digest(ProductRecord("A", "t", "d", "b", Decimal("1.00"), "EUR",
                                                              ("X", "Y"), {"k": 1}, (im,)))
