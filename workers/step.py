"""What makes a function a step: its envelope, its guards, and its record.

A step message carries two JSON documents: `run`, the envelope (which run, which step,
which node, the epoch it was issued under, the run's launch number), and `step`, the
one small dataclass that is the step's input. Before acting, a step refuses:
- a message for another node (misrouted),
- an epoch older than the domain's (docs/architecture.md, invariant 2: a message that
  waited in a dead node's queue must not act when the node returns),
- a launch the ledger has superseded (a redelivered message after a resume).
The journal, which records each step in the run ledger, checks the last two in the
transaction that records the step's start. It is injected by the process that runs the
worker: workers know the interface, not the ledger.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, TypeVar

from celery import Task
from celery.exceptions import Ignore
from cosfail.cosprint.domain import Domain
from cosfail.cosprint.driver import Driver
from cosfail.cosprint.drivers import driver_for
from cosfail.cosprint.errors import CosfailError, StaleEpochError
from cosfail.workers import failpoints
from cosfail.workers.app import CONTROL_QUEUE, app, current_domain, node_queue
from sqlalchemy.exc import OperationalError

log = logging.getLogger("cosfail.step")

CONTROL = ""  # the node of a step that touches no node


@dataclass(frozen=True, kw_only=True)
class Envelope:
    run_id: str
    workflow: str
    index: int
    name: str
    node: str
    epoch: int
    launch: int = 1
    # Set for the members of a fan-out: the last of them to finish settles the stage.
    member: bool = False
    # The domain whose run it is: a worker of another domain on the same broker leaves
    # it alone (empty in messages queued before the field was added).
    domain: str = ""

    @property
    def where(self) -> str:
        return self.node or CONTROL_QUEUE


@dataclass(frozen=True)
class Outcome:
    """What a step did: one sentence for people, and facts for the steps after it.

    `pending`: the step handed its work on to others who report back (a fan-out sent its
    members); the journal records it done when they have.
    """

    sentence: str
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    pending: bool = False


class Superseded(Exception):
    """The journal's answer to a message from a launch that a resume has replaced."""


class Journal(Protocol):
    """Records steps; the ledger implements it (workflows/ledger.py)."""

    def begin(self, env: Envelope, task_id: str, worker: str) -> str | None:
        """Record the start; return why the step must not run, or None: its epoch is
        older than the domain's (checked in the transaction that records the start, so
        no epoch change can slip in between), or its run or step is unknown.

        Raises Superseded for a message of an older launch of the run, or of a step
        already done: it is dropped without a trace in the run, which belongs to the
        newer launch.
        """
        ...

    def succeed(self, env: Envelope, outcome: Outcome) -> None:
        """Record the outcome and send the run on: the journal, not Celery, knows what
        comes next."""
        ...

    def fail(self, env: Envelope, error: str, final: bool) -> None: ...


_journal: Journal | None = None


def use_journal(journal: Journal) -> None:
    global _journal
    _journal = journal


def journal() -> Journal:
    if _journal is None:
        raise RuntimeError("no step journal configured in this process")
    return _journal


@dataclass(frozen=True)
class Here:
    """Where a node step runs: the domain, this node and its COSprint driver, and the run
    it is a step of."""

    domain: Domain
    node: str
    run_id: str = ""

    @property
    def driver(self) -> Driver:
        return _driver(self.domain.path, self.node)


@cache
def _driver(_domain_path: object, node: str) -> Driver:
    return driver_for(current_domain(), node)


def this_node() -> str:
    """The node this worker serves ($COSFAIL_NODE), or CONTROL for a control worker."""
    return os.environ.get("COSFAIL_NODE", CONTROL)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


S = TypeVar("S")

# Faults worth a retry with backoff: the ledger DB or a peer briefly unreachable.
TRANSIENT = (OperationalError, ConnectionError, TimeoutError)
MAX_RETRIES = 3


StepFn = Callable[[Here, S], "str | Outcome"]


def step(name: str, input_type: type[S]) -> Callable[[StepFn], Task]:
    """Register `fn(here, input) -> outcome` as the task `cosfail.<name>`."""

    def decorate(fn: StepFn) -> Task:
        @app.task(
            name=f"cosfail.{name}",
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            max_retries=MAX_RETRIES,
            # Explicit: a task made before configure() would otherwise take Celery's
            # default (False) and store every result in the backend. The ledger is the
            # record of a step.
            ignore_result=True,
        )
        def task(self: Task, run: dict[str, Any], step: dict[str, Any]) -> str:
            env = Envelope(**run)
            return _run_step(self, env, fn, input_type(**step))

        task.__doc__ = fn.__doc__
        task.input_type = input_type  # type: ignore[attr-defined]
        return task

    return decorate


def _run_step(self: Task, env: Envelope, fn: StepFn, arg: S) -> str:
    domain = current_domain()
    if env.domain and env.domain != domain.control.name:
        # Not this domain's run: its ledger is not this worker's to write either. The
        # run's own stage deadline fails the step, resumably.
        log.error("dropped %s of run %s: a step of domain %r reached a worker of domain %r",
                  env.name, env.run_id, env.domain, domain.control.name)
        raise Ignore()
    here = this_node()
    if env.node != here and not (env.node == CONTROL and here == CONTROL):
        # A control worker serves `control` only; a node worker its own queue.
        _refuse(env, f"step {env.name} for node {env.where!r} reached the worker of {here!r}")
    try:
        reason = journal().begin(env, self.request.id, worker_id())
    except Superseded as exc:
        log.warning("dropped %s of run %s: %s", env.name, env.run_id, exc)
        raise Ignore() from None
    if reason:
        _refuse(env, reason)
    failpoints.hit(env.name, env.node, "before")
    try:
        result = fn(Here(domain, env.node, env.run_id), arg)
    except TRANSIENT as exc:
        final = self.request.retries >= MAX_RETRIES
        journal().fail(env, f"{type(exc).__name__}: {exc}", final=final)
        if final:
            raise
        raise self.retry(exc=exc, countdown=0.2 * 2**self.request.retries) from None
    except CosfailError as exc:
        journal().fail(env, str(exc), final=True)
        raise
    except Exception as exc:
        journal().fail(env, f"{type(exc).__name__}: {exc}", final=True)
        raise
    failpoints.hit(env.name, env.node, "after")
    outcome = result if isinstance(result, Outcome) else Outcome(result)
    journal().succeed(env, outcome)
    return outcome.sentence


def _refuse(env: Envelope, reason: str) -> None:
    log.warning("refused %s of run %s: %s", env.name, env.run_id, reason)
    journal().fail(env, reason, final=True)
    raise StaleEpochError(reason)


def queue_of(env: Envelope) -> str:
    return node_queue(env.node) if env.node else CONTROL_QUEUE


def as_json(obj: object) -> dict[str, Any]:
    return dataclasses.asdict(obj)  # type: ignore[call-overload]
