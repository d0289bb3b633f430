"""the feedback log: each search (request id, build, model, query vector, filters, products
shown) and the shoppers' interactions with it (click, confirm, reject, add_to_cart, purchase);
no IP address or user identifier anywhere

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "search_log",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("build_id", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(500), nullable=False),
        sa.Column("model_fingerprint", sa.String(500), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("source", sa.String(10), nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("query_vector", sa.LargeBinary, nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("match", sa.String(10), nullable=True),
        sa.Column("confidence", sa.Float, nullable=True),
        sa.Column("photo", sa.String(200), nullable=True),
        sa.UniqueConstraint("request_id", name="uq_search_log_request_id"),
    )
    op.create_index("ix_search_log_created_at", "search_log", ["created_at"])
    op.create_table(
        "search_log_hits",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("search_id", BigId, sa.ForeignKey("search_log.id", ondelete="CASCADE"), nullable=False),
        sa.Column("region", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("sku", sa.String(200), nullable=False),
        sa.Column("image_id", sa.BigInteger, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("calibrated", sa.Float, nullable=True),
        sa.Column("category", sa.String(1000), nullable=True),
        sa.UniqueConstraint("search_id", "region", "rank", name="uq_search_log_hits_rank"),
    )
    op.create_index("ix_search_log_hits_search_id", "search_log_hits", ["search_id"])
    op.create_table(
        "feedback_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("search_id", BigId, sa.ForeignKey("search_log.id", ondelete="CASCADE"), nullable=False),
        sa.Column("sku", sa.String(200), nullable=False),
        sa.Column("event", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("search_id", "sku", "event", name="uq_feedback_events_once"),
    )
    op.create_index("ix_feedback_events_search_id", "feedback_events", ["search_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_events_search_id", "feedback_events")
    op.drop_table("feedback_events")
    op.drop_index("ix_search_log_hits_search_id", "search_log_hits")
    op.drop_table("search_log_hits")
    op.drop_index("ix_search_log_created_at", "search_log")
    op.drop_table("search_log")
