"""Runs: from a workflow's list of stages to a recorded, launched, resumable run.

A workflow is a list of stages, read top to bottom: `Do` (one step on one node or on
`control`) and `Each` (the same step fanned out over several nodes, in parallel). The
engine records every step with its exact JSON input in the ledger, then sends the first
stage. The ledger alone carries a run on: a step that succeeds sends the next stage in
the transaction's wake, and of a fan-out's members the last to finish settles the stage
(a conditional UPDATE under the stage row's lock) and sends the next one; a deadline
task judges the members that never answer. Nobody polls. `resume` relaunches from the
first step not done, under a new launch number so that stray messages of the old launch
are dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from celery import Task
from celery.utils import uuid
from cosfail.cosprint import authority
from cosfail.cosprint.domain import Domain
from cosfail.workers.app import CONTROL_QUEUE, app, connected_workers
from cosfail.workers.step import CONTROL, Envelope, Here, Outcome, Superseded, step, worker_id
from cosfail.workflows import ledger as L
from cosfail.workflows.ledger import Ledger
from sqlalchemy import Connection, and_, bindparam, select, update

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


def plan_rows(run_id: str, workflow: str, epoch: int, stages: list[Stage],
              domain: str = "") -> list[dict]:
    rows: list[dict[str, Any]] = []
    for idx, stage in enumerate(stages):
        name = short_name(stage.task)
        ep = stage.epoch if stage.epoch is not None else epoch
        base = Envelope(run_id=run_id, workflow=workflow, index=idx, name=name,
                        node=CONTROL, epoch=ep, domain=domain)
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
        rows = plan_rows(run_id, workflow, epoch, stages, self.domain.control.name)
        return self.ledger.create_run(workflow, params, who, why, rows, run_id=run_id,
                                      subject=subject)

    def launch(self, run_id: str, from_idx: int = 0, launch: int | None = None) -> None:
        """Send the first stage from `from_idx` whose steps are not all done; each stage
        sends the next once it is done."""
        run = self.ledger.run(run_id)
        launch = launch or run["launch"]
        pending = [r for r in self.ledger.steps(run_id)
                   if r.idx >= from_idx and not r.member and r.state not in L.DONE]
        if not pending:
            self.ledger.set_run_state(run_id, L.SUCCEEDED)
            return
        with self.ledger.tx() as conn:
            self.ledger.set_run_state(run_id, L.RUNNING, conn=conn)
            self.ledger.mark_queued(run_id, pending[0].idx, conn=conn)
        self._send(pending[0], launch)

    def _send(self, row: L.StepRow, launch: int, task_id: str | None = None,
              producer: Any = None) -> None:
        # By name, not from this process's task registry: a process that resumes a run
        # (CLI, API) need not have imported the module that defines each of its steps.
        app.send_task(row.task, kwargs={"run": {**row.envelope, "launch": launch},
                                        "step": row.input},
                      queue=row.queue, task_id=task_id, producer=producer,
                      expires=self.domain.control.step_expires if row.node else None)

    def _send_stage(self, run_id: str, nxt: tuple[int, int] | None) -> None:
        """Send stage `nxt` = (index, launch), which the ledger has marked queued."""
        if nxt is None:
            return
        idx, launch = nxt
        [head] = [r for r in self.ledger.steps(run_id) if r.idx == idx and not r.member]
        self._send(head, launch)

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
        (worker ids; an open fan-out stage has none: its deadline judges it), or `queued`
        past its expiry with no worker taking it: on a node or
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
            if s.state in (L.RUNNING, L.RETRYING) and alive is not None \
                    and s.worker is not None and s.worker not in alive:
                reason = f"the worker of {s.node or 'control'} ({s.worker}) was lost mid-step"
            elif s.state == L.QUEUED and s.queued_at and now - s.queued_at > expires \
                    and not s.member:  # a member's expiry is its fan-out's to judge
                reason = f"no worker of {s.node or 'control'} took the step within {expires:g} s"
            else:
                continue
            found.append(f"run {s.run_id} step {s.idx} {s.name} on {s.node}: {reason}")
            if s.member:
                self.give_up(s.run_id, s.idx, {s.node: reason}, skip=False)
                continue
            with self.ledger.tx() as conn:
                self.ledger.update_step(s.run_id, s.idx, s.node, state=L.FAILED,
                                        error=reason, finished_at=now, conn=conn)
                self.ledger.fail_run(s.run_id, f"step {s.idx} {s.name}: {reason}", conn=conn)
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

    def succeed(self, env: Envelope, outcome: Outcome) -> None:
        led = self.ledger
        with led.tx() as conn:
            if env.member or outcome.pending:  # a fan-out's: the stage may be done
                _lock_stage(conn, env.run_id, env.index)
                if env.member:
                    led.succeed_step(conn, env.run_id, env.index, env.node,
                                     outcome.sentence, outcome.facts)
                nxt = self._settle(conn, env.run_id, env.index)
            elif led.succeed_step(conn, env.run_id, env.index, env.node, outcome.sentence,
                                  outcome.facts):
                nxt = led.advance(conn, env.run_id, env.index)
            else:  # it ran twice (sent again by a resume); the first sent the run on
                nxt = None
        self._send_stage(env.run_id, nxt)

    def fail(self, env: Envelope, error: str, final: bool) -> None:
        if final and env.member:
            self.give_up(env.run_id, env.index, {env.node: error}, skip=False)
            return
        with self.ledger.tx() as conn:
            self.ledger.update_step(env.run_id, env.index, env.node, conn=conn,
                                    state=L.FAILED if final else L.RETRYING, error=error,
                                    finished_at=time.time() if final else None)
            if final:
                self.ledger.fail_run(env.run_id, f"step {env.index} {env.name} on "
                                     f"{env.where}: {error}", conn=conn)


    # ----- fan-out stages ----------------------------------------------------------------
    def _settle(self, conn: Connection, run_id: str, idx: int) -> tuple[int, int] | None:
        """Close the fan-out stage `idx` once none of its members is left to finish, and
        return the stage to send next. The caller holds the stage's lock (`_lock_stage`):
        of members finishing at once, exactly one closes it."""
        led = self.ledger
        where = _head_key(run_id, idx)
        head = conn.execute(select(L.steps.c.state).where(where)).scalar()
        if head not in (L.RUNNING, L.FAILED):  # not open yet, or closed already
            return None
        members = {r.node: (r.state, r.name, r.error) for r in conn.execute(
            select(L.steps.c.node, L.steps.c.state, L.steps.c.name, L.steps.c.error)
            .where(L.steps.c.run_id == run_id, L.steps.c.idx == idx,
                   L.steps.c.member.is_(True)))}
        verdict = stage_verdict(members)
        if verdict is None:
            return None
        ok, text = verdict
        now = time.time()
        if not ok:
            if head == L.RUNNING:
                conn.execute(update(L.steps).where(where).values(
                    state=L.FAILED, error=text, finished_at=now))
                led.fail_run(run_id, f"step {idx}: {text}", conn=conn)
            return None
        conn.execute(update(L.steps).where(where).values(
            state=L.SUCCEEDED, outcome=text, error=None, finished_at=now))
        if head == L.FAILED:  # a failed member applied again (Flower) mended the stage
            led.set_run_state(run_id, L.RUNNING, conn=conn)
        return led.advance(conn, run_id, idx)

    def give_up(self, run_id: str, idx: int, why: dict[str, str], skip: bool = True) -> None:
        """Stop waiting for the members `why` names (node → why): skipped where the
        stage may do without them and `skip`, failed otherwise; then settle the stage."""
        with self.ledger.tx() as conn:
            _lock_stage(conn, run_id, idx)
            rows = {r.node: r for r in conn.execute(
                select(L.steps.c.node, L.steps.c.required, L.steps.c.task_id)
                .where(L.steps.c.run_id == run_id, L.steps.c.idx == idx,
                       L.steps.c.member.is_(True), L.steps.c.node.in_(why)))}
            for node, reason in why.items():
                conn.execute(update(L.steps).where(
                    L.steps.c.run_id == run_id, L.steps.c.idx == idx, L.steps.c.node == node,
                    L.steps.c.state.not_in((*L.DONE, L.FAILED))).values(
                    state=L.SKIPPED if skip and not rows[node].required else L.FAILED,
                    error=reason, finished_at=time.time()))
            nxt = self._settle(conn, run_id, idx)
        for node in why:
            if skip and rows[node].task_id:  # a late message must not act after all
                app.control.revoke(rows[node].task_id, terminate=False)
        self._send_stage(run_id, nxt)

    def open_stage(self, run_id: str, idx: int) -> str:
        """Send the members of fan-out stage `idx` not done yet and set its deadline."""
        led = self.ledger
        launch = led.run(run_id)["launch"]
        members = led.members(run_id, idx)
        # A node an earlier stage skipped is not waited on again: its worker went away (or
        # never took a step) within this run, and a step on it now, without the ones it
        # missed, would not be what the plan meant. Its restart-check mends it later.
        gone = {n: f"step {i} of this run skipped {n}"
                for n, i in led.skipped_members(run_id, before=idx).items()}
        todo = [r for r in members if r.state not in L.DONE and r.node not in gone]
        sent = {r.node: uuid() for r in todo}
        # Recorded as queued before any is sent: a quick worker's running/succeeded must
        # never be overwritten by a late `queued`.
        led.queue_members(run_id, idx, sent)
        watch = StageWatch(run_id, idx, launch, opened_at=time.time())
        with app.producer_or_acquire() as producer:  # one broker connection for them all
            for r in todo:
                self._send(r, launch, task_id=sent[r.node], producer=producer)
            self.watch_later(watch, self.domain.control.step_expires, producer)
        name = members[0].name if members else "step"
        sentence = f"sent {name} to {len(todo)} node(s)"
        with led.tx() as conn:
            conn.execute(_OPEN_STAGE, {"k_run": run_id, "k_idx": idx, "v_outcome": sentence})
        left_out = {n: why for n, why in gone.items()
                    if any(r.node == n and r.state not in L.DONE for r in members)}
        if left_out:
            self.give_up(run_id, idx, left_out)
        return sentence

    def watch_later(self, watch: StageWatch, delay: float, producer: Any = None) -> None:
        stage_deadline.apply_async(kwargs={"watch": asdict(watch)}, queue=CONTROL_QUEUE,
                                   countdown=delay, producer=producer)

    def watch_stage(self, watch: StageWatch) -> None:
        """Judge the members of an open stage that have not answered; look again when
        the next of the others falls due."""
        led, ctl = self.ledger, self.domain.control
        run = led.run(watch.run_id)
        if run["launch"] != watch.launch or run["state"] != L.RUNNING:
            return  # resumed (its new launch watches anew) or ended
        waiting = {n: s for n, s in led.member_states(watch.run_id, watch.idx).items()
                   if s not in (*L.DONE, L.FAILED)}
        if not waiting:
            return
        now = time.time()
        connected = connected_workers(self.domain) if L.RUNNING in waiting.values() else None
        absent = absences(waiting, connected, watch.absent_since, now)
        late = overdue(waiting, absent, watch.opened_at, now, ctl.step_expires, ctl.lock_lease)
        if late:
            self.give_up(watch.run_id, watch.idx, late)
        rest = {n: s for n, s in waiting.items() if n not in late}
        if rest:
            self.watch_later(replace(watch, absent_since=absent),
                             next_look(rest, absent, watch.opened_at, now, ctl.step_expires,
                                       ctl.lock_lease))

    def watch_open_stages(self) -> list[str]:
        """Set a deadline for every open fan-out stage again (a control worker's start:
        the one that held a deadline may have died with it)."""
        rows = self.ledger.open_stages()
        for run_id, idx, launch, opened_at in rows:
            self.watch_later(StageWatch(run_id, idx, launch, opened_at=opened_at or 0.0), 0)
        return [f"run {r} stage {i}: watched again" for r, i, _, _ in rows]


_engine: Engine | None = None


def engine() -> Engine:
    """The engine of this process's domain (workers: the one their journal uses)."""
    global _engine
    from cosfail.workers.app import current_domain

    if _engine is None:
        _engine = Engine(current_domain())
    return _engine


