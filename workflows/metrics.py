"""Prometheus metrics, computed from the ledger at scrape time (the ledger is the record).

Counts come from the database, over every run and step it holds: a count is never
rebuilt from a window of recent runs, so it cannot go down when older runs leave it.
"""

from __future__ import annotations

import time

from cosfail.workflows import ledger as L
from cosfail.workflows.engine import Engine
from cosfail.workflows.state import current_state
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class StepDurations(Collector):
    """Every succeeded step's duration, as the ledger counts it."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng

    def collect(self):  # type: ignore[no-untyped-def]
        fam = HistogramMetricFamily("cosfail_step_duration_seconds", "Step durations",
                                    labels=["workflow", "step"])
        for (workflow, step), (within, total, count) in \
                self.eng.ledger.step_durations(STEP_BUCKETS).items():
            buckets = [(str(b), n) for b, n in zip(STEP_BUCKETS, within, strict=True)]
            fam.add_metric([workflow, step], [*buckets, ("+Inf", count)], total)
        yield fam


class LedgerOutages(Collector):
    """The ledger outages the nodes printed through, or stopped in, as they recorded
    them when the ledger returned."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng

    def collect(self):  # type: ignore[no-untyped-def]
        labels = ["node", "outcome"]
        count = CounterMetricFamily(
            "cosfail_ledger_outages", "Ledger outages a node lived through, by outcome: "
            "lease (printed on its lease), failsafe (printed past it), stopped", labels=labels)
        seconds = CounterMetricFamily(
            "cosfail_ledger_outage_seconds", "Seconds of those outages, by outcome "
            "(failsafe: the outages a node printed through in failsafe)", labels=labels)
        for (node, outcome), (n, total) in self.eng.ledger.outage_totals().items():
            count.add_metric([node, outcome], n)
            seconds.add_metric([node, outcome], total)
        yield count
        yield seconds


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
    for (wf, st), n in eng.ledger.run_counts().items():
        runs.labels(wf, st).set(n)
    rto = Gauge("cosfail_last_failover_rto_seconds",
                "Last successful failover, trigger to verified end state", registry=reg)
    last_failover = eng.ledger.newest_run("failover", L.SUCCEEDED)
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
    # Serving leases as the ledger recorded them, by the ledger server's clock.
    left = Gauge("cosfail_lease_remaining_seconds",
                 "Seconds left on a node's serving lease (negative: ended)", ["node"],
                 registry=reg)
    for node, held in eng.ledger.leases().items():
        left.labels(node).set(held["left"])
    reg.register(StepDurations(eng))
    reg.register(LedgerOutages(eng))
    return generate_latest(reg).decode()
