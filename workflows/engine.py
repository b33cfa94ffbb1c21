"""Runs: from a workflow's list of stages to a recorded, launched, resumable Celery chain.

A workflow is a list of stages, read top to bottom: `Do` (one step on one node or on
`control`) and `Each` (the same step fanned out over several nodes, in parallel). The
engine records every step with its exact JSON input in the ledger, then launches the
chain; `resume` relaunches from the first step not done, under a new launch number so
that stray messages of the old launch are dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from celery import Task, chain
from celery.canvas import Signature
from celery.utils import uuid
from cosfail.cosprint import authority
from cosfail.cosprint.domain import Domain
from cosfail.workers.app import app, connected_workers
from cosfail.workers.step import CONTROL, Envelope, Here, Outcome, Superseded, step, worker_id
from cosfail.workflows import ledger as L
from cosfail.workflows.ledger import Ledger
from sqlalchemy import select

log = logging.getLogger("cosfail.engine")


@dataclass
class Do:
    """One step: `task(input)` on `node` (CONTROL for the control queue)."""

    task: Task
    input: Any
    node: str = CONTROL
    epoch: int | None = None


@dataclass
class Each:
    """The same step on several nodes at once; `inputs` maps node → input.

    `required=False`: a node whose worker does not take the step in time is reported
    as unreachable and skipped, not waited on (docs/architecture.md, invariant 5).
    """

    task: Task
    inputs: dict[str, Any]
    required: bool = True
    epoch: int | None = None


Stage = Do | Each


@dataclass(frozen=True)
class EachInput:
    """The fan-out step's own input: which stage of the run it fans out."""

    run_id: str
    idx: int


def short_name(task: Task) -> str:
    return task.name.rsplit(".", 1)[-1]


def _row(env: Envelope, task: Task, input: Any, member: bool, required: bool) -> dict[str, Any]:
    return {
        "idx": env.index, "node": env.node, "name": env.name, "task": task.name,
        "queue": env.where if not env.node else f"node.{env.node}",
        "envelope": asdict(env), "input": asdict(input), "member": member,
        "required": required,
    }


def plan_rows(run_id: str, workflow: str, epoch: int, stages: list[Stage]) -> list[dict]:
    rows: list[dict[str, Any]] = []
    for idx, stage in enumerate(stages):
        name = short_name(stage.task)
        ep = stage.epoch if stage.epoch is not None else epoch
        base = Envelope(run_id=run_id, workflow=workflow, index=idx, name=name,
                        node=CONTROL, epoch=ep)
        if isinstance(stage, Do):
            rows.append(_row(replace(base, node=stage.node), stage.task, stage.input,
                             member=False, required=True))
            continue
        rows.append(_row(replace(base, name=f"{name} (each)"), each_task,
                         EachInput(run_id=run_id, idx=idx),
                         member=False, required=True))
        for node, inp in stage.inputs.items():
            rows.append(_row(replace(base, node=node, member=True), stage.task, inp,
                             member=True, required=stage.required))
    return rows


