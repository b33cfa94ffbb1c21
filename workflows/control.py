"""Control steps: they touch no node, only the ledger and the authoritative state."""

from __future__ import annotations

from dataclasses import dataclass

from workers.step import Here, step
from workflows import ledger as L
from workflows.engine import engine


@dataclass(frozen=True)
class LockInput:
    run_id: str
    lock: str


@step("control.take_lock", LockInput)
def take_lock(here: Here, arg: LockInput) -> str:
    """Hold (or renew) the lock the trigger took for this run."""
    eng = engine()
    eng.ledger.acquire(arg.lock, arg.run_id, f"run {arg.run_id}", here.domain.control.lock_lease)
    return f"run {arg.run_id} holds the {arg.lock} lock"


@step("control.release_lock", LockInput)
def release_lock(here: Here, arg: LockInput) -> str:
    engine().ledger.release(arg.lock, arg.run_id)
    return f"released the {arg.lock} lock"


@dataclass(frozen=True)
class RecordBackup:
    run_id: str
    verify_idx: int


@step("control.record_backup", RecordBackup)
def record_backup(here: Here, arg: RecordBackup) -> str:
    """Enter each BCS's verified snapshot in the catalog, from its verify step's facts."""
    led = engine().ledger
    recorded = []
    for s in led.steps(arg.run_id):
        if s.idx != arg.verify_idx or not s.member or s.state != L.SUCCEEDED or not s.facts:
            continue
        m = s.facts["manifest"]
        led.record_snapshot(
            bcs=s.node, file=s.input["file"], epoch=m["epoch"], created_at=m["created_at"],
            verified_at=s.facts["verified_at"], rows=sum(m["tables"].values()),
            sha256=m["sha256"], run_id=arg.run_id, pruned=False,
        )
        recorded.append(s.node)
    return f"catalogued the verified snapshot on {', '.join(sorted(recorded))}"
