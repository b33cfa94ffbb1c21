"""The full cycle without split brain: backup → failover → return → reclaim → failback."""

from __future__ import annotations

import time
from pathlib import Path

from cosfail.cosprint.designation import Designation
from cosfail.workflows import trigger
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest, MoveRequest
from cosfail.workflows.switchover import FAILBACK


def test_full_cycle_ends_as_it_began_and_never_has_two_masters(make_cluster, watch_masters):
    c = make_cluster(servers=1, bcs=1, clients=2, objects=5000)
    original = c.digest("srv1")
    with watch_masters(c) as watch:
        c.backup()
        c.local.kill("srv1")
        started = trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv1", to="bcs1"), "test")
        assert c.wait(started.run_id)["state"] == "succeeded"
        assert c.authority() == Designation("bcs1", 2)

        # srv1 comes back: its COSprint first (stale epoch), then its worker.
        returned = time.time()
        c.driver("srv1").start()
        assert c.driver("srv1").status().role != "master"
        c.restart_worker("srv1")
        reclaim = c.newest_run("reclaim")
        assert reclaim["triggered_by"] == "auto"
        assert c.wait(reclaim["id"])["state"] == "succeeded", reclaim
        st = c.driver("srv1").status()
        assert (st.role, st.master, st.epoch) == ("slave", "bcs1", 2)
        assert c.digest("srv1") == c.digest("bcs1")
        reclaimed_at = time.time()

        run_id = trigger.run(c.engine, FAILBACK, MoveRequest("srv1"), "test", "home again").run_id
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
    assert watch.most_masters() == 1, "two masters in one sample"
    assert len(watch.samples) > 50
    assert watch.masters_between(reclaimed_at, done) >= {"bcs1"}

