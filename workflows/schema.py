"""The ledger's schema: its tables and the states they hold.

`workflows.ledger` reads and writes them; this module only declares them, as the
newest migration (workflows/migrations, `migrate.HEAD`) leaves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("workflow", String(40), nullable=False, index=True),
    # The node the run concerns (the failed server, the node checked), so that "the
    # newest reclaim of srv1" is a query, not a scan of recent runs.
    Column("subject", String(40), index=True),
    Column("params", Text, nullable=False),
    Column("triggered_by", String(80), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("state", String(20), nullable=False, index=True),
    Column("launch", Integer, nullable=False, default=1),
    # Times the run failed, counted as it fails: a resumed run that succeeds keeps them.
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("error", Text),
)
steps = Table(
    "steps",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("node", String(40), primary_key=True),
    Column("name", String(60), nullable=False),
    Column("task", String(80), nullable=False),
    Column("queue", String(60), nullable=False),
    Column("envelope", Text, nullable=False),
    Column("input", Text, nullable=False),
    Column("member", Boolean, nullable=False, default=False),
    Column("required", Boolean, nullable=False, default=True),
    Column("state", String(20), nullable=False),
    Column("attempt", Integer, nullable=False, default=0),
    Column("task_id", String(64)),
    Column("worker", String(120)),
    Column("queued_at", Float),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("outcome", Text),
    Column("facts", Text),
    Column("error", Text),
)
locks = Table(
    "locks",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("run_id", String(32), nullable=False),
    Column("owner", String(80), nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("lease_until", Float, nullable=False),
)
snapshots = Table(
    "snapshots",
    metadata,
    Column("bcs", String(40), primary_key=True),
    Column("file", String(200), primary_key=True),
    Column("epoch", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("verified_at", Float, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("run_id", String(32), nullable=False),
    Column("pruned", Boolean, nullable=False, default=False),
)

# Who hosts each server's objects: one row per hosting change (failover, switchover,
# failback), written in the transaction that advances the domain's epoch; never updated.
# `server` is the server whose objects moved, from `moved_from` to `hosted_by`.
hosting = Table(
    "hosting",
    metadata,
    Column("epoch", Integer, primary_key=True),
    Column("server", String(40), nullable=False, index=True),
    Column("moved_from", String(40), nullable=False),
    Column("hosted_by", String(40), nullable=False),
    Column("run_id", String(32), nullable=False),
    Column("since", Float, nullable=False),
)

# Liveness as the detector (workflows/detect.py) saw it: one row per transition of a
# node (up → suspect → down → up), or a new verdict while suspect; never updated.
liveness = Table(
    "liveness",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node", String(40), nullable=False, index=True),
    Column("state", String(20), nullable=False),
    Column("prev_state", String(20)),
    Column("at", Float, nullable=False),
    Column("unreachable_since", Float),  # first observation with worker and COSprint gone
    Column("confirmed_by", String(40)),  # the peer whose worker confirmed it down
    Column("note", Text, nullable=False, default=""),
)

# A paused domain (`cosfail pause`): one row while it lasts, deleted by `cosfail unpause`.
maintenance = Table(
    "maintenance",
    metadata,
    Column("domain", String(40), primary_key=True),
    Column("paused_at", Float, nullable=False),
    Column("paused_by", String(80), nullable=False),
    Column("reason", Text, nullable=False),
)

# Switchovers set for a time (`cosfail switchover --at`): pending until beat's tick at
# that time claims one (due), then started (run_id) or refused (outcome says why); or
# cancelled before.
scheduled_switchovers = Table(
    "scheduled_switchovers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("server", String(40), nullable=False),
    Column("to_bcs", String(40), nullable=False),
    Column("at", Float, nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(80), nullable=False),
    Column("reason", Text, nullable=False),
    Column("state", String(20), nullable=False, index=True),
    Column("decided_at", Float),
    Column("run_id", String(32)),
    Column("outcome", Text),
)
PENDING, DUE, STARTED, CANCELLED = "pending", "due", "started", "cancelled"

# Step and run states.
PLANNED, QUEUED, RUNNING, RETRYING = "planned", "queued", "running", "retrying"
SUCCEEDED, FAILED, SKIPPED = "succeeded", "failed", "skipped"
DONE = (SUCCEEDED, SKIPPED)
# Run states beyond those: refused (never started: bad input or lock held).
REFUSED = "refused"

HOSTING_LOCK = "hosting"
BACKUP_LOCK = "backup"
DETECT_LOCK = "detect"  # held (and renewed every tick) by the one active detector


@dataclass(frozen=True)
class StepRow:
    run_id: str
    idx: int
    node: str
    name: str
    task: str
    queue: str
    envelope: dict[str, Any]
    input: dict[str, Any]
    member: bool
    required: bool
    state: str
    attempt: int
    task_id: str | None
    worker: str | None
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    outcome: str | None
    facts: dict[str, Any] | None
    error: str | None

    def as_json(self) -> dict[str, Any]:
        keep = ("idx", "node", "name", "state", "attempt", "started_at", "finished_at",
                "outcome", "error", "task_id", "member")
        return {k: getattr(self, k) for k in keep}


HOSTING_MOVES = ("failover", "switchover", "failback")
