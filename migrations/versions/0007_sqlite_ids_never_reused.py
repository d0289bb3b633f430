"""SQLite never hands out a product or image id twice: products and product_images become
AUTOINCREMENT tables. Without it SQLite gives a new row max(id) + 1, so deleting the product
that held the highest image id and importing another gave the new image the deleted one's id,
the key its vector still had in the FAISS index: searches for the deleted photo returned the
new product until the next `index update`. PostgreSQL's sequences never reuse: a no-op there.

SQLite cannot add AUTOINCREMENT in place, so both tables are rebuilt (batch, recreate
"always"), keeping every row and id. Its DROP TABLE with foreign keys on deletes the rows
first, cascading into the children, so the images wait in a temporary table while products is
rebuilt. A rebuild drops the tables' indexes and triggers (0004, 0005, 0006 and any added by
hand): they are read from sqlite_master first and created again from their own SQL.

Downgrade is a no-op: AUTOINCREMENT tables serve 0006's code unchanged, and going back must
not start reusing ids.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TABLES = ("products", "product_images")  # parent first: its rebuild must find no child rows
_STASH = "temp._ids_images_kept"


def _seed(table: str, max_id_sql: str) -> None:
    """sqlite_sequence: the copies wrote max(id) already; state it outright, never lower."""
    op.execute(f"DELETE FROM sqlite_sequence WHERE name = '{table}' OR name = '_alembic_tmp_{table}'")
    op.execute(f"INSERT INTO sqlite_sequence (name, seq) SELECT '{table}', COALESCE(MAX(m), 0) FROM ({max_id_sql})")


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    conn = op.get_bind()
    # pysqlite opens its transaction only before DML: without this, the DROPs below would commit
    # at once, and a rebuild failing later would leave the tables without their triggers
    op.execute("UPDATE catalogue_state SET generation = generation WHERE 1 = 0")
    names = ", ".join(f"'{t}'" for t in _TABLES)
    kept = conn.exec_driver_sql(
        f"SELECT type, name, sql FROM sqlite_master WHERE tbl_name IN ({names}) "
        "AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY type, name").all()
    # triggers first, so that moving the rows neither bumps the catalogue generation nor
    # clears row digests (what the rows hold does not change); indexes too, so that they come
    # back from their own SQL (0006's partial WHERE included), not from reflection
    for kind, name, _ in sorted(kept, key=lambda k: k[0] != "trigger"):
        op.execute(f'DROP {kind.upper()} "{name}"')
    columns = ", ".join(f'"{c[1]}"' for c in conn.exec_driver_sql("PRAGMA table_info(product_images)"))
    op.execute(f"CREATE TABLE {_STASH} AS SELECT * FROM product_images")
    op.execute("DELETE FROM product_images")
    for table in _TABLES:
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass
    op.execute(f"INSERT INTO product_images ({columns}) SELECT {columns} FROM {_STASH}")
    op.execute(f"DROP TABLE {_STASH}")
    for _, _, sql in kept:
        op.execute(sql)
    _seed("products", "SELECT MAX(id) AS m FROM products")
    # an image id the feedback log showed was handed out once, even if its row is gone since
    _seed("product_images", "SELECT MAX(id) AS m FROM product_images "
                            "UNION ALL SELECT MAX(image_id) FROM search_log_hits")


def downgrade() -> None:
    pass
