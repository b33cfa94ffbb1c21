"""Which workers answer, as seen from the control plane."""

from __future__ import annotations

import time
from dataclasses import asdict

from cosfail.cosprint.domain import Domain
from cosfail.cosprint.drivers import driver_for
from cosfail.workers.app import PROBE_TASK, app, connected_workers, node_queue
from cosfail.workflows.plan import NodeSeen


def ping(timeout: float = 1.0, expect: int | None = None) -> dict[str, str]:
    """Node (or 'control') → worker hostname, for every worker that answers within
    `timeout`, or as soon as `expect` have."""
    # A connection of its own: see fresh_connection.
    with fresh_connection() as conn:
        replies = app.control.ping(timeout=timeout, limit=expect, connection=conn) or []
    return {name.split("@")[0]: name for r in replies for name in r}


def alive_workers(timeout: float = 1.0) -> set[str]:
    """Worker ids (host:pid) of the workers that answer, from their stats."""
    with fresh_connection() as conn:
        stats = app.control.inspect(timeout=timeout, connection=conn).stats() or {}
    return {f"{name.split('@', 1)[1]}:{s.get('pid')}" for name, s in stats.items()}


def fresh_connection():  # type: ignore[no-untyped-def]
    """A broker connection for one broadcast-with-replies (ping, inspect), not one from
    the pool. On Redis, kombu deletes the reply queue's binding after collecting the
    replies, but the pooled connection remembers the queue as declared; when a later
    call reuses the same reply-queue name (its oid comes from the thread and the id()
    of a short-lived object), it is not declared again and every reply is dropped: the
    call returns no worker at all. Measured here: 39 of 60 pings from a thread pool
    came back short on pooled connections, 0 of 60 on fresh ones."""
    return app.connection_for_write()


# How often to look for probe replies, and whether the workers still unheard of hold a
# broker connection. (A Redis result's get(timeout) can block a whole second past its
# timeout when no reply comes: Celery's result consumer waits in one-second slices.)
POLL = 0.025
# A BCS re-checks every verified snapshot (sha256 and row counts) before it answers:
# about 1 s per 80 MB snapshot (1M objects) on a loaded 2-core machine. Only a worker
# that holds its broker connection yet does not answer (frozen) is waited on this long.
PROBE_TIMEOUT = 6.0
# A server the detector has just seen down is waited on less: one cut off from the
# broker keeps its connection listed until TCP gives up, minutes later, and one too slow
# to answer only counts as not answering (its failover waits out its lease).
SUSPECT_TIMEOUT = 1.5


def probe_all(domain: Domain, nodes: list[str] | None = None,
              timeout: float = PROBE_TIMEOUT, suspect: str | None = None,
              ask_workers: bool = True) -> dict[str, NodeSeen]:
    """Ask every node's worker what it sees, in parallel; a node whose worker does not
    answer within `timeout` (`SUSPECT_TIMEOUT` for the `suspect`), or every node when
    not `ask_workers` (the broker is down), is asked for its COSprint status directly.

    A worker that holds no connection to the broker cannot answer: it is not waited on
    (a failover's dead server would otherwise hold the failover's accept for `timeout`).
    """
    nodes = nodes or domain.names()
    pending = {n: app.send_task(PROBE_TASK, queue=node_queue(n), expires=timeout)
               for n in nodes if ask_workers}
    start = time.time()
    deadline = {n: start + (min(timeout, SUSPECT_TIMEOUT) if n == suspect else timeout)
                for n in nodes}
    reports: dict[str, dict] = {}  # type: ignore[type-arg]
    while pending:
        for node in [n for n, r in pending.items() if r.ready()]:
            result = pending.pop(node)
            if result.successful():
                # Worker processes forbid result.get() to keep tasks from deadlocking the
                # pool; a probe from a worker's start-up thread blocks no pool slot.
                reports[node] = result.get(disable_sync_subtasks=False)
            result.forget()
        now = time.time()
        for late in [n for n in pending if now >= deadline[n]]:
            pending.pop(late).forget()
        if not pending:
            break
        connected = connected_workers(domain)
        for gone in [n for n in pending if connected is not None and n not in connected]:
            pending.pop(gone).forget()
        time.sleep(POLL)
    seen: dict[str, NodeSeen] = {}
    for node in nodes:
        report = reports.get(node)
        direct = None
        if report is None:
            st = driver_for(domain, node).status()
            direct = asdict(st) if st else None
        seen[node] = NodeSeen.from_probe(node, report, direct)
    return seen
