"""Which workers answer, as seen from the control plane."""

from __future__ import annotations

import time
from dataclasses import asdict

from cosprint.domain import Domain
from cosprint.drivers import driver_for
from workers.app import app, node_queue
from workers.steps import probe
from workflows.plan import NodeSeen


def ping(timeout: float = 1.0) -> dict[str, str]:
    """Node (or 'control') → worker hostname, for every worker that answers."""
    # A connection of its own: see fresh_connection.
    with fresh_connection() as conn:
        replies = app.control.ping(timeout=timeout, connection=conn) or []
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


def probe_all(domain: Domain, nodes: list[str] | None = None,
              timeout: float = 2.0) -> dict[str, NodeSeen]:
    """Ask every node's worker what it sees, in parallel; a node whose worker does not
    answer within `timeout` is asked for its COSprint status directly."""
    nodes = nodes or domain.names()
    pending = {n: probe.apply_async(queue=node_queue(n), expires=timeout) for n in nodes}
    deadline = time.time() + timeout
    seen: dict[str, NodeSeen] = {}
    for node, result in pending.items():
        try:
            # Worker processes forbid result.get() to keep tasks from deadlocking the
            # pool; a probe from a worker's start-up thread blocks no pool slot.
            report = result.get(timeout=max(0.05, deadline - time.time()),
                                disable_sync_subtasks=False)
        except Exception:  # timeout, expired or revoked: the worker did not answer
            result.forget()
            report = None
        direct = None
        if report is None:
            st = driver_for(domain, node).status()
            direct = asdict(st) if st else None
        seen[node] = NodeSeen.from_probe(node, report, direct)
    return seen
