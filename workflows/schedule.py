"""Scheduled switchovers (`cosfail switchover S --to B --at TIME`, as `patronictl
switchover --scheduled`): recorded now, listed and cancellable until their time, then
planned and guarded afresh by beat's tick at that time, and refused then, with the
reason, if they no longer hold (docs/architecture.md §2.9).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from cosfail.workers.app import app
from cosfail.workflows import ledger as L
from cosfail.workflows import trigger
from cosfail.workflows.engine import Engine, engine
from cosfail.workflows.maintenance import paused_reason, when
from cosfail.workflows.plan import MoveRequest
from cosfail.workflows.refusal import INVALID, Refused, invalid
from cosfail.workflows.switchover import SWITCHOVER

# A switchover found later than this (beat was not running at its time) is refused:
# nobody expects servers to move at an hour they did not plan.
GRACE = 300.0


def parse_at(text: str, now: float) -> float:
    """`--at`: an ISO 8601 time (with an offset, or this machine's local time), in the
    future; as Unix time."""
    try:
        at = datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise Refused(invalid(f"--at {text!r} is not a time: give ISO 8601, "
                              "e.g. 2026-12-06T02:00 or 2026-12-06T02:00+01:00")) from None
    if at <= now:
        raise Refused(invalid(f"--at {text} is {when(at)}, which has passed"))
    return at


def start_guard(at: float, now: float, paused: str | None) -> str | None:
    """Why a due switchover must not start now, or None."""
    if paused:
        return paused
    if now - at > GRACE:
        return (f"missed: due at {when(at)}, found {now - at:.0f} s later (more than "
                f"{GRACE:g} s: was beat running?)")
    return None


def schedule(eng: Engine, req: MoveRequest, at: float, who: str,
             why: str) -> tuple[dict[str, Any], str | None]:
    """Record a switchover for `at`; (its row, why it would be refused now, if it would).
    A request that can never hold (an unknown node, a BCS that does not cover the
    server) is refused now; one the domain's state refuses now may hold by then, and
    is re-checked at its time."""
    try:
        trigger.plan(eng, SWITCHOVER, req)
        now_refused = None
    except Refused as exc:
        if exc.refusal.code == INVALID:
            raise
        now_refused = str(exc)
    except L.LockHeld as exc:
        now_refused = str(exc)
    return eng.ledger.schedule_switchover(req.server, req.to, at, who, why), now_refused


def start_due(eng: Engine, now: float) -> list[str]:
    """Start each due switchover this caller claims; one line each on what became of it."""
    said = []
    for entry in eng.ledger.scheduled_due(now):
        if eng.ledger.claim_scheduled(entry["id"]):
            said.append(start_claimed(eng, entry, now))
    return said


def start_claimed(eng: Engine, entry: dict[str, Any], now: float) -> str:
    what = f"scheduled switchover {entry['id']} ({entry['server']} → {entry['to_bcs']})"
    refused = start_guard(entry["at"], now, paused_reason(eng.ledger.paused()))
    if refused is None:
        try:
            started = trigger.run(
                eng, SWITCHOVER, MoveRequest(entry["server"], entry["to_bcs"]),
                f"scheduled:{entry['created_by']}",
                entry["reason"] or f"scheduled for {when(entry['at'])}")
        except (Refused, L.LockHeld) as exc:
            refused = str(exc)
        else:
            eng.ledger.settle_scheduled(entry["id"], L.STARTED, f"run {started.run_id}",
                                        started.run_id)
            return f"{what}: run {started.run_id}"
    eng.ledger.settle_scheduled(entry["id"], L.REFUSED, f"refused at its time: {refused}")
    return f"{what}: refused: {refused}"


@app.task(name="cosfail.schedule.due", ignore_result=True)
def due_switchovers() -> str:
    """What celery beat sends every workers.runner.SCHEDULE_TICK seconds."""
    return "; ".join(start_due(engine(), time.time())) or "nothing due"
