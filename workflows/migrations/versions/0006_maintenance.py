"""`maintenance`: a domain paused by an operator (`cosfail pause`): while its row is
there, no automatic failover and no scheduled work start.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maintenance",
        sa.Column("domain", sa.String(40), primary_key=True),
        sa.Column("paused_at", sa.Float, nullable=False),
        sa.Column("paused_by", sa.String(80), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
