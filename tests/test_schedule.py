"""Scheduled switchovers: `--at` parsed and refused when it cannot be, the guards at
their time, and the real thing through beat and the control worker."""

from __future__ import annotations

import getpass
import json
import time
from datetime import datetime

import pytest
from cosfail.cosprint.designation import Designation
from cosfail.workflows.refusal import INVALID, Refused
from cosfail.workflows.schedule import GRACE, parse_at, start_guard


def test_at_is_iso_8601_with_or_without_an_offset_and_in_the_future():
    now = datetime.fromisoformat("2026-12-06T00:00+00:00").timestamp()
    assert parse_at("2026-12-06T02:00+00:00", now) == now + 7200
    assert parse_at("2026-12-06T02:00+01:00", now) == now + 3600
    local = datetime.fromisoformat("2026-12-07T02:00").timestamp()  # this machine's zone
    assert parse_at("2026-12-07T02:00", now) == local
    for text, said in (("tomorrow", "--at 'tomorrow' is not a time: give ISO 8601"),
                       ("2026-12-05T23:00+00:00", "which has passed")):
        with pytest.raises(Refused, match=said) as raised:
            parse_at(text, now)
        assert raised.value.refusal.code == INVALID


def test_a_due_switchover_is_refused_when_paused_or_found_too_late():
    assert start_guard(100.0, 103.0, None) is None
    assert start_guard(100.0, 100.0 + GRACE, None) is None
    assert start_guard(100.0, 103.0, "the domain is paused (by cli:ops …)") == \
        "the domain is paused (by cli:ops …)"
    late = start_guard(100.0, 101.0 + GRACE, None)
    assert late is not None and late.startswith("missed: due at 1970-01-01 00:01:40 UTC")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat()


def test_a_scheduled_switchover_starts_at_its_time_and_one_that_no_longer_holds_is_refused(
        make_cluster):
    c = make_cluster(servers=1, bcs=1, clients=1, objects=100)
    c.settle()
    c.local.start_beat()  # ticking all along: nothing is due until `at` below

    def schedule(when: float) -> dict:  # type: ignore[type-arg]
        done = c.cli("switchover", "srv1", "--to", "bcs1", "--at", iso(when), "--yes",
                     "--json", "--reason", "planned [move]")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    for bad, said in ((("--at", "02:00 tomorrow"), "is not a time"),
                      (("--at", iso(time.time() - 60)), "which has passed")):
        refused = c.cli("switchover", "srv1", "--to", "bcs1", *bad, "--yes")
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
    unknown = c.cli("switchover", "srv9", "--to", "bcs1", "--at", iso(time.time() + 60),
                    "--yes")
    assert unknown.returncode == 2 and "unknown node 'srv9'" in unknown.stderr
    later_id = schedule(time.time() + 3600)["scheduled"]["id"]
    assert "cancelled" in c.cli("cancel", later_id, check=True).stdout
    again = c.cli("cancel", later_id)
    assert (again.returncode, again.stderr.strip()) == (
        2, f"cosfail: scheduled switchover {later_id} is cancelled: only a pending one can "
           "be cancelled")

    at = time.time() + 4
    first, second = schedule(at), schedule(at + 0.5)
    assert first["refused_now"] is None and first["scheduled"]["state"] == "pending"
    pending = json.loads(c.cli("scheduled", "--json", check=True).stdout)
    assert [e["id"] for e in pending] == [x["scheduled"]["id"] for x in (first, second)]
    deadline = time.time() + 60
    ids = [x["scheduled"]["id"] for x in (first, second)]
    while {c.ledger.scheduled_one(i)["state"] for i in ids} & {"pending", "due"}:
        assert time.time() < deadline, "beat never started the scheduled switchovers"
        time.sleep(0.2)
    shown = {e["id"]: e for e in json.loads(c.cli("scheduled", "--all", "--json",
                                                  check=True).stdout)}
    started, refused = (shown[i] for i in ids)
    assert started["state"] == "started", started
    run = c.wait(started["run_id"])
    assert run["state"] == "succeeded", run["error"]
    assert (run["workflow"], run["triggered_by"], run["reason"]) == (
        "switchover", f"scheduled:cli:{getpass.getuser()}", "planned [move]")
    assert run["created_at"] >= at
    assert c.authority() == Designation("bcs1", 2)
    # Its time came during or after the first one's move: planned and guarded afresh,
    # it no longer held.
    assert refused["state"] == "refused" and refused["run_id"] is None, refused
    assert refused["outcome"].startswith("refused at its time: "), refused
    assert [r["id"] for r in c.ledger.runs(workflow="switchover")] == [run["id"]]
    assert json.loads(c.cli("scheduled", "--json", check=True).stdout) == []
