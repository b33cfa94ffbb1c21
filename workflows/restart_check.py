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

from cosprint.designation import Designation
from cosprint.drivers import driver_for
from workers.steps import (
    NoInput,
    PublishTables,
    RestartCheck,
    publish_tables,
    restart_check,
    start_cosprint,
)
from workflows import ledger as L
from workflows.engine import Do, Engine, Stage
from workflows.failover import tables_file
from workflows.state import current_state

log = logging.getLogger("cosfail.restart_check")
WORKFLOW = "restart-check"


def restart_decision(node: str, own: Designation | None, last: Designation | None,
                     state: Designation, failed_over: bool) -> str:
    """`current` (just start COSprint), `refresh` (re-point, then start) or `reclaim`
    (a failed-over server: leave it stopped for reclaim)."""
    if own == state and last == state:
        return "current"
    if failed_over and node != state.master and (own is None or own.epoch < state.epoch):
        return "reclaim"
    return "refresh"


def restart_check_stages(node: str, state: Designation, run_id: str,
                         current: bool) -> list[Stage]:
    if current:
        return [Do(start_cosprint, NoInput(), node=node)]
    file = tables_file(run_id, state.epoch)
    return [
        Do(publish_tables, PublishTables(file=file, epoch=state.epoch), node=state.master),
        Do(restart_check, RestartCheck(master=state.master, epoch=state.epoch, file=file),
           node=node),
        Do(start_cosprint, NoInput(), node=node),
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


def start_restart_check(eng: Engine, node: str, who: str, why: str) -> str | None:
    """Create and launch a restart-check run for `node`; None when it must wait for a
    reclaim instead (recorded as a refused run whose reason says so). Blocks while a
    hosting change holds the domain lock (see `wait_for_hosting_change`)."""
    wait_for_hosting_change(eng, node)
    state = current_state(eng)
    driver = driver_for(eng.domain, node)
    own, last = driver.read_designation(), driver.read_last_running()
    decision = restart_decision(node, own, last, state, failed_over_since(eng, node, own))
    run_id = L.new_run_id()
    params = {"node": node, "master": state.master, "epoch": state.epoch,
              "designation": str(own), "last_running": str(last), "decision": decision}
    if decision == "reclaim":
        eng.ledger.create_run(WORKFLOW, params, who,
                              f"reclaim needed: {node} was failed over; it stays stopped "
                              f"until `cosfail reclaim {node}`", [], run_id=run_id,
                              state=L.REFUSED)
        return None
    eng.create(WORKFLOW, params, who, why, state.epoch,
               restart_check_stages(node, state, run_id, decision == "current"),
               run_id=run_id)
    eng.launch(run_id)
    return run_id


def failed_over_since(eng: Engine, node: str, own: Designation | None) -> bool:
    """Did a failover of `node` succeed after the epoch its designation names?"""
    since = own.epoch if own else 0
    for run in eng.ledger.runs(limit=100, workflow="failover"):
        plan = run["params"].get("plan", {})
        if (plan.get("server") == node and run["state"] == L.SUCCEEDED
                and plan.get("epoch_after", 0) > since):
            return True
    return False
