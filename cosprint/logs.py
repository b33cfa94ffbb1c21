"""Log lines as operators ship them: one line per event, each with its level, the node
of the process, and the run and step it is part of, as text or as JSON
(`cosfail --log-format json`, or $COSFAIL_LOG_FORMAT, which the processes a command
starts inherit). Under systemd (whose journal sets $JOURNAL_STREAM) a text line starts
with its syslog priority, `<3>` for an error, and no time: journald stamps and levels
each line itself, so `journalctl -p warning` filters them.
"""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar
from pathlib import Path

FORMATS = ("text", "json")
ENV = "COSFAIL_LOG_FORMAT"

# The run and step a thread is working on: set around each step a worker runs.
_run: ContextVar[tuple[str, str]] = ContextVar("cosfail_run", default=("", ""))

# syslog priorities of the levels, for journald's `<N>` line prefix
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


def in_run(run_id: str, step: str) -> None:
    """Tag this thread's lines with the run and step, until `out_of_run`."""
    _run.set((run_id, step))


def out_of_run() -> None:
    _run.set(("", ""))


class Context(logging.Filter):
    """Adds node, run_id and step to every record (empty where there is none)."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        record.run_id, record.step = _run.get()
        record.priority = _PRIORITY.get(record.levelno, 6)
        return True


def wanted(fmt: str | None = None) -> str:
    """The format asked for: `fmt`, else $COSFAIL_LOG_FORMAT, else text."""
    fmt = fmt or os.environ.get(ENV) or "text"
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    return fmt


def formatter(fmt: str | None = None) -> logging.Formatter:
    if wanted(fmt) == "json":
        # Imported here: cosprintd starts without site-packages (cosprint/daemon), and
        # adds them only for what needs a package.
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter("{asctime}{levelname}{name}{node}{run_id}{step}{message}",
                             style="{", rename_fields={"asctime": "time", "levelname": "level",
                                                       "name": "logger"})
    head = "<%(priority)s>" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    return OneLine(head + "%(levelname)s %(name)s node=%(node)s run=%(run_id)s "
                   "step=%(step)s: %(message)s")


class OneLine(logging.Formatter):
    """A record on one line, its message's and traceback's line breaks written `\\n`:
    a shipper (journald, Loki's promtail) takes each line for one event."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\\n")


def setup(node: str, fmt: str | None = None, level: int = logging.INFO,
          file: Path | None = None, echo: bool = False) -> None:
    """This process's logging: every logger's lines (Celery's, uvicorn's, Flower's too)
    on stderr, or appended to `file` (and with `echo` on stderr as well)."""
    handlers: list[logging.Handler] = [logging.FileHandler(file)] if file else []
    if echo or not file:
        handlers.append(logging.StreamHandler(sys.stderr))
    context, form = Context(node or "control"), formatter(fmt)
    for handler in handlers:
        handler.addFilter(context)
        handler.setFormatter(form)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(True)  # a warning is an event too, not lines on stderr
