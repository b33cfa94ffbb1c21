"""Running a worker process: its queue, and what it checks on start.

The journal that records its steps and the check it runs on start come from the
process's composition root (workflows.runtime.run_worker): both are the ledger's, which
sits above workers, so they are handed in rather than imported.
"""

from __future__ import annotations

import faulthandler
import os
import signal
from collections.abc import Callable
from typing import Any

from celery.signals import setup_logging, task_postrun, task_prerun, worker_ready
from cosfail.cosprint import logs
from cosfail.cosprint.domain import Domain
from cosfail.workers.app import (
    CONTROL_QUEUE,
    configure,
    name_connections,
    node_queue,
    worker_client_name,
)
from cosfail.workers.step import Journal, use_journal


def run_worker(domain: Domain, node: str | None, journal: Journal,
               on_ready: Callable[[], None], concurrency: int = 4) -> None:
    """Serve `node.<node>` (or `control`) until stopped, recording each step in `journal`;
    `on_ready` runs once the worker is about to take messages."""
    os.environ["COSFAIL_DOMAIN"] = str(domain.path)
    os.environ["COSFAIL_NODE"] = node or ""
    # Named connections let a trigger see at once that a node's worker is gone
    # (workers.app.connected_workers) instead of waiting out its probe.
    name_connections(worker_client_name(domain.control.name, node))
    app = configure(domain)
    use_journal(journal)

    @worker_ready.connect(weak=False)
    def _ready(**_kw: object) -> None:
        on_ready()

    # `kill -USR1 <pid>` writes every thread's stack to the log: how to see a stuck step.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    queue = node_queue(node) if node else CONTROL_QUEUE
    use_cosfail_logging(node or "control")
    app.worker_main([
        # --quiet: no banner, so that every line of the log is one event
        "--quiet", "worker", "-Q", queue, "-n", f"{node or 'control'}@%h", "-P", "threads",
        "-c", str(concurrency), "-l", "INFO", "--without-gossip", "--without-mingle", "-E",
    ])


# Seconds between beat's asks for due scheduled switchovers: how late one may start.
SCHEDULE_TICK = 5.0


def use_cosfail_logging(node: str) -> None:
    """cosfail's log lines (cosprint/logs.py) for Celery's too: Celery sets up no logging
    of its own once a receiver handles `setup_logging`; each task's lines carry the run
    and step of its envelope, from its start to its end (Celery's "succeeded" line
    included)."""
    logs.setup(node)
    setup_logging.connect(lambda **_kw: None, weak=False)

    @task_prerun.connect(weak=False)
    def _in_run(kwargs: dict[str, Any] | None = None, **_kw: object) -> None:
        run = (kwargs or {}).get("run") or {}
        logs.in_run(run.get("run_id", ""), run.get("name", ""))

    @task_postrun.connect(weak=False)
    def _out_of_run(**_kw: object) -> None:
        logs.out_of_run()


def run_beat(domain: Domain) -> None:
    """Celery beat sending a backup trigger every `[control].backup_interval` seconds,
    and every SCHEDULE_TICK an ask to start the scheduled switchovers now due.

    The in-memory scheduler keeps no schedule file: beat's default one is a pickle shelf.
    """
    app = configure(domain)
    interval = domain.control.backup_interval
    app.conf.beat_schedule = {
        "backup": {
            "task": "cosfail.backup.scheduled",
            "schedule": interval,
            "options": {"queue": CONTROL_QUEUE, "expires": interval},
        },
        "scheduled-switchovers": {
            "task": "cosfail.schedule.due",
            "schedule": SCHEDULE_TICK,
            "options": {"queue": CONTROL_QUEUE, "expires": SCHEDULE_TICK},
        },
    }
    use_cosfail_logging("control")
    app.start(["--quiet", "beat", "--scheduler", "celery.beat:Scheduler", "-l", "INFO"])
