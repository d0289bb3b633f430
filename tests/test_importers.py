"""Importers: manifests, ImageFolder, Grocery Store; bad rows are reported, never fatal."""
from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

import pytest

from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.readers import RowProblem, guess_format, read_source
from shopsearch.errors import ManifestError
from tests.conftest import GROCERY, needs_grocery


def _run(store, path, fmt, **kw):
    problems: list[RowProblem] = []
    return import_catalogue(store, read_source(Path(path), fmt, problems, **kw), problems, workers=1, progress=False)


def test_csv_manifest_with_missing_and_corrupt_images(tmp_path, catalogue, image_dir):
    a, b = image_dir(2)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xffnot a jpeg")
    (tmp_path / "m.csv").write_text(
        "sku,title,brand,price,currency,category,images,colour\n"
        f"A1,Apple,Orchard,1.20,eur,Fruit > Apple,imgs/{a.name}|imgs/{b.name},green\n"
        "A2,Ghost,,,,,imgs/does_not_exist.jpg,\n"
        "A3,Broken,,2,EUR,Fruit/Pear,imgs/broken.jpg,\n"
        ",No sku,,,,,imgs/x.jpg,\n"
        "A4,Bad price,,abc,,,,\n"
    )
    r = _run(catalogue, tmp_path / "m.csv", "csv")
    assert r.products_created == 3 and r.images_added == 2 and r.images_failed == 2  # added: the usable ones
    reasons = {(p.sku, p.reason.split(":")[0]) for p in r.problems}
    assert ("A2", "no such file") in reasons
    assert any(p.sku == "A3" for p in r.problems)
    assert any("missing sku" in p.reason for p in r.problems) and any("price" in p.reason for p in r.problems)
    p = catalogue.get_product("A1")
    assert p.category == "Fruit/Apple" and p.currency == "EUR" and p.attributes == {"colour": "green"}
    assert [i.status for i in p.images] == ["ok", "ok"] and p.images[0].sha256
    assert catalogue.get_product("A2").images[0].status == "missing"
    # re-import changes nothing
    r2 = _run(catalogue, tmp_path / "m.csv", "csv")
    assert (r2.products_created, r2.products_updated, r2.products_unchanged, r2.images_added) == (0, 0, 3, 0)


def test_jsonl_manifest(tmp_path, sqlite_catalogue, image_dir):
    (a,) = image_dir(1)
    lines = [json.dumps({"sku": "J1", "title": "Milk", "category": ["Dairy", "Milk"], "images": [f"imgs/{a.name}"],
                         "attributes": {"fat": "3%"}}), "", "{not json", json.dumps([1, 2])]
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    r = _run(sqlite_catalogue, tmp_path / "m.jsonl", "jsonl")
    assert r.products_created == 1 and len(r.problems) == 2
    assert sqlite_catalogue.get_product("J1").attributes == {"fat": "3%"}


def test_imagefolder(tmp_path, sqlite_catalogue, image_dir):
    image_dir(2, sub="tree/Fruit/Apple")
    image_dir(1, start=5, sub="tree/Dairy")
    (tmp_path / "tree" / "loose.png").write_bytes((tmp_path / "tree" / "Dairy" / "img_0005.png").read_bytes())
    (tmp_path / "tree" / "Dairy" / "moved.jpg").symlink_to(tmp_path / "gone.jpg")  # a broken link
    r = _run(sqlite_catalogue, tmp_path / "tree", "imagefolder")
    assert r.products_created == 3 and any("class folder" in p.reason for p in r.problems)
    assert sqlite_catalogue.get_product("Fruit/Apple/img_0001").category == "Fruit/Apple"
    broken = [p for p in r.problems if p.where == "Dairy/moved.jpg"]
    assert len(broken) == 1 and "broken link" in broken[0].reason and "gone.jpg" in broken[0].reason


