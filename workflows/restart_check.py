"""Restart-check: a node whose designation or last-running record lags the domain's
authoritative state is re-pointed at the current master before COSprint serves again.

It runs after every failover (as stages of that chain) and whenever a node's worker
starts: the master publishes its tables → the node fetches them, re-points, records the
new last-running state → COSprint starts. A returning failed server is left stopped:
its objects now live elsewhere and only reclaim may bring it back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cosfail.cosprint.designation import Designation
from cosfail.cosprint.domain import Domain
from cosfail.cosprint.drivers import driver_for
from cosfail.workers.steps import (
    NoInput,
    PublishTables,
    RestartCheck,
    publish_tables,
    restart_check,
    start_cosprint,
)
from cosfail.workflows import ledger as L
from cosfail.workflows.engine import Do, Engine, Stage
from cosfail.workflows.failover import tables_file
from cosfail.workflows.refusal import Refusal
from cosfail.workflows.state import current_state
from cosfail.workflows.trigger import Workflow

log = logging.getLogger("cosfail.restart_check")


def restart_decision(node: str, own: Designation | None, last: Designation | None,
                     state: Designation, failed_over: bool) -> str:
    """`current` (just start COSprint), `refresh` (re-point, then start) or `reclaim`
    (a failed-over server: leave it stopped for reclaim)."""
    if own == state and last == state:
        return "current"
    if failed_over and node != state.master and (own is None or own.epoch < state.epoch):
        return "reclaim"
    return "refresh"


@dataclass(frozen=True)
class CheckRequest:
    node: str


@dataclass(frozen=True)
class RestartPlan:
    node: str
    master: str
    epoch: int
    designation: str  # the node's own designation, as it read
    last_running: str  # its last-running record
    decision: str  # see `restart_decision`


def restart_check_stages(_domain: Domain, plan: RestartPlan, run_id: str,
                         _at: float) -> list[Stage]:
    if plan.decision == "current":
        return [Do(start_cosprint, NoInput(), node=plan.node)]
    file = tables_file(run_id, plan.epoch)
    return [
        Do(publish_tables, PublishTables(file=file, epoch=plan.epoch), node=plan.master),
        Do(restart_check, RestartCheck(master=plan.master, epoch=plan.epoch, file=file),
           node=plan.node),
        Do(start_cosprint, NoInput(), node=plan.node),
    ]


LOCK_POLL = 0.2


def wait_for_hosting_change(eng: Engine, node: str) -> None:
    """Hold back while a hosting change owns the domain: its lock is held, by a running
    run or by a failed one awaiting resume. Until it ends, the authoritative master's
    tables are not the domain's truth yet (a restore or rehost may be pending), and the
    run itself re-points the nodes it planned for. Bounded by the lock's lease."""
    waited_for = None
    while (holder := eng.ledger.holder(L.HOSTING_LOCK)) is not None:
        if holder != waited_for:
            log.info("restart-check of %s waits for hosting change run %s", node, holder)
            waited_for = holder
        time.sleep(LOCK_POLL)


def plan_restart_check(eng: Engine, req: CheckRequest) -> RestartPlan:
    """What the node's files say against the authority. Blocks while a hosting change
    holds the domain lock (see `wait_for_hosting_change`)."""
    wait_for_hosting_change(eng, req.node)
    state = current_state(eng)
    driver = driver_for(eng.domain, req.node)
    own, last = driver.read_designation(), driver.read_last_running()
    return RestartPlan(node=req.node, master=state.master, epoch=state.epoch,
                       designation=str(own), last_running=str(last),
                       decision=restart_decision(req.node, own, last, state,
                                                 failed_over_since(eng, req.node, own)))


def reclaim_first(_domain: Domain, plan: RestartPlan) -> Refusal | None:
    """A failed-over server is left stopped: recorded as a refused run saying so."""
    if plan.decision != "reclaim":
        return None
    return Refusal(f"reclaim needed: {plan.node} was failed over; it stays stopped "
                   f"until `cosfail reclaim {plan.node}`")


def failed_over_since(eng: Engine, node: str, own: Designation | None) -> bool:
    """Are `node`'s objects hosted elsewhere since after the epoch its designation names?"""
    history = eng.ledger.hosting_history(node)
    return bool(history) and history[-1]["hosted_by"] != node \
        and history[-1]["epoch"] > (own.epoch if own else 0)


RESTART_CHECK = Workflow(
    name="restart-check", plan=plan_restart_check, stages=restart_check_stages,
    subject=lambda plan: plan.node, epoch=lambda plan: plan.epoch, lock=None,
    vet=reclaim_first)
