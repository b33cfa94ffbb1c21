"""The worker process's composition root (`cosfail worker`): the ledger's engine as the
journal of workers.runner's Celery worker, and the start-up check it runs once ready.

It lives here, not in workers/, because workers sit below workflows and may not import
them: workers.runner takes the journal and the start-up hook as arguments.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial

from cosfail.cosprint.domain import Domain
from cosfail.cosprint.drivers import driver_for
from cosfail.cosprint.errors import CosfailError
from cosfail.workers import runner
from cosfail.workers.step import worker_id
from cosfail.workflows import engine as engine_mod
from cosfail.workflows import ledger as L
from cosfail.workflows.engine import Engine

log = logging.getLogger("cosfail.worker")


def run_worker(domain: Domain, node: str | None, concurrency: int = 4) -> None:
    """Serve `node.<node>` (or `control`) until stopped."""
    runner.run_worker(domain, node, journal_for(domain), partial(on_worker_start, domain, node),
                      concurrency)


def journal_for(domain: Domain) -> Engine:
    # Importing registers every control step and workflow task on the app.
    from cosfail.workflows import backup, control, schedule  # noqa: F401

    engine_mod._engine = Engine(domain)
    return engine_mod._engine


def on_worker_start(domain: Domain, node: str | None) -> None:
    """A (re)started worker fails the steps its previous process died in; a node's
    worker then runs restart-check, which decides whether its COSprint may start."""
    eng = engine_mod.engine()
    for line in eng.reap_lost_steps(node=node or "", alive={worker_id()}):
        log.warning("%s", line)
    if not node:  # the control worker that held a stage's deadline may have died with it
        for line in eng.watch_open_stages():
            log.info("%s", line)
    if node:
        try:
            driver_for(domain, node).prepare()
        except (OSError, CosfailError) as exc:  # its starts are then slower, not wrong
            log.warning("%s: COSprint's starts not prepared: %s", node, exc)
        # In a thread: reclaim probes this very worker, which must be consuming by then.
        threading.Thread(target=_check_node, args=(eng, node), daemon=True).start()


def _check_node(eng: Engine, node: str) -> None:
    from cosfail.workflows import trigger
    from cosfail.workflows.liveness import probe_all
    from cosfail.workflows.plan import MoveRequest
    from cosfail.workflows.reclaim import RECLAIM
    from cosfail.workflows.refusal import Refused
    from cosfail.workflows.restart_check import RESTART_CHECK, CheckRequest

    # worker_ready comes just before the consumer takes messages: wait until this worker
    # answers its own probe, which reclaim's plan needs. Each probe is waited on for the
    # full probe timeout: a BCS answers slowly with large snapshots to re-check, and
    # sending a new probe every half second piled dozens on it.
    for _ in range(10):
        if probe_all(eng.domain, [node])[node].worker:
            break
        time.sleep(0.5)
    # A hosting change in flight owns every node's designation and COSprint: checking now
    # would act on half-changed state. It re-points this node itself, or its end (or
    # lease) lets this check run on the state it left.
    deadline = time.time() + eng.domain.control.lock_lease
    while (holder := eng.ledger.holder(L.HOSTING_LOCK)) and time.time() < deadline:
        log.info("start-up check of %s waits for run %s to end", node, holder)
        time.sleep(1.0)
    run_id = None
    try:
        try:
            run_id = trigger.run(eng, RESTART_CHECK, CheckRequest(node), f"worker:{node}",
                                 "worker started").run_id
        except Refused:  # recorded: it waits for reclaim
            if eng.domain.control.auto_reclaim:
                run_id = trigger.run(eng, RECLAIM, MoveRequest(node), "auto",
                                     f"{node}'s worker returned").run_id
    except Exception:  # never keep a worker from serving: the ledger says what happened
        log.exception("restart-check of %s could not start", node)
        return
    log.info("start-up check of %s: run %s", node, run_id or "reclaim needed, left stopped")
