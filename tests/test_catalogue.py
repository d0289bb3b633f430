"""Catalogue store and migrations, on SQLite and PostgreSQL."""
from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import inspect, text

from shopsearch.catalogue import db as dbmod
from shopsearch.catalogue.records import ImageRecord, IndexBuildInfo, ProductRecord
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.errors import ProductNotFoundError, SchemaVersionError


def _rec(sku="A-1", **kw):
    base = dict(sku=sku, title="Granny Smith", brand="Orchard", price=Decimal("1.25"), currency="EUR",
                category_path=("Fruit", "Apple", "Granny-Smith"),
                images=(ImageRecord("/img/a.jpg", sha256="a" * 64, width=10, height=20),))
    base.update(kw)
    return ProductRecord(**base)


def test_migrations_create_schema_and_downgrade(db_url):
    engine = dbmod.make_engine(db_url)
    assert dbmod.current_revision(engine) is None
    assert dbmod.upgrade(engine) == dbmod.head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {"products", "product_images", "categories", "index_builds", "alembic_version"} <= tables
    dbmod.downgrade(engine, "base")
    assert "products" not in set(inspect(engine).get_table_names())
    dbmod.upgrade(engine)
    dbmod.check_schema(engine)
    engine.dispose()


def test_refuses_schema_newer_than_code(db_url):
    engine = dbmod.make_engine(db_url)
    dbmod.upgrade(engine)
    with engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaVersionError, match="newer than this ShopSearch"):
        CatalogueStore.open(db_url)
    engine.dispose()