def _head_key(run_id: str, idx: int):  # type: ignore[no-untyped-def]
    return and_(L.steps.c.run_id == run_id, L.steps.c.idx == idx,
                L.steps.c.member.is_(False))


# A write on the stage's own row before anything else in the transaction: PostgreSQL
# then holds that row's lock, SQLite its one writer's, so the members of one stage settle
# one at a time, each seeing the others' outcomes, and exactly one closes it.
_HEAD = and_(L.steps.c.run_id == bindparam("k_run"), L.steps.c.idx == bindparam("k_idx"),
             L.steps.c.member.is_(False))
_LOCK_STAGE = update(L.steps).where(_HEAD).values(idx=L.steps.c.idx)
# The fan-out has sent its members and set its deadline: its row waits for them, held by
# no worker (the control worker's death must not count it lost), unless they have closed
# it already.
_OPEN_STAGE = update(L.steps).where(_HEAD, L.steps.c.state == L.RUNNING).values(
    worker=None, outcome=bindparam("v_outcome"))


def _lock_stage(conn: Connection, run_id: str, idx: int) -> None:
    conn.execute(_LOCK_STAGE, {"k_run": run_id, "k_idx": idx})


@dataclass(frozen=True)
class StageWatch:
    """A deadline's input: which open stage, under which launch, opened when, and since
    when each running member's worker has been seen without a broker connection."""

    run_id: str
    idx: int
    launch: int
    opened_at: float
    absent_since: dict[str, float] = field(default_factory=dict)


