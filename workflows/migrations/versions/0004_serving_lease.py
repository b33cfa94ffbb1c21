"""`serving_lease`: each printing node's lease, so that it prints on through a ledger
outage and a failover knows how long to wait for an isolated master to stop
(cosprint/lease.py).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "serving_lease",
        sa.Column("domain", sa.String(40), primary_key=True),
        sa.Column("node", sa.String(40), primary_key=True),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("renewed_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
