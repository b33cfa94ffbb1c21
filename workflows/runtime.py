"""What a worker process needs from the workflows layer: the journal and its start-up."""

from __future__ import annotations

import logging
import os

from cosprint.domain import Domain
from workers.step import worker_id
from workflows import engine as engine_mod
from workflows.engine import Engine

log = logging.getLogger("cosfail.worker")


def journal_for(domain: Domain) -> Engine:
    # Importing registers every control step and workflow task on the app.
    from workflows import backup, control  # noqa: F401

    engine_mod._engine = Engine(domain)
    return engine_mod._engine


def on_worker_start(domain: Domain, node: str | None) -> None:
    """A (re)started worker fails the steps its previous process died in; a node's
    worker then runs restart-check, which decides whether its COSprint may start."""
    from workflows.restart_check import start_restart_check

    eng = engine_mod.engine()
    for line in eng.reap_lost_steps(node=node or "", alive={worker_id()}):
        log.warning("%s", line)
    if node and os.environ.get("COSFAIL_NO_RESTART_CHECK") != "1":
        try:
            run_id = start_restart_check(eng, node, f"worker:{node}", "worker started")
        except Exception:  # never keep a worker from serving: the run is the record
            log.exception("restart-check of %s could not start", node)
            return
        log.info("restart-check of %s: %s", node, run_id or "reclaim needed, left stopped")
