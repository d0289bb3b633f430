"""Re-imports skip what did not change (no file read), write in batches, and a row naming
other images replaces the product's image set."""
from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import event, text

import shopsearch.catalogue.importers as importers
import shopsearch.catalogue.store as store_mod
from indexer.build import IndexBuilder
from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.readers import RowProblem, read_source
from shopsearch.index import IndexStore
from tests.conftest import FakeEmbedder


def _run(store, path: Path):
    problems: list[RowProblem] = []
    return import_catalogue(store, read_source(path, "csv", problems), problems, workers=1, progress=False)


def _manifest(tmp_path: Path, image_dir, n: int, override: dict[int, str] | None = None) -> Path:
    paths = image_dir(n)
    rows = ["sku,title,price,category,images"]
    for i, p in enumerate(paths):
        images = (override or {}).get(i, f"imgs/{p.name}")
        rows.append(f"S{i},Product {i},{i}.50,Cat{i % 3},{images}")
    path = tmp_path / "m.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_reimport_of_an_unchanged_manifest_reads_no_file(tmp_path, catalogue, image_dir, monkeypatch):
    m = _manifest(tmp_path, image_dir, 12)
    first = _run(catalogue, m)
    assert (first.products_created, first.images_decoded, first.images_unchanged) == (12, 12, 0)

    def no_decoding(path):
        raise AssertionError(f"{path} was decoded")

    monkeypatch.setattr(importers, "inspect_image", no_decoding)
    again = _run(catalogue, m)
    assert (again.products_unchanged, again.products_updated, again.images_decoded, again.images_unchanged,
            again.images_failed, again.images_ok) == (12, 0, 0, 12, 0, 12)
    assert again.to_dict()["images_decoded"] == 0


def test_a_moved_stat_is_rehashed_and_only_that_file(tmp_path, catalogue, image_dir):
    m = _manifest(tmp_path, image_dir, 6)
    _run(catalogue, m)
    p = tmp_path / "imgs" / "img_0002.png"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched, same bytes
    r = _run(catalogue, m)
    assert (r.images_decoded, r.images_unchanged, r.products_unchanged) == (1, 5, 6)
    img = catalogue.get_product("S2").images[0]
    assert img.file_mtime_ns == st.st_mtime_ns + 5_000_000_000  # the new stat is remembered
    assert _run(catalogue, m).images_decoded == 0


def test_products_are_written_in_batched_transactions(tmp_path, catalogue, image_dir, monkeypatch):
    m = _manifest(tmp_path, image_dir, 12)
    monkeypatch.setattr(store_mod, "UPSERT_BATCH", 5)
    monkeypatch.setattr(importers, "UPSERT_BATCH", 5)
    commits = []
    event.listen(catalogue.engine, "commit", lambda conn: commits.append(1))
    r = _run(catalogue, m)
    assert r.products_created == 12 and len(commits) == 3  # 5 + 5 + 2
    assert [p.sku for p in catalogue.products()] == [f"S{i}" for i in range(12)]
    assert {p.category for p in catalogue.products()} == {"Cat0", "Cat1", "Cat2"}
    monkeypatch.setattr(store_mod, "IN_CHUNK", 4)  # more paths than one IN list: one pass over the table
    with catalogue.engine.begin() as conn:  # no stored row digests: every row is compared on its files
        conn.execute(text("UPDATE products SET row_digest = NULL"))
    assert _run(catalogue, m).images_unchanged == 12


def test_lookups_stay_below_the_postgresql_parameter_limit(catalogue):
    assert catalogue.image_files([f"/nowhere/{i}.jpg" for i in range(70_000)]) == {}


