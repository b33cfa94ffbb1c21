"""Failover and restart-check on real Redis, real node workers and real COSprint."""

from __future__ import annotations

import concurrent.futures
import getpass
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from cosfail.api.app import create_app, read_token
from cosfail.cosprint import tables
from cosfail.cosprint.designation import Designation
from cosfail.cosprint.snapshot import import_snapshot
from cosfail.launcher.local import pid_alive
from cosfail.workflows import trigger
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest
from fastapi.testclient import TestClient


def test_failover_moves_every_object_and_clients_print_on_the_bcs(make_cluster):
    c = make_cluster(servers=1, bcs=1, clients=3, objects=10_000)
    c.backup()
    before = c.hosted("srv1")["srv1"]
    c.local.kill("srv1")
    started = trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv1", to="bcs1"), "test")
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


# ----- helpers ------------------------------------------------------------------------------
def poll(what, timeout: float = 60.0, poll_s: float = 0.01, why: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `what()` until truthy; the timeout is a failsafe, not a speed assert."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, f"{why}: still not true after {timeout:g} s"
        time.sleep(poll_s)


def steps_named(c, run_id: str, name: str) -> list:  # type: ignore[no-untyped-def, type-arg]
    return [s for s in c.ledger.steps(run_id) if s.name == name]


def points_at(c, node: str) -> tuple[str, str, int] | None:  # type: ignore[no-untyped-def]
    st = c.driver(node).status()
    return (st.role, st.master, st.epoch) if st else None


def ledger_rows(c) -> dict[str, list]:  # type: ignore[no-untyped-def, type-arg]
    """Every row of the ledger's runs, steps, locks, hosting history and authoritative
    state."""
    from cosfail.cosprint import authority as A
    from cosfail.workflows import ledger as L
    from sqlalchemy import select

    out = {}
    with c.ledger.engine.connect() as conn:
        for t in (L.runs, L.steps, L.locks, L.hosting, A.domain_state):
            out[t.name] = sorted(tuple(r) for r in conn.execute(select(t)))
    return out


def homes_digest(c) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """sha256 of every file in every node's home (tables, designation, last-running,
    spool, sinks, backup area...), COSprint's own log left out: a running COSprint
    appends to it whatever cosfail does."""
    out = {}
    for node in c.domain.names():
        home = c.domain.home(node)
        for f in sorted(p for p in home.rglob("*") if p.is_file()):
            rel = f.relative_to(home)
            if rel.parts[:2] != ("var", "log"):
                out[f"{node}/{rel}"] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def refused_line(r: subprocess.CompletedProcess[str], fragment: str) -> None:
    """Exit 2, one line on stderr naming the problem, nothing on stdout."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cosfail: "), r.stderr
    assert fragment in lines[0], (fragment, lines[0])
    assert r.stdout == "", r.stdout


def expected_digest(snapshot: Path, scratch: Path, moves: list[tuple[str, str]]) -> str:
    """The rows an undisturbed failover ends with: the snapshot restored, then rehosted."""
    url = f"sqlite:///{scratch}"
    import_snapshot(snapshot, url, domain="demo")
    with tables.connect(url) as conn:
        for old, new in moves:
            tables.rehost(conn, old, new)
    with tables.connect(url) as conn:
        return tables.rows_digest(conn)


# ----- coverage each-to-each --------------------------------------------------------------
def test_each_coverage_moves_only_the_failed_servers_objects_to_its_own_bcs(make_cluster):
    c = make_cluster(servers=2, bcs=2, clients=1, objects=4000, coverage="each")
    c.backup()
    own = c.hosted("srv1")
    assert set(own) == {"srv1", "srv2"}
    c.local.kill("srv2")  # not the master

    started = trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv2", best=True), "test")
    plan = started.plan
    assert (plan.bcs, plan.master_after, plan.restore) == ("bcs2", "srv1", [])
    run = c.wait(started.run_id)
    assert run["state"] == "succeeded", run["error"]
    live = ["srv1", "bcs1", "bcs2", "cl1"]
    for node in live:
        assert c.hosted(node) == {"srv1": own["srv1"], "bcs2": own["srv2"]}, node
        assert points_at(c, node)[1:] == ("srv1", 2), node
    assert len({c.digest(n) for n in live}) == 1
    assert c.authority() == Designation("srv1", 2)
    roles = {n: points_at(c, n)[0] for n in live}
    assert roles == {"srv1": "master", "bcs1": "slave", "bcs2": "server", "cl1": "slave"}
    # srv1 prints its own queues still; srv2's queue prints on bcs2
    for queue, job, printer in [(plan.probe_queue, "moved-1", "bcs2"),
                                ("q-srv1-0001", "kept-1", "srv1")]:
        code, answer = c.driver("cl1").submit(queue, "page", job)
        assert code == 202, answer
        assert c.wait_printed(printer, job), (queue, printer)

    # Then the master dies, before any newer backup: bcs1 restores the epoch-1 snapshot,
    # which predates srv2's failover; that move is replayed, not undone.
    c.local.kill("srv1")
    started = trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv1", best=True), "test")
    assert started.plan.bcs == "bcs1" and started.plan.replay == [("srv2", "bcs2")]
    run = c.wait(started.run_id)
    assert run["state"] == "succeeded", run["error"]
    live = ["bcs1", "bcs2", "cl1"]
    for node in live:
        assert c.hosted(node) == {"bcs1": own["srv1"], "bcs2": own["srv2"]}, node
        assert points_at(c, node)[1:] == ("bcs1", 3), node
    assert len({c.digest(n) for n in live}) == 1
    assert c.authority() == Designation("bcs1", 3)
    assert points_at(c, "bcs1")[0] == "master" and points_at(c, "bcs2")[0] == "server"


# ----- refusals -------------------------------------------------------------------------------
def test_bad_input_through_the_cli_exits_2_names_the_problem_and_changes_nothing(make_cluster):
    c = make_cluster(servers=2, bcs=2, clients=1, objects=600, coverage="each")
    c.settle()
    before_ledger, before_homes = ledger_rows(c), homes_digest(c)
    cases = [
        (("nope", "--to", "bcs1"), "unknown node 'nope'"),
        (("srv1", "--to", "cl1", "--force"), "cl1 is a client, not a bcs"),
        (("srv1", "--to", "bcs2", "--force"), "bcs2 does not cover srv1 (covered by: bcs1)"),
        (("srv1", "--to", "bcs1"), "srv1 is still alive (worker up, COSprint up as master)"),
        (("srv1", "--to", "bcs1", "--force"), "bcs1: no verified snapshot"),
        (("srv1",), "give exactly one of --to BCS or --best"),
    ]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda case: c.cli("failover", *case[0], "--yes"), cases))
    for (_args, fragment), r in zip(cases, answers, strict=True):
        refused_line(r, fragment)
    assert ledger_rows(c) == before_ledger
    assert homes_digest(c) == before_homes
    assert c.authority() == Designation("srv1", 1)
    assert points_at(c, "srv1") == ("master", "srv1", 1)


def test_dry_run_and_a_vetoing_hook_change_nothing(make_cluster):
    c = make_cluster(servers=1, bcs=1, clients=1, objects=1000)
    c.settle()
    c.backup()
    newest = c.ledger.catalog("bcs1")[0]["file"]
    before_ledger, before_homes = ledger_rows(c), homes_digest(c)

    # --force against a live server: the plan stops it for good, the dry run must not
    r = c.cli("failover", "srv1", "--to", "bcs1", "--dry-run", "--force", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["run_id"] is None
    plan = doc["plan"]
    assert (plan["server"], plan["bcs"], plan["snapshot"]) == ("srv1", "bcs1", newest)
    assert "srv1" in plan["stop"] and "srv1" not in plan["start"]
    assert (plan["epoch_before"], plan["epoch_after"]) == (1, 2)
    assert plan["moving"] == c.hosted("srv1")["srv1"]
    assert ledger_rows(c) == before_ledger
    assert homes_digest(c) == before_homes
    assert points_at(c, "srv1") == ("master", "srv1", 1)

    # a pre_failover hook that says no: exit 2 / 422, a refused run with its message
    c.amend_domain(append='\n[hooks]\npre_failover = ["sh", "-c", "echo no way >&2; exit 3"]\n')
    r = c.cli("failover", "srv1", "--to", "bcs1", "--force", "--yes")
    refused_line(r, "pre_failover hook vetoed the failover: no way")
    client = TestClient(create_app(c.domain))
    answer = client.post("/failover", json={"server": "srv1", "to": "bcs1", "force": True},
                         headers={"Authorization": f"Bearer {read_token(c.domain)}"})
    assert answer.status_code == 422, answer.text
    assert "vetoed the failover: no way" in answer.json()["detail"]
    vetoed = c.ledger.runs(workflow="failover")
    assert len(vetoed) == 2
    assert {(r["state"], r["reason"]) for r in vetoed} == {
        ("refused", "pre_failover hook vetoed the failover: no way")}
    assert {r["triggered_by"] for r in vetoed} == {f"cli:{getpass.getuser()}", "api:token"}
    after = ledger_rows(c)
    new_runs = [r for r in after["runs"] if r not in before_ledger["runs"]]
    assert sorted(r[0] for r in new_runs) == sorted(r["id"] for r in vetoed)
    assert {k: v for k, v in after.items() if k != "runs"} == \
        {k: v for k, v in before_ledger.items() if k != "runs"}
    assert homes_digest(c) == before_homes
    assert points_at(c, "srv1") == ("master", "srv1", 1)


# ----- a corrupt newest snapshot ----------------------------------------------------------------
def test_a_corrupt_newest_snapshot_is_refused_and_the_last_good_one_restored(make_cluster):
    c = make_cluster(servers=1, bcs=1, clients=1, objects=2000)
    c.backup()
    c.backup()
    newest, good = (s["file"] for s in c.ledger.catalog("bcs1")[:2])
    path = c.domain.backup_area("bcs1") / newest
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 16):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    moving = c.hosted("srv1")["srv1"]
    c.local.kill("srv1")

    r = c.cli("failover", "srv1", "--to", "bcs1", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    assert plan["snapshot"] == good and plan["restore"] == [good]
    assert len(plan["refused_snapshots"]) == 1
    assert plan["refused_snapshots"][0].startswith(f"{newest}: ")
    assert "checksum mismatch" in plan["refused_snapshots"][0]
    note = next(n for n in plan["notes"] if n.startswith("newer snapshot(s) refused"))
    assert "restoring the last good one" in note and newest in note

    started = trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv1", to="bcs1"), "test")
    run = c.wait(started.run_id)
    assert run["state"] == "succeeded", run["error"]
    assert run["params"]["plan"]["snapshot"] == good
    (restore,) = steps_named(c, started.run_id, "restore_snapshot")
    assert restore.outcome == f"restored {good} (2000 rows) on bcs1", restore.outcome
    assert restore.facts["snapshot"] == good
    assert c.hosted("bcs1") == {"bcs1": moving} == c.hosted("cl1")
    assert c.authority() == Designation("bcs1", 2)


# ----- a worker SIGKILLed mid-restore ------------------------------------------------------------
def test_restore_killed_mid_step_is_resumed_to_the_end_state_of_an_undisturbed_failover(
        make_cluster, tmp_path):
    c = make_cluster(servers=1, bcs=1, clients=1, objects=300_000)
    c.settle()
    c.backup()
    moving = c.hosted("srv1")["srv1"]
    c.local.kill("srv1")
    started = trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv1", to="bcs1"), "test")
    run_id = started.run_id

    def restore_state() -> str:
        return steps_named(c, run_id, "restore_snapshot")[0].state

    poll(lambda: restore_state() not in ("planned", "queued"), poll_s=0.002,
         why="restore_snapshot never started")
    os.kill(c.worker_pid("bcs1"), signal.SIGSTOP)  # frozen mid-step: the kill lands there
    assert restore_state() == "running"
    pid = c.worker_pid("bcs1")
    c.kill_worker("bcs1")
    poll(lambda: not pid_alive(pid), why="bcs1's worker survived SIGKILL")
    c.restart_worker("bcs1")  # reaps the lost step: the run fails, resumable
    run = poll(lambda: (r := c.ledger.run(run_id))["state"] == "failed" and r,
               why="the lost restore step was not reaped")
    assert "lost mid-step" in run["error"], run["error"]

    r = c.cli("resume", run_id, "--wait", "--json")
    run = c.ledger.run(run_id)
    assert r.returncode == 0, (run["error"], r.stderr[-2000:])
    assert run["state"] == "succeeded" and run["launch"] == 2
    assert [x["id"] for x in c.ledger.runs(workflow="failover")] == [run_id]
    (restore,) = steps_named(c, run_id, "restore_snapshot")
    assert restore.state == "succeeded" and restore.attempt == 2

    # the end state of an undisturbed failover: the snapshot restored, srv1 → bcs1
    snapshot = c.domain.backup_area("bcs1") / restore.facts["snapshot"]
    want = expected_digest(snapshot, tmp_path / "expected.db", [("srv1", "bcs1")])
    assert c.digest("bcs1") == c.digest("cl1") == want
    (rehost,) = steps_named(c, run_id, "rehost_objects")
    assert sum(rehost.facts["moved"].values()) == moving
    assert c.hosted("bcs1") == {"bcs1": moving} == c.hosted("cl1")
    assert c.authority() == Designation("bcs1", 2)
    assert points_at(c, "bcs1") == ("master", "bcs1", 2)
    assert points_at(c, "cl1") == ("slave", "bcs1", 2)

    # bcs1's returning worker held its restart-check back until the failover was done
    check = poll(lambda: [x for x in c.ledger.runs(limit=100, workflow="restart-check")
                          if x["subject"] == "bcs1" and x["created_at"] > run["created_at"]
                          and x["state"] == "succeeded"], why="bcs1's restart-check")
    assert len(check) == 1
    assert check[0]["created_at"] >= c.ledger.run(run_id)["finished_at"]
    assert check[0]["params"]["plan"]["decision"] == "current"


# ----- restart-check ------------------------------------------------------------------------------
def test_a_client_whose_worker_dies_mid_step_and_stays_away_is_skipped_not_waited_on(
        fault_cluster):
    """cl1's worker is SIGKILLed as it begins stopping COSprint in a failover and does not
    come back. The failover does not wait out the lock lease (600 s): once cl1's worker
    has held no broker connection for `step_expires`, cl1 is skipped, saying why, in
    that stage and the ones after it, and the failover ends with every other node on the
    new master. When cl1's worker returns,
    its restart-check re-points it."""
    c, failpoints = fault_cluster(servers=1, bcs=1, clients=2, objects=2000, up=False)
    c.amend_domain(control={"auto_reclaim": False, "step_expires": 3.0})
    c.up()
    c.settle()
    c.backup()
    c.local.kill("srv1")
    pid = c.worker_pid("cl1")
    failpoints.write_text("stop_cosprint@cl1:before\n")
    started = trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv1", to="bcs1"), "test")
    assert "cl1" in started.plan.stop
    run = c.wait(started.run_id)
    assert run["state"] == "succeeded", run["error"]
    assert not pid_alive(pid)
    (stop,) = [s for s in steps_named(c, started.run_id, "stop_cosprint") if s.node == "cl1"]
    assert stop.state == "skipped", stop
    assert stop.error == ("the worker of cl1 left while running the step and was not back "
                          "within 3 s")
    # and is not waited on again: the later stages skip it at once, saying why
    later = [(s.name, s.state, s.error) for s in c.ledger.steps(started.run_id)
             if s.member and s.node == "cl1" and s.idx > stop.idx]
    assert later == [(name, "skipped", f"step {stop.idx} of this run skipped cl1")
                     for name in ("repoint_and_start",)]
    assert c.authority() == Designation("bcs1", 2)
    assert points_at(c, "cl2") == ("slave", "bcs1", 2)
    assert points_at(c, "bcs1") == ("master", "bcs1", 2)
    (verify,) = steps_named(c, started.run_id, "verify")
    assert "; left out, skipped earlier in this run: cl1 (" in verify.outcome, verify.outcome

    c.restart_worker("cl1")
    poll(lambda: points_at(c, "cl1") == ("slave", "bcs1", 2), why="cl1 re-pointed")
    assert c.digest("cl1") == c.digest("bcs1")


def test_restart_check_repoints_a_returning_client_and_leaves_the_failed_server_stopped(
        make_cluster):
    c = make_cluster(servers=1, bcs=1, clients=2, objects=2000, up=False)
    c.amend_domain(control={"auto_reclaim": False})  # reclaim is the operator's call here
    c.up()
    c.settle()
    c.backup()
    c.kill_worker("cl2")
    assert c.driver("cl2").stop()
    c.local.kill("srv1")
    started = trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv1", to="bcs1"), "test")
    assert started.plan.unreachable == ["cl2"]
    run = c.wait(started.run_id)
    assert run["state"] == "succeeded", run["error"]
    cl2 = c.driver("cl2")
    assert cl2.read_designation() == Designation("srv1", 1)  # untouched while it was away

    def check_of(node: str, state: str) -> dict | None:  # type: ignore[type-arg]
        found = [x for x in c.ledger.runs(limit=100, workflow="restart-check")
                 if x["subject"] == node and x["created_at"] > run["finished_at"]]
        return found[0] if found and found[0]["state"] == state else None

    c.restart_worker("cl2")
    back = poll(lambda: check_of("cl2", "succeeded"), why="cl2's restart-check")
    assert back["params"]["plan"]["decision"] == "refresh"
    assert c.digest("cl2") == c.digest("bcs1")
    assert cl2.read_designation() == cl2.read_last_running() == Designation("bcs1", 2)
    assert points_at(c, "cl2") == ("slave", "bcs1", 2)

    c.restart_worker("srv1")
    refused = poll(lambda: check_of("srv1", "refused"), why="srv1's restart-check")
    assert "reclaim needed" in refused["reason"], refused["reason"]
    assert c.driver("srv1").status() is None  # left stopped: never serves as master
    r = c.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["reclaim_needed"] == ["srv1"]
    (srv1,) = [n for n in st["nodes"] if n["name"] == "srv1"]
    assert (srv1["worker"], srv1["cosprint"], srv1["reclaim_needed"]) == ("up", "down", True)
    assert (st["master"], st["epoch"]) == ("bcs1", 2)
