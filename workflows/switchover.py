"""Switchover and failback: planned moves of hosting between live nodes, nothing lost.

take the domain lock → stop COSprint on the source (it prints what it accepted) →
[when the source is the master: export its tables fresh → ship to the target → verify]
→ the failover core (new epoch → stop COSprint everywhere → restore → rehost → publish
→ designation → restart-check → start → verify) → reclaim the source as a slave →
release the lock. Failback is the same move, from the BCS back to a reclaimed server.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from workers.steps import (
    ExportTables,
    NoInput,
    ShipSnapshot,
    VerifySnapshot,
    export_tables,
    ship_snapshot,
    stop_cosprint,
    verify_snapshot,
)
from workflows import ledger as L
from workflows.backup import snapshot_name
from workflows.control import LockInput, release_lock, take_lock
from workflows.engine import Do, Engine, Stage
from workflows.failover import (
    accepted,
    hosting_change,
    move_hosting,
    planning,
    tables_file,
)
from workflows.liveness import probe_all
from workflows.plan import FailoverPlan, ReclaimPlan, plan_failback, plan_switchover
from workflows.reclaim import reclaim_stages
from workflows.state import current_state
from workflows.status import reclaim_needed


def planned_move_stages(eng: Engine, plan: FailoverPlan, run_id: str) -> list[Stage]:
    hosting = LockInput(run_id=run_id, lock=L.HOSTING_LOCK)
    file = tables_file(run_id, plan.epoch_after)
    stages: list[Stage] = [
        Do(take_lock, hosting),
        Do(stop_cosprint, NoInput(), node=plan.server),
    ]
    if plan.master_before == plan.server:
        fresh = snapshot_name(eng.domain.control.name, plan.epoch_before, run_id)
        stages += [
            Do(export_tables, ExportTables(file=fresh, epoch=plan.epoch_before),
               node=plan.server),
            Do(ship_snapshot, ShipSnapshot(file=fresh, source=plan.server), node=plan.bcs),
            Do(verify_snapshot, VerifySnapshot(file=fresh), node=plan.bcs),
        ]
        plan = replace(plan, restore=[fresh])
    source = ReclaimPlan(server=plan.server, master=plan.master_after,
                         epoch=plan.epoch_after, obsolete_epoch=plan.epoch_before)
    stages += move_hosting(plan, file, fence=False)
    for st in (*reclaim_stages(source, file), Do(release_lock, hosting)):
        st.epoch = plan.epoch_after
        stages.append(st)
    return stages


def _start(eng: Engine, workflow: str, plan: FailoverPlan, who: str, why: str,
           dry_run: bool, since: float) -> tuple[str | None, FailoverPlan]:
    if dry_run:
        return None, plan
    run_id = L.new_run_id()
    with hosting_change(eng, run_id, who, since):
        eng.create(workflow, {"server": plan.server, "plan": asdict(plan)}, who, why,
                   plan.epoch_before, planned_move_stages(eng, plan, run_id), run_id=run_id)
        eng.launch(run_id)
    return run_id, plan


def start_switchover(eng: Engine, server: str, to: str, who: str, why: str = "",
                     dry_run: bool = False) -> tuple[str | None, FailoverPlan]:
    with planning(eng) as since:
        plan = accepted(plan_switchover(eng.domain, current_state(eng), probe_all(eng.domain),
                                        server, to))
    return _start(eng, "switchover", plan, who, why, dry_run, since)


def took_over(eng: Engine, server: str) -> str | None:
    """The node hosting `server`'s objects since its last failover or switchover."""
    for run in eng.ledger.runs(limit=200):  # newest first
        plan = run["params"].get("plan") or {}
        if run["state"] != L.SUCCEEDED:
            continue
        if run["workflow"] in ("failover", "switchover") and plan.get("server") == server:
            return plan["bcs"]
        if run["workflow"] == "failback" and plan.get("bcs") == server:
            return None
    return None


def start_failback(eng: Engine, server: str, who: str, why: str = "",
                   dry_run: bool = False) -> tuple[str | None, FailoverPlan]:
    with planning(eng) as since:
        plan = accepted(plan_failback(eng.domain, current_state(eng), probe_all(eng.domain),
                                      server, took_over(eng, server), reclaim_needed(eng)))
    return _start(eng, "failback", plan, who, why, dry_run, since)
