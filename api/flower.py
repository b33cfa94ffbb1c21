"""`cosfail flower`: the real Flower for the domain's broker, with basic auth, plus what
Flower lacks for cosfail: a run's page, and a Retry button on a failed step's task page.

Nothing of Flower is forked or copied (docs/architecture.md §7.2). Flower's own option parsing and
defaults (`flower.command`, its `FLOWER_*` environment variables included) give the
options; the address, port and basic auth come from `[control]`, so Flower is never open.
The Tornado application is Flower's own class, built here as
`Flower(capp=app, options=options, transforms=[...], **settings)`; our routes are added
with `add_handlers` and their handlers subclass Flower's `BaseHandler`, so they take its
basic auth and its cross-site check as they are. A Tornado `OutputTransform` adds one
`<script>` to Flower's task page; the script (flower_retry.js) adds the Retry button.

Thin, like the rest of api/: whether a task may be retried is the ledger's answer
(workflows), and a retry is `Engine.resume` of the step's run.
"""

from __future__ import annotations

import atexit
import logging
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tornado.web
from cosfail.cosprint.domain import Domain
from cosfail.cosprint.errors import CosfailError
from flower.views import BaseHandler
from tornado.escape import url_escape, xhtml_escape
from tornado.httputil import HTTPServerRequest
from tornado.ioloop import IOLoop
from tornado.web import OutputTransform

log = logging.getLogger("cosfail.flower")

SCRIPT = Path(__file__).with_name("flower_retry.js")
PREFIX = "/cosfail"


class FlowerConfigError(CosfailError):
    """Flower cannot be started as the domain file says."""


# ----- configuration ---------------------------------------------------------------------
def read_basic_auth(domain: Domain) -> str:
    """`user:password` from `[control].flower_auth_file`; refuse to run Flower open."""
    path = domain.resolve(domain.control.flower_auth_file)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise FlowerConfigError(
            f"{path}: no such file ([control].flower_auth_file): Flower needs basic auth "
            "credentials, one line `user:password`") from None
    except OSError as exc:
        raise FlowerConfigError(f"{path}: cannot read it: {exc.strerror}") from None
    user, sep, password = text.partition(":")
    if not sep or not user or not password or "\n" in text:
        raise FlowerConfigError(
            f"{path}: expected one line `user:password` ([control].flower_auth_file)")
    return text


def flower_options(domain: Domain) -> Any:
    """Flower's options, parsed by Flower itself: its defaults, `FLOWER_*` variables and
    config file, then what the domain file says (address, port, basic auth)."""
    from flower.command import apply_env_options, apply_options
    from flower.options import default_options

    host, _, port = domain.control.flower.rpartition(":")
    apply_env_options()
    apply_options("cosfail flower", [f"--address={host or '127.0.0.1'}", f"--port={port}"])
    # Set, not parsed: on a command line this option splits at commas, and a password may
    # hold one.
    default_options.basic_auth = [read_basic_auth(domain)]
    if default_options.auth or default_options.auth_provider:
        # One way in: the domain's credentials (FLOWER_AUTH would add OAuth beside them).
        raise FlowerConfigError("cosfail flower uses [control].flower_auth_file only: "
                                "unset FLOWER_AUTH / FLOWER_AUTH_PROVIDER")
    return default_options


