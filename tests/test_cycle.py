"""The full cycle without split brain: backup → failover → return → reclaim → failback."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cosprint.designation import Designation
from workflows.failover import start_failover
from workflows.plan import FailoverRequest
from workflows.switchover import start_failback


class MasterWatcher:
    """Polls every node's COSprint status every 50 ms and keeps who claimed master."""

    def __init__(self, cluster) -> None:  # type: ignore[no-untyped-def]
        self.cluster = cluster
        self.samples: list[tuple[float, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        drivers = [self.cluster.driver(n) for n in self.cluster.domain.names()]
        while not self._stop.is_set():
            masters = []
            for d in drivers:
                st = d.status()
                if st and st.role == "master":
                    masters.append(st.node)
            self.samples.append((time.time(), masters))
            self._stop.wait(0.05)

    def __enter__(self) -> MasterWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def masters_between(self, t0: float, t1: float) -> set[str]:
        return {m for t, ms in self.samples if t0 <= t <= t1 for m in ms}


def test_full_cycle_ends_as_it_began_and_never_has_two_masters(make_cluster):
    c = make_cluster(servers=1, bcs=1, clients=2, objects=5000)
    original = c.digest("srv1")
    with MasterWatcher(c) as watch:
        c.backup()
        c.local.kill("srv1")
        started = start_failover(c.engine, FailoverRequest(server="srv1", to="bcs1"), "test")
        assert c.wait(started.run_id)["state"] == "succeeded"
        assert c.authority() == Designation("bcs1", 2)

        # srv1 comes back: its COSprint first (stale epoch), then its worker.
        returned = time.time()
        c.driver("srv1").start()
        assert c.driver("srv1").status().role != "master"
        c.restart_worker("srv1")
        reclaim = wait_for_run(c, "reclaim")
        assert reclaim["triggered_by"] == "auto"
        assert c.wait(reclaim["id"])["state"] == "succeeded", reclaim
        st = c.driver("srv1").status()
        assert (st.role, st.master, st.epoch) == ("slave", "bcs1", 2)
        assert c.digest("srv1") == c.digest("bcs1")
        reclaimed_at = time.time()

        run_id, _ = start_failback(c.engine, "srv1", "test", "home again")
        run = c.wait(run_id)
        assert run["state"] == "succeeded", run["error"]
        done = time.time()

    assert c.authority() == Designation("srv1", 3)
    assert c.driver("srv1").status().role == "master"
    for node in c.domain.names():
        assert c.digest(node) == original, node
        assert c.hosted(node) == {"srv1": 5000}, node
    quarantine = Path(c.domain.home("srv1")) / "var" / "reclaimed" / "1"
    assert (quarantine / "tables.snap").exists() and (quarantine / "etc" / "master").exists()
    assert "srv1" not in watch.masters_between(returned, reclaimed_at)
    assert all(len(ms) <= 1 for _, ms in watch.samples), "two masters in one sample"
    assert len(watch.samples) > 50
    assert watch.masters_between(reclaimed_at, done) >= {"bcs1"}


def wait_for_run(c, workflow: str, timeout: float = 60.0) -> dict:  # type: ignore[no-untyped-def, type-arg]
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = c.ledger.runs(workflow=workflow)
        if runs:
            return runs[0]
        time.sleep(0.1)
    raise AssertionError(f"no {workflow} run within {timeout} s")
