"""`cosfail`: the operator's command line (docs/architecture.md §6). Thin: it parses, calls
workflows, and prints. Exit codes: 0 done, 1 the operation failed (recorded, resumable),
2 bad input or refused (nothing changed).

`cosfail` itself is launcher.cli, which adds to this app the commands that start things
on this machine (init-demo, demo, local).
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from cosfail.cosprint.domain import Domain, load_domain
from cosfail.cosprint.errors import CosfailError
from cosfail.workflows.health import HEALTH_COMPONENTS, component_health
from rich.console import Console

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  help="cosfail: failover for COSprint print domains.")

# No markup: what is printed comes from runs, nodes and operators, and a bracket in it is
# text (styles come as rich Text spans, api/view.py).
out = Console(markup=False)
err = Console(stderr=True, markup=False)

DomainOpt = Annotated[
    Path | None,
    typer.Option("--domain", "-d", help="domain file (default $COSFAIL_DOMAIN, ./domain.toml)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="show each step live; exit by outcome")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="why (recorded in the run)")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="show the plan only")]
YesOpt = Annotated[bool, typer.Option("--yes", help="do not ask")]

EXIT_FAILED, EXIT_REFUSED = 1, 2
EXIT_DEGRADED = 3  # `status`: shown, but the broker or the ledger did not answer


def _print_version(wanted: bool) -> None:
    if wanted:
        from importlib.metadata import version

        out.print(f"cosfail {version('cosfail')}", highlight=False)
        raise typer.Exit(0)


class LogFormat(StrEnum):
    text = "text"
    json = "json"


@app.callback()
def options(
    domain: DomainOpt = None,
    log_format: Annotated[LogFormat | None, typer.Option(
        "--log-format", help="log lines as text (the default) or JSON, one per event, "
        "with level, node, run and step; for this command and the processes it starts "
        "(default $COSFAIL_LOG_FORMAT)")] = None,
    _version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="print cosfail's version and exit")] = False,
) -> None:
    """cosfail: failover for COSprint print domains."""
    # `cosfail -d FILE CMD` is `COSFAIL_DOMAIN=FILE cosfail CMD`: for the command, and
    # for what it starts; a -d after the command still wins. --log-format likewise.
    if domain is not None:
        os.environ["COSFAIL_DOMAIN"] = str(domain.absolute())
    if log_format is not None:
        os.environ["COSFAIL_LOG_FORMAT"] = log_format.value


def refuse(message: str) -> typer.Exit:
    err.print(f"cosfail: {message}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_REFUSED)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every cosfail error into one line on stderr and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cosfail.workers.app import BrokerUnreachable

        try:
            return fn(*args, **kwargs)
        except (CosfailError, BrokerUnreachable) as exc:
            raise refuse(str(exc)) from None

    return wrapper


def emit(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=1, default=str) + "\n")


def who() -> str:
    return f"cli:{getpass.getuser()}"


def _domain(path: Path | None) -> Domain:
    return load_domain(path)


def _engine(path: Path | None, need_broker: bool = True):  # type: ignore[no-untyped-def]
    from cosfail.workers.app import check_broker, configure
    from cosfail.workflows.engine import Engine

    domain = _domain(path)
    configure(domain)
    if need_broker:
        check_broker(domain.broker_url)
    eng = Engine(domain)
    if need_broker:  # a command that acts: the operator hears that automatic work is off
        from cosfail.workflows.maintenance import paused_reason

        paused = paused_reason(eng.ledger.paused())
        if paused:
            err.print(f"cosfail: note: {paused}", highlight=False, soft_wrap=True)
    return eng


@app.command()
@guarded
def check(domain: DomainOpt = None, as_json: JsonOpt = False) -> None:
    """Validate the domain file and summarise it."""
    d = _domain(domain)
    summary = {"domain": d.control.name, "file": str(d.path),
               "nodes": {n.name: n.role for n in d.spec.node}, "master": d.initial_master,
               "coverage": {c.bcs: c.servers for c in d.spec.coverage}}
    if as_json:
        emit(summary)
    else:
        out.print(f"{d.path}: valid; {len(d.nodes)} nodes, master {d.initial_master}")


@app.command()
@guarded
def worker(
    node: Annotated[str | None, typer.Option(help="the node this worker serves")] = None,
    control: Annotated[bool, typer.Option(help="serve the control queue")] = False,
    domain: DomainOpt = None,
    concurrency: int = 4,
) -> None:
    """Run one node's worker (or the control worker)."""
    if bool(node) == control:
        raise refuse("give exactly one of --node NAME or --control")
    d = _domain(domain)
    if node:
        d.node(node)
    from cosfail.workflows.runtime import run_worker

    run_worker(d, node, concurrency)


