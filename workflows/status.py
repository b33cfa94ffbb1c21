"""The domain at a glance: what `cosfail status` and `GET /status` show."""

from __future__ import annotations

import time
from typing import Any

from cosfail.workflows import ledger as L
from cosfail.workflows.detect import report as detector_report
from cosfail.workflows.engine import Engine
from cosfail.workflows.liveness import probe_all
from cosfail.workflows.state import current_state


def reclaim_needed(eng: Engine) -> list[str]:
    """Servers whose last restart-check left them stopped for reclaim, not since reclaimed."""
    latest = eng.ledger.newest_by_subject(("restart-check", "reclaim"))
    return sorted(n for n, r in latest.items()
                  if r["workflow"] == "restart-check" and r["state"] == L.REFUSED)


def domain_status(eng: Engine, probe_timeout: float = 1.0) -> dict[str, Any]:
    state = current_state(eng)
    seen = probe_all(eng.domain, timeout=probe_timeout)
    now = time.time()
    needs = reclaim_needed(eng)
    leases = eng.ledger.leases()
    nodes = []
    for n in eng.domain.spec.node:
        s = seen[n.name]
        cos = s.cosprint or {}
        nodes.append({
            "name": n.name, "role": n.role, "worker": "up" if s.worker else "down",
            "cosprint": "up" if s.cosprint else "down", "serving_as": cos.get("role"),
            "points_at": f"{cos['master']}@{cos['epoch']}" if cos else None,
            "hosted": cos.get("hosted"), "reclaim_needed": n.name in needs,
            "reason": cos.get("reason"), "lease": cos.get("lease"),
            "lease_recorded": leases.get(n.name),
        })
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
    holder = eng.ledger.holder(L.HOSTING_LOCK)
    # The detector's view (workflows/detect.py): liveness per node, and for each down
    # server since when, the BCS --best would choose, the snapshot's age, the command.
    detected = detector_report(eng, seen, now)
    for n in nodes:
        n["liveness"] = detected["liveness"].get(n["name"])
    return {
        "domain": eng.domain.control.name, "master": state.master, "epoch": state.epoch,
        "nodes": nodes, "backups": backups, "hosting_change_running": holder,
        "backup_running": eng.ledger.holder(L.BACKUP_LOCK), "reclaim_needed": needs,
        "down": detected["down"], "detect": detected["detect"],
        "lease_events": eng.ledger.lease_events(5),
    }
