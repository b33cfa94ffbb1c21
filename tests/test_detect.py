"""Failure detection, the recommendation, and the guarded automatic failover.

Unit tests of the pure decisions first; then real workers, real cosprintd, real Redis,
a real `cosfail watch` process, and real faults (SIGKILL, SIGSTOP/SIGCONT).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from cosfail.cosprint.designation import Designation
from cosfail.cosprint.domain import Detect, load_domain
from cosfail.launcher.local import LocalDomain
from cosfail.workflows import ledger as L
from cosfail.workflows.detection import (
    DOWN,
    SUSPECT,
    UP,
    Confirmation,
    Liveness,
    Seen,
    already_handled,
    auto_failover_guard,
    auto_failover_guards,
    data_loss_guard,
    failover_candidate,
    hosted_elsewhere,
    judge_confirmation,
    notify_argv,
    resume,
    transition,
    wants_confirmation,
    worth_notifying,
    worth_recording,
)
from cosfail.workflows.status import domain_status

GONE = Seen(worker=False, cosprint=False)
BOTH = Seen(worker=True, cosprint=True)
YES = Confirmation(True, "cl1", "cl1 reaches neither its COSprint nor its worker")
NO = Confirmation(False, None, "cl1 still reaches its COSprint")


def run_ticks(observations: list[tuple[float, Seen]], down_after: float,
              peers: Callable[[float], Confirmation] = lambda _t: YES) -> list[Liveness]:
    """Drive `transition` the way the detector does: peers are asked in a round only
    when `wants_confirmation` says so."""
    prev: Liveness | None = None
    out = []
    for now, seen in observations:
        conf = peers(now) if wants_confirmation(prev, now, down_after) else None
        prev = transition(prev, "srv1", seen, now, down_after, conf)
        out.append(prev)
    return out


# ----- pure decisions ------------------------------------------------------------------------
def test_a_dead_node_goes_suspect_then_down_once_confirmed_after_down_after():
    ticks = [(0.0, BOTH)] + [(float(t), GONE) for t in range(1, 8)]
    states = run_ticks(ticks, down_after=2)
    assert [s.state for s in states] == [UP, SUSPECT, SUSPECT, DOWN, DOWN, DOWN, DOWN, DOWN]
    down = states[3]
    assert (down.since, down.unreachable_since, down.confirmed_by) == (3.0, 1.0, "cl1")
    assert "confirmed by cl1" in down.note
    assert states[-1] is down  # stays down, unchanged: nothing more to record


def test_a_two_second_blip_never_goes_down():
    ticks = [(t / 2, GONE if 1 <= t / 2 < 3 else BOTH) for t in range(0, 20)]
    states = run_ticks(ticks, down_after=4)
    assert DOWN not in {s.state for s in states}
    assert SUSPECT in {s.state for s in states} and states[-1].state == UP
    assert "again after 2.0 s" in states[-1].note


def test_either_half_answering_is_up_and_resets_the_clock():
    half = [Seen(worker=True, cosprint=False), Seen(worker=False, cosprint=True)]
    for seen in half:
        ticks = [(0.0, GONE), (1.5, GONE), (1.9, seen), (2.0, GONE), (3.0, GONE), (4.0, GONE)]
        states = run_ticks(ticks, down_after=2)
        assert [s.state for s in states] == [SUSPECT, SUSPECT, UP, SUSPECT, SUSPECT, DOWN]
        assert states[-1].unreachable_since == 2.0


def test_no_confirmation_keeps_it_suspect_with_the_reason():
    states = run_ticks([(float(t), GONE) for t in range(6)], down_after=2,
                       peers=lambda _t: NO)
    assert {s.state for s in states} == {SUSPECT}
    assert states[-1].unconfirmed == "cl1 still reaches its COSprint"
    assert "not confirmed by another node" in states[-1].note
    # recorded once when the verdict arrives, not every round
    rows = [worth_recording(a, b) for a, b in zip([None, *states], states, strict=False)]
    assert rows == [True, False, True, False, False, False]
    # and once peers confirm, it is down
    late = transition(states[-1], "srv1", GONE, 6.0, 2, YES)
    assert late.state == DOWN and late.unreachable_since == 0.0


def test_peers_are_asked_only_past_down_after():
    s = Liveness("srv1", SUSPECT, 10.0, 10.0)
    assert not wants_confirmation(s, 11.9, 2)
    assert wants_confirmation(s, 12.0, 2)
    assert not wants_confirmation(None, 100.0, 2)
    assert not wants_confirmation(Liveness("srv1", DOWN, 12.0, 10.0), 100.0, 2)


def test_judging_second_opinions():
    blind = {"cosprint": False, "worker": False}
    seeing = {"cosprint": True, "worker": False}
    got = judge_confirmation("srv1", ["cl1", "bcs1"], {"cl1": blind, "bcs1": None})
    assert got.confirmed and got.by == "cl1"
    got = judge_confirmation("srv1", ["cl1", "bcs1"], {"cl1": blind, "bcs1": seeing})
    assert not got.confirmed and got.detail == "bcs1 still reaches its COSprint"
    got = judge_confirmation("srv1", ["cl1"], {"cl1": {"cosprint": False, "worker": True}})
    assert not got.confirmed and "worker" in got.detail
    assert not judge_confirmation("srv1", ["cl1"], {"cl1": None}).confirmed
    nobody = judge_confirmation("srv1", [], {})
    assert not nobody.confirmed and "no other node" in nobody.detail


def test_notify_once_per_transition_with_separate_arguments():
    argv = notify_argv(["/bin/notify", "--node={node}", "{node} is {state}", "x; rm -rf /"],
                       "srv1", "down")
    assert argv == ["/bin/notify", "--node=srv1", "srv1 is down", "x; rm -rf /"]
    up = Liveness("srv1", UP, 0.0)
    sus = Liveness("srv1", SUSPECT, 1.0, 1.0)
    assert not worth_notifying(None, up) and worth_notifying(None, sus)
    assert worth_notifying(up, sus) and not worth_notifying(sus, sus)


def test_a_restarted_detector_resumes_down_but_restarts_a_suspect_clock():
    row = {"node": "srv1", "state": DOWN, "at": 5.0, "unreachable_since": 3.0,
           "confirmed_by": "cl1", "note": "n"}
    assert resume(row, 50.0) == Liveness("srv1", DOWN, 5.0, 3.0, "cl1", "n")
    sus = resume({**row, "state": SUSPECT}, 50.0)
    assert (sus.state, sus.since, sus.unreachable_since) == (SUSPECT, 50.0, 50.0)
    assert resume(None, 1.0) is None


def test_candidates_for_the_automatic_failover():
    assert failover_candidate(Liveness("s", DOWN, 5.0, 3.0), 6.0, 2)
    assert not failover_candidate(Liveness("s", SUSPECT, 3.0, 3.0), 9.0, 2)  # not asked yet
    assert failover_candidate(Liveness("s", SUSPECT, 3.0, 3.0, unconfirmed="x"), 9.0, 2)
    assert not failover_candidate(Liveness("s", UP, 3.0), 9.0, 2)


def test_each_guard_stops_the_automatic_failover_with_its_reason():
    cfg = Detect(auto_failover=True, max_auto_per_hour=1, max_data_loss=300)
    down = Liveness("srv1", DOWN, 100.0, 90.0, "cl1")
    now = 5000.0

    def kinds(**kw: Any) -> list[str]:
        args: dict[str, Any] = {"liv": down, "now": now, "cfg": cfg, "lock_holder": None,
                                "auto_failovers_at": [], "is_master": True,
                                "snapshot_age": 60.0}
        args.update(kw)
        return [k for k, _ in auto_failover_guards(**args)]

    assert kinds() == []
    assert kinds(lock_holder="abc") == ["lock"]
    assert kinds(auto_failovers_at=[now - 10]) == ["rate"]
    assert kinds(auto_failovers_at=[now - 3700]) == []  # older than an hour
    assert kinds(snapshot_age=301.0) == ["snapshot"]
    assert kinds(snapshot_age=None) == ["snapshot"]
    assert kinds(snapshot_age=None, is_master=False) == []  # nothing restored, nothing lost
    assert kinds(liv=Liveness("srv1", SUSPECT, 95.0, 90.0, unconfirmed="x")) == ["unconfirmed"]
    assert kinds(control_worker=False) == ["control"]
    assert kinds(paused="the domain is paused (by cli:ops …)") == ["paused"]
    assert kinds(cfg=Detect(auto_failover=True, max_auto_per_hour=0)) == ["rate"]
    assert kinds(cfg=Detect()) == ["off"]  # the default: off
    text = auto_failover_guard(down, now, cfg, "abc", [now - 1], True, 999.0)
    assert text is not None and "run abc holds the hosting lock" in text
    assert "max_auto_per_hour = 1" in text and "max_data_loss = 300 s" in text
    assert data_loss_guard(True, 10.0, 300) is None


def test_a_server_already_failed_over_is_reclaims_not_a_second_failover():
    moves = [(2, "srv1", "bcs1")]
    assert hosted_elsewhere("srv1", moves) == (2, "bcs1")
    assert hosted_elsewhere("srv1", [*moves, (3, "bcs1", "srv1")]) is None  # failed back
    assert hosted_elsewhere("srv2", moves) is None
    liv = Liveness("srv1", DOWN, 100.0, 90.0)
    assert "reclaim" in (already_handled("srv1", liv, [], moves) or "")
    run = {"id": "r1", "state": "running", "triggered_by": "auto", "created_at": 95.0,
           "params": {"request": {"server": "srv1"}}}
    assert "r1" in (already_handled("srv1", liv, [run], []) or "")
    refused = {**run, "state": L.REFUSED}
    assert already_handled("srv1", liv, [refused], []) is None
    before = {**run, "created_at": 80.0}  # an earlier outage's
    assert already_handled("srv1", liv, [before], []) is None


# ----- helpers for the real thing -----------------------------------------------------------------
def poll(what: Callable[[], Any], timeout: float = 30.0, why: str = "condition") -> Any:
    """Poll `what()` until truthy; the timeout is a failsafe, not a speed assert."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, f"{why}: still not true after {timeout:g} s"
        time.sleep(0.05)


