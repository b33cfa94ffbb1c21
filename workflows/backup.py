"""Backup: the master's tables, exported, shipped to every BCS, verified, catalogued.

export on the master (SQLite's checks, then sha256) → ship to each BCS → verify on each
BCS in place (sha256, header, row counts), then prune past retention there → record in
the catalog. The journal frees the backup lock in the transaction that records the
run's end: a last step only to release it would be one more hop for nothing. Backups
never overlap, nor start during a hosting change (whose new epoch would make their
nodes refuse them): a trigger while either runs is recorded as skipped, with the
holder's run id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cosfail.cosprint.domain import Domain
from cosfail.workers.app import app
from cosfail.workers.steps import (
    ExportTables,
    ShipSnapshot,
    VerifySnapshot,
    export_tables,
    ship_snapshot,
    verify_snapshot,
)
from cosfail.workflows import ledger as L
from cosfail.workflows import trigger
from cosfail.workflows.control import RecordBackup, record_backup
from cosfail.workflows.engine import Do, Each, Engine, Stage, engine
from cosfail.workflows.maintenance import paused_reason
from cosfail.workflows.state import current_state


@dataclass(frozen=True)
class BackupRequest:
    """A backup takes no arguments: it copies whatever the master holds now."""


@dataclass(frozen=True)
class BackupPlan:
    master: str
    epoch: int


def snapshot_name(domain: str, epoch: int, run_id: str, at: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at))
    return f"{domain}-e{epoch}-{stamp}-{run_id}.snap"


def backup_stages(domain: Domain, plan: BackupPlan, run_id: str, at: float) -> list[Stage]:
    file = snapshot_name(domain.control.name, plan.epoch, run_id, at)
    bcss = [b for b in domain.names("bcs") if domain.covered_servers(b)]
    return [
        Do(export_tables, ExportTables(file=file, epoch=plan.epoch), node=plan.master),
        Each(ship_snapshot, {b: ShipSnapshot(file=file, source=plan.master) for b in bcss}),
        Each(verify_snapshot, {b: VerifySnapshot(file=file) for b in bcss}),
        Do(record_backup, RecordBackup(run_id=run_id)),
    ]


def plan_backup(eng: Engine, _req: BackupRequest) -> BackupPlan:
    state = current_state(eng)
    return BackupPlan(master=state.master, epoch=state.epoch)


BACKUP = trigger.Workflow(
    name="backup", plan=plan_backup, stages=backup_stages, subject=lambda _plan: None,
    epoch=lambda plan: plan.epoch, lock=L.BACKUP_LOCK, skip_when_busy=True)


@app.task(name="cosfail.backup.scheduled", ignore_result=True)
def scheduled_backup() -> str:
    """What celery beat sends every `[control].backup_interval` seconds: recorded as
    skipped, with the pause, while the domain is paused (the RPO it costs shows)."""
    eng = engine()
    paused = eng.ledger.paused()
    if paused:
        run_id = eng.ledger.create_run(BACKUP.name, {"request": {}, "paused": paused}, "beat",
                                       f"skipped: {paused_reason(paused)}", [],
                                       state=L.SKIPPED)
        return f"backup run {run_id}: skipped, the domain is paused"
    started = trigger.run(eng, BACKUP, BackupRequest(), "beat", "scheduled")
    return f"backup run {started.run_id}: {started.state}"
