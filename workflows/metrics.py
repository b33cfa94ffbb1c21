"""Prometheus metrics, computed from the ledger at scrape time (the ledger is the record).

Counters and histograms count, in the database, everything it holds that it never takes
back (a run's failures, a succeeded run or step, a recorded outage), never a
window of recent rows: so none goes down between two scrapes, and none is reset when
the API restarts. Every series an alert takes the `increase()` of is served from the
first scrape, at 0: a series born at 1 has no increase to Prometheus, and its first
event would not alert (deploy/prometheus/alerts.yml).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from cosfail.workflows import ledger as L
from cosfail.workflows.backup import BACKUP
from cosfail.workflows.detection import DOWN, SUSPECT, UP
from cosfail.workflows.engine import Engine
from cosfail.workflows.restart_check import RESTART_CHECK
from cosfail.workflows.state import current_state
from cosfail.workflows.trigger import HOSTING_WORKFLOWS
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Trigger to end: a backup of a small domain takes a second, a failover that restores a
# large snapshot minutes, a resumed run as long as it waited for its operator.
RUN_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
WORKFLOWS = (BACKUP.name, RESTART_CHECK.name, *HOSTING_WORKFLOWS)
ENDED = (L.SUCCEEDED, L.FAILED, L.REFUSED, L.SKIPPED)
OUTAGE_KINDS = ("lease", "failsafe", "stopped")  # cosprint.lease.outcome_kind's words


class LedgerMetrics(Collector):
    """Every family, read from the ledger once per scrape."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng

    def collect(self) -> Iterator[Metric]:
        yield from domain_metrics(self.eng)
        yield from backup_metrics(self.eng)
        yield from run_metrics(self.eng)
        yield step_durations(self.eng)
        yield from liveness_metrics(self.eng)
        yield from lease_metrics(self.eng)
        yield from outage_metrics(self.eng)


def render(eng: Engine) -> str:
    reg = CollectorRegistry()
    reg.register(LedgerMetrics(eng))
    return generate_latest(reg).decode()


def domain_metrics(eng: Engine) -> Iterator[Metric]:
    yield GaugeMetricFamily("cosfail_epoch", "Current domain epoch",
                            value=current_state(eng).epoch)
    yield GaugeMetricFamily("cosfail_domain_paused", "1 while the domain is paused (cosfail "
                            "pause): no automatic failover, no scheduled backups",
                            value=int(eng.ledger.paused() is not None))
    yield GaugeMetricFamily("cosfail_scheduled_switchovers_pending",
                            "Scheduled switchovers not yet started, refused or cancelled",
                            value=len(eng.ledger.scheduled((L.PENDING, L.DUE))))
    rto = GaugeMetricFamily("cosfail_last_failover_rto_seconds",
                            "Last successful failover, trigger to verified end state")
    # No sample before the first failover: a 0 would read as an instant one.
    if last := eng.ledger.newest_run("failover", L.SUCCEEDED):
        rto.add_metric([], last["finished_at"] - last["created_at"])
    yield rto


def backup_metrics(eng: Engine) -> Iterator[Metric]:
    now = time.time()
    age = GaugeMetricFamily("cosfail_last_verified_backup_age_seconds",
                            "Age of the newest verified snapshot per BCS", labels=["bcs"])
    held = GaugeMetricFamily("cosfail_verified_snapshots",
                             "Verified snapshots a BCS holds (not pruned)", labels=["bcs"])
    for bcs in eng.domain.names("bcs"):
        cat = eng.ledger.catalog(bcs)
        held.add_metric([bcs], len(cat))
        if cat:
            age.add_metric([bcs], now - cat[0]["created_at"])
    yield age
    yield held
    # What the backup-age alert compares with, so that it follows the domain file.
    yield GaugeMetricFamily(
        "cosfail_max_data_loss_seconds", "[detect] max_data_loss: the greatest age of the "
        "newest verified snapshot an automatic failover accepts",
        value=eng.domain.spec.detect.max_data_loss)