def test_unreadable_manifest_is_a_clear_error(tmp_path, sqlite_catalogue):
    (tmp_path / "m.csv").write_text("title,image\nx,y\n")
    with pytest.raises(ManifestError, match="sku"):
        _run(sqlite_catalogue, tmp_path / "m.csv", "csv")
    with pytest.raises(ManifestError, match="does not exist"):
        _run(sqlite_catalogue, tmp_path / "nope.csv", "csv")
    with pytest.raises(ManifestError, match="Grocery"):
        _run(sqlite_catalogue, tmp_path, "grocerystore")
    (tmp_path / "dir.csv").mkdir()  # a folder named like a manifest: no image in it to import
    with pytest.raises(ManifestError, match="is a folder without any image file"):
        _run(sqlite_catalogue, tmp_path / "dir.csv", guess_format(tmp_path / "dir.csv"))


@needs_grocery
def test_grocerystore_layout(sqlite_catalogue):
    r = _run(sqlite_catalogue, GROCERY, "grocerystore", reference_split="val")
    assert r.products_created == 81 and r.images_failed == 0
    p = sqlite_catalogue.get_product("Granny-Smith")
    assert p.category == "Fruit/Apple/Granny-Smith" and "apple" in (p.description or "").lower()
    assert p.images[0].role == "catalogue" and all(i.role == "reference" for i in p.images[1:])
    cats = {c.path for c in sqlite_catalogue.categories()}
    assert {"Fruit", "Fruit/Apple", "Packages/Juice/Bravo-Apple-Juice", "Fruit/Banana"} <= cats
    n_val = len((GROCERY / "dataset" / "val.txt").read_text().split())
    assert sqlite_catalogue.stats().images == 81 + len([l for l in (GROCERY / "dataset" / "val.txt").read_text().splitlines() if l.strip()])
    assert n_val > 0


def test_format_is_guessed_from_the_path(tmp_path):
    from shopsearch.catalogue.readers import guess_format
    from shopsearch.errors import ManifestError

    (tmp_path / "m.csv").write_text("sku,image\n")
    (tmp_path / "m.JSONL").write_text("")
    (tmp_path / "tree" / "Fruit").mkdir(parents=True)
    (tmp_path / "gs" / "dataset").mkdir(parents=True)
    (tmp_path / "gs" / "dataset" / "classes.csv").write_text("")
    assert [guess_format(tmp_path / n) for n in ("m.csv", "m.JSONL", "tree", "gs")] == \
        ["csv", "jsonl", "imagefolder", "grocerystore"]
    (tmp_path / "m.xlsx").write_text("")
    with pytest.raises(ManifestError, match="pass --format"):
        guess_format(tmp_path / "m.xlsx")


