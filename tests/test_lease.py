"""The serving lease: a master prints on through a ledger outage (its lease, then
failsafe while every peer confirms it), stops when it cannot be sure, and a failover
waits out the lease of a server it could not stop."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import JobSender
from cosfail.cosprint import lease
from cosfail.cosprint.domain import DomainFileError, parse_domain
from cosfail.workers.steps import stop_cosprint
from cosfail.workflows import ledger as L
from cosfail.workflows.control import (
    fence_server,
    lease_note,
    lease_wait,
    positively_down,
    stopped_by_run,
)
from cosfail.workflows.metrics import render
from prometheus_client.parser import text_string_to_metric_families

# ----- decisions, without I/O -----------------------------------------------------------


def test_the_timings_leave_a_failsafe_round_room_to_renew_before_its_grant_ends():
    for ttl in (lease.MIN_TTL, lease.DEFAULT_TTL, 30.0, lease.MAX_TTL):
        # the next round starts renew_every later, after a renewal that may time out,
        # and must have its answers before this grant ends
        next_answered = lease.renew_every(ttl) + lease.RENEW_TIMEOUT + lease.ROUND_TIMEOUT
        assert lease.failsafe_grant(ttl) > next_answered
        assert lease.failover_wait(ttl) > lease.failsafe_grant(ttl)
        assert 0 < lease.margin(ttl) < lease.renew_every(ttl)


@pytest.mark.parametrize("ttl", [0, 4.9, 300.1, -1])
def test_a_ttl_that_breaks_the_invariant_is_refused_naming_the_file(ttl, tmp_path):
    raw = {"node": [{"name": "srv1", "role": "server", "home": "h", "port": 1, "master": True},
                    {"name": "bcs1", "role": "bcs", "home": "b", "port": 2}],
           "coverage": [{"bcs": "bcs1", "servers": ["srv1"]}], "lease": {"ttl": ttl}}
    with pytest.raises(DomainFileError) as refused:
        parse_domain(raw, tmp_path / "domain.toml")
    assert str(refused.value).startswith(f"{tmp_path / 'domain.toml'}: lease.ttl: ttl ")
    assert "outside 5..300 s" in str(refused.value)


def test_a_node_prints_without_the_ledger_only_on_a_lease_or_a_failsafe_round_of_its_epoch():
    hold = lease.Hold(epoch=3, lease_until=10.0, failsafe_until=20.0,
                      failsafe_why="all 3 peers confirm")
    assert lease.serving_without_ledger(hold, 3, 9.9, failsafe=True) == "printing on its lease"
    assert lease.serving_without_ledger(hold, 3, 15.0, failsafe=True) == \
        "printing in failsafe: all 3 peers confirm"
    assert lease.serving_without_ledger(hold, 3, 15.0, failsafe=False) is None
    assert lease.serving_without_ledger(hold, 3, 20.0, failsafe=True) is None
    assert lease.serving_without_ledger(hold, 4, 1.0, failsafe=True) is None  # other epoch


def test_a_peer_confirms_failsafe_only_when_it_too_is_cut_off_and_sees_the_same_master():
    def ask(**kw: Any) -> str | None:
        args = {"master": "srv1", "epoch": 3, "mine": ("srv1", 3),
                "ledger_readable": False, "serving": True, **kw}
        return lease.failsafe_refusal(**args)

    assert ask() is None
    assert ask(serving=False) == "stopping"
    assert ask(ledger_readable=True) == "it reads the ledger"
    assert ask(mine=None) == "its designation is unknown"
    assert ask(mine=("bcs1", 4)) == "it sees bcs1@4, not srv1@3"
    assert ask(epoch=2) == "it sees srv1@3, not srv1@2"


def test_one_refusal_or_silence_ends_a_failsafe_round():
    assert lease.round_verdict({"bcs1": None, "cl1": None}) == (True, "all 2 peers confirm")
    ok, why = lease.round_verdict({"bcs1": None, "cl1": "no answer (timed out)",
                                   "cl2": "cl2: stopping"})
    assert not ok and why == "cl1 refused: no answer (timed out) (and 1 more)"


def step_row(task: str, node: str, state: str = L.SUCCEEDED, outcome: str = "",
             facts: dict[str, Any] | None = None) -> L.StepRow:
    return L.StepRow(run_id="r", idx=0, node=node, name=task.rsplit(".", 1)[-1], task=task,
                     queue="", envelope={}, input={}, member=node != "", required=True,
                     state=state, attempt=1, task_id=None, worker=None, queued_at=None,
                     started_at=None, finished_at=None, outcome=outcome, facts=facts,
                     error=None)


def test_a_server_counts_as_down_only_when_fenced_or_stopped_by_its_own_worker():
    fenced = step_row(fence_server.name, "", outcome="fenced srv1 over SSH",
                      facts={"fenced": True})
    not_fenced = step_row(fence_server.name, "", outcome="srv1 not fenced: no route",
                          facts={"fenced": False})
    stopped = step_row(stop_cosprint.name, "srv1", outcome="stopped COSprint on srv1")
    skipped = step_row(stop_cosprint.name, "srv1", state=L.SKIPPED)
    assert positively_down([fenced], "srv1") == "fenced (fenced srv1 over SSH)"
    assert positively_down([stopped], "srv1") == \
        "its worker stopped it (stopped COSprint on srv1)"
    assert positively_down([not_fenced, skipped], "srv1") is None
    assert positively_down([step_row(stop_cosprint.name, "bcs1")], "srv1") is None
    assert stopped_by_run([step_row(stop_cosprint.name, "bcs1")], "bcs1")
    assert not stopped_by_run([skipped], "srv1")


def test_the_failover_waits_the_recorded_lease_or_the_failsafe_rounds_whichever_is_later():
    ttl = 10.0
    assert lease_wait(None, ttl, 0.0) == 0.0
    assert lease_wait(-3.0, ttl, 0.0) == lease.margin(ttl)
    assert lease_wait(7.0, ttl, 0.0) == 7.0 + lease.margin(ttl)
    assert lease_wait(None, ttl, lease.failover_wait(ttl)) == lease.failover_wait(ttl)
    assert lease_wait(9.5, ttl, lease.failover_wait(ttl)) == 9.5 + lease.margin(ttl)
    # a renewing host's clock far ahead: no lease outlives ttl after the new epoch
    assert lease_wait(3 * 3600.0, ttl, 0.0) == ttl + lease.margin(ttl)


def test_failsafe_rounds_are_waited_out_unless_a_stopped_peer_confirmed_none_lately():
    ttl, whole = 10.0, lease.failover_wait(10.0)
    # no word from any stopped peer (a worker too old to say, a record of another boot)
    assert lease.failsafe_wait(ttl, {}) == (whole, "any failsafe round it won has run out")
    # a round needs every peer: one that confirmed none ends them all
    assert lease.failsafe_wait(ttl, {"bcs1": 0.2, "cl1": lease.NEVER}) == \
        (0.0, "it won no failsafe round: cl1 confirmed none")
    # the peer whose last confirmation is oldest bounds the rounds
    left, why = lease.failsafe_wait(ttl, {"bcs1": 0.5, "cl1": 3.0})
    assert left == pytest.approx(whole - 3.0)
    assert why.startswith("cl1 last confirmed a failsafe round 3.0 s before its stop")
    assert lease.failsafe_wait(ttl, {"bcs1": whole + 1})[0] == 0.0


def test_a_confirmation_record_tells_its_age_only_on_the_boot_that_wrote_it():
    record = lease.confirmation_record(100.0, "boot-a", "srv1", "srv1", 4)
    assert lease.confirmed_ago(record, 103.5, "boot-a") == 3.5
    assert lease.confirmed_ago(record, 103.5, "boot-b") is None  # clocks do not compare
    assert lease.confirmed_ago(None, 103.5, "boot-a") == lease.NEVER
    assert lease.confirmed_ago(b"{not json", 103.5, "boot-a") is None
    assert lease.confirmed_ago(b'{"boot": "boot-a"}', 103.5, "boot-a") is None


def test_on_sqlite_a_held_lease_counts_as_a_whole_ttl_whatever_the_hosts_clocks_wrote():
    ttl = 10.0
    for skewed in (-3 * 3600.0, -1.0, 2.0, 3 * 3600.0):  # a renewing host hours behind
        assert lease_wait(skewed, ttl, 0.0, server_clock=False) == ttl + lease.margin(ttl)
    assert lease_wait(None, ttl, 0.0, server_clock=False) == 0.0


def test_the_plan_says_how_long_the_lease_wait_may_take():
    assert lease_note("srv1", True, 8.0, 10.0, True) == \
        "no lease wait: srv1's worker answers and stops its COSprint"
    assert lease_note("srv1", False, 8.0, 10.0, False) == (
        "unless srv1 is fenced, the failover waits up to 9.0 s for it to stop serving "
        "before its BCS starts (srv1 has 8.0 s of lease left)")
    assert lease_note("srv1", False, None, 10.0, True).startswith(
        f"unless srv1 is fenced, the failover waits up to {lease.failover_wait(10.0):.1f} s")
    assert lease_note("srv1", False, -4.0, 10.0, True).endswith(
        "(srv1 has no lease left, plus any failsafe round it won)")


# ----- real cosprintd processes, a real ledger going away ------------------------------

TTL = 5.0


@pytest.fixture
def leased(make_cluster):  # type: ignore[no-untyped-def]
    """srv1 master, bcs1, cl1, cl2 up with a 5 s lease, srv1 holding it."""
    c = make_cluster(up=False, objects=20)
    c.amend_domain(append=f"\n[lease]\nttl = {TTL}\n")
    c.up()
    c.settle()
    deadline = time.time() + 10
    while (c.ledger.lease_remaining("srv1") or 0) <= 0:
        assert time.time() < deadline, "srv1 never renewed its lease"
        time.sleep(0.1)
    return c


class LedgerAway:
    """Makes the domain's ledger unreachable for every node: the SQLite file moved
    aside, or the tests' PostgreSQL server stopped."""

    def __init__(self, cluster: Any, request: pytest.FixtureRequest) -> None:
        self.url = cluster.domain.ledger_url
        self.request = request
        self.file = cluster.domain.base / "ledger.db"

    def __enter__(self) -> LedgerAway:
        if self.url.startswith("sqlite"):
            self.file.rename(self.file.with_name("ledger.db.away"))
        else:
            self.request.getfixturevalue("postgres_server").stop()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.url.startswith("sqlite"):
            self.file.with_name("ledger.db.away").rename(self.file)
        else:
            self.request.getfixturevalue("postgres_server").start()


