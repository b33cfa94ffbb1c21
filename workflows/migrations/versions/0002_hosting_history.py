"""`hosting` (who hosts each server's objects, by epoch) and `runs.subject` (the node a
run concerns), filled from the runs schema 1 kept (its `schema_version` 2).

Revision ID: 0002
Revises: 0001
"""

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The tables as this revision leaves them: later revisions must not change what it does.
runs = sa.table("runs", *(sa.column(c) for c in (
    "id", "workflow", "params", "state", "created_at", "finished_at", "subject")))
HOSTING_MOVES = ("failover", "switchover", "failback")


def run_subject(workflow: str, params: dict[str, Any]) -> str | None:
    """The node a run of schema 1 concerned, from its parameters. A failback's
    `server` there named the BCS it moved hosting from; its subject is the server."""
    plan = params.get("plan") or {}
    if workflow == "failback":
        return plan.get("bcs")
    return (params.get("request") or {}).get("server") or params.get("server") \
        or params.get("node")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("subject", sa.String(40)))
        batch.create_index("ix_runs_subject", ["subject"])
    hosting = op.create_table(
        "hosting",
        sa.Column("epoch", sa.Integer, primary_key=True),
        sa.Column("server", sa.String(40), nullable=False, index=True),
        sa.Column("moved_from", sa.String(40), nullable=False),
        sa.Column("hosted_by", sa.String(40), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("since", sa.Float, nullable=False),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.select(runs).order_by(runs.c.created_at)).all()
    for r in rows:
        params = json.loads(r.params)
        conn.execute(sa.update(runs).where(runs.c.id == r.id)
                     .values(subject=run_subject(r.workflow, params)))
        plan = params.get("plan") or {}
        if r.workflow in HOSTING_MOVES and r.state == "succeeded" and plan.get("bcs"):
            conn.execute(sa.insert(hosting).values(
                epoch=plan["epoch_after"], server=run_subject(r.workflow, params),
                moved_from=plan["server"], hosted_by=plan["bcs"], run_id=r.id,
                since=r.finished_at or r.created_at))
