"""Failover and restart-check on real Redis, real node workers and real COSprint."""

from __future__ import annotations

from cosprint.designation import Designation
from workflows.failover import start_failover
from workflows.plan import FailoverRequest


def test_failover_moves_every_object_and_clients_print_on_the_bcs(make_cluster):
    c = make_cluster(servers=1, bcs=1, clients=3, objects=10_000)
    c.backup()
    before = c.hosted("srv1")["srv1"]
    c.local.kill("srv1")
    started = start_failover(c.engine, FailoverRequest(server="srv1", to="bcs1"), "test")
    run = c.wait(started.run_id)
    assert run["state"] == "succeeded", run["error"]
    for node in ("bcs1", "cl1", "cl2", "cl3"):
        counts = c.hosted(node)
        assert "srv1" not in counts and counts["bcs1"] == before, node
        st = c.driver(node).status()
        assert (st.master, st.epoch) == ("bcs1", 2), node
    assert c.driver("bcs1").status().role == "master"
    assert c.authority() == Designation("bcs1", 2)
    code, answer = c.driver("cl2").submit(started.plan.probe_queue, "after failover", "job-1")
    assert code == 202, answer
    assert c.wait_printed("bcs1", "job-1")
    outcomes = [s.outcome for s in c.ledger.steps(started.run_id) if not s.member]
    assert any(o and o.startswith("domain epoch is now 2, master bcs1") for o in outcomes)