def test_batches_are_written_as_their_files_are_checked_and_a_failed_batch_keeps_the_earlier(
        tmp_path, catalogue, image_dir, monkeypatch):
    """Each batch is upserted once its own files are checked (the workers go on with the next
    ones); a batch that fails stops the import with the earlier batches committed, the later
    ones unwritten, and its workers shut down."""
    import shopsearch.catalogue.importers as importers
    import shopsearch.catalogue.store as store_mod

    paths = image_dir(7)
    (tmp_path / "m.csv").write_text("sku,title,image,price\n" + "".join(
        f"S{i},t{i},{p},{i}.50\n" for i, p in enumerate(paths)))
    monkeypatch.setattr(store_mod, "UPSERT_BATCH", 3)
    monkeypatch.setattr(importers, "UPSERT_BATCH", 3)
    monkeypatch.setattr(importers, "CHECK_CHUNK", 2)
    calls: list[int] = []
    real = catalogue.upsert_products

    def upsert(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(batch)

    monkeypatch.setattr(catalogue, "upsert_products", upsert)
    problems: list[RowProblem] = []
    with pytest.raises(RuntimeError, match="disk full"):
        import_catalogue(catalogue, read_source(tmp_path / "m.csv", "csv", problems), problems, workers=2,
                         progress=False)
    assert calls == [3, 3]
    assert [p.sku for p in catalogue.products()] == ["S0", "S1", "S2"]
    assert catalogue.get_product("S1").price == Decimal("1.50")
    # the rest come in with the next import, the first three unchanged
    monkeypatch.setattr(catalogue, "upsert_products", real)
    r = _run(catalogue, tmp_path / "m.csv", "csv")
    assert (r.products_created, r.products_unchanged, r.images_decoded) == (4, 3, 4)


def test_bulk_insert_writes_what_sqlalchemy_writes(tmp_path, sqlite_catalogue, image_dir):
    """New products go in through the driver's executemany: the stored texts (dates, JSON,
    prices) are the ones SQLAlchemy writes and reads back."""
    import sqlite3
    from datetime import datetime

    (a,) = image_dir(1)
    (tmp_path / "m.csv").write_text(f"sku,title,image,price,colour\nA,apple,{a},1.50,red\n")
    _run(sqlite_catalogue, tmp_path / "m.csv", "csv")
    p = sqlite_catalogue.get_product("A")
    assert (p.price, p.attributes) == (Decimal("1.50"), {"colour": "red"})
    url = str(sqlite_catalogue.engine.url).split("///", 1)[1]
    with sqlite3.connect(url) as conn:
        created, attrs = conn.execute("SELECT created_at, attributes FROM products").fetchone()
        (img_created,) = conn.execute("SELECT created_at FROM product_images").fetchone()
    for text in (created, img_created):  # SQLAlchemy's SQLite DATETIME text, no zone suffix
        assert datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")
    assert json.loads(attrs) == {"colour": "red"}


def test_prices_the_catalogue_cannot_hold_are_row_problems(tmp_path, catalogue, image_dir):
    """inf, NaN, negative or beyond NUMERIC(12, 2) prices: the row is reported and skipped, the
    others imported (PostgreSQL used to abort the whole import with a traceback; SQLite stored
    inf, which `catalogue show` and the API then wrote as the non-JSON `Infinity`)."""
    imgs = image_dir(7)
    prices = ["inf", "1e400", "1e20", "-5", "nan", "9999999999.99", "0"]
    (tmp_path / "m.csv").write_text("sku,title,price,image\n" + "".join(
        f"P{i},p,{v},imgs/{img.name}\n" for i, (v, img) in enumerate(zip(prices, imgs))))
    r = _run(catalogue, tmp_path / "m.csv", "csv")
    assert r.products_created == 2
    assert sorted(p.sku for p in r.problems) == ["P0", "P1", "P2", "P3", "P4"]
    assert all("price" in p.reason for p in r.problems)
    assert catalogue.get_product("P5").price == Decimal("9999999999.99")
    assert catalogue.get_product("P6").price == Decimal("0")


def test_text_the_catalogue_cannot_hold_is_a_row_problem(tmp_path, catalogue, image_dir):
    """Values longer than their column, NUL characters and JSON lists or objects where text
    belongs: that row is reported and skipped, the others imported (PostgreSQL used to abort
    the whole import with a traceback on each; SQLite on a list or object)."""
    imgs = [f"imgs/{p.name}" for p in image_dir(9)]
    rows = [{"sku": "LONG-TITLE", "title": "t" * 501}, {"sku": "LONG-BRAND", "brand": "b" * 201},
            {"sku": "S" * 201}, {"sku": "NUL", "title": "a\x00b"}, {"sku": "LONG-CAT", "category": "c" * 201},
            {"sku": "DICT", "description": {"x": 1}}, {"sku": "LIST", "brand": ["x"]},
            {"sku": "OK", "title": "t" * 500, "brand": 5, "description": 7, "category": ["c" * 200]},
            {"sku": "OK2", "title": "fine"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({**r, "images": [img]}) for r, img in zip(rows, imgs)))
    r = _run(catalogue, tmp_path / "m.jsonl", "jsonl")
    assert r.products_created == 2 and len(r.problems) == 7, r.problems
    reasons = " | ".join(p.reason for p in r.problems)
    for word in ("title is 501 characters", "brand is 201", "sku is 201", "NUL", "category level",
                 "description must be text", "brand must be text"):
        assert word in reasons
    ok = catalogue.get_product("OK")
    assert (len(ok.title), ok.brand, ok.description, ok.category) == (500, "5", "7", "c" * 200)


def test_a_sku_no_page_address_can_name_is_a_row_problem(tmp_path, sqlite_catalogue, image_dir):
    """/products/<sku>: a browser resolves `..` and `.` parts (a card for `../../x` linked to /x,
    a 404) and Flask merges `//`; slashes and dots elsewhere are SKUs like any other."""
    bad, good = ["../../x", "a/./b", "/x", "x/", ".", "a//b"], ["A/B", ".hidden", "v1.0", "a..b"]
    imgs = [f"imgs/{p.name}" for p in image_dir(len(bad) + len(good))]
    (tmp_path / "m.csv").write_text("sku,image\n" + "".join(f"{s},{i}\n" for s, i in zip(bad + good, imgs)))
    r = _run(sqlite_catalogue, tmp_path / "m.csv", "csv")
    assert sorted(p.sku for p in r.problems) == sorted(bad) and r.products_created == len(good)
    assert all("no page address" in p.reason for p in r.problems)


def test_an_imagefolder_file_name_that_is_not_utf8_is_skipped_alone(tmp_path, catalogue, image_dir):
    """A file named in Latin-1 (copied from an old system): reported and skipped, the rest
    imported (its name used to abort the whole import with a UnicodeEncodeError traceback)."""
    a, b = image_dir(2, sub="tree/Fruit")
    os.rename(bytes(b), os.fsencode(b.parent) + b"/caf\xe9.png")
    r = _run(catalogue, tmp_path / "tree", "imagefolder")
    assert r.products_created == 1 and catalogue.get_product(f"Fruit/{a.stem}")
    assert [(p.where, p.reason) for p in r.problems] == [
        ("Fruit/caf\\udce9.png", "file name is not valid UTF-8; rename it")]


def test_text_that_is_not_utf8_is_a_clear_error(tmp_path, sqlite_catalogue, image_dir):
    """A CSV saved in Latin-1 is a one-line ManifestError (was a UnicodeDecodeError traceback); a
    JSONL line with half a surrogate pair (`\\ud800`) is a row problem (was a UnicodeEncodeError
    traceback from the database that aborted the import); a whole pair is a character."""
    a, b = image_dir(2)
    (tmp_path / "latin.csv").write_bytes(f"sku,title,image\nC1,caf\xe9,imgs/{a.name}\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not UTF-8 text"):
        _run(sqlite_catalogue, tmp_path / "latin.csv", "csv")
    (tmp_path / "m.jsonl").write_text(f'{{"sku": "U1\\ud800", "image": "imgs/{a.name}"}}\n'
                                      f'{{"sku": "U2", "title": "\\ud83c\\udf4e", "image": "imgs/{b.name}"}}\n')
    r = _run(sqlite_catalogue, tmp_path / "m.jsonl", "jsonl")
    assert r.products_created == 1 and sqlite_catalogue.get_product("U2").title == "\U0001f34e"
    assert [(p.where, p.sku) for p in r.problems] == [("m.jsonl line 1", None)]  # its SKU is not text to print
    assert "without its pair" in r.problems[0].reason


def test_a_jsonl_row_problem_names_its_sku(tmp_path, sqlite_catalogue):
    """As a CSV row's problem does (it was always None for JSONL lines)."""
    (tmp_path / "m.jsonl").write_text('{"sku": "J1", "price": "abc"}\n{"sku": "J2", "price": "1"}\n[1]\n')
    r = _run(sqlite_catalogue, tmp_path / "m.jsonl", "jsonl")
    assert [(p.where, p.sku) for p in r.problems] == [("m.jsonl line 1", "J1"), ("m.jsonl line 3", None)]
