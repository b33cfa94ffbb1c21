"""Failover and restart-check on real Redis, real node workers and real COSprint."""

from __future__ import annotations

import json
import time

from cosprint import tables
from cosprint.designation import Designation
from workflows.backup import start_backup
from workflows.failover import start_failover
from workflows.plan import FailoverRequest


def backed_up(c) -> None:  # type: ignore[no-untyped-def]
    run_id, _ = start_backup(c.engine, "test", "before failover")
    assert c.wait(run_id)["state"] == "succeeded"


def hosted(c, node: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with tables.connect(c.domain.tables_url(node)) as conn:
        return tables.hosted_counts(conn)


def sink_jobs(c, node: str) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    sink = c.domain.home(node) / "var" / "sink"
    return [json.loads(line) for f in sink.glob("*.log") for line in f.read_text().splitlines()]


def test_failover_moves_every_object_and_clients_print_on_the_bcs(make_cluster):
    c = make_cluster(servers=1, bcs=1, clients=3, objects=10_000)
    backed_up(c)
    before = hosted(c, "srv1")["srv1"]
    c.local.kill("srv1")
    started = start_failover(c.engine, FailoverRequest(server="srv1", to="bcs1"), "test")
    run = c.wait(started.run_id)
    assert run["state"] == "succeeded", run["error"]
    for node in ("bcs1", "cl1", "cl2", "cl3"):
        counts = hosted(c, node)
        assert "srv1" not in counts and counts["bcs1"] == before, node
        st = c.driver(node).status()
        assert (st.master, st.epoch) == ("bcs1", 2), node
    assert c.driver("bcs1").status().role == "master"
    assert c.authority() == Designation("bcs1", 2)
    code, answer = c.driver("cl2").submit(started.plan.probe_queue, "after failover", "job-1")
    assert code == 202, answer
    deadline = time.time() + 10
    while time.time() < deadline and not any(j["job_id"] == "job-1" for j in sink_jobs(c, "bcs1")):
        time.sleep(0.05)
    assert any(j["job_id"] == "job-1" for j in sink_jobs(c, "bcs1"))
    outcomes = [s.outcome for s in c.ledger.steps(started.run_id) if not s.member]
    assert any(o and o.startswith("domain epoch is now 2, master bcs1") for o in outcomes)
