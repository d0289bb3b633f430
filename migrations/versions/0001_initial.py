"""initial catalogue schema: categories, products, product images, index builds

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "categories",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("categories.id", ondelete="CASCADE"), nullable=True),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("depth", sa.Integer, nullable=False, server_default="0"),
        sa.UniqueConstraint("parent_id", "name", name="uq_categories_parent_name"),
        sa.UniqueConstraint("path", name="uq_categories_path"),
    )
    op.create_index("ix_categories_parent_id", "categories", ["parent_id"])
    op.create_table(
        "products",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sku", sa.String(200), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("brand", sa.String(200), nullable=True),
        sa.Column("price", sa.Numeric(12, 2), nullable=True),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("category_id", sa.Integer, sa.ForeignKey("categories.id", ondelete="SET NULL"), nullable=True),
        sa.Column(
            "predicted_category_id", sa.Integer, sa.ForeignKey("categories.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("predicted_confidence", sa.Float, nullable=True),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("sku", name="uq_products_sku"),
    )
    op.create_index("ix_products_category_id", "products", ["category_id"])
    op.create_table(
        "product_images",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("product_id", sa.Integer, sa.ForeignKey("products.id", ondelete="CASCADE"), nullable=False),
        sa.Column("path", sa.String(2000), nullable=False),
        sa.Column("role", sa.String(20), nullable=False, server_default="catalogue"),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("width", sa.Integer, nullable=True),
        sa.Column("height", sa.Integer, nullable=True),
        sa.Column("status", sa.String(20), nullable=False, server_default="ok"),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("product_id", "path", name="uq_product_images_product_path"),
    )
    op.create_index("ix_product_images_product_id", "product_images", ["product_id"])
    op.create_index("ix_product_images_sha256", "product_images", ["sha256"])
    op.create_table(
        "index_builds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("build_id", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(500), nullable=False),
        sa.Column("model_fingerprint", sa.String(500), nullable=False),
        sa.Column("index_type", sa.String(100), nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("vector_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status", sa.String(20), nullable=False, server_default="building"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("build_id", name="uq_index_builds_build_id"),
    )


def downgrade() -> None:
    op.drop_table("index_builds")
    op.drop_index("ix_product_images_sha256", "product_images")
    op.drop_index("ix_product_images_product_id", "product_images")
    op.drop_table("product_images")
    op.drop_index("ix_products_category_id", "products")
    op.drop_table("products")
    op.drop_index("ix_categories_parent_id", "categories")
    op.drop_table("categories")
