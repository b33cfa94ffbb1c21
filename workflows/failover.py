"""Failover: a dead server's objects, hosted from now on by a BCS.

Read top to bottom, this is the chain (DESIGN section 2): the trigger plans and runs the
preflight synchronously, so a refusal is an immediate answer and changes nothing; then
take the domain lock → new epoch → fence the failed server → stop COSprint everywhere
→ (with_spool: copy its pending spool files to the BCS) → restore the snapshot on the
BCS → rehost → publish the master's tables → on each node, restart-check (it writes the
designation, re-points the node's tables) then start COSprint → verify → release.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TypeVar

from cosprint.domain import Domain
from cosprint.errors import CosfailError
from workers.steps import (
    CopySpool,
    NoInput,
    PublishTables,
    RehostObjects,
    RestartCheck,
    RestoreSnapshot,
    copy_spool,
    publish_tables,
    rehost_objects,
    repoint_and_start,
    restore_snapshot,
    stop_cosprint,
)
from workflows import ledger as L
from workflows.control import (
    AdvanceEpoch,
    FenceServer,
    LockInput,
    RunHook,
    VerifyFailover,
    advance_epoch,
    fence_server,
    release_lock,
    run_hook,
    take_lock,
    verify_failover,
)
from workflows.engine import Do, Each, Engine, Stage
from workflows.liveness import probe_all
from workflows.plan import FailoverPlan, FailoverRequest, plan_failover
from workflows.state import current_state

WORKFLOW = "failover"


class Refused(CosfailError):
    """The trigger refuses: bad input, a failed preflight or a vetoing hook."""


P = TypeVar("P")


def accepted(plan: P | str) -> P:
    """The plan a planner made, or Refused with the reason it gave instead."""
    if isinstance(plan, str):
        raise Refused(plan)
    return plan


def tables_file(run_id: str, epoch: int) -> str:
    return f"tables-e{epoch}-{run_id}.snap"


def failover_stages(domain: Domain, plan: FailoverPlan, run_id: str,
                    with_spool: bool = False) -> list[Stage]:
    new = plan.epoch_after
    hosting = LockInput(run_id=run_id, lock=L.HOSTING_LOCK)
    stages: list[Stage] = [
        Do(take_lock, hosting),
        *move_hosting(plan, tables_file(run_id, new), fence=True, spool=with_spool),
    ]
    if domain.spec.hooks.post_failover:
        stages.append(Do(run_hook, RunHook(name="post_failover",
                                           argv=domain.spec.hooks.post_failover), epoch=new))
    stages.append(Do(release_lock, hosting, epoch=new))
    return stages


def move_hosting(plan: FailoverPlan, file: str, fence: bool,
                 spool: bool = False) -> list[Stage]:
    """The core shared by failover, switchover and failback: from the new epoch to a
    verified domain where `plan.bcs` hosts what `plan.server` hosted. With `spool`, the
    BCS pulls the server's pending spool files once every COSprint is stopped."""
    new = plan.epoch_after
    stages: list[Stage] = [
        Do(advance_epoch, AdvanceEpoch(expected_master=plan.master_before,
                                       expected_epoch=plan.epoch_before,
                                       master=plan.master_after, epoch=new)),
    ]
    if fence:
        stages.append(Do(fence_server, FenceServer(server=plan.server)))
    stages.append(Each(stop_cosprint, {n: NoInput() for n in plan.stop}, required=False))
    if spool:
        stages.append(Do(copy_spool, CopySpool(source=plan.server), node=plan.bcs))
    if plan.restore:
        stages.append(Do(restore_snapshot, RestoreSnapshot(candidates=plan.restore),
                         node=plan.bcs))
    for old, new_host in plan.replay:  # moves the restored snapshot predates
        stages.append(Do(rehost_objects, RehostObjects(old_host=old, new_host=new_host),
                         node=plan.master_after))
    stages += [
        Do(rehost_objects, RehostObjects(old_host=plan.server, new_host=plan.bcs),
           node=plan.master_after),
        Do(publish_tables, PublishTables(file=file, epoch=new), node=plan.master_after),
        Each(repoint_and_start,
             {n: RestartCheck(master=plan.master_after, epoch=new, file=file)
              for n in plan.start}, required=False),
        Do(verify_failover, VerifyFailover(master=plan.master_after, epoch=new,
                                           nodes=plan.start, probe_queue=plan.probe_queue)),
    ]
    for st in stages:
        st.epoch = new
    return stages


@dataclass(frozen=True)
class Started:
    run_id: str | None  # None for a dry run
    plan: FailoverPlan