class Engine:
    """Creates, launches and resumes runs of one domain; implements the step journal."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.ledger = Ledger(domain.ledger_url, domain.control.name)

    # ----- starting ------------------------------------------------------------------
    def create(self, workflow: str, params: dict[str, Any], who: str, why: str,
               epoch: int, stages: list[Stage], run_id: str | None = None,
               subject: str | None = None) -> str:
        run_id = run_id or L.new_run_id()
        rows = plan_rows(run_id, workflow, epoch, stages)
        return self.ledger.create_run(workflow, params, who, why, rows, run_id=run_id,
                                      subject=subject)

    def launch(self, run_id: str, from_idx: int = 0, launch: int | None = None) -> None:
        """Send the chain of every stage from `from_idx` whose steps are not all done."""
        run = self.ledger.run(run_id)
        launch = launch or run["launch"]
        rows = [r for r in self.ledger.steps(run_id) if r.idx >= from_idx and not r.member]
        sigs = [self._signature(r, launch) for r in rows if r.state not in L.DONE]
        if not sigs:
            self.ledger.set_run_state(run_id, L.SUCCEEDED)
            return
        first = min(r.idx for r in rows if r.state not in L.DONE)
        with self.ledger.tx() as conn:
            self.ledger.set_run_state(run_id, L.RUNNING, conn=conn)
            self.ledger.mark_queued(run_id, first, conn=conn)
        chain(*sigs).apply_async()

    def _signature(self, row: L.StepRow, launch: int) -> Signature:
        env = {**row.envelope, "launch": launch}
        opts: dict[str, Any] = {"queue": row.queue}
        if row.node:
            opts["expires"] = self.domain.control.step_expires
        # By name, not from this process's task registry: a process that resumes a run
        # (CLI, API) need not have imported the module that defines each of its steps.
        return app.signature(row.task, kwargs={"run": env, "step": row.input},
                             immutable=True).set(**opts)

    def resume(self, run_id: str) -> int:
        """Relaunch a failed run from its first step not done; returns that step's index."""
        run = self.ledger.run(run_id)
        if run["state"] == L.RUNNING:
            self.reap_lost_steps(run_id)
            run = self.ledger.run(run_id)
        if run["state"] != L.FAILED:
            raise L.LedgerError(f"run {run_id} is {run['state']}, not failed: nothing to resume")
        pending = [r for r in self.ledger.steps(run_id) if r.state not in L.DONE and not r.member]
        if not pending:
            self.ledger.set_run_state(run_id, L.SUCCEEDED)
            return -1
        first = pending[0].idx
        launch = self.ledger.next_launch(run_id)
        self.launch(run_id, first, launch)
        return first

    def reap_lost_steps(self, run_id: str | None = None, node: str | None = None,
                        alive: set[str] | None = None) -> list[str]:
        """Fail steps whose worker is gone; returns what it found, one line each.

        A step is lost when it is `running` under a worker that is not in `alive`
        (worker ids), or `queued` past its expiry with no worker taking it: on a node or
        on `control` alike (but a fan-out member's expiry is its stage's to judge: it
        may skip the node rather than fail the run), since a message the broker lost
        (a Redis restart loses what it held) or a trigger never sent leaves no worker
        anything to take. A late message of a reaped step is harmless: a resume's new
        launch supersedes it.
        A run still `planned` past that expiry was recorded by a trigger that died
        before launching it: it is failed too, so that `resume` can launch it.
        """
        found = []
        now = time.time()
        expires = self.domain.control.step_expires
        for s in self.ledger.stuck_steps(node):
            if run_id and s.run_id != run_id:
                continue
            if s.state in (L.RUNNING, L.RETRYING) and alive is not None and s.worker not in alive:
                reason = f"the worker of {s.node or 'control'} ({s.worker}) was lost mid-step"
            elif s.state == L.QUEUED and s.queued_at and now - s.queued_at > expires \
                    and not s.member:  # a member's expiry is its fan-out's to judge
                reason = f"no worker of {s.node or 'control'} took the step within {expires:g} s"
            else:
                continue
            found.append(f"run {s.run_id} step {s.idx} {s.name} on {s.node}: {reason}")
            self.ledger.update_step(s.run_id, s.idx, s.node, state=L.FAILED, error=reason,
                                    finished_at=now)
            if not s.member:
                self.ledger.set_run_state(s.run_id, L.FAILED,
                                          error=f"step {s.idx} {s.name}: {reason}")
        if node is None:
            reason = f"never launched: its trigger stopped within {expires:g} s of it"
            for rid in self.ledger.fail_unlaunched(now - expires, reason, run_id):
                found.append(f"run {rid}: {reason}")
        return found

    # ----- the journal (called by every step, in the worker) ---------------------------
    def begin(self, env: Envelope, task_id: str, worker: str) -> str | None:
        led, lease = self.ledger, self.domain.control.lock_lease
        with led.tx() as conn:
            if led.start_step(conn, env.run_id, env.index, env.node, env.launch, env.epoch,
                              task_id, worker, lease):
                return None
            # It may not run as it stands: find out why, in the same transaction.
            run = conn.execute(L.runs.select().where(L.runs.c.id == env.run_id)).mappings().first()
            if run is None:
                return f"run {env.run_id} is not in the ledger"
            # A superseded message is dropped before anything else is checked: it must
            # leave no trace in a run that now belongs to a newer launch.
            if run["launch"] != env.launch:
                raise Superseded(f"launch {env.launch} superseded by {run['launch']}")
            row = conn.execute(L.steps.select().where(
                L.steps.c.run_id == env.run_id, L.steps.c.idx == env.index,
                L.steps.c.node == env.node)).mappings().first()
            if row is None:
                return f"run {env.run_id} has no step {env.index} on {env.where}"
            if row["state"] in L.DONE:
                raise Superseded(f"step {env.index} {env.name} is already {row['state']}")
            ds = authority.domain_state
            current = conn.execute(select(ds.c.master, ds.c.epoch)
                                   .where(ds.c.domain == led.domain)).first()
            if current is not None and env.epoch < current.epoch:
                return (f"step {env.name} was issued under epoch {env.epoch}; "
                        f"the domain is at epoch {current.epoch} (master {current.master})")
            # The run had stopped (a failed step applied again, from Flower): it runs again.
            led.set_run_state(env.run_id, L.RUNNING, conn=conn)
            if not led.start_step(conn, env.run_id, env.index, env.node, env.launch,
                                  env.epoch, task_id, worker, lease):
                raise L.LedgerError(f"step {env.index} {env.name} of run {env.run_id} "
                                    "could not be started")
        return None

    def succeed(self, env: Envelope, outcome: Outcome, chained: bool) -> None:
        led = self.ledger
        with led.tx() as conn:
            queued = led.succeed_step(conn, env.run_id, env.index, env.node, outcome.sentence,
                                      outcome.facts, env.member)
            if env.member or (queued and chained):
                return
            nxt = led.next_idx(env.run_id, env.index, conn)
            if nxt is None:
                led.set_run_state(env.run_id, L.SUCCEEDED, conn=conn)
                for lock in (L.HOSTING_LOCK, L.BACKUP_LOCK):
                    led.release(lock, env.run_id, conn=conn)
                return
        if not chained:
            # Applied alone (a retry from Flower): the ledger knows the rest of the chain.
            log.info("continuing run %s from step %s", env.run_id, nxt)
            self.launch(env.run_id, nxt, env.launch)

    def fail(self, env: Envelope, error: str, final: bool) -> None:
        with self.ledger.tx() as conn:
            self.ledger.update_step(env.run_id, env.index, env.node, conn=conn,
                                    state=L.FAILED if final else L.RETRYING, error=error,
                                    finished_at=time.time() if final else None)
            if final and not env.member:
                self.ledger.set_run_state(
                    env.run_id, L.FAILED, conn=conn,
                    error=f"step {env.index} {env.name} on {env.where}: {error}")
                # A failed backup frees the schedule; a failed hosting change keeps the
                # domain locked until it is resumed (or its lease runs out).
                self.ledger.release(L.BACKUP_LOCK, env.run_id, conn=conn)


