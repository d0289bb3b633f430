"""products remember a digest of the manifest row they were last imported from (its fields,
category path, attributes, and each image's path, role, size and mtime), so a re-import
skips every unchanged row by comparing digests in bulk: no JSON built, no image decoded,
no row compared column by column

Triggers clear the digest whenever anything else writes what it covers: an image row
updated or deleted (a rescan marking a file missing, a re-hash, a hand-written statement),
or a product's fields changed without a new digest. Images are inserted only by the
importer, which writes the digest after them, so inserts need no trigger (and bulk COPYs
stay free of row triggers). NULL (rows imported before this revision, or cleared): the next
import compares that row in full and stores its digest.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_IMAGE_COLUMNS = "path, role, sha256, width, height, status, error, file_size, file_mtime_ns, product_id"
_PRODUCT_COLUMNS = "sku, title, description, brand, price, currency, category_id, attributes"
_CLEAR = "UPDATE products SET row_digest = NULL WHERE id IN ({ids}) AND row_digest IS NOT NULL"
_SQLITE_TRIGGERS = {
    "trg_product_images_digest_upd": (f"AFTER UPDATE OF {_IMAGE_COLUMNS} ON product_images BEGIN "
                                      f"{_CLEAR.format(ids='OLD.product_id, NEW.product_id')}; END"),
    "trg_product_images_digest_del": (f"AFTER DELETE ON product_images BEGIN "
                                      f"{_CLEAR.format(ids='OLD.product_id')}; END"),
    # only the digest column itself is left alone: the importer writes it after the fields
    "trg_products_digest_upd": (f"AFTER UPDATE OF {_PRODUCT_COLUMNS} ON products "
                                "WHEN NEW.row_digest IS OLD.row_digest BEGIN "
                                f"{_CLEAR.format(ids='NEW.id')}; END"),
}


def upgrade() -> None:
    op.add_column("products", sa.Column("row_digest", sa.String(32), nullable=True))
    if op.get_context().dialect.name == "postgresql":
        op.execute("CREATE FUNCTION clear_image_row_digest() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                   f"{_CLEAR.format(ids='OLD.product_id')}; "
                   f"IF TG_OP = 'UPDATE' THEN {_CLEAR.format(ids='NEW.product_id')}; END IF; "
                   "RETURN NULL; END $$")
        op.execute(f"CREATE TRIGGER trg_product_images_digest AFTER UPDATE OF {_IMAGE_COLUMNS} OR DELETE "
                   "ON product_images FOR EACH ROW EXECUTE FUNCTION clear_image_row_digest()")
        op.execute("CREATE FUNCTION clear_product_row_digest() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                   "NEW.row_digest := NULL; RETURN NEW; END $$")
        op.execute(f"CREATE TRIGGER trg_products_digest BEFORE UPDATE OF {_PRODUCT_COLUMNS} ON products "
                   "FOR EACH ROW WHEN (NEW.row_digest IS NOT DISTINCT FROM OLD.row_digest) "
                   "EXECUTE FUNCTION clear_product_row_digest()")
    else:
        for name, body in _SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trg_products_digest ON products")
        op.execute("DROP TRIGGER IF EXISTS trg_product_images_digest ON product_images")
        op.execute("DROP FUNCTION IF EXISTS clear_product_row_digest()")
        op.execute("DROP FUNCTION IF EXISTS clear_image_row_digest()")
    else:
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    # a plain ALTER TABLE on SQLite too (3.35+): a batch rebuild of products would drop the
    # table, and with foreign keys on, its images with it
    op.drop_column("products", "row_digest")