def plan_now(eng: Engine, req: FailoverRequest) -> FailoverPlan:
    """Probe the domain and plan; raise Refused with the reason when it cannot be done."""
    state = current_state(eng)
    return accepted(plan_failover(eng.domain, state, probe_all(eng.domain), req, time.time(),
                                  hosting_moves(eng)))


HOSTING_MOVES = ("failover", "switchover", "failback")


def hosting_moves(eng: Engine) -> list[tuple[int, str, str]]:
    """(epoch, old host, new host) of every hosting move that succeeded, from the ledger."""
    moves = []
    for workflow in HOSTING_MOVES:
        for run in eng.ledger.runs(limit=500, workflow=workflow):
            plan = run["params"].get("plan") or {}
            if run["state"] == L.SUCCEEDED and plan.get("bcs"):
                moves.append((plan["epoch_after"], plan["server"], plan["bcs"]))
    return moves


def start_failover(eng: Engine, req: FailoverRequest, who: str, why: str = "",
                   dry_run: bool = False) -> Started:
    with planning(eng) as since:
        plan = plan_now(eng, req)
    if dry_run:
        return Started(None, plan)
    run_id = L.new_run_id()
    params = {"request": asdict(req), "plan": asdict(plan)}
    with hosting_change(eng, run_id, who, since):
        # Vetted under the lock: what the hook approved is what runs.
        veto = pre_hook_veto(eng.domain, plan)
        if veto:
            eng.ledger.create_run(WORKFLOW, params, who, f"vetoed: {veto}", [],
                                  run_id=run_id, state=L.REFUSED)
            raise Refused(f"pre_failover hook vetoed the failover: {veto}")
        eng.create(WORKFLOW, params, who, why, plan.epoch_before,
                   failover_stages(eng.domain, plan, run_id, with_spool=req.with_spool),
                   run_id=run_id)
        eng.launch(run_id)
    return Started(run_id, plan)


HOSTING_WORKFLOWS = (*HOSTING_MOVES, "reclaim")


@contextmanager
def planning(eng: Engine) -> Iterator[float]:
    """Refuse at once while a hosting change holds the domain; else yield the time from
    which the trigger's plan reads the domain (see `hosting_change`). A plan refused
    because a hosting change recorded meanwhile moved the domain on (a reclaim that
    already re-designated its server, say) is refused naming that change: the
    operator is told who changed the domain, not a verdict on a state in flux."""
    since = time.time()
    holder = eng.ledger.holder(L.HOSTING_LOCK)
    if holder:
        raise L.LockHeld(L.HOSTING_LOCK, holder)
    try:
        yield since
    except Refused:
        changed = changed_since(eng, since)
        if changed:
            raise L.LockHeld(L.HOSTING_LOCK, changed) from None
        raise


def changed_since(eng: Engine, since: float) -> str | None:
    """The newest hosting change recorded at or after `since`, if any."""
    for workflow in HOSTING_WORKFLOWS:
        newest = eng.ledger.runs(limit=1, workflow=workflow)
        if newest and newest[0]["created_at"] >= since:
            return str(newest[0]["id"])
    return None


@contextmanager
def hosting_change(eng: Engine, run_id: str, who: str, since: float) -> Iterator[None]:
    """The domain lock for a trigger that planned from `since` on, released if it
    refuses or fails before its run is launched. A hosting change recorded after
    `since` (even one already over) may have made the plan stale: the trigger is
    refused naming that run, as if it had come while that run held the lock. Checked
    before taking the lock, so that a holder another trigger is told of is one the
    ledger will show; a whole run cannot fit between the check and the take."""
    changed = changed_since(eng, since)
    if changed:
        raise L.LockHeld(L.HOSTING_LOCK, changed)
    eng.ledger.acquire(L.HOSTING_LOCK, run_id, who, eng.domain.control.lock_lease)
    try:
        yield
    except BaseException:
        eng.ledger.release(L.HOSTING_LOCK, run_id)
        raise


def pre_hook_veto(domain: Domain, plan: FailoverPlan) -> str | None:
    """Run the operator's pre-failover hook; its non-zero exit is a veto, returned."""
    argv = domain.spec.hooks.pre_failover
    if not argv:
        return None
    argv = [a.replace("{server}", plan.server).replace("{bcs}", plan.bcs) for a in argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60,  # noqa: S603
                          check=False)
    if done.returncode == 0:
        return None
    return (done.stderr or done.stdout).strip()[:300] or f"exit {done.returncode}"