@app.command()
@guarded
def beat(domain: DomainOpt = None) -> None:
    """Run celery beat: a backup every [control].backup_interval seconds."""
    from cosfail.workers.runner import run_beat

    run_beat(_domain(domain))


# ----- runs -----------------------------------------------------------------------------
def _finish(eng, run_id: str, wait: bool, as_json: bool, state: str = "running") -> None:  # type: ignore[no-untyped-def]
    from cosfail.api import view

    if not wait:
        if as_json:
            emit({"run_id": run_id, "state": state})
        else:
            out.print(f"run {run_id}: {state}")
        return
    run = view.follow(eng, run_id, out, quiet=as_json)
    if as_json:
        emit(view.run_json(eng, run_id))
    raise typer.Exit(0 if run["state"] == "succeeded" else EXIT_FAILED)


@app.command()
@guarded
def backup(domain: DomainOpt = None, wait: WaitOpt = False, as_json: JsonOpt = False,
           reason: ReasonOpt = "on demand") -> None:
    """A backup run now."""
    from cosfail.workflows import trigger
    from cosfail.workflows.backup import BACKUP, BackupRequest

    eng = _engine(domain)
    started = trigger.run(eng, BACKUP, BackupRequest(), who(), reason)
    if started.state == "skipped":
        raise refuse(f"backup skipped: {eng.ledger.run(started.run_id)['reason']}")
    _finish(eng, started.run_id, wait, as_json)


@app.command()
@guarded
def runs(domain: DomainOpt = None, limit: int = 20, as_json: JsonOpt = False) -> None:
    """The latest runs."""
    from cosfail.api import view

    eng = _engine(domain, need_broker=False)
    rows = eng.ledger.runs(limit)
    if as_json:
        emit(rows)
    else:
        out.print(view.runs_table(rows))


@app.command()
@guarded
def history(
    server: Annotated[str | None, typer.Option(help="only this server's objects")] = None,
    domain: DomainOpt = None, as_json: JsonOpt = False,
) -> None:
    """Every hosting change: whose objects moved from where to where, when, by which run,
    and the data each move lost."""
    from cosfail.api import view
    from cosfail.workflows.history import history as hosting_history

    moves = hosting_history(_engine(domain, need_broker=False), server)
    if as_json:
        emit([m.as_json() for m in moves])
    elif moves:
        out.print(view.history_table(moves))
    else:
        out.print("no hosting change recorded: every server hosts its own objects")


@app.command()
@guarded
def run(run_id: str, domain: DomainOpt = None, as_json: JsonOpt = False) -> None:
    """One run with its steps."""
    from cosfail.api import view

    eng = _engine(domain, need_broker=False)
    if as_json:
        emit(view.run_json(eng, run_id))
    else:
        out.print(view.run_table(eng, run_id))


@app.command()
@guarded
def resume(run_id: str, domain: DomainOpt = None, wait: WaitOpt = False,
           as_json: JsonOpt = False) -> None:
    """Resume a failed run from its failed step."""
    eng = _engine(domain)
    from cosfail.workflows.liveness import alive_workers

    eng.reap_lost_steps(run_id, alive=alive_workers())
    idx = eng.resume(run_id)
    if not as_json:
        out.print(f"run {run_id}: resumed from step {idx}")
    _finish(eng, run_id, wait, as_json)


