"""a partial index of the unusable images (status other than 'ok'), so that the quick
`index status` counts them without reading every image row (without it, a sequential scan of
the whole table at each quick status on PostgreSQL)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_WHERE = sa.text("status <> 'ok'")


def upgrade() -> None:
    op.create_index("ix_product_images_unusable", "product_images", ["id"], postgresql_where=_WHERE,
                    sqlite_where=_WHERE)


def downgrade() -> None:
    op.drop_index("ix_product_images_unusable", table_name="product_images")
