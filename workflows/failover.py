"""Failover: a dead server's objects, hosted from now on by a BCS.

Read top to bottom, `failover_stages` is the chain (docs/architecture.md §2): take the
domain lock → new epoch, recording who hosts the server's objects → fence the failed
server → stop COSprint everywhere → wait until the server has stopped serving (fenced,
stopped, or its lease run out) → (with_spool: copy its pending spool files to the
BCS) → restore the snapshot on the BCS → rehost → publish the master's tables → on each
node, restart-check (it writes the designation, re-points the node's tables) then start
COSprint → verify → (the operator's post-failover hook). The journal frees the lock as
it records the run's end. The trigger plans and runs the preflight synchronously, so a
refusal is an immediate answer and changes nothing.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import replace

from cosfail.cosprint.domain import Domain
from cosfail.workers.steps import (
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
from cosfail.workflows import ledger as L
from cosfail.workflows.control import (
    AdvanceEpoch,
    FenceServer,
    LockInput,
    RunHook,
    VerifyFailover,
    WaitOutLease,
    advance_epoch,
    fence_server,
    lease_note,
    run_hook,
    take_lock,
    verify_failover,
    wait_out_lease,
)
from cosfail.workflows.engine import Do, Each, Engine, Stage
from cosfail.workflows.liveness import probe_all
from cosfail.workflows.plan import FailoverPlan, FailoverRequest, plan_failover
from cosfail.workflows.refusal import VETOED, Refusal
from cosfail.workflows.state import current_state
from cosfail.workflows.trigger import Workflow


def tables_file(run_id: str, epoch: int) -> str:
    return f"tables-e{epoch}-{run_id}.snap"


def issued_under(epoch: int, stages: list[Stage]) -> list[Stage]:
    """The stages, each issued under `epoch`: nodes refuse them once the domain is past it."""
    return [replace(st, epoch=epoch) for st in stages]


def failover_stages(domain: Domain, plan: FailoverPlan, run_id: str,
                    _at: float) -> list[Stage]:
    stages: list[Stage] = [
        Do(take_lock, LockInput(run_id=run_id, lock=L.HOSTING_LOCK)),
        *move_hosting(plan, plan.server, tables_file(run_id, plan.epoch_after), fence=True),
    ]
    if domain.spec.hooks.post_failover:
        stages += issued_under(plan.epoch_after, [
            Do(run_hook, RunHook(name="post_failover", argv=domain.spec.hooks.post_failover))])
    return stages


def move_hosting(plan: FailoverPlan, owner: str, file: str, fence: bool) -> list[Stage]:
    """The core shared by failover, switchover and failback: from the new epoch to a
    verified domain where `plan.bcs` hosts what `plan.server` hosted, which are the
    objects of server `owner`. With `plan.with_spool`, the BCS pulls the server's
    pending spool files once every COSprint is stopped."""
    stages: list[Stage] = [
        Do(advance_epoch, AdvanceEpoch(expected_master=plan.master_before,
                                       expected_epoch=plan.epoch_before,
                                       master=plan.master_after, epoch=plan.epoch_after,
                                       server=owner, moved_from=plan.server,
                                       hosted_by=plan.bcs)),
    ]
    if fence:
        stages.append(Do(fence_server, FenceServer(server=plan.server)))
    stages.append(Each(stop_cosprint, {n: NoInput() for n in plan.stop}, required=False))
    # Before the BCS serves, the server has stopped serving: positively, or its lease
    # and failsafe have run out (docs/architecture.md, invariant 14).
    stages.append(Do(wait_out_lease, WaitOutLease(server=plan.server, bcs=plan.bcs)))
    if plan.with_spool:
        stages.append(Do(copy_spool, CopySpool(source=plan.server), node=plan.bcs))
    if plan.restore:
        stages.append(Do(restore_snapshot, RestoreSnapshot(candidates=plan.restore),
                         node=plan.bcs))
    for old, new_host in plan.replay:  # moves the restored snapshot predates
        stages.append(Do(rehost_objects, RehostObjects(old_host=old, new_host=new_host,
                                                        epoch=plan.epoch_after),
                         node=plan.master_after))
    stages += [
        Do(rehost_objects, RehostObjects(old_host=plan.server, new_host=plan.bcs,
                                         epoch=plan.epoch_after),
           node=plan.master_after),
        Do(publish_tables, PublishTables(file=file, epoch=plan.epoch_after),
           node=plan.master_after),
        Each(repoint_and_start,
             {n: RestartCheck(master=plan.master_after, epoch=plan.epoch_after, file=file)
              for n in plan.start}, required=False),
        Do(verify_failover, VerifyFailover(master=plan.master_after, epoch=plan.epoch_after,
                                           nodes=plan.start, probe_queue=plan.probe_queue)),
    ]
    return issued_under(plan.epoch_after, stages)


def plan_now(eng: Engine, req: FailoverRequest) -> FailoverPlan | Refusal:
    """Probe the domain and plan; the plan says how long its lease wait may take."""
    seen = probe_all(eng.domain, suspect=req.server if req.seen_down else None)
    plan = plan_failover(eng.domain, current_state(eng), seen, req, time.time(),
                         eng.ledger.hosting_moves())
    if isinstance(plan, Refusal):
        return plan
    spec = eng.domain.spec.lease
    note = lease_note(plan.server, plan.server in plan.stop,
                      eng.ledger.lease_remaining(plan.server), spec.ttl, spec.failsafe,
                      eng.ledger.server_clock)
    return replace(plan, notes=[*plan.notes, note])


def pre_hook_veto(domain: Domain, plan: FailoverPlan) -> Refusal | None:
    """Run the operator's pre-failover hook; its non-zero exit is a veto."""
    argv = domain.spec.hooks.pre_failover
    if not argv:
        return None
    argv = [a.replace("{server}", plan.server).replace("{bcs}", plan.bcs) for a in argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60,  # noqa: S603
                          check=False)
    if done.returncode == 0:
        return None
    why = (done.stderr or done.stdout).strip()[:300] or f"exit {done.returncode}"
    return Refusal(f"pre_failover hook vetoed the failover: {why}", VETOED)


FAILOVER = Workflow(
    name="failover", plan=plan_now, stages=failover_stages,
    subject=lambda plan: plan.server, epoch=lambda plan: plan.epoch_before,
    vet=pre_hook_veto)
