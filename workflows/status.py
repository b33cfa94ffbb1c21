"""The domain at a glance: what `cosfail status` and `GET /status` show."""

from __future__ import annotations

import time
from typing import Any

from cosfail.cosprint.domain import Domain
from cosfail.cosprint.errors import CosfailError
from cosfail.workers.app import BrokerUnreachable, check_broker
from cosfail.workflows import ledger as L
from cosfail.workflows.detect import report as detector_report
from cosfail.workflows.engine import Engine
from cosfail.workflows.liveness import probe_all
from cosfail.workflows.state import current_state
from sqlalchemy.exc import SQLAlchemyError


def reclaim_needed(eng: Engine) -> list[str]:
    """Servers whose last restart-check left them stopped for reclaim, not since reclaimed."""
    latest = eng.ledger.newest_by_subject(("restart-check", "reclaim"))
    return sorted(n for n, r in latest.items()
                  if r["workflow"] == "restart-check" and r["state"] == L.REFUSED)


BROKER_TIMEOUT = 1.0  # seconds: an operator waits on `status`, and a broker answers in ms


def domain_status(domain: Domain, eng: Engine | None = None,
                  probe_timeout: float = 1.0) -> dict[str, Any]:
    """The domain as far as it can be seen: with the broker down, each COSprint is asked
    directly and the workers are unknown; with the ledger down (`eng` None: it is opened
    here), each COSprint's own view stands and what only the ledger knows is None.
    `unreachable` names what could not be reached, and why, in one line each."""
    unreachable: dict[str, str] = {}
    try:
        check_broker(domain.broker_url, timeout=BROKER_TIMEOUT)
    except BrokerUnreachable as exc:
        unreachable["broker"] = f"{exc}: workers not asked"
    seen = probe_all(domain, timeout=probe_timeout, ask_workers="broker" not in unreachable)
    now = time.time()
    try:
        eng = eng or Engine(domain)
        known = from_ledger(eng, seen, now)
    except (SQLAlchemyError, CosfailError) as exc:
        unreachable["ledger"] = f"ledger does not answer: {one_line(exc)}"
        known = None
    nodes = []
    for n in domain.spec.node:
        s = seen[n.name]
        cos = s.cosprint or {}
        nodes.append({
            "name": n.name, "role": n.role,
            "worker": "unknown" if "broker" in unreachable else "up" if s.worker else "down",
            "cosprint": "up" if s.cosprint else "down", "serving_as": cos.get("role"),
            "points_at": f"{cos['master']}@{cos['epoch']}" if cos else None,
            "hosted": cos.get("hosted"), "reason": cos.get("reason"),
            "lease": cos.get("lease"),
            "reclaim_needed": n.name in known["reclaim_needed"] if known else None,
            "lease_recorded": known["leases"].get(n.name) if known else None,
            "liveness": known["liveness"].get(n.name) if known else None,
        })
    known = known or {"master": None, "epoch": None, "backups": {},
                      "hosting_change_running": None, "backup_running": None,
                      "reclaim_needed": [], "paused": None, "scheduled": [], "down": [],
                      "detect": {},
                      "lease_events": []}
    return {"domain": domain.control.name, "nodes": nodes, "unreachable": unreachable,
            **{k: v for k, v in known.items() if k not in ("leases", "liveness")}}


def one_line(exc: BaseException) -> str:
    """An error's first line, without SQLAlchemy's statement and background link."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return (text[0] if text else type(orig).__name__)[:200]


def from_ledger(eng: Engine, seen: dict[str, Any], now: float) -> dict[str, Any]:
    """What only the ledger knows: master and epoch, backups, locks, leases, and the
    detector's view (workflows/detect.py): liveness per node, and for each down server
    since when, the BCS --best would choose, the snapshot's age, the command."""
    state = current_state(eng)
    backups = {}
    for bcs in eng.domain.names("bcs"):
        cat = eng.ledger.catalog(bcs)
        if cat:
            newest = cat[0]
            backups[bcs] = {"file": newest["file"], "epoch": newest["epoch"],
                            "verified_at": newest["verified_at"],
                            "age": round(now - newest["created_at"], 1)}
        else:
            backups[bcs] = None
    detected = detector_report(eng, seen, now)
    return {
        "master": state.master, "epoch": state.epoch, "backups": backups,
        "hosting_change_running": eng.ledger.holder(L.HOSTING_LOCK),
        "backup_running": eng.ledger.holder(L.BACKUP_LOCK),
        "reclaim_needed": reclaim_needed(eng), "paused": eng.ledger.paused(),
        "scheduled": eng.ledger.scheduled((L.PENDING, L.DUE)),
        "down": detected["down"],
        "detect": detected["detect"], "lease_events": eng.ledger.lease_events(5),
        "leases": eng.ledger.leases(), "liveness": detected["liveness"],
    }
