"""A real SIGKILL of the worker running each step of each workflow, then resume: the end
state equals an undisturbed run's. Zero objects lost or duplicated (docs/architecture.md,
invariants 3 and 8).

Every step of every workflow is killed once, alternating before and after its effect;
steps that move data are killed at both points. `COSFAIL_FAULTS=full` kills every step
at both points.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from conftest import ARTIFACTS
from cosfail.workflows import ledger as L
from cosfail.workflows import trigger
from cosfail.workflows.backup import BACKUP, BackupRequest
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest, MoveRequest
from cosfail.workflows.reclaim import RECLAIM
from cosfail.workflows.restart_check import RESTART_CHECK, CheckRequest
from cosfail.workflows.switchover import FAILBACK, SWITCHOVER
from faults.harness import FaultHarness, KillPoint

WHO = "fault-suite"
# CI runs the failover's matrix (each step killed once), whose hosting core
# (workflows/failover.py, move_hosting) switchover and failback share. The other
# matrices, 1-3 minutes each, run in `make soak` to keep CI under 30 minutes; CI still
# SIGKILLs a worker mid-backup and at each of reclaim's node steps (tests/test_backup.py,
# tests/test_reclaim.py).
DATA_STEPS = frozenset({"export_tables", "ship_snapshot", "verify_snapshot", "restore_snapshot",
              "rehost_objects", "publish_tables", "refresh_tables", "repoint_and_start",
              "set_aside_data", "resend_set_aside_jobs"})
# Switchover and failback run the failover's step code, whose data steps the failover
# matrix kills at both points: their own matrices kill each step once.
ONCE_EACH: frozenset[str] = frozenset()


def kill_points(c, run_id: str, both: frozenset[str]) -> list[KillPoint]:  # type: ignore[no-untyped-def]
    full = os.environ.get("COSFAIL_FAULTS") == "full"
    points = []
    for i, s in enumerate(c.ledger.steps(run_id)):
        timings = ("before", "after") if full or s.name in both else \
            (("before", "after")[i % 2],)
        points += [KillPoint(s.name, s.node, t) for t in timings]
    return points


def survive_every_kill(c, h: FaultHarness, trigger: Callable[[], str],  # type: ignore[no-untyped-def]
                       both: frozenset[str] = DATA_STEPS) -> list[str]:
    """Run the matrix, killing the steps `both` names at both points; returns one line
    per kill point, failures marked."""
    h.reset()
    baseline_run = trigger()
    baseline = c.wait(baseline_run)
    assert baseline["state"] == L.SUCCEEDED
    workflow = baseline["workflow"]  # read now: every reset rolls the ledger back
    expected = h.fingerprint()
    report, failures = [], []
    for kp in kill_points(c, baseline_run, both):
        h.reset()
        run_id = h.run_with_kill(trigger, kp)
        got = h.fingerprint()
        # A restarted node worker runs a restart-check of its own: one more run of that
        # workflow, which must succeed too.
        runs = c.ledger.runs(limit=50, workflow=c.ledger.run(run_id)["workflow"])
        ours = [r["state"] for r in runs if r["triggered_by"] == WHO]
        ok = got == expected and ours == [L.SUCCEEDED] and \
            all(r["state"] == L.SUCCEEDED for r in runs)
        report.append(f"{kp}: {'same end state' if ok else 'DIFFERENT'}")
        print(report[-1], flush=True)
        if not ok:
            diff = {k: (expected[k], got.get(k)) for k in expected if expected[k] != got.get(k)}
            failures.append(f"{kp}: {diff} runs={[r['state'] for r in runs]}")
    # Kept for the closing figures of a CI run (tests/artifacts is not committed).
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"kill-matrix-{workflow}.txt").write_text("\n".join(report) + "\n")
    assert not failures, "\n".join(failures)
    return report


def setup(c, workflow, request) -> dict:  # type: ignore[no-untyped-def]
    """A run that sets a matrix up, waited on."""
    return c.wait(trigger.run(c.engine, workflow, request, "setup").run_id)


def srv1_on_bcs1(fault_cluster):  # type: ignore[no-untyped-def]
    """A domain whose srv1 has been failed over (alive, forced) to bcs1."""
    c, fp = fault_cluster(servers=1, bcs=1, clients=1, objects=3000)
    c.backup()
    req = FailoverRequest(server="srv1", to="bcs1", force=True)
    assert setup(c, FAILOVER, req)["state"] == L.SUCCEEDED
    return c, fp


def srv1_to_leave_alive(fault_cluster):  # type: ignore[no-untyped-def]
    """A backed-up domain and its harness, for a move away from a live srv1 (a forced
    failover, a switchover): were srv1's worker killed and restarted, auto reclaim would
    rightly make srv1 a slave, which no undisturbed move does."""
    c, fp = fault_cluster(servers=1, bcs=1, clients=1, objects=3000, up=False)
    c.amend_domain(control={"auto_reclaim": False})
    c.up()
    c.backup()
    return c, FaultHarness(c, fp)


@pytest.mark.timeout(1500)
def test_failover_survives_a_kill_at_every_step(fault_cluster, request):
    c, h = srv1_to_leave_alive(fault_cluster)

    def fail_over() -> str:
        req = FailoverRequest(server="srv1", to="bcs1", force=True)
        return trigger.run(c.engine, FAILOVER, req, WHO).run_id

    # In CI (SQLite) each step is killed once; in `make soak` (PostgreSQL) its data steps
    # are killed at both points.
    both = DATA_STEPS if request.node.get_closest_marker("soak") else ONCE_EACH
    report = survive_every_kill(c, h, fail_over, both)
    assert len(report) >= (18 if both else 12)


@pytest.mark.soak
@pytest.mark.timeout(1500)
def test_backup_survives_a_kill_at_every_step(fault_cluster):
    c, fp = fault_cluster(servers=1, bcs=1, clients=1, objects=3000)
    h = FaultHarness(c, fp)
    report = survive_every_kill(
        c, h, lambda: trigger.run(c.engine, BACKUP, BackupRequest(), WHO).run_id)
    assert len(report) >= 8


@pytest.mark.soak
@pytest.mark.timeout(1500)
def test_reclaim_survives_a_kill_at_every_step(fault_cluster):
    c, fp = srv1_on_bcs1(fault_cluster)
    h = FaultHarness(c, fp)
    report = survive_every_kill(
        c, h, lambda: trigger.run(c.engine, RECLAIM, MoveRequest("srv1"), WHO).run_id)
    assert len(report) >= 8


@pytest.mark.soak
@pytest.mark.timeout(1500)
def test_switchover_survives_a_kill_at_every_step(fault_cluster):
    c, h = srv1_to_leave_alive(fault_cluster)
    report = survive_every_kill(
        c, h, lambda: trigger.run(c.engine, SWITCHOVER, MoveRequest("srv1", "bcs1"), WHO).run_id,
        ONCE_EACH)
    assert len(report) >= 10


@pytest.mark.soak
@pytest.mark.timeout(1500)
def test_failback_survives_a_kill_at_every_step(fault_cluster):
    c, fp = srv1_on_bcs1(fault_cluster)
    assert setup(c, RECLAIM, MoveRequest("srv1"))["state"] == L.SUCCEEDED
    h = FaultHarness(c, fp)  # its pristine state: bcs1 hosts srv1, srv1 a slave
    report = survive_every_kill(
        c, h, lambda: trigger.run(c.engine, FAILBACK, MoveRequest("srv1"), WHO).run_id,
        ONCE_EACH)
    assert len(report) >= 10


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_restart_check_survives_a_kill_at_every_step(fault_cluster):
    c, fp = fault_cluster(servers=1, bcs=1, clients=1, objects=3000, up=False)
    # The failover gives dead cl1 this long to take each of its steps.
    c.amend_domain(control={"step_expires": 3.0})
    c.up()
    c.backup()
    # srv1 dies and is failed over while cl1 is down too: cl1 comes back with srv1's
    # tables and designation, so its restart-check must fetch bcs1's tables, re-point,
    # re-designate and start COSprint.
    c.local.kill("cl1")
    c.local.kill("srv1")
    req = FailoverRequest(server="srv1", to="bcs1")
    assert setup(c, FAILOVER, req)["state"] == L.SUCCEEDED
    h = FaultHarness(c, fp)  # its pristine state: cl1 stale, its COSprint down
    # cl1's worker back, whose own start-up check re-points it; each reset puts the
    # stale home back under the running worker.
    h.revive_worker("cl1")
    h.reset()
    stale = h.fingerprint()["cl1"]
    assert (stale["designation"], stale["cosprint"]) == ("srv1@1", None), stale

    report = survive_every_kill(
        c, h, lambda: trigger.run(c.engine, RESTART_CHECK, CheckRequest("cl1"), WHO).run_id)
    assert len(report) >= 5
    end = h.fingerprint()  # the last kill point's, equal to the undisturbed run's
    assert end["cl1"]["rows"] == end["bcs1"]["rows"] != stale["rows"]
    assert end["cl1"]["cosprint"] == ("slave", "bcs1", 2)
    assert end["cl1"]["designation"] == end["cl1"]["last_running"] == "bcs1@2"