def set_detect(c, **table: Any) -> None:  # type: ignore[no-untyped-def]
    """Give the domain file this `[detect]` table (replacing any earlier one)."""
    base = c.__dict__.setdefault("_base_toml", c.domain.path.read_text())
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
    c.domain.path.write_text(f"{base}\n[detect]\n{lines}")
    c.amend_domain()


def watch_log(c) -> str:  # type: ignore[no-untyped-def]
    comp = c.local.components().get("watch")
    return Path(comp.log).read_text()[-3000:] if comp else "no watch"


def stop_watch(c) -> None:  # type: ignore[no-untyped-def]
    old = c.local.components().get("watch")
    if old:
        c.local.stop_components([old])


def start_watch(c, domain_path: Path | None = None) -> None:  # type: ignore[no-untyped-def]
    """(Re)start `cosfail watch` and return once it is the active detector."""
    stop_watch(c)
    before = (c.ledger.lock_row(L.DETECT_LOCK) or {}).get("run_id")
    local = LocalDomain(load_domain(domain_path)) if domain_path else c.local
    local.start_watch()

    def active() -> bool:
        row = c.ledger.lock_row(L.DETECT_LOCK)
        return bool(row and row["run_id"] != before and row["lease_until"] > time.time())

    poll(active, 30, f"the detector never became active:\n{watch_log(c)}")
    # its first round done: every node has a liveness row
    poll(lambda: set(c.ledger.liveness_now()) == set(c.domain.names()), 10, "first round")


