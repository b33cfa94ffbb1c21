"""`runs.failures`: how many times a run failed, counted as it fails, so that a resumed
run that then succeeds still counts its failures (the metrics' failed-runs counter only
grows). Older runs get the count their launches imply: only a failed run is launched
again.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("failures", sa.Integer, nullable=False, server_default="0"))
    op.execute("UPDATE runs SET failures = launch - 1 "
               "+ CASE WHEN state = 'failed' THEN 1 ELSE 0 END")
