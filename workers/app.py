"""The Celery app: JSON only, late acks, one queue per node plus `control`.

Every process (worker, beat, API, CLI) configures the same app from the domain file,
so task names, queues and serializers agree everywhere.
"""

from __future__ import annotations

import os
import re
from functools import cache

from celery import Celery
from cosfail.cosprint.domain import Domain, load_domain

CONTROL_QUEUE = "control"
# Sent by name: who only asks after the nodes (`cosfail status`) need not import the
# steps, and with them the SSH stack, to send it.
PROBE_TASK = "cosfail.node.probe"

app = Celery("cosfail", include=["cosfail.workers.steps"])

# A message taken by a worker that is then SIGKILLed comes back only after this long
# (Redis transport). Recovery from a lost worker is the ledger's resume, fenced by the
# run's launch number, so redelivery is a late safety net, never the plan: keep it long
# enough that a slow step is never run twice while it is still running.
VISIBILITY_TIMEOUT = 3600


def node_queue(node: str) -> str:
    return f"node.{node}"


def route_by_envelope(name: str, args: object, kwargs: dict | None, options: dict,
                      task: object = None, **_kw: object) -> dict[str, str] | None:
    """A step sent without a queue (re-applied from Flower, say) goes to its node's queue.

    Its `run` envelope names the node; a queue given explicitly still wins.
    """
    run = (kwargs or {}).get("run")
    if name.startswith("cosfail.") and isinstance(run, dict) and "node" in run:
        return {"queue": node_queue(run["node"]) if run["node"] else CONTROL_QUEUE}
    return None


_client_name: str | None = None


def _client_prefix(domain: str) -> str:
    # Redis refuses a client name with spaces or special characters.
    return "cosfail-worker:" + re.sub(r"[^A-Za-z0-9._-]", "_", domain) + ":"


def worker_client_name(domain: str, node: str | None) -> str:
    """The name a node's (or the control) worker gives its broker connections."""
    return _client_prefix(domain) + (node or CONTROL_QUEUE)


def name_connections(name: str) -> None:
    """Name every broker connection this process opens from now on (a worker's)."""
    global _client_name
    _client_name = name


def key_prefix(domain: str) -> str:
    """What every broker key of `domain` starts with (queues, broadcasts such as ping,
    results): two domains on one Redis never take each other's work."""
    return "cosfail." + re.sub(r"[^A-Za-z0-9._-]", "_", domain) + "."


def configure(domain: Domain) -> Celery:
    prefix = key_prefix(domain.control.name)
    transport: dict[str, object] = {"visibility_timeout": VISIBILITY_TIMEOUT,
                                    "global_keyprefix": prefix}
    if _client_name:
        transport["client_name"] = _client_name
    before = (app.conf.broker_url, (app.conf.broker_transport_options or {}).get(
        "global_keyprefix"))
    moved = before[0] is not None and before != (domain.broker_url, prefix)
    app.conf.update(
        broker_url=domain.broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Only probes keep results (the control plane waits on them); the ledger is
        # the record of everything else.
        task_ignore_result=True,
        result_backend=domain.broker_url,
        result_backend_transport_options={"global_keyprefix": prefix},
        result_expires=300,
        task_default_queue=CONTROL_QUEUE,
        task_routes=(route_by_envelope,),
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        broker_heartbeat=0,
        enable_utc=True,
    )
    app.conf.cosfail_domain = domain
    if moved:
        _forget_broker()
    return app


def _forget_broker() -> None:
    """Celery keeps its first broker's connection pool, producer pool and result
    backend for the life of the process, whatever the configuration says later; a
    process that moves to another domain's broker or key prefix (tests and benchmarks
    run domains in turn) would go on publishing to the old one."""
    app._pool = None
    app.amqp._producer_pool = None
    app._backend_cache = None
    app._local.backend = None


@cache
def current_domain() -> Domain:
    """The domain of this process: $COSFAIL_DOMAIN (set by `cosfail worker -d`)."""
    domain = load_domain(os.environ.get("COSFAIL_DOMAIN"))
    configure(domain)
    return domain


def connected_workers(domain: Domain, timeout: float = 0.5) -> set[str] | None:
    """The nodes (and `control`) whose worker holds a connection to the broker now, from
    the names workers give their connections; None when the broker cannot say (not
    Redis, CLIENT LIST refused, or no worker of the domain names its connections).

    A worker SIGKILLed on its host loses its connections at once (the kernel closes
    them); one on a host that died keeps them until Redis's TCP keepalive gives up, so
    it still counts as connected: this answer is never "gone" for a worker that is not.
    """
    if not domain.broker_url.startswith(("redis://", "rediss://")):
        return None
    import redis

    prefix = _client_prefix(domain.control.name)
    try:
        client = redis.Redis.from_url(domain.broker_url, socket_timeout=timeout,
                                      socket_connect_timeout=timeout)
        with client:
            names = {c.get("name", "") for c in client.client_list()}
    except redis.RedisError:
        return None
    nodes = {n.removeprefix(prefix) for n in names if n.startswith(prefix)}
    return nodes or None


def may_answer(domain: Domain, node: str) -> bool:
    """Whether `node`'s worker can answer a ping: not when the broker says it holds no
    connection (a ping would wait out its whole timeout for it)."""
    connected = connected_workers(domain)
    return connected is None or node in connected


class BrokerUnreachable(Exception):
    """The broker named in the domain file does not answer."""


def check_broker(url: str, timeout: float = 2.0) -> None:
    """Raise BrokerUnreachable (one line, naming the URL) unless the broker answers."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout) as conn:
            # kombu sleeps 2 s before its one retry by default: an operator asking
            # `status` of a dead broker would wait it out for nothing.
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
    except Exception as exc:  # kombu raises transport-specific errors
        raise BrokerUnreachable(f"broker {url} does not answer ({type(exc).__name__})") from None
