"""The run ledger: runs, their steps, domain locks, the snapshot catalog, hosting history.

The ledger, not Celery's result backend, is the record (docs/architecture.md, invariant 4): a run's
steps, with their exact JSON arguments, are written here before the first one is sent,
so any failed run can be resumed from its failed step. The same database holds the
domain's authoritative state (`cosprint.authority`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from cosfail.cosprint import authority, lease
from cosfail.cosprint.database import open_engine
from cosfail.cosprint.errors import CosfailError
from cosfail.workflows import migrate

# The schema is declared in workflows.schema; ledger users know it as ledger.<name>.
from cosfail.workflows.schema import (  # noqa: F401
    BACKUP_LOCK,
    CANCELLED,
    DETECT_LOCK,
    DONE,
    DUE,
    FAILED,
    HOSTING_LOCK,
    HOSTING_MOVES,
    PENDING,
    PLANNED,
    QUEUED,
    REFUSED,
    RETRYING,
    RUNNING,
    SKIPPED,
    STARTED,
    SUCCEEDED,
    StepRow,
    hosting,
    liveness,
    locks,
    maintenance,
    metadata,
    runs,
    scheduled_switchovers,
    snapshots,
    steps,
)
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError


class LedgerError(CosfailError):
    """The ledger cannot do what was asked (unknown run, wrong state)."""


class UnknownRun(LedgerError):
    """No run of that id in the ledger."""


class UnknownScheduled(LedgerError):
    """No scheduled switchover of that id in the ledger."""


class LockHeld(CosfailError):
    """Another run holds the lock; carries the holder's run id."""

    def __init__(self, lock: str, holder: str) -> None:
        super().__init__(f"the {lock} lock is held by run {holder}")
        self.lock, self.holder = lock, holder


@cache
def engine_for(url: str) -> Engine:
    # WAL lets the API read while workers write; busy_timeout rides out short locks.
    return open_engine(url, pragmas=("journal_mode=WAL", "synchronous=NORMAL",
                                     "busy_timeout=15000"))


def _upsert(conn: Connection, table: Table, values: dict[str, Any]) -> None:
    """Insert the row, or update the one with its primary key: one statement, so that
    two writers of the same row (a step and its redelivery) cannot both insert."""
    dialect = {"sqlite": sqlite, "postgresql": postgresql}[conn.dialect.name]
    stmt = dialect.insert(table).values(**values)
    keys = [c.name for c in table.primary_key]
    conn.execute(stmt.on_conflict_do_update(
        index_elements=keys, set_={k: stmt.excluded[k] for k in values if k not in keys}))


# The journal's statements, built once. Building and cache-keying a Core statement costs
# more than the database's work on it (py-spy: most of a step's journal time went there).
_STEP_KEY = and_(steps.c.run_id == bindparam("k_run"), steps.c.idx == bindparam("k_idx"),
                 steps.c.node == bindparam("k_node"))
_NOT_DONE = and_(*(steps.c.state != s for s in DONE))
# Running a step, in one statement that also checks that it may run: its run is running
# under its launch, it is not done, and the domain's epoch is not newer than its own.
_START_STEP = update(steps).where(
    _STEP_KEY, _NOT_DONE,
    exists().where(runs.c.id == bindparam("k_run"), runs.c.launch == bindparam("k_launch"),
                   runs.c.state == RUNNING),
    ~exists().where(authority.domain_state.c.domain == bindparam("k_domain"),
                    authority.domain_state.c.epoch > bindparam("k_epoch")),
).values(
    state=RUNNING,
    # A retry of the same task (Celery's retry keeps the task id) is the same attempt.
    attempt=case((and_(steps.c.task_id == bindparam("v_task"), steps.c.state == RETRYING),
                  steps.c.attempt), else_=steps.c.attempt + 1),
    task_id=bindparam("v_task"), worker=bindparam("v_worker"), started_at=bindparam("v_now"),
    finished_at=None, error=None,
)
_RENEW = update(locks).where(locks.c.run_id == bindparam("k_run")).values(
    lease_until=bindparam("v_until"))