def run_metrics(eng: Engine) -> Iterator[Metric]:
    totals = eng.ledger.run_counts()
    workflows = sorted({*WORKFLOWS, *(wf for wf, _ in totals)})
    ended = {(wf, st): 0 for wf in workflows for st in ENDED}
    running = dict.fromkeys(workflows, 0)
    for (wf, st), (n, failures) in totals.items():
        # Failures as the ledger counted them: a resumed run that succeeds keeps its own.
        ended[wf, L.FAILED] += failures
        if st in ENDED and st != L.FAILED:
            ended[wf, st] += n
        elif st not in ENDED:
            running[wf] += n
    finished = CounterMetricFamily(
        "cosfail_runs_finished", "Runs that ended, by workflow and how (failed: every "
        "failure, a resumed run's included)", labels=["workflow", "state"])
    for (wf, st), n in sorted(ended.items()):
        finished.add_metric([wf, st], n)
    yield finished
    unfinished = GaugeMetricFamily("cosfail_runs_running", "Runs planned or running",
                                   labels=["workflow"])
    for wf, n in running.items():
        unfinished.add_metric([wf], n)
    yield unfinished
    yield histogram("cosfail_run_duration_seconds", "Succeeded runs, trigger to end",
                    ["workflow"], RUN_BUCKETS,
                    {(wf,): h for wf, h in eng.ledger.run_durations(RUN_BUCKETS).items()})


def histogram(name: str, doc: str, labels: list[str], bounds: tuple[float, ...],
              rows: dict[tuple[str, ...], tuple[list[int], float, int]]) -> Metric:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for values, (within, total, count) in rows.items():
        buckets = [(str(b), n) for b, n in zip(bounds, within, strict=True)]
        fam.add_metric(list(values), [*buckets, ("+Inf", count)], total)
    return fam


def step_durations(eng: Engine) -> Metric:
    """Every succeeded step's duration, as the ledger counts it."""
    return histogram("cosfail_step_duration_seconds", "Step durations", ["workflow", "step"],
                     STEP_BUCKETS, eng.ledger.step_durations(STEP_BUCKETS))


def liveness_metrics(eng: Engine) -> Iterator[Metric]:
    """Liveness as the detector last recorded it (workflows/detect.py)."""
    live = eng.ledger.liveness_now()
    for state in (UP, SUSPECT, DOWN):
        yield GaugeMetricFamily(f"cosfail_nodes_{state}", f"Nodes the detector sees {state}",
                                value=sum(1 for r in live.values() if r["state"] == state))
    up = GaugeMetricFamily("cosfail_node_up",
                           "1 if the detector sees the node up, 0 if suspect or down",
                           labels=["node"])
    down_since = GaugeMetricFamily("cosfail_node_down_since_seconds",
                                   "Unix time since which a down node has been unreachable",
                                   labels=["node"])
    for node, r in sorted(live.items()):
        up.add_metric([node], int(r["state"] == UP))
        if r["state"] == DOWN:
            down_since.add_metric([node], r["unreachable_since"] or r["at"])
    yield up
    yield down_since


def lease_metrics(eng: Engine) -> Iterator[Metric]:
    """Serving leases as the ledger recorded them, by the ledger server's clock. With the
    epoch each was renewed under, since only a lease of the current epoch lets a node
    print: an old master's lease stays recorded, ended, for good."""
    left = GaugeMetricFamily("cosfail_lease_remaining_seconds",
                             "Seconds left on a node's serving lease (negative: ended)",
                             labels=["node"])
    epoch = GaugeMetricFamily("cosfail_lease_epoch",
                              "The domain epoch a node's serving lease was last renewed under",
                              labels=["node"])
    for node, held in sorted(eng.ledger.leases().items()):
        left.add_metric([node], held["left"])
        epoch.add_metric([node], held["epoch"])
    yield left
    yield epoch


def outage_metrics(eng: Engine) -> Iterator[Metric]:
    """The ledger outages the nodes printed through, or stopped in, as they recorded
    them when the ledger returned."""
    labels = ["node", "outcome"]
    count = CounterMetricFamily(
        "cosfail_ledger_outages", "Ledger outages a node lived through, by outcome: "
        "lease (printed on its lease), failsafe (printed past it), stopped", labels=labels)
    seconds = CounterMetricFamily(
        "cosfail_ledger_outage_seconds", "Seconds of those outages, by outcome "
        "(failsafe: the outages a node printed through in failsafe)", labels=labels)
    totals = eng.ledger.outage_totals()
    nodes = sorted({*eng.domain.names(), *(node for node, _ in totals)})
    for node in nodes:
        for kind in OUTAGE_KINDS:
            n, total = totals.get((node, kind), (0, 0.0))
            count.add_metric([node, kind], n)
            seconds.add_metric([node, kind], total)
    yield count
    yield seconds