_engine: Engine | None = None


def engine() -> Engine:
    """The engine of this process's domain (workers: the one their journal uses)."""
    global _engine
    from cosfail.workers.app import current_domain

    if _engine is None:
        _engine = Engine(current_domain())
    return _engine


class StageFailed(Exception):
    """A fan-out stage in which a required node failed or never answered."""


# How often a fan-out looks at its members' states: one indexed read of two columns.
POLL = 0.005
# How often it asks the broker which workers are connected, while a member runs.
PRESENCE_EVERY = 0.5


def overdue(waiting: dict[str, str], absent_since: dict[str, float], start: float,
            now: float, expires: float, lease: float) -> dict[str, str]:
    """The members a fan-out stops waiting for, each with why (docs/architecture.md,
    invariant 10): queued past `expires` (no worker took it), running while its worker
    has held no broker connection for `expires` (the worker died with the step and has
    not come back to finish it), or running past the lock lease (its worker hangs)."""
    why = {}
    for node, state in waiting.items():
        if state in (L.QUEUED, L.PLANNED):
            if now - start > expires:
                why[node] = f"no worker of {node} took the step within {expires:g} s"
        elif now - absent_since.get(node, now) > expires:
            why[node] = (f"the worker of {node} left while running the step and was not "
                         f"back within {expires:g} s")
        elif now - start > lease:
            why[node] = f"the step ran on {node} past the lock lease ({lease:g} s)"
    return why


