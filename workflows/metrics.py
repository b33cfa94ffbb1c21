"""Prometheus metrics, computed from the ledger at scrape time (the ledger is the record)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from workflows import ledger as L
from workflows.engine import Engine
from workflows.state import current_state

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def render(eng: Engine) -> str:
    reg = CollectorRegistry()
    state = current_state(eng)
    Gauge("cosfail_epoch", "Current domain epoch", registry=reg).set(state.epoch)
    age = Gauge("cosfail_last_verified_backup_age_seconds",
                "Age of the newest verified snapshot per BCS", ["bcs"], registry=reg)
    now = time.time()
    for bcs in eng.domain.names("bcs"):
        cat = eng.ledger.catalog(bcs)
        if cat:
            age.labels(bcs).set(now - cat[0]["created_at"])
    runs = Gauge("cosfail_runs", "Runs by workflow and state", ["workflow", "state"],
                 registry=reg)
    steps = Histogram("cosfail_step_duration_seconds", "Step durations", ["workflow", "step"],
                      buckets=STEP_BUCKETS, registry=reg)
    rto = Gauge("cosfail_last_failover_rto_seconds",
                "Last successful failover, trigger to verified end state", registry=reg)
    counts: dict[tuple[str, str], int] = {}
    all_runs = eng.ledger.runs(limit=1000)
    for r in all_runs:
        counts[r["workflow"], r["state"]] = counts.get((r["workflow"], r["state"]), 0) + 1
    for (wf, st), n in counts.items():
        runs.labels(wf, st).set(n)
    last_failover = next((r for r in all_runs if r["workflow"] == "failover"
                          and r["state"] == L.SUCCEEDED), None)
    if last_failover:
        rto.set(last_failover["finished_at"] - last_failover["created_at"])
    # Liveness as the detector last recorded it (workflows/detect.py).
    live = eng.ledger.liveness_now()
    for state in ("up", "suspect", "down"):
        Gauge(f"cosfail_nodes_{state}", f"Nodes the detector sees {state}",
              registry=reg).set(sum(1 for r in live.values() if r["state"] == state))
    down_since = Gauge("cosfail_node_down_since_seconds",
                       "Unix time since which a down node has been unreachable", ["node"],
                       registry=reg)
    for node, r in live.items():
        if r["state"] == "down":
            down_since.labels(node).set(r["unreachable_since"] or r["at"])
    for r in all_runs[:100]:
        for s in eng.ledger.steps(r["id"]):
            if s.started_at and s.finished_at and s.state == L.SUCCEEDED:
                steps.labels(r["workflow"], s.name).observe(s.finished_at - s.started_at)
    return generate_latest(reg).decode()