def test_a_row_naming_other_images_replaces_the_set_and_the_update_drops_their_vectors(tmp_path, catalogue, image_dir):
    m = _manifest(tmp_path, image_dir, 6)
    _run(catalogue, m)
    store = IndexStore(tmp_path / "index")
    b = IndexBuilder(FakeEmbedder(), catalogue, store, tmp_path / "vectors")
    b.build(progress=False)
    old = catalogue.get_product("S3").images[0]
    new = image_dir(2, start=100)
    m = _manifest(tmp_path, image_dir, 6, {3: f"imgs/{new[0].name}|imgs/{new[1].name}"})
    r = _run(catalogue, m)
    assert (r.images_replaced, r.images_removed, r.images_added, r.products_updated) == (["S3"], 1, 2, 1)
    assert r.to_dict()["images_replaced"] == ["S3"]
    assert [i.path for i in catalogue.get_product("S3").images] == [str(p) for p in new]
    assert catalogue.stats().images == 7
    u = b.update(progress=False)
    assert (u.update.added, u.update.removed, u.vectors) == (2, 1, 7)
    assert old.id not in store.load_current()[0].ids().tolist()


def test_attributes_are_compared_as_stored_text_and_decoded_only_when_the_text_differs(tmp_path, catalogue):
    from sqlalchemy import text

    from shopsearch.catalogue.records import ProductRecord

    rec = ProductRecord("A1", "a", attributes={"colour": "red", "size": "M"})
    assert catalogue.upsert_product(rec).created
    assert not catalogue.upsert_product(rec).changed  # same text
    with catalogue.engine.begin() as conn:  # the same document written with other key order and spacing
        conn.execute(text("""UPDATE products SET attributes = '{"size":  "M", "colour": "red"}' WHERE sku = 'A1'"""))
    assert not catalogue.upsert_product(rec).changed  # decoded, equal
    moved = catalogue.upsert_product(ProductRecord("A1", "a", attributes={"colour": "blue", "size": "M"}))
    assert moved.changed and catalogue.get_product("A1").attributes == {"colour": "blue", "size": "M"}


def test_a_manifest_without_a_column_leaves_that_field_alone(tmp_path, catalogue, image_dir):
    """A price update (`sku,price`) changes prices only: the fields a manifest has no column
    for (title, description, brand, currency, attributes) keep their values, as category and
    images always did; an empty cell still clears its field; a JSONL object without a key is
    read the same way; re-importing the partial file changes nothing."""
    image_dir(2)
    full = tmp_path / "full.csv"
    full.write_text("sku,title,description,brand,price,currency,category,images,colour\n"
                    "S0,Oat milk,Creamy,Oatly,2.10,EUR,Dairy/Milk,imgs/img_0000.png,white\n"
                    "S1,Apple,,,0.50,EUR,Fruit,imgs/img_0001.png,red\n")
    _run(catalogue, full)
    prices = tmp_path / "prices.csv"
    prices.write_text("sku,price\nS0,1.99\n")
    r = _run(catalogue, prices)
    assert (r.products_created, r.products_updated, r.images_removed) == (0, 1, 0)
    s0 = catalogue.get_product("S0").to_dict()
    assert {k: s0[k] for k in ("title", "description", "brand", "price", "currency", "category", "attributes")} == \
        {"title": "Oat milk", "description": "Creamy", "brand": "Oatly", "price": 1.99, "currency": "EUR",
         "category": "Dairy/Milk", "attributes": {"colour": "white"}}
    assert len(s0["images"]) == 1
    assert _run(catalogue, prices).products_unchanged == 1

    brands = tmp_path / "brands.jsonl"
    brands.write_text('{"sku": "S1", "brand": "Orchard"}\n')
    problems: list[RowProblem] = []
    import_catalogue(catalogue, read_source(brands, "jsonl", problems), problems, workers=1, progress=False)
    s1 = catalogue.get_product("S1").to_dict()
    assert (s1["title"], s1["brand"], s1["price"], s1["attributes"]) == ("Apple", "Orchard", 0.5, {"colour": "red"})

    cleared = tmp_path / "cleared.csv"  # columns present with empty cells: cleared, the others kept
    cleared.write_text("sku,title,price,brand\nS0,Oat milk,,\n")
    assert _run(catalogue, cleared).products_updated == 1
    s0 = catalogue.get_product("S0").to_dict()
    assert (s0["price"], s0["brand"], s0["currency"], s0["description"]) == (None, None, "EUR", "Creamy")
