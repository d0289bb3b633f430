"""product images remember their file's size and mtime, so `index update` notices files
replaced on disk without a re-import (stat first, re-hash only what changed)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for rows imported before this revision: the next rescan hashes those once.
    with op.batch_alter_table("product_images") as batch:
        batch.add_column(sa.Column("file_size", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("file_mtime_ns", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("product_images") as batch:
        batch.drop_column("file_mtime_ns")
        batch.drop_column("file_size")
