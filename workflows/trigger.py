"""Starting a run, the one way every workflow does: plan → guard → lock → record → launch.

A workflow is a `Workflow` value (each module defines its own; `workflows.catalog`
lists them all): how it plans, reading the domain and deciding purely, and the pure
function from that plan to its stages. `plan` answers with a `Planned` or raises
`Refused`; `start` records and launches exactly that plan, the one an operator may have
confirmed, and refuses it if a hosting change was recorded after planning began, since
the plan may be stale then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from cosfail.cosprint.domain import Domain
from cosfail.workflows import ledger as L
from cosfail.workflows.engine import Engine, Stage
from cosfail.workflows.refusal import Refusal, Refused


@dataclass(frozen=True)
class Workflow:
    name: str
    # (engine, request) → plan or Refusal: reads the domain, then decides purely.
    plan: Callable[[Engine, Any], Any]
    # (domain, plan, run id, time) → the run's stages, in order; no I/O.
    stages: Callable[[Domain, Any, str, float], list[Stage]]
    subject: Callable[[Any], str | None]  # the node the run concerns
    epoch: Callable[[Any], int]  # the epoch the run's first steps are issued under
    lock: str | None = L.HOSTING_LOCK  # the lock the run holds until it ends
    # Under the lock, just before recording: a Refusal here is recorded as a run.
    vet: Callable[[Domain, Any], Refusal | None] | None = None
    # A held lock records the trigger as a skipped run instead of refusing it.
    skip_when_busy: bool = False


@dataclass(frozen=True)
class Planned:
    workflow: Workflow
    request: Any
    plan: Any
    since: float  # when planning began


@dataclass(frozen=True)
class Started:
    run_id: str
    state: str  # running, or skipped for a workflow that skips when busy
    plan: Any


def plan(eng: Engine, wf: Workflow, request: Any) -> Planned:
    """The plan for `request`, or Refused; LockHeld while a hosting change runs (a
    workflow that skips when busy is recorded as skipped by `start` instead)."""
    since = time.time()
    if wf.lock == L.HOSTING_LOCK:
        holder = eng.ledger.holder(L.HOSTING_LOCK)
        if holder:
            raise L.LockHeld(L.HOSTING_LOCK, holder)
    got = wf.plan(eng, request)
    if isinstance(got, Refusal):
        # A plan refused because a hosting change recorded meanwhile moved the domain
        # on (a reclaim that already re-designated its server, say) is refused naming
        # that change: the operator is told who changed the domain, not a verdict on a
        # state in flux.
        changed = changed_since(eng, since) if wf.lock == L.HOSTING_LOCK else None
        if changed:
            raise L.LockHeld(L.HOSTING_LOCK, changed)
        raise Refused(got)
    return Planned(wf, request, got, since)


def start(eng: Engine, planned: Planned, who: str, why: str = "") -> Started:
    """Record and launch the run of `planned`, under its workflow's lock."""
    wf = planned.workflow
    run_id = L.new_run_id()
    params = {"request": asdict(planned.request), "plan": asdict(planned.plan)}
    subject = wf.subject(planned.plan)
    try:
        with holding(eng, wf, run_id, who, planned.since):
            # Vetted under the lock: what the guard approved is what runs.
            veto = wf.vet(eng.domain, planned.plan) if wf.vet else None
            if veto:
                eng.ledger.create_run(wf.name, params, who, veto.reason, [], run_id=run_id,
                                      state=L.REFUSED, subject=subject)
                raise Refused(veto)
            stages = wf.stages(eng.domain, planned.plan, run_id, time.time())
            eng.create(wf.name, params, who, why, wf.epoch(planned.plan), stages,
                       run_id=run_id, subject=subject)
            eng.launch(run_id)
    except L.LockHeld as held:
        if not wf.skip_when_busy:
            raise
        try:
            holder_state: str | None = eng.ledger.run(held.holder)["state"]
        except L.UnknownRun:
            holder_state = None
        eng.ledger.create_run(wf.name, {**params, "holder": held.holder}, who,
                              skip_reason(held.lock, held.holder, holder_state), [],
                              run_id=run_id, state=L.SKIPPED, subject=subject)
        return Started(run_id, L.SKIPPED, planned.plan)
    return Started(run_id, L.RUNNING, planned.plan)


def skip_reason(lock: str, holder: str, state: str | None) -> str:
    """Why a run that gives way to the holder of `lock` was skipped, true to the
    holder's `state` (None: not in the ledger)."""
    what = "backup" if lock == L.BACKUP_LOCK else "hosting change"
    if state in (L.RUNNING, L.PLANNED):
        return f"skipped: {what} run {holder} is still running"
    if state == L.FAILED:
        return (f"skipped: {what} run {holder} failed and holds the domain's lock until "
                f"it is resumed (cosfail resume {holder})")
    return f"skipped: {what} run {holder} ({state or 'not in the ledger'}) holds the lock"


def run(eng: Engine, wf: Workflow, request: Any, who: str, why: str = "") -> Started:
    """Plan and start at once: for callers with nobody to confirm the plan."""
    return start(eng, plan(eng, wf, request), who, why)


HOSTING_WORKFLOWS = (*L.HOSTING_MOVES, "reclaim")


def changed_since(eng: Engine, since: float) -> str | None:
    """The newest hosting change recorded at or after `since`, if any."""
    for workflow in HOSTING_WORKFLOWS:
        newest = eng.ledger.runs(limit=1, workflow=workflow)
        if newest and newest[0]["created_at"] >= since:
            return str(newest[0]["id"])
    return None


@contextmanager
def holding(eng: Engine, wf: Workflow, run_id: str, who: str, since: float) -> Iterator[None]:
    """The workflow's lock for a trigger that planned from `since` on, released if it
    refuses or fails before its run is launched; once launched, the journal frees it in
    the transaction that records the run's end. A hosting change recorded after `since`
    (even one already over) may have made a hosting plan stale: the trigger is refused
    naming that run, as if it had come while that run held the lock. Checked before
    taking the lock, so that a holder another trigger is told of is one the ledger will
    show; a whole run cannot fit between the check and the take."""
    if wf.lock is None:
        yield
        return
    if wf.lock == L.HOSTING_LOCK:
        changed = changed_since(eng, since)
        if changed:
            raise L.LockHeld(L.HOSTING_LOCK, changed)
    else:  # a backup never starts during a hosting change (its nodes would refuse it)
        holder = eng.ledger.holder(L.HOSTING_LOCK)
        if holder:
            raise L.LockHeld(L.HOSTING_LOCK, holder)
    eng.ledger.acquire(wf.lock, run_id, who, eng.domain.control.lock_lease)
    try:
        yield
    except BaseException:
        eng.ledger.release(wf.lock, run_id)
        raise
