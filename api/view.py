"""How runs look to an operator: tables, JSON, live progress.

Nothing here is Rich markup: the CLI's consoles parse none (api/cli.py), so names,
errors and reasons from runs, nodes and operators print as written, brackets and all;
styles come as `Text` spans.
"""

from __future__ import annotations

import time
from typing import Any

from cosfail.workflows.maintenance import AUTOMATIC, paused_reason, when
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

STATE_STYLE = {"succeeded": "green", "failed": "bold red", "running": "yellow",
               "queued": "cyan", "skipped": "magenta", "refused": "red", "retrying": "yellow",
               "pending": "cyan", "due": "yellow", "started": "green", "cancelled": "magenta"}


def _t(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else ""


def _dur(a: float | None, b: float | None) -> str:
    return f"{(b - a) * 1000:.0f} ms" if a and b else ""


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


def runs_table(rows: list[dict[str, Any]]) -> Table:
    t = Table("run", "workflow", "state", "by", "created", "took", "error")
    for r in rows:
        t.add_row(r["id"], r["workflow"], state_text(r["state"]), r["triggered_by"],
                  _t(r["created_at"]), _dur(r["created_at"], r["finished_at"]),
                  r.get("error") or "")
    return t


def _loss(seconds: float | None, snapshot: str | None) -> str:
    if snapshot:
        return f"changes since {snapshot}" if seconds is None else \
            f"changes of the last {seconds:.0f} s ({snapshot})"
    return "unknown" if seconds is None else "none"


def history_table(moves: list[Any]) -> Table:
    t = Table("epoch", "since", "objects of", "moved", "by run", "workflow", "triggered by",
              "data lost", "reason", title="hosting history")
    for m in moves:
        lost = _loss(m.data_loss, m.snapshot)
        t.add_row(str(m.epoch), when(m.since), m.server, f"{m.moved_from} → {m.hosted_by}",
                  m.run_id, m.workflow or "?", m.triggered_by or "?", lost, m.reason or "")
    return t


def scheduled_table(rows: list[dict[str, Any]]) -> Table:
    t = Table("id", "at", "switchover", "state", "by", "reason", "outcome",
              title="scheduled switchovers")
    for r in rows:
        t.add_row(r["id"], when(r["at"]), f"{r['server']} → {r['to_bcs']}",
                  state_text(r["state"]), r["created_by"], r["reason"], r["outcome"] or "")
    return t


def steps_table(run: dict[str, Any], steps: list[Any]) -> Table:
    t = Table("#", "step", "node", "state", "try", "took", "outcome / error",
              title=f"run {run['id']} ({run['workflow']}): {run['state']}")
    for s in steps:
        name = ("  " if s.member else "") + s.name
        t.add_row(str(s.idx), name, s.node or "control", state_text(s.state),
                  str(s.attempt), _dur(s.started_at, s.finished_at),
                  s.error or s.outcome or "")
    return t


def run_table(eng: Any, run_id: str) -> Table:
    return steps_table(eng.ledger.run(run_id), eng.ledger.steps(run_id))


def run_json(eng: Any, run_id: str) -> dict[str, Any]:
    run = eng.ledger.run(run_id)
    return {**run, "steps": [s.as_json() for s in eng.ledger.steps(run_id)]}


def follow(eng: Any, run_id: str, console: Console, quiet: bool = False,
           timeout: float = 900.0) -> dict[str, Any]:
    """Show the run's steps live until it ends; returns the run."""
    from cosfail.workflows.engine import wait_for

    if quiet:
        return wait_for(eng, run_id, timeout)
    with Live(run_table(eng, run_id), console=console, refresh_per_second=10) as live:
        run = wait_for(eng, run_id, timeout,
                       on_change=lambda r, s: live.update(steps_table(r, s)))
    if run.get("error"):
        console.print(Text(run["error"], style="bold red"))
    return run


def status_view(st: dict[str, Any]) -> Table:
    known = f"master {st['master']}, epoch {st['epoch']}" if st["master"] else \
        "master unknown (the ledger does not answer)"
    t = Table("node", "role", "worker", "COSprint", "serving as", "points at", "hosted",
              "lease", title=f"domain {st['domain']}: {known}")
    up = {"up": Text("up", style="green"), "down": Text("down", style="red"),
          "unknown": Text("unknown", style="yellow")}
    caption = [Text.assemble((f"{what} unreachable", "bold red"), f": {why}")
               for what, why in st.get("unreachable", {}).items()]
    for n in st["nodes"]:
        serving = Text(n["serving_as"] or "-")
        if n["reclaim_needed"]:
            serving.append(" reclaim needed", style="bold red")
        t.add_row(n["name"], n["role"], up[n["worker"]], up[n["cosprint"]], serving,
                  n["points_at"] or "-", str(n["hosted"] or 0),
                  lease_cell(n.get("lease"), n.get("lease_recorded")))
        if "ledger unreadable" in (n.get("reason") or ""):
            caption.append(Text.assemble((n["name"], "yellow"), f": {n['reason']}"))
    for bcs, b in st["backups"].items():
        caption.append(Text(f"{bcs}: {b['file']} ({b['age']:.0f} s old)") if b else
                       Text.assemble(f"{bcs}: ", ("no verified backup", "red")))
    if st.get("paused"):
        caption.insert(0, paused_line(st["paused"]))
    for entry in st.get("scheduled") or []:
        caption.append(Text(f"scheduled: switchover {entry['server']} → {entry['to_bcs']} "
                            f"at {when(entry['at'])} ({entry['id']}, {entry['state']})"))
    if st["hosting_change_running"]:
        caption.append(Text(f"hosting change running: {st['hosting_change_running']}"))
    caption += detect_lines(st)
    if caption:
        t.caption = Text("\n").join(caption)
    return t


def paused_line(pause: dict[str, Any]) -> Text:
    return Text.assemble(("PAUSED", "bold yellow"), f": {AUTOMATIC}: {paused_reason(pause)}")


def lease_cell(own: dict[str, Any] | None, recorded: dict[str, Any] | None) -> Text:
    """A node's lease: failsafe, its own count of what is left, else what the ledger
    recorded (by the ledger server's clock), else none."""
    if own and own.get("failsafe"):
        return Text("failsafe", style="yellow")
    if own and own.get("left"):
        return Text(f"{own['left']:.1f} s left")
    if recorded is not None:
        left = recorded["left"]
        return Text(f"{left:.1f} s left" if left > 0 else f"ended {-left:.0f} s ago")
    return Text("-")


def detect_lines(st: dict[str, Any]) -> list[Text]:
    """What the detector says: suspect nodes, and for each down server what to do."""
    lines = []
    refusals = (st.get("detect") or {}).get("suspect_refusals") or {}
    for n in st.get("nodes", []):
        live = n.get("liveness") or {}
        if live.get("state") == "suspect":
            lines.append(Text.assemble((f"{n['name']} suspect", "yellow"), f" for "
                                       f"{live['unreachable_for']:.0f} s: {live['note']}"))
            refused = refusals.get(n["name"])
            if refused:
                lines.append(Text(f"  automatic failover: run {refused['run_id']} "
                                  f"{refused['state']}: {refused['reason']}"))
    for d in st.get("down", []):
        lines.append(Text.assemble(
            (f"{d['server']} DOWN", "bold red"), f" for {d['down_for']:.0f} s (since "
            f"{_t(d['unreachable_since'])}, confirmed by {d['confirmed_by']})"))
        if d["command"]:
            lines.append(Text(f"  best bcs {d['best_bcs']}; data lost: {d['data_loss']}"))
            lines.append(Text(f"  run: {d['command']}"))
        elif d["refused"]:
            lines.append(Text(f"  {d['refused']}"))
        auto = d.get("auto_failover") or {}
        if auto.get("run_id"):
            lines.append(Text(f"  automatic failover: run {auto['run_id']} {auto['state']}"
                              + (f": {auto['reason']}" if auto["state"] == "refused" else "")))
    watcher = (st.get("detect") or {}).get("watcher")
    if st.get("detect") and not (watcher and watcher["active"]):
        lines.append(Text.assemble(("no detector running", "red"), " (cosfail watch)"))
    return lines


def demo_summary(summary: dict[str, Any]) -> Table:
    t = Table("run", "workflow", "state", "took", "steps",
              title="cosfail demo: what happened")
    for r in summary["runs"]:
        t.add_row(r["id"], r["workflow"], state_text(r["state"]), f"{r['seconds']:.2f} s",
                  str(len([s for s in r["steps"] if not s["member"]])))
    lost = summary["jobs_lost"]
    t.caption = Text.assemble(
        f"srv1's queues out for {summary.get('outage_seconds')} s · jobs submitted "
        f"{summary['jobs_submitted']}, accepted {summary['jobs_accepted']}, printed "
        f"{summary['jobs_printed']}, ",
        (f"lost {lost}", "bold red") if lost else ("lost 0", "green"),
        f" · client retries during the outage {summary['client_retries']}"
        f" · master now {summary['master']}")
    return t
