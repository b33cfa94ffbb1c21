"""`scheduled_switchovers`: planned moves an operator set for a time
(`cosfail switchover S --to B --at TIME`), started by beat's tick at that time.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scheduled_switchovers",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("server", sa.String(40), nullable=False),
        sa.Column("to_bcs", sa.String(40), nullable=False),
        sa.Column("at", sa.Float, nullable=False, index=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(80), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("state", sa.String(20), nullable=False, index=True),
        sa.Column("decided_at", sa.Float),
        sa.Column("run_id", sa.String(32)),
        sa.Column("outcome", sa.Text),
    )
