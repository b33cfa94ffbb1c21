"""Reclaim: a failed-over server returns with obsolete data and becomes a slave.

confirm it is stale (the trigger) → take the domain lock → make sure its COSprint is
stopped → set its obsolete data aside under var/reclaimed/<epoch>/ (never deleted) →
the master publishes its tables → reset the node's tables from them, write its
designation and last-running record → start COSprint (a slave now) → send the jobs it
had accepted but not printed to their current hosts → verify it points at the master.
The journal frees the lock as it records the run's end.
"""

from __future__ import annotations

from cosfail.cosprint.domain import Domain
from cosfail.workers.steps import (
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
from cosfail.workflows import ledger as L
from cosfail.workflows.control import LockInput, VerifyFailover, take_lock, verify_failover
from cosfail.workflows.engine import Do, Engine, Stage
from cosfail.workflows.failover import tables_file
from cosfail.workflows.liveness import probe_all
from cosfail.workflows.plan import MoveRequest, ReclaimPlan, plan_reclaim
from cosfail.workflows.refusal import Refusal
from cosfail.workflows.state import current_state
from cosfail.workflows.status import reclaim_needed
from cosfail.workflows.trigger import Workflow


def reclaim_node(plan: ReclaimPlan, file: str) -> list[Stage]:
    """The node-level reclaim, without the lock: switchover and failback end with it."""
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


def reclaim_stages(_domain: Domain, plan: ReclaimPlan, run_id: str,
                   _at: float) -> list[Stage]:
    return [Do(take_lock, LockInput(run_id=run_id, lock=L.HOSTING_LOCK)),
            *reclaim_node(plan, tables_file(run_id, plan.epoch))]


def plan_reclaim_now(eng: Engine, req: MoveRequest) -> ReclaimPlan | Refusal:
    # A name that is no server is refused without a probe: probing it waited out the
    # probe's timeout and left a message in a broker queue named after the input.
    is_server = req.server in eng.domain.nodes \
        and eng.domain.node(req.server).role == "server"
    seen = probe_all(eng.domain, [req.server]) if is_server else {}
    return plan_reclaim(eng.domain, current_state(eng), seen, req.server, reclaim_needed(eng))


RECLAIM = Workflow(
    name="reclaim", plan=plan_reclaim_now, stages=reclaim_stages,
    subject=lambda plan: plan.server, epoch=lambda plan: plan.epoch)
