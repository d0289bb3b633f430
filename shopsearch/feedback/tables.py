"""The feedback log's tables (SQLAlchemy Core). The schema is made only by the Alembic
migrations 0003 and 0008 under migrations/; these definitions must match them."""
from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Column, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, MetaData,
                        String, Table, UniqueConstraint, text)

# SQLite only auto-increments INTEGER PRIMARY KEY, so BigInteger falls back to Integer there.
BigId = BigInteger().with_variant(Integer(), "sqlite")
metadata = MetaData()

searches = Table(
    "search_log", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("request_id", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("build_id", String(64), nullable=False),
    Column("model_name", String(500), nullable=False),
    Column("model_fingerprint", String(500), nullable=False),
    Column("kind", String(10), nullable=False),  # "image" | "text" | "refine" (a page re-run)
    Column("source", String(10), nullable=False),  # "api" | "page"
    Column("dim", Integer, nullable=False),
    Column("query_vector", LargeBinary, nullable=False),  # little-endian float32
    Column("options", JSON, nullable=False),  # filters, crop, objects, routing, rerank, tta, fusion, k, advice
    Column("match", String(10)),
    Column("confidence", Float),
    Column("photo", String(200)),  # the retained upload's file name, only when retention is on
    UniqueConstraint("request_id", name="uq_search_log_request_id"),
)

hits = Table(
    "search_log_hits", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("search_id", BigId, ForeignKey("search_log.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("region", Integer, nullable=False, default=0),  # 0: the whole photo; n: found object n
    Column("rank", Integer, nullable=False),  # 1-based
    Column("sku", String(200), nullable=False),
    Column("image_id", BigInteger, nullable=False),
    Column("score", Float, nullable=False),
    Column("calibrated", Float),
    Column("category", String(1000)),
    UniqueConstraint("search_id", "region", "rank", name="uq_search_log_hits_rank"),
)

events = Table(
    "feedback_events", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("search_id", BigId, ForeignKey("search_log.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("sku", String(200), nullable=False),
    Column("event", String(20), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("search_id", "sku", "event", name="uq_feedback_events_once"),
)
#: one verdict ("confirm" / "reject") per product of a search (migration 0008)
_VERDICT = text("event IN ('confirm', 'reject')")
Index("uq_feedback_events_one_verdict", events.c.search_id, events.c.sku, unique=True,
      sqlite_where=_VERDICT, postgresql_where=_VERDICT)