def states_of(c, node: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [r["state"] for r in reversed(c.ledger.liveness_history(node))]


def auto_runs(c, server: str | None = None) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [r for r in c.ledger.runs(limit=100, workflow="failover")
            if r["triggered_by"] == "auto"
            and (server is None or r["params"]["request"]["server"] == server)]


def refused_for(c, server: str, fragment: str) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    return next((r for r in auto_runs(c, server)
                 if r["state"] == L.REFUSED and fragment in r["reason"]), None)


def hosting_runs(c) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [r for r in c.ledger.runs(limit=1000)
            if r["workflow"] in ("failover", "switchover", "failback", "reclaim")
            and r["state"] != L.REFUSED]


@contextmanager
def stopped(*pids: int) -> Iterator[None]:
    """SIGSTOP these processes for the block; SIGCONT whatever happens."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def down_in_status(c, server: str) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    st = domain_status(c.domain, c.engine, probe_timeout=0.5)
    return next((d for d in st["down"] if d["server"] == server), None)


# ----- the real thing ---------------------------------------------------------------------------
NOTIFY = ("import sys; open(sys.argv[1], 'a').write('|'.join(sys.argv[2:]) + chr(10))")


def test_blip_kill_recommendation_and_nothing_on_its_own(make_cluster):
    c = make_cluster(servers=1, bcs=1, clients=1, objects=300)
    c.settle()
    c.backup()
    notes = c.domain.base / "notify.log"
    notify = [sys.executable, "-c", NOTIFY, str(notes), "{node}", "{node} is {state}"]

    # A 2-second blip, with the automatic failover on: never down, nothing moves.
    set_detect(c, down_after=4, auto_failover=True, max_data_loss=3600,
               notify_command=notify)
    start_watch(c)
    blip = time.time()
    with stopped(c.worker_pid("srv1"), c.driver("srv1").pid()):
        time.sleep(2.0)
    poll(lambda: states_of(c, "srv1")[-1] == UP, 10, "srv1 back up")
    time.sleep(max(0.0, blip + 4 + 3 - time.time()))  # well past down_after: still nothing
    assert DOWN not in states_of(c, "srv1")
    assert states_of(c, "srv1")[-2:] == [SUSPECT, UP]
    assert auto_runs(c) == [] and hosting_runs(c) == []
    assert c.authority() == Designation("srv1", 1)
    poll(lambda: notes.exists() and "srv1|srv1 is up" in notes.read_text(), 10, "notified")
    assert notes.read_text().splitlines() == ["srv1|srv1 is suspect", "srv1|srv1 is up"]

    # Killed (worker and COSprint), the automatic failover off (the default):
    # down within down_after + 3 s, with the recommendation and the exact command.
    set_detect(c, down_after=2, notify_command=notify)
    start_watch(c)
    c.local.kill("srv1")
    killed = time.time()
    deadline = killed + 2 + 3
    while True:
        asked = time.time()
        found = down_in_status(c, "srv1")
        if found:
            break
        assert asked < deadline, f"srv1 not reported down in time:\n{watch_log(c)}"
    row = c.ledger.liveness_now()["srv1"]
    assert row["state"] == DOWN and row["at"] - killed <= 2 + 3
    assert row["confirmed_by"] in ("bcs1", "cl1")
    newest = c.ledger.catalog("bcs1")[0]
    assert found["best_bcs"] == "bcs1" and found["snapshot"] == newest["file"]
    assert 0 < found["snapshot_age"] < 600 and found["down_for"] >= 2
    assert found["command"] == f"cosfail failover srv1 --to bcs1 -d {c.domain.path}"
    assert found["auto_failover"] == {"enabled": False, "run_id": None, "state": None,
                                      "reason": None}
    text = c.cli("status")
    assert text.returncode == 0, text.stderr
    assert "srv1 DOWN" in text.stdout and "cosfail failover srv1 --to bcs1" in text.stdout

    time.sleep(2 + 3)  # nothing changes hosting on its own, ever
    assert hosting_runs(c) == [] and auto_runs(c) == []
    assert c.authority() == Designation("srv1", 1)
    assert c.driver("bcs1").status().master == "srv1"
    assert notes.read_text().splitlines()[2:] == ["srv1|srv1 is suspect", "srv1|srv1 is down"]


def test_auto_failover_and_each_guard(make_cluster):
    c = make_cluster(servers=2, bcs=1, clients=1, objects=300)
    c.settle()
    c.backup()
    auto = {"down_after": 2, "auto_failover": True, "max_auto_per_hour": 1}

    # No second-node confirmation: the control plane's own view of srv2's COSprint is cut
    # (its copy of the domain file sends it to a closed port) and srv2's worker is
    # stopped; the peers still reach srv2's COSprint, so it is never called down.
    set_detect(c, **auto, max_data_loss=3600)
    text = c.domain.path.read_text()
    port = c.domain.node("srv2").port
    view = c.domain.base / "control-view.toml"
    view.write_text(text.replace(f"port = {port}\n", f"port = {free_port()}\n"))
    start_watch(c, view)
    with stopped(c.worker_pid("srv2")):
        refused = poll(lambda: refused_for(c, "srv2", "no second-node confirmation"), 20,
                       f"no refusal recorded:\n{watch_log(c)}")
        assert "still reaches its COSprint" in refused["reason"]
        st = domain_status(c.domain, c.engine, probe_timeout=0.5)
        srv2 = next(n for n in st["nodes"] if n["name"] == "srv2")
        assert srv2["liveness"]["state"] == SUSPECT
        assert "not confirmed by another node" in srv2["liveness"]["note"]
        assert st["detect"]["suspect_refusals"]["srv2"]["run_id"] == refused["id"]
        assert st["down"] == []
    poll(lambda: states_of(c, "srv2")[-1] == UP, 10, "srv2 back")
    assert "pending automatic failover is cancelled" in c.ledger.liveness_now()["srv2"]["note"]
    assert hosting_runs(c) == [] and DOWN not in states_of(c, "srv2")

    # Stale snapshot: srv1 (the master) dies; its newest snapshot is older than allowed.
    set_detect(c, **auto, max_data_loss=1)
    start_watch(c)
    c.local.kill("srv1")
    refused = poll(lambda: refused_for(c, "srv1", "max_data_loss = 1 s"), 20,
                   f"no stale-snapshot refusal:\n{watch_log(c)}")
    assert [g["kind"] for g in refused["params"]["guards"]] == ["snapshot"]
    found = down_in_status(c, "srv1")
    assert found and found["auto_failover"]["run_id"] == refused["id"]
    assert "max_data_loss" in found["auto_failover"]["reason"]

    # A hosting change runs (the lock is held) in a paused domain: refused for both; once
    # the lock is released, refused for the pause alone; done once the domain is unpaused.
    set_detect(c, **auto, max_data_loss=3600)
    stop_watch(c)  # the one above must not see the lock: it would add its own guard
    c.ledger.acquire(L.HOSTING_LOCK, "heldbytest", "test", 600)
    assert "paused: automatic failover" in c.cli("pause", "--reason", "work [srv1]",
                                                  check=True).stdout
    start_watch(c)
    refused = poll(lambda: refused_for(c, "srv1", "run heldbytest holds the hosting lock"),
                   20, f"no lock refusal:\n{watch_log(c)}")
    assert [g["kind"] for g in refused["params"]["guards"]] == ["paused", "lock"]
    assert down_in_status(c, "srv1")["auto_failover"]["run_id"] == refused["id"]
    assert hosting_runs(c) == []
    c.ledger.release(L.HOSTING_LOCK, "heldbytest")
    refused = poll(lambda: next((r for r in auto_runs(c, "srv1") if r["state"] == L.REFUSED
                                 and [g["kind"] for g in r["params"]["guards"]] == ["paused"]),
                                None), 20, f"no refusal for the pause alone:\n{watch_log(c)}")
    assert "the domain is paused (by cli:" in refused["reason"] and "work [srv1]" in \
        refused["reason"]
    assert hosting_runs(c) == []
    assert "unpaused: the pause by cli:" in c.cli("unpause", check=True).stdout

    # Nothing stops it now: failed over with no operator action, recorded as `auto`.
    run = poll(lambda: next((r for r in auto_runs(c, "srv1") if r["state"] != L.REFUSED),
                            None), 30, f"no automatic failover:\n{watch_log(c)}")
    done = c.wait(run["id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["triggered_by"] == "auto" and done["params"]["plan"]["bcs"] == "bcs1"
    assert c.authority() == Designation("bcs1", 2)
    queue = done["params"]["plan"]["probe_queue"]
    code, answer = c.driver("cl1").submit(queue, "after the automatic failover", "auto-1")
    assert code == 202, answer
    assert c.wait_printed("bcs1", "auto-1")

    # Rate limit: srv2 dies too, within the hour: refused, at most one per hour.
    c.local.kill("srv2")
    refused = poll(lambda: refused_for(c, "srv2", "max_auto_per_hour = 1"), 20,
                   f"no rate-limit refusal:\n{watch_log(c)}")
    assert [g["kind"] for g in refused["params"]["guards"]] == ["rate"]
    assert down_in_status(c, "srv2")["auto_failover"]["state"] == L.REFUSED

    # srv1 returns after its failover: reclaim's job, never a second failover.
    c.local.revive("srv1")
    poll(lambda: states_of(c, "srv1")[-1] == UP, 30, "srv1 back")
    reclaim = poll(lambda: next((r for r in c.ledger.runs(limit=50, workflow="reclaim")),
                                None), 30, "no reclaim")
    assert c.wait(reclaim["id"])["state"] == "succeeded"
    assert [r["id"] for r in auto_runs(c, "srv1") if r["state"] != L.REFUSED] == [run["id"]]
    assert c.authority() == Designation("bcs1", 2)


@pytest.mark.parametrize("value", [0, -1])
def test_a_bad_detect_table_is_refused(tmp_path: Path, value: int) -> None:
    from cosfail.cosprint.errors import DomainFileError
    from cosfail.launcher.demo_domain import init_demo

    path = init_demo(tmp_path / "d", objects=10)
    path.write_text(path.read_text() + f"\n[detect]\ndown_after = {value}\n")
    with pytest.raises(DomainFileError, match="detect.down_after"):
        load_domain(path)
    path.write_text(path.read_text().replace(f"down_after = {value}", "auto_failover = 1"))
    with pytest.raises(DomainFileError, match="detect.auto_failover"):
        load_domain(path)
