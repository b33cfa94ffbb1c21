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

from cosprint.domain import Domain
from workers.app import app
from workers.steps import (
    ExportTables,
    ShipSnapshot,
    VerifySnapshot,
    export_tables,
    ship_snapshot,
    verify_snapshot,
)
from workflows import ledger as L
from workflows.control import RecordBackup, record_backup
from workflows.engine import Do, Each, Engine, Stage, engine
from workflows.state import current_state

WORKFLOW = "backup"


def snapshot_name(domain: str, epoch: int, run_id: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{domain}-e{epoch}-{stamp}-{run_id}.snap"


def backup_stages(domain: Domain, master: str, epoch: int, run_id: str) -> list[Stage]:
    file = snapshot_name(domain.control.name, epoch, run_id)
    bcss = [b for b in domain.names("bcs") if domain.covered_servers(b)]
    return [
        Do(export_tables, ExportTables(file=file, epoch=epoch), node=master),
        Each(ship_snapshot, {b: ShipSnapshot(file=file, source=master) for b in bcss}),
        Each(verify_snapshot, {b: VerifySnapshot(file=file) for b in bcss}),
        Do(record_backup, RecordBackup(run_id=run_id, verify_idx=2)),
    ]


def start_backup(eng: Engine, who: str, why: str = "") -> tuple[str, str]:
    """Record and launch a backup run; returns (run_id, state) — state is `skipped`
    when another backup or a hosting change holds its lock."""
    state = current_state(eng)
    run_id = L.new_run_id()
    params = {"master": state.master, "epoch": state.epoch}
    try:
        hosting = eng.ledger.holder(L.HOSTING_LOCK)
        if hosting:
            raise L.LockHeld(L.HOSTING_LOCK, hosting)
        eng.ledger.acquire(L.BACKUP_LOCK, run_id, who, eng.domain.control.lock_lease)
    except L.LockHeld as held:
        what = "backup" if held.lock == L.BACKUP_LOCK else "hosting change"
        eng.ledger.create_run(WORKFLOW, {**params, "holder": held.holder}, who,
                              f"skipped: {what} run {held.holder} is still running",
                              [], run_id=run_id, state=L.SKIPPED)
        return run_id, L.SKIPPED
    stages = backup_stages(eng.domain, state.master, state.epoch, run_id)
    try:
        eng.create(WORKFLOW, params, who, why, state.epoch, stages, run_id=run_id)
        eng.launch(run_id)
    except Exception:
        eng.ledger.release(L.BACKUP_LOCK, run_id)
        raise
    return run_id, L.RUNNING


@app.task(name="cosfail.backup.scheduled", ignore_result=True)
def scheduled_backup() -> str:
    """What celery beat sends every `[control].backup_interval` seconds."""
    run_id, state = start_backup(engine(), "beat", "scheduled")
    return f"backup run {run_id}: {state}"
