"""Switchover and failback: planned moves of hosting between live nodes, nothing lost.

take the domain lock → stop COSprint on the source (it prints what it accepted) →
[when the source is the master: export its tables fresh → ship to the target → verify]
→ the failover core (new epoch → stop COSprint everywhere → restore → rehost → publish
→ designation → restart-check → start → verify) → reclaim the source as a slave. The
journal frees the lock as it records the run's end. Failback is the same move, from the
BCS back to a reclaimed server.
"""

from __future__ import annotations

from dataclasses import replace

from cosfail.cosprint.domain import Domain
from cosfail.workers.steps import (
    ExportTables,
    NoInput,
    ShipSnapshot,
    VerifySnapshot,
    export_tables,
    ship_snapshot,
    stop_cosprint,
    verify_snapshot,
)
from cosfail.workflows import ledger as L
from cosfail.workflows.backup import snapshot_name
from cosfail.workflows.control import LockInput, take_lock
from cosfail.workflows.engine import Do, Engine, Stage
from cosfail.workflows.failover import issued_under, move_hosting, tables_file
from cosfail.workflows.liveness import probe_all
from cosfail.workflows.plan import (
    FailoverPlan,
    MoveRequest,
    ReclaimPlan,
    plan_failback,
    plan_switchover,
)
from cosfail.workflows.reclaim import reclaim_node
from cosfail.workflows.refusal import Refusal
from cosfail.workflows.state import current_state
from cosfail.workflows.status import reclaim_needed
from cosfail.workflows.trigger import Workflow


def planned_move_stages(domain: Domain, plan: FailoverPlan, owner: str, run_id: str,
                        at: float) -> list[Stage]:
    """`owner`: the server whose objects move (the source of a switchover, the target
    of a failback)."""
    file = tables_file(run_id, plan.epoch_after)
    stages: list[Stage] = [
        Do(take_lock, LockInput(run_id=run_id, lock=L.HOSTING_LOCK)),
        Do(stop_cosprint, NoInput(), node=plan.server),
    ]
    if plan.master_before == plan.server:
        fresh = snapshot_name(domain.control.name, plan.epoch_before, run_id, at)
        stages += [
            Do(export_tables, ExportTables(file=fresh, epoch=plan.epoch_before),
               node=plan.server),
            Do(ship_snapshot, ShipSnapshot(file=fresh, source=plan.server), node=plan.bcs),
            Do(verify_snapshot, VerifySnapshot(file=fresh), node=plan.bcs),
        ]
        plan = replace(plan, restore=[fresh])
    source = ReclaimPlan(server=plan.server, master=plan.master_after,
                         epoch=plan.epoch_after, obsolete_epoch=plan.epoch_before)
    return [*stages, *move_hosting(plan, owner, file, fence=False),
            *issued_under(plan.epoch_after, reclaim_node(source, file))]


def switchover_stages(domain: Domain, plan: FailoverPlan, run_id: str,
                      at: float) -> list[Stage]:
    return planned_move_stages(domain, plan, plan.server, run_id, at)


def failback_stages(domain: Domain, plan: FailoverPlan, run_id: str,
                    at: float) -> list[Stage]:
    return planned_move_stages(domain, plan, plan.bcs, run_id, at)


def plan_switchover_now(eng: Engine, req: MoveRequest) -> FailoverPlan | Refusal:
    return plan_switchover(eng.domain, current_state(eng), probe_all(eng.domain),
                           req.server, req.to)


def plan_failback_now(eng: Engine, req: MoveRequest) -> FailoverPlan | Refusal:
    return plan_failback(eng.domain, current_state(eng), probe_all(eng.domain), req.server,
                         eng.ledger.hosted_by(req.server), reclaim_needed(eng))


SWITCHOVER = Workflow(
    name="switchover", plan=plan_switchover_now, stages=switchover_stages,
    subject=lambda plan: plan.server, epoch=lambda plan: plan.epoch_before)
FAILBACK = Workflow(
    name="failback", plan=plan_failback_now, stages=failback_stages,
    subject=lambda plan: plan.bcs, epoch=lambda plan: plan.epoch_before)