# ----- what the handlers ask of the ledger (no Tornado here) -------------------------------
class Refusal(CosfailError):
    """The task cannot be retried; `status` is the HTTP answer (404 or 409)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def run_url(prefix: str, run_id: str) -> str:
    return f"{prefix}{PREFIX}/run/{url_escape(run_id, plus=False)}"


def describe_task(eng: Any, task_id: str, prefix: str = "") -> dict[str, Any]:
    """The cosfail step whose latest attempt is Celery task `task_id`, as the ledger has
    it, and whether a retry would be accepted; Refusal(404) when there is no such step."""
    from cosfail.workflows import ledger as L

    row = eng.ledger.step_by_task(task_id)
    if row is None:
        raise Refusal(404, f"task {task_id} is not a step of any cosfail run in the ledger "
                           "(unknown id, or an earlier attempt of a step run again since): "
                           "only a failed cosfail step can be retried")
    run = eng.ledger.run(row.run_id)
    where = f"step {row.idx} {row.name} on {row.node or 'control'} of run {row.run_id}"
    why_not = None
    if row.state != L.FAILED:
        why_not = (f"task {task_id} is {where}, which is {row.state}, not failed: "
                   "nothing to retry")
    elif run["state"] != L.FAILED:
        why_not = f"run {row.run_id} is {run['state']}, not failed: nothing to retry"
    return {
        "task_id": task_id, "run_id": row.run_id, "workflow": run["workflow"],
        "idx": row.idx, "name": row.name, "node": row.node, "task": row.task,
        "member": row.member, "state": row.state, "error": row.error,
        "run_state": run["state"], "retryable": why_not is None, "why_not": why_not,
        "run_url": run_url(prefix, row.run_id),
    }


def retry_task(eng: Any, task_id: str, prefix: str = "",
               alive: Callable[[], set[str]] | None = None) -> dict[str, Any]:
    """Resume the run of the failed step `task_id` from its first step not done."""
    from cosfail.workflows import ledger as L

    info = describe_task(eng, task_id, prefix)
    if info["run_state"] == L.RUNNING and alive is not None:
        # `running`, yet a step's worker may be gone: as `cosfail resume` does, fail the
        # steps no living worker holds, then ask the ledger again.
        eng.reap_lost_steps(info["run_id"], alive=alive())
        info = describe_task(eng, task_id, prefix)
    if not info["retryable"]:
        raise Refusal(409, info["why_not"])
    try:
        first = eng.resume(info["run_id"])
    except L.LedgerError as exc:
        raise Refusal(409, str(exc)) from None
    log.info("retry of task %s: run %s resumed from step %s", task_id, info["run_id"], first)
    return {**info, "retryable": False, "run_state": L.RUNNING, "resumed_from": first,
            "message": f"run {info['run_id']} resumed from step {first}"}


# ----- Tornado: handlers, the transform, the application -----------------------------------
class _Handler(BaseHandler):
    """Flower's BaseHandler (its basic auth, its cross-site check), with our engine."""

    eng: Any

    def initialize(self, engine: Any = None) -> None:
        self.eng = engine

    @property
    def prefix(self) -> str:
        p = self.application.options.url_prefix
        return "/" + p.strip("/") if p else ""

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await IOLoop.current().run_in_executor(None, fn, *args)

    def refuse(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish({"error": message, "status": status})


class RetryHandler(_Handler):
    """POST {prefix}/cosfail/retry/<task_id>: resume the failed step's run."""

    @tornado.web.authenticated
    async def post(self, task_id: str) -> None:
        if self.application.options.read_only:
            return self.refuse(403, "Flower runs read-only: retry is disabled")
        from cosfail.workflows.liveness import alive_workers

        try:
            answer = await self.blocking(retry_task, self.eng, task_id, self.prefix,
                                         alive_workers)
        except Refusal as exc:
            return self.refuse(exc.status, str(exc))
        except CosfailError as exc:
            return self.refuse(409, str(exc))
        self.set_status(202)
        self.set_header("Location", answer["run_url"])
        self.finish(answer)


class StepHandler(_Handler):
    """GET {prefix}/cosfail/step/<task_id>: the ledger's view of a task."""

    @tornado.web.authenticated
    async def get(self, task_id: str) -> None:
        try:
            answer = await self.blocking(describe_task, self.eng, task_id, self.prefix)
        except Refusal as exc:
            return self.refuse(exc.status, str(exc))
        self.finish(answer)


class RunHandler(_Handler):
    """GET {prefix}/cosfail/run/<run_id>: the run's steps from the ledger, as a page that
    refreshes itself until the run ends, or as JSON (`?format=json`)."""

    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        from cosfail.api import view
        from cosfail.workflows import ledger as L

        try:
            data = await self.blocking(view.run_json, self.eng, run_id)
        except L.LedgerError as exc:
            return self.refuse(404, str(exc))
        if (self.get_argument("format", "") == "json"
                or "application/json" in self.request.headers.get("Accept", "")):
            return self.finish(data)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(run_page(data, self.prefix))


class ScriptHandler(_Handler):
    """GET {prefix}/cosfail/retry.js: the script Flower's task page gets."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/javascript; charset=UTF-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(SCRIPT.read_bytes())


class TaskPageScript(OutputTransform):
    """Adds `<script src=.../cosfail/retry.js>` to Flower's task page (`/task/<id>`)."""

    def __init__(self, request: HTTPServerRequest, prefix: str = "") -> None:
        super().__init__(request)
        self.tag = f'<script src="{prefix}{PREFIX}/retry.js" defer></script>'.encode()
        self.wanted = (request.method == "GET"
                       and re.fullmatch(re.escape(prefix) + r"/task/[^/]+", request.path)
                       is not None)

    def transform_first_chunk(self, status_code: int, headers: Any, chunk: bytes,
                              finishing: bool) -> tuple[int, Any, bytes]:
        html = headers.get("Content-Type", "").startswith("text/html")
        if self.wanted and status_code == 200 and html and finishing:
            at = chunk.rfind(b"</body>")
            if at >= 0:
                chunk = chunk[:at] + self.tag + chunk[at:]
                headers["Content-Length"] = str(len(chunk))
        return status_code, headers, chunk


def make_flower(domain: Domain, options: Any) -> Any:
    """Flower's application for the domain, with our routes and the task-page script."""
    from cosfail.workers.app import configure
    from cosfail.workflows import backup, control  # noqa: F401  (registers every step task)
    from cosfail.workflows.engine import Engine
    from flower.app import Flower, rewrite_handler
    from flower.command import extract_settings
    from flower.urls import settings

    capp = configure(domain)
    eng = Engine(domain)
    extract_settings()  # Flower's own: debug, cookie secret, url prefix, SSL
    prefix = "/" + options.url_prefix.strip("/") if options.url_prefix else ""
    routes: list[tuple[str, type, dict[str, Any]]] = [
        (rf"{PREFIX}/retry/([^/]+)", RetryHandler, {"engine": eng}),
        (rf"{PREFIX}/step/([^/]+)", StepHandler, {"engine": eng}),
        (rf"{PREFIX}/run/([^/]+)", RunHandler, {"engine": eng}),
        (rf"{PREFIX}/retry\.js", ScriptHandler, {}),
    ]
    if prefix:
        routes = [(rewrite_handler((r, h), options.url_prefix)[0], h, kw)
                  for r, h, kw in routes]

    def transform(request: HTTPServerRequest) -> TaskPageScript:
        return TaskPageScript(request, prefix)

    app = Flower(capp=capp, options=options, transforms=[transform], **settings)
    # Inserted before Flower's own rules (whose last one answers 404 to anything).
    app.add_handlers(r".*", routes)
    return app


def serve(domain: Domain) -> None:
    """Run Flower until SIGTERM (what `cosfail flower` does)."""
    from cosfail.cosprint import logs
    from cosfail.workers.app import check_broker
    from flower.command import setup_logging

    options = flower_options(domain)
    check_broker(domain.broker_url)
    logs.setup("control")
    setup_logging()
    app = make_flower(domain, options)
    atexit.register(app.stop)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = app.start_http_server()
    log.info("Flower for domain %s on http://%s:%s%s (broker %s)", domain.control.name,
             options.address, port, "/" + options.url_prefix.strip("/")
             if options.url_prefix else "", app.broker_uri)
    try:
        app.start()
    except (KeyboardInterrupt, SystemExit):
        pass


# ----- the run's page ---------------------------------------------------------------------
FINISHED = ("succeeded", "failed", "refused", "skipped")
STATE_CLASS = {"succeeded": "text-bg-success", "failed": "text-bg-danger",
               "running": "text-bg-warning", "retrying": "text-bg-warning",
               "queued": "text-bg-info", "skipped": "text-bg-secondary"}


def _when(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else ""


def run_page(data: dict[str, Any], prefix: str) -> str:
    """A page of our own (Flower's CSS, no Flower template): the run and its steps."""
    e = xhtml_escape
    state = data["state"]
    refresh = "" if state in FINISHED else '<meta http-equiv="refresh" content="1">'
    rows = []
    for s in data["steps"]:
        took = (f"{(s['finished_at'] - s['started_at']) * 1000:.0f} ms"
                if s["started_at"] and s["finished_at"] else "")
        task = (f'<a href="{prefix}/task/{url_escape(s["task_id"], plus=False)}">'
                f'{e(s["task_id"][:8])}</a>' if s["task_id"] else "")
        indent = "&nbsp;&nbsp;&nbsp;" if s["member"] else ""
        badge = STATE_CLASS.get(s["state"], "text-bg-light")
        rows.append(
            f'<tr class="step" data-idx="{s["idx"]}" data-node="{e(s["node"])}" '
            f'data-state="{e(s["state"])}"><td>{s["idx"]}</td><td>{indent}{e(s["name"])}</td>'
            f'<td>{e(s["node"] or "control")}</td>'
            f'<td><span class="badge {badge}">{e(s["state"])}</span></td>'
            f'<td>{s["attempt"]}</td><td>{_when(s["started_at"])}</td><td>{took}</td>'
            f'<td>{task}</td><td>{e(s["error"] or s["outcome"] or "")}</td></tr>')
    error = (f'<div class="alert alert-danger" id="run-error">{e(data["error"])}</div>'
             if data.get("error") else "")
    badge = STATE_CLASS.get(state, "text-bg-light")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<title>run {e(data['id'])} ({e(data['workflow'])}): {e(state)} · cosfail</title>
<link href="{prefix}/static/css/bootstrap.min.css" rel="stylesheet">
</head><body class="p-3">
<nav class="mb-3"><a href="{prefix}/tasks">Flower tasks</a>
<span class="text-body-secondary">(search them for <code>{e(data['id'])}</code>: this
run's steps)</span></nav>
<h1 class="h4">run <code>{e(data['id'])}</code> ({e(data['workflow'])}):
<span class="badge {badge}" id="run-state">{e(state)}</span></h1>
<p>launch {data['launch']} · triggered by {e(data['triggered_by'])}
{('· ' + e(data['reason'])) if data.get('reason') else ''} · created
{_when(data['created_at'])}{(' · finished ' + _when(data['finished_at']))
                            if data.get('finished_at') else ''}</p>
{error}
<table class="table table-sm" id="steps"><thead><tr><th>#</th><th>step</th><th>node</th>
<th>state</th><th>try</th><th>started</th><th>took</th><th>task</th>
<th>outcome / error</th></tr></thead><tbody>
{''.join(rows)}
</tbody></table></body></html>
"""