def test_a_database_at_head_opens_without_alembic(tmp_path):
    """The head read from the migration files is Alembic's; a catalogue already at it opens
    without importing Alembic (every command's start), an older one is still migrated."""
    import subprocess
    import sys

    assert dbmod.head_from_files() == dbmod.head_revision()
    url = f"sqlite:///{tmp_path / 'c.db'}"
    CatalogueStore.open(url).close()  # migrated to head
    probe = ("import sys; from shopsearch.catalogue.store import CatalogueStore; "
             f"CatalogueStore.open({url!r}).close(); print('alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    engine = dbmod.make_engine(url)
    dbmod.downgrade(engine, "0004")
    CatalogueStore.open(url).close()
    assert dbmod.current_revision(engine) == dbmod.head_revision()
    engine.dispose()


def test_unusable_images_are_counted_from_their_partial_index(tmp_path):
    """Migration 0006: the quick status' COUNT of unusable images reads the partial index, not
    every image row (SQLite's plan; PostgreSQL picks it once the table is large)."""
    cat = CatalogueStore.open(f"sqlite:///{tmp_path / 'c.db'}")
    with cat.engine.connect() as conn:
        plan = " ".join(str(r) for r in conn.execute(
            text("EXPLAIN QUERY PLAN SELECT count(*) FROM product_images WHERE status != 'ok'")))
    assert "ix_product_images_unusable" in plan
    assert cat.unusable_count() == 0
    cat.close()


def test_unmigrated_database_is_refused_without_migrate(tmp_path):
    with pytest.raises(SchemaVersionError, match="not initialised"):
        CatalogueStore.open(f"sqlite:///{tmp_path / 'x.db'}", migrate=False)


def test_upsert_is_idempotent_and_tracks_changes(catalogue):
    first = catalogue.upsert_product(_rec())
    assert first.created and first.images_added == 1
    again = catalogue.upsert_product(_rec())
    assert not again.created and not again.changed and again.images_added == 0
    changed = catalogue.upsert_product(_rec(price=Decimal("1.50")))
    assert changed.changed and not changed.created
    p = catalogue.get_product("A-1")
    assert p.price == Decimal("1.50") and p.currency == "EUR" and p.brand == "Orchard"
    assert p.category == "Fruit/Apple/Granny-Smith" and p.category_source == "merchant"
    assert [i.path for i in p.images] == ["/img/a.jpg"]
    # a changed image (new content hash) counts as changed, not added
    r = catalogue.upsert_product(_rec(images=(ImageRecord("/img/a.jpg", sha256="b" * 64),)))
    assert r.images_changed == 1 and r.images_added == 0


def test_category_tree_is_hierarchical(catalogue):
    catalogue.upsert_product(_rec("A-1"))
    catalogue.upsert_product(_rec("A-2", category_path=("Fruit", "Apple", "Pink-Lady")))
    cats = {c.path: c for c in catalogue.categories()}
    assert set(cats) == {"Fruit", "Fruit/Apple", "Fruit/Apple/Granny-Smith", "Fruit/Apple/Pink-Lady"}
    assert cats["Fruit/Apple/Pink-Lady"].parent_id == cats["Fruit/Apple"].id
    assert cats["Fruit/Apple"].parent_id == cats["Fruit"].id and cats["Fruit"].parent_id is None
    assert cats["Fruit/Apple/Pink-Lady"].depth == 2


def test_delete_products_removes_images(catalogue):
    catalogue.upsert_product(_rec("A-1"))
    catalogue.upsert_product(_rec("A-2", images=(ImageRecord("/img/b.jpg", sha256="c" * 64),)))
    assert catalogue.delete_products(["A-1", "NOPE"]) == ["A-1"]
    with pytest.raises(ProductNotFoundError):
        catalogue.get_product("A-1")
    assert [i.path for i in catalogue.indexable_images()] == ["/img/b.jpg"]
    assert catalogue.stats().products == 1 and catalogue.stats().images == 1


def test_products_for_images_and_failed_images(catalogue):
    r = catalogue.upsert_product(_rec(images=(ImageRecord("/a.jpg", sha256="a" * 64),
                                              ImageRecord("/b.jpg", status="missing", error="no such file"))))
    imgs = catalogue.get_product("A-1").images
    ok = [i for i in imgs if i.status == "ok"]
    assert len(ok) == 1 and [i.id for i in catalogue.indexable_images()] == [ok[0].id]
    found = catalogue.products_for_images([ok[0].id, 999999])
    assert list(found) == [ok[0].id] and found[ok[0].id][0].sku == "A-1"
    catalogue.mark_image_failed(ok[0].id, "truncated")
    assert catalogue.indexable_images() == []
    assert catalogue.stats().images_failed == 2 and r.product_id > 0


def test_predicted_category_never_overwrites_merchant(catalogue):
    r = catalogue.upsert_product(_rec("U-1", category_path=None))
    cat = catalogue.ensure_category(("Fruit", "Banana"))
    catalogue.set_predicted_category(r.product_id, cat, 0.91)
    p = catalogue.get_product("U-1")
    assert p.category == "Fruit/Banana" and p.category_source == "predicted" and p.predicted_confidence == 0.91
    r2 = catalogue.upsert_product(_rec("M-1"))
    catalogue.set_predicted_category(r2.product_id, cat, 0.99)
    p2 = catalogue.get_product("M-1")
    assert p2.category == "Fruit/Apple/Granny-Smith" and p2.category_source == "merchant"
    assert p2.predicted_category == "Fruit/Banana"


def test_index_builds_are_recorded(catalogue):
    info = IndexBuildInfo("b1", "fake", "fp", "flat", 48, 0, "building", None, None)
    catalogue.record_build(info)
    catalogue.record_build(IndexBuildInfo("b1", "fake", "fp", "flat", 48, 10, "complete", None, None))
    [b] = catalogue.builds()
    assert b.status == "complete" and b.vector_count == 10 and b.completed_at is not None


def test_unusable_images_name_sku_status_and_reason(tmp_path, catalogue):
    from shopsearch.catalogue.importers import import_catalogue
    from tests.conftest import make_image

    good = tmp_path / "good.png"
    make_image(1).save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + bytes(500))
    recs = [_rec("B-2", images=(ImageRecord(str(tmp_path / "gone.jpg")),)),
            _rec("A-1", images=(ImageRecord(str(good)), ImageRecord(str(broken))))]
    import_catalogue(catalogue, recs, progress=False, workers=1)
    got = catalogue.unusable_images()
    assert [(u.sku, u.status, u.path) for u in got] == [("A-1", "invalid", str(broken)),
                                                          ("B-2", "missing", str(tmp_path / "gone.jpg"))]
    assert all(u.error for u in got) and "no such file" in got[1].error
    img = catalogue.get_product("A-1").images[0]
    catalogue.mark_image_failed(img.id, "the decoding process died on this image")  # found while embedding
    assert [u.path for u in catalogue.unusable_images()][:2] == [str(good), str(broken)]