def stage_verdict(members: dict[str, tuple[str, str, str | None]]) -> tuple[bool, str] | None:
    """A fan-out stage's end from its members (node → state, step name, error): None
    while one is left to finish, else whether it succeeded and the sentence saying so."""
    if any(state not in (*L.DONE, L.FAILED) for state, _, _ in members.values()):
        return None
    name = next((n for _, n, _ in members.values()), "step")
    failed = {n: e for n, (s, _, e) in sorted(members.items()) if s == L.FAILED}
    if failed:
        detail = "; ".join(f"{n}: {e}" for n, e in failed.items())
        return False, f"{name} failed on {len(failed)} node(s): {detail}"
    done = sorted(n for n, (s, _, _) in members.items() if s == L.SUCCEEDED)
    skipped = sorted(n for n, (s, _, _) in members.items() if s == L.SKIPPED)
    text = f"{name} done on {len(done)} node(s) ({', '.join(done)})"
    if skipped:
        text += f"; unreachable, skipped: {', '.join(skipped)}"
    return True, text


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


# A little past each due time: overdue() counts a member late only once strictly past it.
_PAST_DUE = 0.05


def next_look(waiting: dict[str, str], absent_since: dict[str, float], start: float,
              now: float, expires: float, lease: float) -> float:
    """Seconds until `overdue` may first name one of `waiting`: a queued member at its
    expiry, an absent worker `expires` after it was first seen gone, a running member at
    the lease; a running member's worker is looked for again every half expiry, so that
    one gone is counted absent within half an expiry of leaving."""
    due = []
    for node, state in waiting.items():
        if state in (L.QUEUED, L.PLANNED):
            due.append(start + expires)
        else:
            due.append(start + lease)
            due.append(absent_since[node] + expires if node in absent_since
                       else now + expires / 2)
    return max(0.0, min(due) - now) + _PAST_DUE


@step("control.each", EachInput)
def each_task(here: Here, arg: EachInput) -> Outcome:
    """Fan a stage out over its nodes; the last of them to finish settles it."""
    return Outcome(engine().open_stage(arg.run_id, arg.idx), pending=True)


@app.task(name="cosfail.control.stage_deadline", ignore_result=True, acks_late=True)
def stage_deadline(watch: dict[str, Any]) -> None:
    """An open fan-out's deadline: judge its members that have not answered."""
    engine().watch_stage(StageWatch(**watch))


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


__all__ = ["Do", "Each", "Engine", "engine", "wait_for", "worker_id"]
