"""one verdict ("confirm" / "reject") per product of a logged search, held by the database: a
partial unique index on feedback_events (search_id, sku) over the verdict events. Before it, a
"this is it" and a "not this" sent at the same moment could both be stored (the store checked,
then wrote). Rows a race left behind are settled first: the latest verdict (highest id) stays.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_NAME = "uq_feedback_events_one_verdict"
_VERDICT = "event IN ('confirm', 'reject')"


def upgrade() -> None:
    op.execute(f"DELETE FROM feedback_events WHERE {_VERDICT} AND id NOT IN ("
               f"SELECT max_id FROM (SELECT MAX(id) AS max_id FROM feedback_events WHERE {_VERDICT} "
               f"GROUP BY search_id, sku) AS latest)")
    op.create_index(_NAME, "feedback_events", ["search_id", "sku"], unique=True,
                    sqlite_where=sa.text(_VERDICT), postgresql_where=sa.text(_VERDICT))


def downgrade() -> None:
    op.drop_index(_NAME, "feedback_events")
