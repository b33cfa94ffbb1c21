"""Faults outside the workers (issue 9, items 2 and 3), all real:

- the broker (redis-server, started with `--save ""`: a restart loses every queued and
  unacknowledged message) stopped in the middle of a failover and started again;
- the process that triggered a run (the CLI waiting on it, or the API process) SIGKILLed
  right after the run was accepted.

Either way the run ends as an undisturbed run does, by itself or by `cosfail resume`
from the ledger, and nothing it did is done twice in a way that shows in the end state.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO
from cosfail.launcher.local import pid_alive
from cosfail.workflows import ledger as L
from cosfail.workflows import trigger
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.liveness import alive_workers
from cosfail.workflows.plan import FailoverRequest
from faults.harness import FaultHarness

FORCED = FailoverRequest(server="srv1", to="bcs1", force=True)


def failover_cluster(fault_cluster):  # type: ignore[no-untyped-def]
    """A backed-up domain (srv1 failed over alive, --force) and its harness."""
    c, fp = fault_cluster(servers=1, bcs=1, clients=1, objects=3000, up=False)
    # As in test_kill_every_step: a restarted srv1 worker must not reclaim srv1, and a
    # step whose message the broker lost is reaped as lost after `step_expires`.
    c.amend_domain(control={"auto_reclaim": False, "step_expires": 5.0})
    c.up()
    c.backup()
    return c, FaultHarness(c, fp)


def baseline(c, h: FaultHarness) -> dict:  # type: ignore[no-untyped-def]
    """The fingerprint and rehosted counts of an undisturbed forced failover; resets."""
    h.reset()
    run_id = trigger.run(c.engine, FAILOVER, FORCED, "baseline").run_id or ""
    assert c.wait(run_id)["state"] == L.SUCCEEDED
    expected = {"fingerprint": h.fingerprint(), "hosted": c.hosted("bcs1")}
    h.reset()
    return expected


def assert_like_baseline(c, h: FaultHarness, expected: dict, workflow: str) -> None:  # type: ignore[no-untyped-def]
    got = h.fingerprint()
    diff = {k: (expected["fingerprint"][k], got.get(k))
            for k in expected["fingerprint"] if expected["fingerprint"][k] != got.get(k)}
    assert not diff, diff
    assert c.hosted("bcs1") == expected["hosted"]
    assert [r["state"] for r in h.new_runs(workflow)] == [L.SUCCEEDED]
    auth = c.authority()
    assert (auth.master, auth.epoch) == ("bcs1", 2)
    # Every node but the fenced srv1 (left as it was, as in an undisturbed failover)
    # has the master's tables.
    assert len({c.digest(n) for n in c.domain.names() if n != "srv1"}) == 1


def wait_step(c, run_id: str, name: str, states: tuple[str, ...], timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while True:
        hit = [s for s in c.ledger.steps(run_id) if s.name == name and s.state in states]
        if hit:
            return hit[0]
        run = c.ledger.run(run_id)
        assert run["state"] == L.RUNNING, f"run {run['state']} before {name} {states}"
        assert time.time() < deadline, f"{name} never reached {states}"
        time.sleep(0.002)


def restart_dead_workers(c) -> list[str]:  # type: ignore[no-untyped-def]
    dead = [n for n in [None, *c.domain.names()] if not pid_alive(c.worker_pid(n))]
    for n in dead:
        c.restart_worker(n)
    return [n or "control" for n in dead]


@pytest.mark.timeout(240)
def test_redis_stopped_mid_failover_and_started_again(fault_cluster, redis_server):
    c, h = failover_cluster(fault_cluster)
    expected = baseline(c, h)
    t0 = time.time()
    bcs1 = c.worker_pid("bcs1")
    run_id = trigger.run(c.engine, FAILOVER, FORCED, "fault-suite").run_id or ""
    try:
        # Hold the run at restore_snapshot on bcs1 while the broker goes away under it:
        # the step's message is taken but unacknowledged, the next one not yet sent.
        wait_step(c, run_id, "restore_snapshot", (L.QUEUED, L.RUNNING))
        os.kill(bcs1, signal.SIGSTOP)
        redis_server.stop()
        os.kill(bcs1, signal.SIGCONT)
        time.sleep(3)  # the step ends, its worker cannot send the chain on
    finally:
        os.kill(bcs1, signal.SIGCONT)
        redis_server.start()  # the same port: the session's other clusters are unaffected
    run = c.wait(run_id, timeout=20)
    how = "by itself"
    if run["state"] != L.SUCCEEDED:
        dead = restart_dead_workers(c)
        c.wait(run_id, timeout=15)  # lost steps are reaped once past step_expires
        resumed = c.cli("resume", run_id, "--wait")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        how = f"by `cosfail resume` (dead workers restarted: {dead})"
        run = c.ledger.run(run_id)
    assert run["state"] == L.SUCCEEDED, run["error"]
    print(f"run {run_id} completed {how} in {time.time() - t0:.1f} s", flush=True)
    assert_like_baseline(c, h, expected, "failover")
    assert alive_workers()  # the workers answer on the restarted broker


def _kill_when_accepted(c, proc: subprocess.Popen, workflow: str) -> str:  # type: ignore[no-untyped-def]
    deadline = time.time() + 60
    while not (runs := c.ledger.runs(limit=5, workflow=workflow)):
        assert proc.poll() is None, f"the trigger exited first: {proc.communicate()}"
        assert time.time() < deadline, "the run never showed in the ledger"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return runs[0]["id"]


@pytest.mark.timeout(240)
def test_the_trigger_killed_right_after_acceptance(fault_cluster):
    c, h = failover_cluster(fault_cluster)
    expected = baseline(c, h)

    # The CLI, waiting on its failover: killed as soon as the ledger has the run.
    cli = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "cosfail.launcher.cli", "failover", "srv1", "--to", "bcs1",
         "--force", "--yes", "--wait", "-d", str(c.domain.path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run_id = _kill_when_accepted(c, cli, "failover")
    run = c.wait(run_id, timeout=60)
    how = "by itself"
    if run["state"] != L.SUCCEEDED:
        # Killed between recording the run and sending its chain: the run is failed as
        # never launched once past step_expires, and holds the hosting lock, so nothing
        # else can move hosting in between; `cosfail resume` launches it.
        assert run["state"] == L.FAILED and "never launched" in run["error"], run
        resumed = c.cli("resume", run_id, "--wait")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        run = c.ledger.run(run_id)
        how = "by `cosfail resume` (it was never launched)"
    print(f"failover run {run_id} of the killed CLI completed {how}", flush=True)
    assert run["state"] == L.SUCCEEDED, run["error"]
    assert_like_baseline(c, h, expected, "failover")

    # The API process: killed right after its 202 for a backup.
    h.reset()
    before = h.fingerprint()
    client = c.start_api()
    comp = c.local.components()["api"]
    r = client.post("/backup", json={"reason": "then killed"})
    os.kill(comp.pid, signal.SIGKILL)
    assert r.status_code == 202, r.text
    backup_id = r.json()["run_id"]
    run = c.wait(backup_id, timeout=60)
    assert run["state"] == L.SUCCEEDED, run["error"]
    assert run["triggered_by"] == "api:token"
    assert not pid_alive(comp.pid)
    after = h.fingerprint()
    for node in c.domain.names():
        assert after[node]["rows"] == before[node]["rows"]
    assert after["bcs1"]["verified_snapshots"] == before["bcs1"]["verified_snapshots"] + 1
    assert [r["state"] for r in h.new_runs("backup")] == [L.SUCCEEDED]
