"""Reclaim: a failed-over server returns with obsolete data and becomes a slave.

confirm it is stale (the trigger) → take the domain lock → make sure its COSprint is
stopped → set its obsolete data aside under var/reclaimed/<epoch>/ (never deleted) →
the master publishes its tables → reset the node's tables from them, write its
designation and last-running record → start COSprint (a slave now) → send the jobs it
had accepted but not printed to their current hosts → verify it points at the master →
release the lock.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from workers.steps import (
    NoInput,
    PublishTables,
    ResendJobs,
    RestartCheck,
    SetAside,
    publish_tables,
    resend_set_aside_jobs,
    restart_check,
    set_aside_data,
    start_cosprint,
    stop_cosprint,
)
from workflows import ledger as L
from workflows.control import LockInput, VerifyFailover, release_lock, take_lock, verify_failover
from workflows.engine import Do, Engine, Stage
from workflows.failover import accepted, hosting_change, planning, tables_file
from workflows.liveness import probe_all
from workflows.plan import ReclaimPlan, plan_reclaim
from workflows.state import current_state
from workflows.status import reclaim_needed

WORKFLOW = "reclaim"


def reclaim_stages(plan: ReclaimPlan, file: str) -> list[Stage]:
    """The node-level reclaim, without the lock: switchover and failback reuse it."""
    return [
        Do(stop_cosprint, NoInput(), node=plan.server),
        Do(set_aside_data, SetAside(epoch=plan.obsolete_epoch), node=plan.server),
        Do(publish_tables, PublishTables(file=file, epoch=plan.epoch), node=plan.master),
        Do(restart_check, RestartCheck(master=plan.master, epoch=plan.epoch, file=file),
           node=plan.server),
        Do(start_cosprint, NoInput(), node=plan.server),
        Do(resend_set_aside_jobs, ResendJobs(epoch=plan.obsolete_epoch), node=plan.server),
        Do(verify_failover, VerifyFailover(master=plan.master, epoch=plan.epoch,
                                           nodes=[plan.server])),
    ]


def plan_reclaim_now(eng: Engine, server: str) -> ReclaimPlan:
    state = current_state(eng)
    # A name that is no server is refused without a probe: probing it waited out the
    # probe's timeout and left a message in a broker queue named after the input.
    is_server = server in eng.domain.nodes and eng.domain.node(server).role == "server"
    seen = probe_all(eng.domain, [server]) if is_server else {}
    return accepted(plan_reclaim(eng.domain, state, seen, server, reclaim_needed(eng)))


def start_reclaim(eng: Engine, server: str, who: str, why: str = "",
                  dry_run: bool = False) -> tuple[str | None, ReclaimPlan]:
    with planning(eng) as since:
        plan = plan_reclaim_now(eng, server)
    if dry_run:
        return None, plan
    run_id = L.new_run_id()
    hosting = LockInput(run_id=run_id, lock=L.HOSTING_LOCK)
    stages = [Do(take_lock, hosting),
              *reclaim_stages(plan, tables_file(run_id, plan.epoch)),
              Do(release_lock, hosting)]
    with hosting_change(eng, run_id, who, since):
        eng.create(WORKFLOW, {"server": server, "plan": asdict(plan), "at": time.time()},
                   who, why, plan.epoch, stages, run_id=run_id)
        eng.launch(run_id)
    return run_id, plan
