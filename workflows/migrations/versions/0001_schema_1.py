"""The ledger as the first release made it (its `schema_version` 1).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("workflow", sa.String(40), nullable=False, index=True),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("triggered_by", sa.String(80), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("state", sa.String(20), nullable=False, index=True),
        sa.Column("launch", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("error", sa.Text),
    )
    op.create_table(
        "steps",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("node", sa.String(40), primary_key=True),
        *(sa.Column(name, sa.String(size), nullable=False)
          for name, size in (("name", 60), ("task", 80), ("queue", 60))),
        sa.Column("envelope", sa.Text, nullable=False),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("member", sa.Boolean, nullable=False),
        sa.Column("required", sa.Boolean, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("task_id", sa.String(64)),
        sa.Column("worker", sa.String(120)),
        *(sa.Column(name, sa.Float) for name in ("queued_at", "started_at", "finished_at")),
        *(sa.Column(name, sa.Text) for name in ("outcome", "facts", "error")),
    )
    op.create_table(
        "locks",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(80), nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
    )
    op.create_table(
        "snapshots",
        sa.Column("bcs", sa.String(40), primary_key=True),
        sa.Column("file", sa.String(200), primary_key=True),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("verified_at", sa.Float, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("pruned", sa.Boolean, nullable=False),
    )
    op.create_table(
        "liveness",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("node", sa.String(40), nullable=False, index=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("prev_state", sa.String(20)),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("unreachable_since", sa.Float),
        sa.Column("confirmed_by", sa.String(40)),
        sa.Column("note", sa.Text, nullable=False),
    )
    op.create_table(
        "domain_state",
        sa.Column("domain", sa.String(40), primary_key=True),
        sa.Column("master", sa.String(40), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
