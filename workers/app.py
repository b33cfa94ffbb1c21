"""The Celery app: JSON only, late acks, one queue per node plus `control`.

Every process (worker, beat, API, CLI) configures the same app from the domain file,
so task names, queues and serializers agree everywhere.
"""

from __future__ import annotations

import os
from functools import cache

from celery import Celery

from cosprint.domain import Domain, load_domain

CONTROL_QUEUE = "control"

app = Celery("cosfail", include=["workers.steps"])

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


def configure(domain: Domain) -> Celery:
    app.conf.update(
        broker_url=domain.broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
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
    return app


@cache
def current_domain() -> Domain:
    """The domain of this process: $COSFAIL_DOMAIN (set by `cosfail worker -d`)."""
    domain = load_domain(os.environ.get("COSFAIL_DOMAIN"))
    configure(domain)
    return domain


class BrokerUnreachable(Exception):
    """The broker named in the domain file does not answer."""


def check_broker(url: str, timeout: float = 2.0) -> None:
    """Raise BrokerUnreachable (one line, naming the URL) unless the broker answers."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # kombu raises transport-specific errors
        raise BrokerUnreachable(f"broker {url} does not answer ({type(exc).__name__})") from None
