"""The trigger API over real workers: auth, 202/409/422, failover through HTTP."""

from __future__ import annotations

import httpx
import pytest
from cosfail.api.app import create_app
from cosfail.cosprint.designation import Designation
from fastapi.routing import APIRoute


@pytest.fixture
def api(make_cluster):  # type: ignore[no-untyped-def]
    """A cluster with its API served by a real `cosfail api` process."""

    def start(**kw):  # type: ignore[no-untyped-def]
        c = make_cluster(**kw)
        return c, c.start_api()

    return start


def test_every_route_but_healthz_needs_the_token(api):
    c, client = api(servers=1, bcs=1, clients=1, objects=200)
    anon = httpx.Client(base_url=str(client.base_url))
    assert anon.get("/healthz").status_code == 200
    served = [(method, route.path.replace("{run_id}", "x"))
              for route in create_app(c.domain).routes if isinstance(route, APIRoute)
              and route.path != "/healthz" for method in route.methods]
    assert {("POST", "/pause"), ("GET", "/history"), ("POST", "/runs/x/resume")} <= set(served)
    for method, path in served:
        assert anon.request(method, path).status_code == 401, path
        bad = anon.request(method, path, headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401, path
    assert c.ledger.runs(workflow="backup") == []
    assert c.ledger.paused() is None


def test_failover_through_the_api_then_a_client_prints_on_the_bcs(api):
    c, client = api(servers=1, bcs=1, clients=3, objects=10_000)
    c.backup()
    before = c.hosted("srv1")["srv1"]
    c.local.kill("srv1")
    r = client.post("/failover", json={"server": "srv1", "to": "bcs1", "reason": "srv1 died"})
    assert r.status_code == 202, r.text
    run = c.wait(r.json()["run_id"])
    assert run["state"] == "succeeded", run["error"]
    assert run["triggered_by"] == "api:token" and run["reason"] == "srv1 died"
    for node in ("bcs1", "cl1", "cl2", "cl3"):
        assert c.hosted(node).get("bcs1") == before and "srv1" not in c.hosted(node)
        assert c.driver(node).status().master == "bcs1"
    assert c.authority() == Designation("bcs1", 2)
    queue = r.json()["plan"]["probe_queue"]
    assert c.driver("cl3").submit(queue, "page", "api-job")[0] == 202
    assert c.wait_printed("bcs1", "api-job")
    detail = client.get(f"/runs/{run['id']}").json()
    assert all(s["state"] in ("succeeded", "skipped") for s in detail["steps"])


def test_bad_failover_input_is_422_and_changes_nothing(api):
    c, client = api(servers=1, bcs=1, clients=1, objects=300)
    cases = [
        ({"server": "nope", "to": "bcs1"}, "unknown node 'nope'"),
        ({"server": "cl1", "to": "bcs1"}, "cl1 is a client, not a server"),
        ({"server": "srv1", "to": "cl1"}, "srv1 is still alive"),
        ({"server": "srv1", "to": "cl1", "force": True}, "cl1 is a client, not a bcs"),
        ({"server": "srv1", "to": "bcs1", "force": True}, "no verified snapshot"),
        ({"server": "srv1"}, "exactly one of --to BCS or --best"),
    ]
    for body, fragment in cases:
        r = client.post("/failover", json=body)
        assert r.status_code == 422, (body, r.text)
        assert fragment in r.json()["detail"], (body, r.text)
    assert client.post("/failover", json={"server": "srv1", "bogus": 1}).status_code == 422
    assert c.ledger.runs(workflow="failover") == []
    assert c.authority() == Designation("srv1", 1)
    assert client.get("/runs/nosuch").status_code == 404