def _plan_table(plan: Any, fences: bool) -> Any:
    from rich.table import Table

    t = Table(show_header=False, title=f"plan for {plan.server}")
    age = f"{plan.snapshot_age:.0f} s" if plan.snapshot_age is not None else "-"
    rows = [
        ("moves", f"{plan.moving} objects of {plan.server} → {plan.bcs}"),
        ("master", f"{plan.master_before}@{plan.epoch_before} → "
                   f"{plan.master_after}@{plan.epoch_after}"),
        ("restores", plan.snapshot or "nothing: the master's live tables are used"),
        ("data lost", f"changes of the last {age}" if plan.snapshot else "none"),
        ("stops", ", ".join(plan.stop) or "-"),
        ("restarts", ", ".join(plan.start) or "-"),
        ("unreachable", ", ".join(plan.unreachable) or "-"),
    ]
    if fences:
        rows.append(("fences", f"{plan.server}, if it can be reached"))
    for note in plan.notes:
        rows.append(("note", note))
    for k, v in rows:
        t.add_row(k, v)
    return t


def confirm(question: str) -> None:
    """Ask the operator; refuse (nothing changed) without a yes, or without a TTY to ask."""
    if not sys.stdin.isatty():
        raise refuse("not confirmed: add --yes to go ahead without a prompt")
    if not typer.confirm(question):
        raise refuse("not confirmed: nothing changed")


def _start_confirmed(eng: Any, wf: Any, request: Any, what: str, dry_run: bool, yes: bool,
                     wait: bool, as_json: bool, reason: str) -> None:
    """Plan, show the plan and ask (unless --yes), then start exactly that plan."""
    from dataclasses import asdict

    from cosfail.workflows import trigger

    planned = trigger.plan(eng, wf, request)
    if as_json and dry_run:
        emit({"run_id": None, "plan": asdict(planned.plan)})
        return
    if dry_run or not yes:
        out.print(_plan_table(planned.plan, fences=wf.name == "failover"))
    if dry_run:
        return
    if not yes:
        confirm(f"{what} now?")
    started = trigger.start(eng, planned, who(), reason)
    _finish(eng, started.run_id, wait, as_json)


@app.command()
@guarded
def failover(
    server: str,
    to: Annotated[str | None, typer.Option("--to", help="the BCS to fail over to")] = None,
    best: Annotated[bool, typer.Option("--best", help="let cosfail choose the BCS")] = False,
    dry_run: DryRunOpt = False,
    force: Annotated[bool, typer.Option("--force", help="even if SERVER answers")] = False,
    with_spool: Annotated[bool, typer.Option(
        "--with-spool", help="also copy SERVER's pending spool files to the BCS")] = False,
    yes: YesOpt = False,
    domain: DomainOpt = None, wait: WaitOpt = False, as_json: JsonOpt = False,
    reason: ReasonOpt = "",
) -> None:
    """Fail SERVER over to a BCS (--to BCS, or --best)."""
    from cosfail.workflows.failover import FAILOVER
    from cosfail.workflows.plan import FailoverRequest

    if (to is None) == (not best):
        raise refuse("give exactly one of --to BCS or --best")
    req = FailoverRequest(server=server, to=to, best=best, force=force,
                          with_spool=with_spool)
    _start_confirmed(_engine(domain), FAILOVER, req, "Fail over", dry_run, yes, wait, as_json,
                     reason)


@app.command()
@guarded
def switchover(
    server: str,
    to: Annotated[str, typer.Option("--to", help="the BCS to move to")],
    at: Annotated[str | None, typer.Option(
        "--at", help="schedule it: an ISO 8601 time (2026-12-06T02:00, local unless it "
        "has an offset); beat starts it then, planned and checked afresh")] = None,
    dry_run: DryRunOpt = False, yes: YesOpt = False, domain: DomainOpt = None,
    wait: WaitOpt = False, as_json: JsonOpt = False, reason: ReasonOpt = "",
) -> None:
    """Planned move of SERVER's objects to a BCS, with zero data loss: now, or --at a
    time (`cosfail scheduled` lists, `cosfail cancel ID` cancels)."""
    from cosfail.workflows.plan import MoveRequest
    from cosfail.workflows.switchover import SWITCHOVER

    if at is None:
        _start_confirmed(_engine(domain), SWITCHOVER, MoveRequest(server, to),
                         "Switch over", dry_run, yes, wait, as_json, reason)
        return
    if dry_run or wait:
        raise refuse("--at schedules the switchover: --dry-run and --wait go without it")
    import time

    from cosfail.workflows.maintenance import when
    from cosfail.workflows.schedule import parse_at, schedule

    eng = _engine(domain, need_broker=False)
    due = parse_at(at, time.time())
    if not yes:
        confirm(f"Switch {server} over to {to} at {when(due)}?")
    entry, now_refused = schedule(eng, MoveRequest(server, to), due, who(), reason)
    if as_json:
        emit({"scheduled": entry, "refused_now": now_refused})
        return
    out.print(f"scheduled switchover {entry['id']}: {server} → {to} at {when(due)}; "
              "`cosfail scheduled` lists it, `cosfail cancel "
              f"{entry['id']}` cancels it", highlight=False, soft_wrap=True)
    if now_refused:
        err.print(f"cosfail: note: it would be refused now ({now_refused}); it is "
                  "checked again at its time", highlight=False, soft_wrap=True)