def recorded_outage(cluster: Any, node: str, after: int = 0) -> dict[str, Any]:
    """The ledger outage `node` recorded at its first renewal after the ledger's return:
    the newest, once it has recorded more than `after`."""
    deadline = time.time() + 10
    while len(events := [e for e in cluster.ledger.lease_events() if e["node"] == node]) <= after:
        assert time.time() < deadline, f"{node} never recorded its outage"
        time.sleep(0.2)
    return events[0]


def outage_metrics(cluster: Any, node: str) -> dict[tuple[str, str], float]:
    """(sample, outcome) → value of `node`'s ledger-outage counters, as /metrics renders
    them."""
    return {(s.name, s.labels["outcome"]): s.value
            for fam in text_string_to_metric_families(render(cluster.engine))
            if fam.name.startswith("cosfail_ledger_outage")
            for s in fam.samples if s.labels["node"] == node}


def srv1_queue(cluster: Any) -> str:
    return next(q for q in (f"q-srv1-{i:04d}" for i in range(1, 21))
                if cluster.driver("srv1").submit(q, "probe")[0] == 202)


def test_printing_goes_on_through_a_ledger_outage_of_two_ttls_in_failsafe(leased, request):
    c = leased
    queue = srv1_queue(c)
    srv1 = c.driver("srv1")
    with JobSender(c, "srv1", queue) as client:
        time.sleep(1.0)
        with LedgerAway(c, request):
            time.sleep(TTL + 1)
            during = srv1.report()
            time.sleep(TTL - 1)
        back = time.monotonic()
        # what a failover that stopped them would read: each peer's last confirmation
        confirmed = {n: c.driver(n).failsafe_confirmed_ago() for n in ("bcs1", "cl1", "cl2")}
        while "ledger unreadable" in (srv1.report() or {}).get("reason", "ledger unreadable"):
            assert time.monotonic() < back + 5, srv1.report()
            time.sleep(0.05)
        normal_after = time.monotonic() - back
        time.sleep(1.0)
    assert during is not None and during["role"] == "master", during
    assert "printing in failsafe: all 3 peers confirm" in during["reason"], during
    assert during["lease"]["failsafe"] is True and during["lease"]["left"] == 0, during
    assert client.refused() == [], client.refused()[:3]
    assert len(client.answers) >= 5 * 2 * TTL - 5
    assert normal_after < 1.0, normal_after
    assert all(isinstance(ago, float) and ago <= lease.failsafe_grant(TTL)
               for ago in confirmed.values()), confirmed
    ids = [a[2]["job_id"] for a in client.answers]
    for job_id in (ids[0], ids[len(ids) // 2], ids[-1]):
        assert c.wait_printed("srv1", job_id), job_id
    printed = [p["job_id"] for p in c.printed("srv1") if p["job_id"].startswith("via-")]
    assert sorted(printed) == sorted(ids)  # every accepted job, each once
    outage = recorded_outage(c, "srv1")
    assert outage["outcome"] == "printed throughout, in failsafe past its lease"
    assert outage["until"] - outage["since"] >= TTL
    assert outage_metrics(c, "srv1") == {
        ("cosfail_ledger_outages_total", "failsafe"): 1,
        ("cosfail_ledger_outage_seconds_total", "failsafe"): outage["until"] - outage["since"],
        **{(name, kind): 0 for name in ("cosfail_ledger_outages_total",
                                        "cosfail_ledger_outage_seconds_total")
           for kind in ("lease", "stopped")}}


LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def restart_with_clock_off(cluster: Any, node: str, skew: str,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`node`'s cosprintd again, its wall clock `skew` off (libfaketime), started from
    this process, which keeps no fork server, so the preload takes. Its monotonic clock
    stays the host's, whose origin no other host shares anyway: libfaketime's faked one
    hangs Python's timed waits, which no host with a wrong clock does."""
    driver = cluster.driver(node)
    driver.stop()
    with monkeypatch.context() as env:
        env.setenv("LD_PRELOAD", str(LIBFAKETIME))
        env.setenv("FAKETIME", skew)
        env.setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        driver.start()
    off = time.time() - driver.report()["up_since"]
    assert abs(abs(off) - 5 * 3600) < 60, f"{node}'s clock is {off:.0f} s off, not {skew}"


def test_with_the_ledger_away_and_one_peer_stopped_the_master_refuses_at_its_leases_end(
        leased, request, monkeypatch):
    """Within ttl + 1 s of the cut, and not before its last renewal's lease ends, even
    with its wall clock hours off either way."""
    c = leased
    queue = srv1_queue(c)
    c.driver("cl2").stop()  # no failsafe: the lease alone decides
    held_at_least = TTL - lease.renew_every(TTL) - lease.margin(TTL) - 0.3
    for outages, skew in enumerate(("+5h", "-5h")):
        restart_with_clock_off(c, "srv1", skew, monkeypatch)
        with JobSender(c, "srv1", queue) as client:
            time.sleep(TTL + 1)  # longer than one lease: it renews, whatever its clock says
            holding = c.driver("srv1").report()
            recorded = c.ledger.lease_remaining("srv1") or 0
            with LedgerAway(c, request):
                away = time.monotonic()
                time.sleep(TTL + 1.5)
                stopped = c.driver("srv1").report()
                healing = time.monotonic()  # PostgreSQL serves before pg_ctl returns
            back = time.monotonic()
            while c.driver("srv1").submit(queue, "probe")[0] != 202:
                assert time.monotonic() < back + 5, f"{skew}: srv1 never printed again"
                time.sleep(0.1)
        before = [a for a in client.answers if a[0] < away]
        assert before and all(a[1] == 202 for a in before), (skew, client.refused()[:2])
        assert holding is not None and 0 < holding["lease"]["left"] <= TTL, (skew, holding)
        if c.ledger.server_clock:  # on SQLite each host writes by its own clock
            assert 0 < recorded <= TTL, (skew, recorded)
        cut = [a for a in client.answers if away <= a[0] < healing]
        first = next(t for t, code, _ in cut if code != 202) - away
        assert held_at_least <= first <= TTL + 1, (skew, first)
        # A resend of a job accepted earlier (the client's retry after a lost answer) is
        # acknowledged as a duplicate: no new acceptance, so not counted here.
        refused = [a for a in cut if a[0] >= away + first and not a[2].get("duplicate")]
        assert all(code == 503 and answer["retriable"] is True
                   for _, code, answer in refused), (skew, first, [  # for good, retriable
                       (round(t - away, 2), code, answer) for t, code, answer in refused
                       if code != 503 or answer.get("retriable") is not True])
        assert "lease ended, no failsafe (cl2 refused: no answer" in refused[-1][2]["error"]
        assert stopped is not None and stopped["role"] == "unverified", (skew, stopped)
        assert recorded_outage(c, "srv1", after=outages)["outcome"].startswith(
            "stopped printing: lease ended, no failsafe (cl2 refused: no answer"), skew
    assert outage_metrics(c, "srv1")["cosfail_ledger_outages_total", "stopped"] == 2
    # bcs1 confirmed srv1 in rounds that cl2's silence failed; cl2 never confirmed one
    assert isinstance(c.driver("bcs1").failsafe_confirmed_ago(), float)
    assert c.driver("cl2").failsafe_confirmed_ago() == lease.NEVER


def test_status_shows_each_nodes_lease_failsafe_first_then_its_own_count_then_the_ledgers():
    from cosfail.api.view import lease_cell

    failsafe = lease_cell({"failsafe": True, "left": 0}, None)
    assert (failsafe.plain, failsafe.style) == ("failsafe", "yellow")
    assert lease_cell({"failsafe": False, "left": 3.21}, {"left": 4.0}).plain == "3.2 s left"
    assert lease_cell({"failsafe": False, "left": 0}, {"left": -12.4}).plain == \
        "ended 12 s ago"
    assert lease_cell(None, None).plain == "-"