def absences(waiting: dict[str, str], connected: set[str] | None,
             absent_since: dict[str, float], now: float) -> dict[str, float]:
    """Since when each running member's worker has been seen without a broker connection.
    When the broker cannot say, nobody is counted absent: a broker restart must not
    look like every worker leaving."""
    if connected is None:
        return {}
    return {n: absent_since.get(n, now) for n, s in waiting.items()
            if s == L.RUNNING and n not in connected}


@step("control.each", EachInput)
def each_task(here: Here, arg: EachInput) -> str:
    """Fan a stage out over its nodes, wait for each (up to its expiry), report."""
    eng = engine()
    led = eng.ledger
    launch = led.run(arg.run_id)["launch"]
    members = led.members(arg.run_id, arg.idx)
    # A node an earlier stage skipped is not waited on again: its worker went away (or
    # never took a step) within this run, and a step on it now, without the ones it
    # missed, would not be what the plan meant. Its restart-check mends it later.
    gone = {n: f"step {i} of this run skipped {n}"
            for n, i in led.skipped_members(arg.run_id, before=arg.idx).items()}
    todo = [r for r in members if r.state not in L.DONE and r.node not in gone]
    sent = {r.node: uuid() for r in todo}
    # Recorded as queued before any is sent: a quick worker's running/succeeded must
    # never be overwritten by a late `queued` (it would then wait out its expiry).
    led.queue_members(arg.run_id, arg.idx, sent)
    expires, lease = eng.domain.control.step_expires, eng.domain.control.lock_lease
    with app.producer_or_acquire() as producer:  # one broker connection for them all
        for r in todo:
            app.send_task(r.task, kwargs={"run": {**r.envelope, "launch": launch},
                                          "step": r.input},
                          queue=r.queue, expires=expires, task_id=sent[r.node],
                          producer=producer)
    start = looked = time.time()
    absent_since: dict[str, float] = {}
    while True:
        waiting = {n: s for n, s in led.member_states(arg.run_id, arg.idx).items()
                   if s not in (*L.DONE, L.FAILED)}
        now = time.time()
        if L.RUNNING in waiting.values() and now - looked >= PRESENCE_EVERY:
            absent_since = absences(waiting, connected_workers(eng.domain), absent_since, now)
            looked = now
        late = {**overdue(waiting, absent_since, start, now, expires, lease),
                **{n: why for n, why in gone.items() if n in waiting}}
        if len(waiting) == len(late):
            break
        time.sleep(POLL)
    required = {r.node: r.required for r in members}
    for node, why in late.items():
        if node in sent:
            app.control.revoke(sent[node], terminate=False)
        led.update_step(arg.run_id, arg.idx, node,
                        state=L.FAILED if required[node] else L.SKIPPED,
                        finished_at=time.time(), error=why)
    rows = {r.node: r for r in led.members(arg.run_id, arg.idx)}
    done = sorted(n for n, r in rows.items() if r.state == L.SUCCEEDED)
    skipped = sorted(n for n, r in rows.items() if r.state == L.SKIPPED)
    failed = {n: r.error for n, r in rows.items() if r.state == L.FAILED}
    name = members[0].name if members else "step"
    if failed:
        detail = "; ".join(f"{n}: {e}" for n, e in sorted(failed.items()))
        raise StageFailed(f"{name} failed on {len(failed)} node(s): {detail}")
    text = f"{name} done on {len(done)} node(s) ({', '.join(done)})"
    if skipped:
        text += f"; unreachable, skipped: {', '.join(skipped)}"
    return text


def wait_for(eng: Engine, run_id: str, timeout: float = 600.0, poll: float = 0.05,
             on_change=None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Poll the ledger until the run finishes; `on_change(run, steps)` on every change."""
    deadline = time.time() + timeout
    last = None
    while True:
        eng.reap_lost_steps(run_id)
        run = eng.ledger.run(run_id)
        steps = eng.ledger.steps(run_id)
        snap = (run["state"], tuple((s.idx, s.node, s.state) for s in steps))
        if on_change and snap != last:
            on_change(run, steps)
        last = snap
        if run["state"] not in (L.RUNNING, L.PLANNED):
            return run
        if time.time() > deadline:
            return run
        time.sleep(poll)


__all__ = ["Do", "Each", "Engine", "engine", "wait_for", "worker_id", "StageFailed"]
