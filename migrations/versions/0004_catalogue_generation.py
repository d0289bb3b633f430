"""a catalogue generation: one counter the database bumps on every change to what an index
holds (an image added or deleted, its status or content hash changed), and the generation
each index build was made from, so a build with nothing changed is decided from two numbers
instead of a read of every image row; product_images.path gets an index (imports look files
up by path)

The counter is kept by triggers, so every writer (imports, deletes, rescans, failed
embeddings, a cascade from a deleted product, a hand-written SQL statement) moves it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BUMP = "UPDATE catalogue_state SET generation = generation + 1 WHERE id = 1"
# SQLite has row triggers only (a bump per written image row: one small page, cheap); a later
# migration that rebuilds product_images with batch_alter_table on SQLite must create them again.
_SQLITE_TRIGGERS = {
    "trg_product_images_gen_ins": f"AFTER INSERT ON product_images BEGIN {_BUMP}; END",
    "trg_product_images_gen_del": f"AFTER DELETE ON product_images BEGIN {_BUMP}; END",
    "trg_product_images_gen_upd": ("AFTER UPDATE OF status, sha256, product_id ON product_images "
                                   "WHEN OLD.status IS NOT NEW.status OR OLD.sha256 IS NOT NEW.sha256 "
                                   f"OR OLD.product_id IS NOT NEW.product_id BEGIN {_BUMP}; END"),
}


def upgrade() -> None:
    op.create_table(
        "catalogue_state",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.execute("INSERT INTO catalogue_state (id, generation) VALUES (1, 0)")
    with op.batch_alter_table("index_builds") as batch:
        # NULL: made before this revision (or not from a known state): the next build checks rows
        batch.add_column(sa.Column("catalogue_generation", sa.BigInteger, nullable=True))
    op.create_index("ix_product_images_path", "product_images", ["path"])
    if op.get_context().dialect.name == "postgresql":
        op.execute("CREATE FUNCTION bump_catalogue_generation() RETURNS trigger LANGUAGE plpgsql AS "
                   f"$$ BEGIN {_BUMP}; RETURN NULL; END $$")
        # per statement for inserts and deletes: an import batch bumps once, not once per row
        op.execute("CREATE TRIGGER trg_product_images_gen_insdel AFTER INSERT OR DELETE OR TRUNCATE "
                   "ON product_images FOR EACH STATEMENT EXECUTE FUNCTION bump_catalogue_generation()")
        op.execute("CREATE TRIGGER trg_product_images_gen_upd AFTER UPDATE OF status, sha256, product_id "
                   "ON product_images FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR "
                   "OLD.sha256 IS DISTINCT FROM NEW.sha256 OR OLD.product_id IS DISTINCT FROM NEW.product_id) "
                   "EXECUTE FUNCTION bump_catalogue_generation()")
    else:
        for name, body in _SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trg_product_images_gen_upd ON product_images")
        op.execute("DROP TRIGGER IF EXISTS trg_product_images_gen_insdel ON product_images")
        op.execute("DROP FUNCTION IF EXISTS bump_catalogue_generation()")
    else:
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_index("ix_product_images_path", table_name="product_images")
    with op.batch_alter_table("index_builds") as batch:
        batch.drop_column("catalogue_generation")
    op.drop_table("catalogue_state")