_SUCCEED_STEP = update(steps).where(_STEP_KEY, steps.c.state != SUCCEEDED).values(
    state=SUCCEEDED, outcome=bindparam("v_outcome"), facts=bindparam("v_facts"), error=None,
    finished_at=bindparam("v_now"))
_MEMBER_STATES = select(steps.c.node, steps.c.state).where(
    steps.c.run_id == bindparam("k_run"), steps.c.idx == bindparam("k_idx"),
    steps.c.member.is_(True))
_SKIPPED_MEMBERS = select(steps.c.node, func.min(steps.c.idx)).where(
    steps.c.run_id == bindparam("k_run"), steps.c.idx < bindparam("k_idx"),
    steps.c.member.is_(True), steps.c.state == SKIPPED).group_by(steps.c.node)
_QUEUE_MEMBER = update(steps).where(_STEP_KEY).values(
    state=QUEUED, queued_at=bindparam("v_now"), error=None, task_id=bindparam("v_task"))
_later = steps.alias("later")
_NEXT_IDX = (select(func.min(_later.c.idx))
             .where(_later.c.run_id == bindparam("k_run"), _later.c.idx > bindparam("k_idx"))
             .scalar_subquery())
_QUEUE_NEXT = update(steps).where(
    steps.c.run_id == bindparam("k_run"), steps.c.idx == _NEXT_IDX, _NOT_DONE,
).values(state=QUEUED, queued_at=bindparam("v_now"), error=None)


def histogram_columns(took: Any, bounds: tuple[float, ...]) -> list[Any]:
    """Per group: how many took at most each bound, their total, their count."""
    return [*(func.sum(case((took <= b, 1), else_=0)) for b in bounds), func.sum(took),
            func.count()]