@app.command()
@guarded
def scheduled(domain: DomainOpt = None, show_all: Annotated[bool, typer.Option(
        "--all", help="also those started, refused or cancelled")] = False,
        as_json: JsonOpt = False) -> None:
    """Scheduled switchovers: pending ones, soonest first (--all: every one)."""
    from cosfail.api import view
    from cosfail.workflows import ledger as L

    rows = _engine(domain, need_broker=False).ledger.scheduled(
        None if show_all else (L.PENDING, L.DUE))
    if as_json:
        emit(rows)
    elif rows:
        out.print(view.scheduled_table(rows))
    else:
        out.print("no scheduled switchover" + ("" if show_all else " pending"))


@app.command()
@guarded
def cancel(sched_id: Annotated[str, typer.Argument(metavar="ID")],
           domain: DomainOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a pending scheduled switchover."""
    row = _engine(domain, need_broker=False).ledger.cancel_scheduled(sched_id, who())
    if as_json:
        emit(row)
    else:
        out.print(f"scheduled switchover {sched_id} ({row['server']} → {row['to_bcs']}): "
                  "cancelled", highlight=False)


@app.command()
@guarded
def reclaim(server: str, dry_run: DryRunOpt = False, domain: DomainOpt = None,
            wait: WaitOpt = False, as_json: JsonOpt = False, reason: ReasonOpt = "") -> None:
    """Bring a failed-over SERVER back as a slave (its obsolete data is set aside)."""
    from dataclasses import asdict

    from cosfail.workflows import trigger
    from cosfail.workflows.plan import MoveRequest
    from cosfail.workflows.reclaim import RECLAIM

    eng = _engine(domain)
    planned = trigger.plan(eng, RECLAIM, MoveRequest(server))
    if dry_run:
        emit({"run_id": None, "plan": asdict(planned.plan)}) if as_json \
            else out.print(planned.plan)
        return
    _finish(eng, trigger.start(eng, planned, who(), reason).run_id, wait, as_json)


@app.command()
@guarded
def failback(server: str, dry_run: DryRunOpt = False, yes: YesOpt = False,
             domain: DomainOpt = None, wait: WaitOpt = False, as_json: JsonOpt = False,
             reason: ReasonOpt = "") -> None:
    """Move hosting back to a reclaimed SERVER from the BCS that took it over."""
    from cosfail.workflows.plan import MoveRequest
    from cosfail.workflows.switchover import FAILBACK

    _start_confirmed(_engine(domain), FAILBACK, MoveRequest(server), "Fail back", dry_run,
                     yes, wait, as_json, reason)


@app.command()
@guarded
def status(domain: DomainOpt = None, as_json: JsonOpt = False) -> None:
    """Nodes, roles, master, epoch, COSprint up/down, last verified backup and its age.
    With the broker or the ledger down it shows what it can reach and exits 3."""
    from cosfail.api import view
    from cosfail.workers.app import configure
    from cosfail.workflows.status import domain_status

    d = _domain(domain)
    configure(d)
    st = domain_status(d)
    if as_json:
        emit(st)
    else:
        out.print(view.status_view(st))
    if st["unreachable"]:
        raise typer.Exit(EXIT_DEGRADED)


@app.command()
@guarded
def pause(domain: DomainOpt = None, reason: ReasonOpt = "", as_json: JsonOpt = False) -> None:
    """Pause the domain for planned work: no automatic failover and no scheduled backups
    until `cosfail unpause`; operator commands still work."""
    from cosfail.workflows.maintenance import AUTOMATIC, paused_reason

    pause, began = _engine(domain, need_broker=False).ledger.pause(who(), reason)
    if as_json:
        emit({"paused": pause, "began": began})
    elif began:
        out.print(f"paused: {AUTOMATIC}; {paused_reason(pause)}", highlight=False)
    else:
        out.print(f"already paused: {paused_reason(pause)}", highlight=False)


@app.command()
@guarded
def unpause(domain: DomainOpt = None, as_json: JsonOpt = False) -> None:
    """End the pause: automatic failover and scheduled backups start again."""
    from cosfail.workflows.maintenance import when

    ended = _engine(domain, need_broker=False).ledger.unpause()
    if as_json:
        emit({"ended": ended})
    elif ended:
        out.print(f"unpaused: the pause by {ended['paused_by']} since "
                  f"{when(ended['paused_at'])} is over; automatic work resumes",
                  highlight=False)
    else:
        out.print("not paused: nothing to do", highlight=False)


@app.command()
@guarded
def watch(domain: DomainOpt = None) -> None:
    """Watch every node's worker and COSprint: record up/suspect/down in the ledger, run
    [detect].notify_command on each transition and, only where [detect].auto_failover is
    on, fail a confirmed-down server over to the best BCS, within its guards."""
    from cosfail.workflows.detect import watch as run_watch

    run_watch(_engine(domain))


@app.command("api")
@guarded
def serve_api(domain: DomainOpt = None) -> None:
    """Serve the trigger API on [control].api."""
    import uvicorn
    from cosfail.api.app import create_app
    from cosfail.cosprint import logs

    d = _domain(domain)
    host, _, port = d.control.api.rpartition(":")
    logs.setup("control")
    uvicorn.run(create_app(d), host=host or "127.0.0.1", port=int(port), log_level="info",
                log_config=None)


@app.command()
@guarded
def flower(domain: DomainOpt = None) -> None:
    """Serve Flower at the domain's flower address, with basic auth from its
    flower_auth_file, each run's page, and a Retry button on a failed step's page."""
    from cosfail.api.flower import serve

    serve(_domain(domain))


@app.command()
@guarded
def health(
    component: Annotated[str, typer.Argument(help="|".join(HEALTH_COMPONENTS))],
    node: Annotated[str | None, typer.Option(help="the node (component worker)")] = None,
    domain: DomainOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for an answer")] = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """Exit 0 when COMPONENT answers, 1 when it does not (for container healthchecks):
    worker --node N / control: the worker answers a Celery ping; api: GET /healthz;
    flower: GET /healthcheck; beat / broker: the broker answers; watch: a detector holds
    its lock with a fresh lease."""
    if component not in HEALTH_COMPONENTS:
        raise refuse(f"unknown component {component!r} (one of: {', '.join(HEALTH_COMPONENTS)})")
    if (component == "worker") != bool(node):
        raise refuse("--node NAME goes with the worker component, and only with it")
    d = _domain(domain)
    if node:
        d.node(node)
    healthy, detail = component_health(d, component, node, timeout)
    label = f"worker {node}" if node else component
    if as_json:
        emit({"component": component, "node": node, "healthy": healthy, "detail": detail})
    else:
        (out if healthy else err).print(
            f"{label}: {'healthy' if healthy else 'unhealthy'} ({detail})",
            highlight=False, soft_wrap=True)
    raise typer.Exit(0 if healthy else EXIT_FAILED)


db_app = typer.Typer(no_args_is_help=True, help="The ledger's schema.")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
@guarded
def db_upgrade(domain: DomainOpt = None) -> None:
    """Bring the ledger's schema up to this cosfail's (Alembic; safe to run again).
    Run it after upgrading cosfail, before starting the new release's processes."""
    from cosfail.workflows.migrate import upgrade_ledger

    before, after = upgrade_ledger(_domain(domain).ledger_url)
    if before == after:
        out.print(f"ledger already at revision {after}", highlight=False)
    else:
        out.print(f"ledger upgraded from revision {before or '(empty)'} to {after}",
                  highlight=False)
