"""`cosfail status --json` and `/metrics` tell the truth in every phase."""

from __future__ import annotations

import json
import time

import httpx
from cosfail.api.app import read_token
from cosfail.workflows import trigger
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest
from prometheus_client.parser import text_string_to_metric_families


def status(c) -> dict:  # type: ignore[no-untyped-def, type-arg]
    done = c.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def node(st: dict, name: str) -> dict:  # type: ignore[type-arg]
    return next(n for n in st["nodes"] if n["name"] == name)


def metrics(c) -> dict[tuple[str, tuple], float]:  # type: ignore[no-untyped-def, type-arg]
    comp = c.local.components().get("api") or c.local.start_api()
    token = read_token(c.domain)
    with httpx.Client(base_url=comp.url, timeout=20,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        for _ in range(100):
            try:
                r = client.get("/metrics")
                break
            except httpx.TransportError:
                time.sleep(0.1)
    assert r.status_code == 200
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_status_and_metrics_follow_each_phase(make_cluster):
    c = make_cluster(servers=1, bcs=1, clients=1, objects=600)
    st = status(c)
    assert (st["master"], st["epoch"]) == ("srv1", 1)
    assert all(n["worker"] == "up" and n["cosprint"] == "up" for n in st["nodes"])
    assert node(st, "srv1")["serving_as"] == "master" and node(st, "srv1")["hosted"] == 600
    assert st["backups"] == {"bcs1": None}
    lease = node(st, "srv1")["lease"]  # as srv1 counts it, and as the ledger recorded it
    assert lease["ttl"] == 10 and 0 < lease["left"] <= 10 and lease["failsafe"] is False
    assert 0 < node(st, "srv1")["lease_recorded"]["left"] <= 10

    backup_run = c.backup()
    st = status(c)
    newest = c.ledger.catalog("bcs1")[0]
    assert st["backups"]["bcs1"]["file"] == newest["file"]
    assert 0 <= st["backups"]["bcs1"]["age"] < 600

    c.local.kill("srv1")
    st = status(c)
    assert node(st, "srv1")["worker"] == "down" and node(st, "srv1")["cosprint"] == "down"

    started = trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv1", to="bcs1"), "test")
    run = c.wait(started.run_id)
    assert run["state"] == "succeeded"
    st = status(c)
    assert (st["master"], st["epoch"]) == ("bcs1", 2)
    assert node(st, "bcs1")["serving_as"] == "master" and node(st, "bcs1")["hosted"] == 600
    assert node(st, "cl1")["points_at"] == "bcs1@2"
    assert st["hosting_change_running"] is None

    m = metrics(c)
    assert m["cosfail_epoch", ()] == 2
    assert 0 < m["cosfail_lease_remaining_seconds", (("node", "bcs1"),)] <= 10
    assert m["cosfail_lease_remaining_seconds", (("node", "srv1"),)] <= 10
    ledger_runs = c.ledger.runs(limit=1000)
    for r in ledger_runs:
        key = ("cosfail_runs_finished_total", (("state", r["state"]), ("workflow", r["workflow"])))
        expected = sum(1 for x in ledger_runs
                       if (x["workflow"], x["state"]) == (r["workflow"], r["state"]))
        assert m[key] == expected, key
    assert m["cosfail_last_failover_rto_seconds", ()] == run["finished_at"] - run["created_at"]
    assert m["cosfail_last_verified_backup_age_seconds", (("bcs", "bcs1"),)] > 0
    steps = [s for s in c.ledger.steps(backup_run) if s.name == "export_tables"]
    assert m["cosfail_step_duration_seconds_count",
             (("step", "export_tables"), ("workflow", "backup"))] == len(steps)
