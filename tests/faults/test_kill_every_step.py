"""A real SIGKILL of the worker running each step of each workflow, then resume: the end
state equals an undisturbed run's. Zero objects lost or duplicated (DESIGN invariant 3).

Every step of every workflow is killed once, alternating before and after its effect;
steps that move data are killed at both points. `COSFAIL_FAULTS=full` kills every step
at both points.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from faults.harness import FaultHarness, KillPoint

from workflows import ledger as L
from workflows.backup import start_backup
from workflows.failover import start_failover
from workflows.plan import FailoverRequest
from workflows.reclaim import start_reclaim

DATA_STEPS = {"export_tables", "ship_snapshot", "verify_snapshot", "restore_snapshot",
              "rehost_objects", "publish_tables", "refresh_tables", "set_aside_data"}


def kill_points(c, run_id: str) -> list[KillPoint]:  # type: ignore[no-untyped-def]
    full = os.environ.get("COSFAIL_FAULTS") == "full"
    points = []
    for i, s in enumerate(c.ledger.steps(run_id)):
        timings = ("before", "after") if full or s.name in DATA_STEPS else \
            (("before", "after")[i % 2],)
        points += [KillPoint(s.name, s.node, t) for t in timings]
    return points


def survive_every_kill(c, h: FaultHarness, trigger: Callable[[], str]) -> list[str]:  # type: ignore[no-untyped-def]
    """Run the matrix; returns one line per kill point, failures marked."""
    h.reset()
    baseline_run = trigger()
    assert c.wait(baseline_run)["state"] == L.SUCCEEDED
    expected = h.fingerprint()
    report, failures = [], []
    for kp in kill_points(c, baseline_run):
        h.reset()
        run_id = h.run_with_kill(trigger, kp)
        got = h.fingerprint()
        runs = c.ledger.runs(limit=50, workflow=c.ledger.run(run_id)["workflow"])
        ok = got == expected and [r["state"] for r in runs] == [L.SUCCEEDED]
        report.append(f"{kp}: {'same end state' if ok else 'DIFFERENT'}")
        print(report[-1], flush=True)
        if not ok:
            diff = {k: (expected[k], got.get(k)) for k in expected if expected[k] != got.get(k)}
            failures.append(f"{kp}: {diff} runs={[r['state'] for r in runs]}")
    assert not failures, "\n".join(failures)
    return report


@pytest.mark.timeout(1500)
def test_failover_survives_a_kill_at_every_step(fault_cluster):
    c, fp = fault_cluster(servers=1, bcs=1, clients=1, objects=3000, up=False)
    # srv1 is failed over alive (--force): were its worker killed and restarted, auto
    # reclaim would rightly make it a slave, which no undisturbed failover does.
    c.amend_domain(control={"auto_reclaim": False})
    c.up()
    c.backup()
    h = FaultHarness(c, fp)

    def trigger() -> str:
        req = FailoverRequest(server="srv1", to="bcs1", force=True)
        return start_failover(c.engine, req, "fault-suite").run_id or ""

    report = survive_every_kill(c, h, trigger)
    assert len(report) >= 20


@pytest.mark.timeout(1500)
def test_backup_survives_a_kill_at_every_step(fault_cluster):
    c, fp = fault_cluster(servers=1, bcs=1, clients=1, objects=3000)
    h = FaultHarness(c, fp)
    report = survive_every_kill(c, h, lambda: start_backup(c.engine, "fault-suite")[0])
    assert len(report) >= 8


@pytest.mark.timeout(1500)
def test_reclaim_survives_a_kill_at_every_step(fault_cluster):
    c, fp = fault_cluster(servers=1, bcs=1, clients=1, objects=3000)
    c.backup()
    req = FailoverRequest(server="srv1", to="bcs1", force=True)
    assert c.wait(start_failover(c.engine, req, "setup").run_id)["state"] == L.SUCCEEDED
    h = FaultHarness(c, fp)
    report = survive_every_kill(c, h, lambda: start_reclaim(c.engine, "srv1", "fault-suite")[0])
    assert len(report) >= 8