def histogram_row(row: Any) -> tuple[list[int], float, int]:
    return [int(x) for x in row[:-2]], float(row[-2]), int(row[-1])


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class Ledger:
    def __init__(self, url: str, domain: str) -> None:
        self.url = url
        self.domain = domain
        self.engine = engine_for(url)
        migrate.check(self.engine)

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _execute(self, stmt: Any, conn: Connection | None) -> None:
        """`stmt` in the caller's transaction, or in one of its own."""
        if conn is not None:
            conn.execute(stmt)
            return
        with self.tx() as c:
            c.execute(stmt)

    # ----- runs --------------------------------------------------------------------
    def create_run(
        self,
        workflow: str,
        params: dict[str, Any],
        who: str,
        why: str,
        rows: list[dict[str, Any]],
        run_id: str | None = None,
        state: str = PLANNED,
        subject: str | None = None,
    ) -> str:
        run_id = run_id or new_run_id()
        now = time.time()
        with self.tx() as conn:
            conn.execute(
                insert(runs).values(
                    id=run_id, workflow=workflow, subject=subject, params=json.dumps(params),
                    triggered_by=who, reason=why, state=state, launch=1, created_at=now,
                    finished_at=now if state in (REFUSED, SKIPPED) else None,
                )
            )
            if rows:
                conn.execute(insert(steps), [
                    {**r, "run_id": run_id, "envelope": json.dumps(r["envelope"]),
                     "input": json.dumps(r["input"]), "state": PLANNED, "attempt": 0}
                    for r in rows
                ])
        return run_id

    def run(self, run_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
        if row is None:
            raise UnknownRun(f"no run {run_id!r} in the ledger")
        out = dict(row)
        out["params"] = json.loads(out["params"])
        return out

    def runs(self, limit: int = 20, workflow: str | None = None) -> list[dict[str, Any]]:
        q = select(runs).order_by(runs.c.created_at.desc()).limit(limit)
        if workflow:
            q = q.where(runs.c.workflow == workflow)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [{**r, "params": json.loads(r["params"])} for r in rows]

    def runs_since(self, since: float, workflow: str,
                   subject: str | None = None) -> list[dict[str, Any]]:
        """Runs of `workflow` (about `subject`, if given) created at or after `since`,
        newest first: bounded by time, so none is missed however many others ran."""
        q = (select(runs).where(runs.c.workflow == workflow, runs.c.created_at >= since)
             .order_by(runs.c.created_at.desc()))
        if subject is not None:
            q = q.where(runs.c.subject == subject)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [{**r, "params": json.loads(r["params"])} for r in rows]

    def runs_by_id(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Id → run, for those of `ids` the ledger holds."""
        if not ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(runs).where(runs.c.id.in_(ids))).mappings().all()
        return {r["id"]: {**r, "params": json.loads(r["params"])} for r in rows}

    def newest_by_subject(self, workflows: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """Subject → its newest run among `workflows`."""
        newest = (select(runs.c.subject, func.max(runs.c.created_at).label("at"))
                  .where(runs.c.workflow.in_(workflows), runs.c.subject.is_not(None))
                  .group_by(runs.c.subject).subquery())
        q = select(runs).join(newest, and_(runs.c.subject == newest.c.subject,
                                           runs.c.created_at == newest.c.at)) \
            .where(runs.c.workflow.in_(workflows))
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return {r["subject"]: {**r, "params": json.loads(r["params"])} for r in rows}

    def run_counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(workflow, state) → (how many runs are in it, how many times they failed)."""
        q = (select(runs.c.workflow, runs.c.state, func.count(), func.sum(runs.c.failures))
             .group_by(runs.c.workflow, runs.c.state))
        with self.engine.connect() as conn:
            return {(wf, st): (n, int(f)) for wf, st, n, f in conn.execute(q).all()}

    def run_durations(self, bounds: tuple[float, ...]
                      ) -> dict[str, tuple[list[int], float, int]]:
        """workflow → (how many succeeded runs took at most each bound, trigger to end,
        their total seconds, their count): a succeeded run is never run again."""
        took = runs.c.finished_at - runs.c.created_at
        q = (select(runs.c.workflow, *histogram_columns(took, bounds))
             .where(runs.c.state == SUCCEEDED, runs.c.finished_at.is_not(None))
             .group_by(runs.c.workflow))
        with self.engine.connect() as conn:
            return {r[0]: histogram_row(r[1:]) for r in conn.execute(q).all()}

    def newest_run(self, workflow: str, state: str) -> dict[str, Any] | None:
        q = (select(runs).where(runs.c.workflow == workflow, runs.c.state == state)
             .order_by(runs.c.created_at.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return {**row, "params": json.loads(row["params"])} if row else None

    def step_durations(self, bounds: tuple[float, ...]
                       ) -> dict[tuple[str, str], tuple[list[int], float, int]]:
        """(workflow, step) → (how many succeeded steps took at most each bound, their
        total seconds, their count): a histogram that only grows, counted by the
        database, since succeeded steps are never undone."""
        took = steps.c.finished_at - steps.c.started_at
        q = (select(runs.c.workflow, steps.c.name, *histogram_columns(took, bounds))
             .join(runs, runs.c.id == steps.c.run_id)
             .where(steps.c.state == SUCCEEDED, steps.c.started_at.is_not(None),
                    steps.c.finished_at.is_not(None))
             .group_by(runs.c.workflow, steps.c.name))
        with self.engine.connect() as conn:
            return {(r[0], r[1]): histogram_row(r[2:]) for r in conn.execute(q).all()}

    def steps(self, run_id: str) -> list[StepRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(steps).where(steps.c.run_id == run_id).order_by(steps.c.idx, steps.c.node)
            ).mappings().all()
        return [self._step_row(r) for r in rows]

    @staticmethod
    def _step_row(r: Any) -> StepRow:
        return StepRow(**{**r, "envelope": json.loads(r["envelope"]),
                          "input": json.loads(r["input"]),
                          "facts": json.loads(r["facts"]) if r["facts"] else None})

    def members(self, run_id: str, idx: int) -> list[StepRow]:
        """The members of the fan-out stage `idx`."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(steps).where(
                steps.c.run_id == run_id, steps.c.idx == idx, steps.c.member.is_(True))
                .order_by(steps.c.node)).mappings().all()
        return [self._step_row(r) for r in rows]

    def member_states(self, run_id: str, idx: int) -> dict[str, str]:
        """Node → state of each member of the fan-out stage `idx`: what its deadline
        looks at, so it reads two short columns, not whole rows."""
        with self.engine.connect() as conn:
            return dict(conn.execute(_MEMBER_STATES, {"k_run": run_id, "k_idx": idx}).all())

    def skipped_members(self, run_id: str, before: int | None = None) -> dict[str, int]:
        """Node → the first fan-out stage of the run (before stage `before`, if given)
        that skipped it."""
        last = before if before is not None else 2**31 - 1  # past every stage
        with self.engine.connect() as conn:
            return dict(conn.execute(_SKIPPED_MEMBERS, {"k_run": run_id, "k_idx": last}).all())

    def queue_members(self, run_id: str, idx: int, task_ids: dict[str, str]) -> None:
        """Record the members `task_ids` names as queued, each under its task id, in one
        transaction."""
        if not task_ids:
            return
        now = time.time()
        with self.tx() as conn:
            conn.execute(_QUEUE_MEMBER, [
                {"k_run": run_id, "k_idx": idx, "k_node": node, "v_task": task, "v_now": now}
                for node, task in task_ids.items()])

    def step_by_task(self, task_id: str) -> StepRow | None:
        """The step whose latest attempt ran as Celery task `task_id`, if any."""
        with self.engine.connect() as conn:
            key = conn.execute(select(steps.c.run_id, steps.c.idx, steps.c.node)
                               .where(steps.c.task_id == task_id)).first()
        if key is None:
            return None
        return next((s for s in self.steps(key.run_id)
                     if (s.idx, s.node) == (key.idx, key.node)), None)

    def set_run_state(self, run_id: str, state: str, error: str | None = None,
                      conn: Connection | None = None) -> None:
        values: dict[str, Any] = {"state": state, "error": error}
        if state == FAILED:  # once per failure, however often it is recorded
            values["failures"] = runs.c.failures + case((runs.c.state != FAILED, 1), else_=0)
        if state in (SUCCEEDED, FAILED, REFUSED, SKIPPED):
            values["finished_at"] = time.time()
        else:
            values["finished_at"] = None
        stmt = update(runs).where(runs.c.id == run_id).values(**values)
        self._execute(stmt, conn)

    def fail_run(self, run_id: str, error: str, conn: Connection | None = None) -> None:
        """Mark the run failed. A failed backup frees the schedule, so the next slot
        runs; a failed hosting change keeps the domain locked until it is resumed (or
        its lock's lease ends)."""
        if conn is None:
            with self.tx() as own:
                self.fail_run(run_id, error, own)
            return
        self.set_run_state(run_id, FAILED, error=error, conn=conn)
        self.release(BACKUP_LOCK, run_id, conn=conn)

    def next_launch(self, run_id: str) -> int:
        """Start a new launch of the run: messages of the older launch are superseded."""
        with self.tx() as conn:
            conn.execute(update(runs).where(runs.c.id == run_id)
                         .values(launch=runs.c.launch + 1, state=RUNNING, error=None,
                                 finished_at=None))
            return conn.execute(select(runs.c.launch).where(runs.c.id == run_id)).scalar_one()

    # ----- steps -------------------------------------------------------------------
    def _step_where(self, run_id: str, idx: int, node: str):  # type: ignore[no-untyped-def]
        return and_(steps.c.run_id == run_id, steps.c.idx == idx, steps.c.node == node)

    def update_step(self, run_id: str, idx: int, node: str, conn: Connection | None = None,
                    **values: Any) -> None:
        stmt = update(steps).where(self._step_where(run_id, idx, node)).values(**values)
        self._execute(stmt, conn)

    def start_step(self, conn: Connection, run_id: str, idx: int, node: str, launch: int,
                   epoch: int, task_id: str, worker: str, lease: float) -> bool:
        """Mark the step running and renew its run's lock, if it may run (its run is
        running under `launch`, it is not done, the domain is not past `epoch`); False
        changes nothing and leaves the why to the caller."""
        now = time.time()
        started = conn.execute(_START_STEP, {
            "k_run": run_id, "k_idx": idx, "k_node": node, "k_launch": launch,
            "k_domain": self.domain, "k_epoch": epoch, "v_task": task_id,
            "v_worker": worker, "v_now": now}).rowcount
        if started:
            conn.execute(_RENEW, {"k_run": run_id, "v_until": now + lease})
        return bool(started)

    def succeed_step(self, conn: Connection, run_id: str, idx: int, node: str, outcome: str,
                     facts: dict[str, Any]) -> bool:
        """Record the step's success; False if it was recorded already."""
        return bool(conn.execute(_SUCCEED_STEP, {
            "k_run": run_id, "k_idx": idx, "k_node": node, "v_outcome": outcome,
            "v_facts": json.dumps(facts), "v_now": time.time()}).rowcount)

    def advance(self, conn: Connection, run_id: str, done: int) -> tuple[int, int] | None:
        """After stage `done`: queue the next stage's steps not done and return its index
        with the launch to send it under; after the last stage, mark the run succeeded
        and free its locks (None)."""
        nxt = conn.execute(select(_NEXT_IDX), {"k_run": run_id, "k_idx": done}).scalar()
        if nxt is None:
            self.set_run_state(run_id, SUCCEEDED, conn=conn)
            for lock in (HOSTING_LOCK, BACKUP_LOCK):
                self.release(lock, run_id, conn=conn)
            return None
        conn.execute(_QUEUE_NEXT, {"k_run": run_id, "k_idx": done, "v_now": time.time()})
        return nxt, conn.execute(select(runs.c.launch).where(runs.c.id == run_id)).scalar_one()

    def mark_queued(self, run_id: str, idx: int, conn: Connection | None = None) -> None:
        """Every not-done row at `idx` is now waiting in a queue."""
        stmt = (update(steps)
                .where(steps.c.run_id == run_id, steps.c.idx == idx,
                       steps.c.state.not_in(DONE))
                .values(state=QUEUED, queued_at=time.time(), error=None))
        self._execute(stmt, conn)

    # ----- locks -------------------------------------------------------------------
    def acquire(self, name: str, run_id: str, owner: str, lease: float) -> None:
        """Take lock `name` for `run_id`, or raise LockHeld naming the holder."""
        now = time.time()
        with self.tx() as conn:
            row = conn.execute(select(locks).where(locks.c.name == name)).mappings().first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(locks).values(
                            name=name, run_id=run_id, owner=owner, acquired_at=now,
                            lease_until=now + lease))
                    return
                except IntegrityError:
                    row = conn.execute(select(locks).where(locks.c.name == name)).mappings().one()
            if row["run_id"] == run_id:
                conn.execute(update(locks).where(locks.c.name == name)
                             .values(lease_until=now + lease))
                return
            taken = conn.execute(
                update(locks)
                .where(locks.c.name == name, locks.c.run_id == row["run_id"],
                       locks.c.lease_until < now)
                .values(run_id=run_id, owner=owner, acquired_at=now, lease_until=now + lease)
            ).rowcount
            if not taken:
                raise LockHeld(name, row["run_id"])

    def holder(self, name: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(locks.c.run_id, locks.c.lease_until)
                               .where(locks.c.name == name)).first()
        if row is None or row.lease_until < time.time():
            return None
        return row.run_id

    def release(self, name: str, run_id: str, conn: Connection | None = None) -> None:
        stmt = locks.delete().where(locks.c.name == name, locks.c.run_id == run_id)
        self._execute(stmt, conn)

    # ----- snapshot catalog ----------------------------------------------------------
    def record_snapshot(self, **values: Any) -> None:
        with self.tx() as conn:
            _upsert(conn, snapshots, values)

    def mark_pruned(self, bcs: str, files: list[str]) -> None:
        if not files:
            return
        with self.tx() as conn:
            conn.execute(update(snapshots).where(snapshots.c.bcs == bcs,
                                                 snapshots.c.file.in_(files))
                         .values(pruned=True))

    def catalog(self, bcs: str | None = None) -> list[dict[str, Any]]:
        q = select(snapshots).where(snapshots.c.pruned.is_(False)).order_by(
            snapshots.c.created_at.desc())
        if bcs:
            q = q.where(snapshots.c.bcs == bcs)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def lock_row(self, name: str) -> dict[str, Any] | None:
        """The lock's row (holder, owner, acquired_at, lease_until), expired or not."""
        with self.engine.connect() as conn:
            row = conn.execute(select(locks).where(locks.c.name == name)).mappings().first()
        return dict(row) if row else None

    # ----- hosting history ----------------------------------------------------------
    def record_hosting(self, conn: Connection, epoch: int, server: str, moved_from: str,
                       hosted_by: str, run_id: str) -> None:
        """Record that `server`'s objects move from `moved_from` to `hosted_by` at
        `epoch`, in the caller's transaction (the one that advances the epoch). Once per
        epoch: a retried step finds its row and adds none."""
        found = conn.execute(select(hosting.c.run_id).where(hosting.c.epoch == epoch)).first()
        if found is None:
            conn.execute(insert(hosting).values(
                epoch=epoch, server=server, moved_from=moved_from, hosted_by=hosted_by,
                run_id=run_id, since=time.time()))
        elif found.run_id != run_id:
            raise LedgerError(f"epoch {epoch} already records a hosting change, by run "
                              f"{found.run_id}, not {run_id}")

    def hosting_history(self, server: str | None = None) -> list[dict[str, Any]]:
        """Every hosting change (of `server`'s objects, if given), oldest first."""
        q = select(hosting).order_by(hosting.c.epoch)
        if server is not None:
            q = q.where(hosting.c.server == server)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def hosting_moves(self) -> list[tuple[int, str, str]]:
        """(epoch, old host, new host) of every hosting change, oldest first."""
        return [(h["epoch"], h["moved_from"], h["hosted_by"]) for h in self.hosting_history()]

    def hosted_by(self, server: str) -> str | None:
        """The node hosting `server`'s objects, when that is not `server` itself."""
        history = self.hosting_history(server)
        if not history or history[-1]["hosted_by"] == server:
            return None
        return history[-1]["hosted_by"]

    # ----- maintenance (a paused domain) ---------------------------------------------
    def pause(self, who: str, why: str) -> tuple[dict[str, Any], bool]:
        """Pause the domain; (the pause in force, whether this call began it). A domain
        already paused keeps its pause: who began it and why stay on record."""
        row = {"domain": self.domain, "paused_at": time.time(), "paused_by": who,
               "reason": why}
        try:
            with self.tx() as conn:
                conn.execute(insert(maintenance).values(**row))
        except IntegrityError:
            held = self.paused()
            if held is not None:
                return held, False
            return self.pause(who, why)  # unpaused in between: pause it now
        return row, True

    def unpause(self) -> dict[str, Any] | None:
        """End the pause; the pause that ended, or None if the domain was not paused."""
        with self.tx() as conn:
            row = conn.execute(select(maintenance).where(maintenance.c.domain == self.domain)
                               ).mappings().first()
            conn.execute(maintenance.delete().where(maintenance.c.domain == self.domain))
        return dict(row) if row else None

    def paused(self) -> dict[str, Any] | None:
        """The pause in force (paused_at, paused_by, reason), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(maintenance).where(maintenance.c.domain == self.domain)
                               ).mappings().first()
        return dict(row) if row else None

    # ----- scheduled switchovers --------------------------------------------------------
    def schedule_switchover(self, server: str, to: str, at: float, who: str,
                            why: str) -> dict[str, Any]:
        row = {"id": new_run_id(), "server": server, "to_bcs": to, "at": at,
               "created_at": time.time(), "created_by": who, "reason": why,
               "state": PENDING, "decided_at": None, "run_id": None, "outcome": None}
        with self.tx() as conn:
            conn.execute(insert(scheduled_switchovers).values(**row))
        return row

    def scheduled(self, states: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Scheduled switchovers (in `states`, if given), soonest first."""
        q = select(scheduled_switchovers).order_by(scheduled_switchovers.c.at)
        if states is not None:
            q = q.where(scheduled_switchovers.c.state.in_(states))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def scheduled_one(self, sched_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(scheduled_switchovers).where(
                scheduled_switchovers.c.id == sched_id)).mappings().first()
        if row is None:
            raise UnknownScheduled(f"no scheduled switchover {sched_id!r} in the ledger")
        return dict(row)

    def scheduled_due(self, now: float) -> list[dict[str, Any]]:
        t = scheduled_switchovers
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.state == PENDING, t.c.at <= now)
                                .order_by(t.c.at)).mappings().all()
        return [dict(r) for r in rows]

    def _move_scheduled(self, sched_id: str, from_state: str, **values: Any) -> bool:
        t = scheduled_switchovers
        with self.tx() as conn:
            return bool(conn.execute(update(t).where(t.c.id == sched_id, t.c.state == from_state)
                                     .values(decided_at=time.time(), **values)).rowcount)

    def claim_scheduled(self, sched_id: str) -> bool:
        """Pending → due, for one caller only: a switchover starts once, however many
        ticks find it due."""
        return self._move_scheduled(sched_id, PENDING, state=DUE)

    def settle_scheduled(self, sched_id: str, state: str, outcome: str,
                         run_id: str | None = None) -> None:
        """A claimed switchover's end: started (its run) or refused (why)."""
        self._move_scheduled(sched_id, DUE, state=state, outcome=outcome, run_id=run_id)

    def cancel_scheduled(self, sched_id: str, who: str) -> dict[str, Any]:
        if not self._move_scheduled(sched_id, PENDING, state=CANCELLED,
                                    outcome=f"cancelled by {who}"):
            row = self.scheduled_one(sched_id)
            raise LedgerError(f"scheduled switchover {sched_id} is {row['state']}"
                              + (f" (run {row['run_id']})" if row["run_id"] else "")
                              + ": only a pending one can be cancelled")
        return self.scheduled_one(sched_id)

    # ----- liveness (the detector's transitions) ---------------------------------------
    @property
    def server_clock(self) -> bool:
        """Whether lease times are one clock's, a database server's (not SQLite's, where
        each host that writes uses its own)."""
        return self.engine.dialect.name != "sqlite"

    def lease_remaining(self, node: str) -> float | None:
        """Seconds left on `node`'s serving lease by the ledger server's clock (negative:
        ended that long ago); None if it never held one."""
        held = self.leases(node).get(node)
        return None if held is None else held["left"]

    def leases(self, node: str | None = None) -> dict[str, dict[str, Any]]:
        """Every node's (or `node`'s) recorded serving lease: epoch, renewed_at and
        expires_at (the ledger server's clock), and seconds left by that clock (negative:
        ended)."""
        now = lease.NOW_SQL[self.engine.dialect.name]
        sql = (f"SELECT node, epoch, renewed_at, expires_at, expires_at - {now} "
               "FROM serving_lease WHERE domain = :domain"
               + (" AND node = :node" if node else ""))
        with self.engine.connect() as conn:
            rows = conn.execute(text(sql), {"domain": self.domain, "node": node}).all()
        return {r[0]: {"epoch": r[1], "renewed_at": r[2], "expires_at": r[3],
                       "left": float(r[4])} for r in rows}

    def outage_totals(self) -> dict[tuple[str, str], tuple[int, float]]:
        """(node, outcome kind) → (outages, seconds), over every ledger outage the nodes
        recorded (the seconds by each node's own clock)."""
        t = authority.lease_events
        q = (select(t.c.node, t.c.outcome, func.count(), func.sum(t.c.until - t.c.since))
             .where(t.c.domain == self.domain).group_by(t.c.node, t.c.outcome))
        totals: dict[tuple[str, str], tuple[int, float]] = {}
        with self.engine.connect() as conn:
            for node, outcome, n, seconds in conn.execute(q):
                key = (node, lease.outcome_kind(outcome))
                had_n, had_s = totals.get(key, (0, 0.0))
                totals[key] = (had_n + n, had_s + float(seconds or 0))
        return totals

    def lease_events(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest ledger outages the nodes lived through, as they recorded them."""
        t = authority.lease_events
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.domain == self.domain)
                                .order_by(t.c.id.desc()).limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    def record_liveness(self, node: str, state: str, at: float, prev_state: str | None,
                        unreachable_since: float | None = None,
                        confirmed_by: str | None = None, note: str = "") -> None:
        with self.tx() as conn:
            conn.execute(insert(liveness).values(
                node=node, state=state, prev_state=prev_state, at=at,
                unreachable_since=unreachable_since, confirmed_by=confirmed_by, note=note))

    def liveness_now(self) -> dict[str, dict[str, Any]]:
        """Each node's latest liveness row."""
        newest = (select(liveness.c.node, func.max(liveness.c.id).label("id"))
                  .group_by(liveness.c.node).subquery())
        q = select(liveness).join(newest, liveness.c.id == newest.c.id)
        with self.engine.connect() as conn:
            return {r["node"]: dict(r) for r in conn.execute(q).mappings()}

    def liveness_history(self, node: str | None = None,
                         limit: int = 100) -> list[dict[str, Any]]:
        """Liveness rows, newest first."""
        q = select(liveness).order_by(liveness.c.id.desc()).limit(limit)
        if node:
            q = q.where(liveness.c.node == node)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # ----- queries for reaping and restart ------------------------------------------
    def fail_unlaunched(self, created_before: float, error: str,
                        run_id: str | None = None) -> list[str]:
        """Fail the runs still `planned` (recorded, never launched) created before that
        time; returns their ids. A failed backup frees the schedule, as a failed step's
        does; a hosting change keeps its lock until it is resumed."""
        q = select(runs.c.id).where(runs.c.state == PLANNED, runs.c.created_at < created_before)
        if run_id:
            q = q.where(runs.c.id == run_id)
        failed = []
        with self.tx() as conn:
            for rid in conn.execute(q).scalars().all():
                done = conn.execute(update(runs).where(runs.c.id == rid, runs.c.state == PLANNED)
                                    .values(state=FAILED, error=error, finished_at=time.time(),
                                            failures=runs.c.failures + 1))
                if done.rowcount:
                    failed.append(rid)
                    self.release(BACKUP_LOCK, rid, conn=conn)
        return failed

    def open_stages(self) -> list[tuple[str, int, int, float | None]]:
        """(run, stage index, launch, opened at) of every fan-out stage of a running run
        that has sent its members and waits on them."""
        q = (select(steps.c.run_id, steps.c.idx, runs.c.launch, steps.c.started_at)
             .join(runs, runs.c.id == steps.c.run_id)
             .where(runs.c.state == RUNNING, steps.c.member.is_(False),
                    steps.c.node == "", steps.c.state == RUNNING, steps.c.worker.is_(None)))
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(q).all()]  # type: ignore[misc]

    def stuck_steps(self, node: str | None = None) -> list[StepRow]:
        """Steps recorded as running or queued in runs that are still running."""
        q = (select(steps.c.run_id, steps.c.idx, steps.c.node)
             .join(runs, runs.c.id == steps.c.run_id)
             .where(runs.c.state == RUNNING,
                    or_(steps.c.state == RUNNING, steps.c.state == QUEUED,
                        steps.c.state == RETRYING)))
        if node is not None:
            q = q.where(steps.c.node == node)
        with self.engine.connect() as conn:
            keys = conn.execute(q).all()
        wanted = {(k.run_id, k.idx, k.node) for k in keys}
        return [s for rid in {k.run_id for k in keys} for s in self.steps(rid)
                if (s.run_id, s.idx, s.node) in wanted]
