"""Backup on real Redis, real node workers and real COSprint processes.

Faults are real: a worker stopped (SIGSTOP) while a snapshot waits in its queue, a
worker SIGKILLed in the middle of a copy, a broker port with nothing behind it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from conftest import free_port, run_cli, wait_until
from cosfail.cosprint import tables
from cosfail.cosprint.snapshot import import_snapshot, list_snapshots
from cosfail.launcher.demo_domain import init_demo
from cosfail.launcher.local import pid_alive
from cosfail.workers.app import configure
from cosfail.workers.steps import OUTBOX, is_verified
from cosfail.workflows import ledger as L
from cosfail.workflows import trigger
from cosfail.workflows.backup import BACKUP, BackupRequest
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest


# ----- helpers ----------------------------------------------------------------------------
def step_of(c, run_id: str, name: str, node: str = ""):  # type: ignore[no-untyped-def]
    """The ledger row of step `name` on `node` (a fan-out member when node is given)."""
    return next(s for s in c.ledger.steps(run_id) if s.name == name and s.node == node)


def snapshot_file(c, run_id: str) -> str:  # type: ignore[no-untyped-def]
    return step_of(c, run_id, "export_tables", "srv1").input["file"]


def digest(url: str) -> str:
    with tables.connect(url) as conn:
        return tables.rows_digest(conn)


def restored_digest(snapshot: Path, scratch: Path) -> str:
    url = f"sqlite:///{scratch}"
    import_snapshot(snapshot, url, domain="demo")
    return digest(url)


def backup_ok(c) -> str:  # type: ignore[no-untyped-def]
    run_id = trigger.run(c.engine, BACKUP, BackupRequest(), "test", "test backup").run_id
    run = c.wait(run_id)
    assert run["state"] == "succeeded", run["error"]
    return run_id


def backup_runs(c) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    return c.ledger.runs(limit=1000, workflow="backup")


# ----- the happy path -------------------------------------------------------------------
def test_backup_leaves_a_verified_snapshot_on_every_bcs_equal_to_the_master(make_cluster, tmp_path):
    c = make_cluster(servers=1, bcs=2, clients=2, objects=2000)
    run_id = trigger.run(c.engine, BACKUP, BackupRequest(), "test", "proof").run_id
    run = c.wait(run_id)
    assert run["state"] == "succeeded", run["error"]
    with tables.connect(c.domain.tables_url("srv1")) as conn:
        master_digest = tables.rows_digest(conn)
    for bcs in ("bcs1", "bcs2"):
        snaps = list_snapshots(c.domain.backup_area(bcs))
        assert len(snaps) == 1 and is_verified(snaps[0])
        restored = f"sqlite:///{tmp_path / (bcs + '.db')}"
        import_snapshot(snaps[0], restored, domain="demo")
        with tables.connect(restored) as conn:
            assert tables.rows_digest(conn) == master_digest
    steps = c.ledger.steps(run_id)
    assert all(s.state == "succeeded" for s in steps), [(s.name, s.node, s.state, s.error)
                                                        for s in steps]
    assert {s.node for s in steps if s.name == "verify_snapshot"} == {"bcs1", "bcs2"}
    assert all(s.started_at and s.finished_at and s.outcome for s in steps)
    export = next(s for s in steps if s.name == "export_tables")
    assert export.node == "srv1" and export.outcome.startswith("exported 2000 rows of srv1")
    assert {r["bcs"] for r in c.ledger.catalog()} == {"bcs1", "bcs2"}


def test_backup_wait_json_prints_one_json_document_with_the_steps(make_cluster):
    c = make_cluster(servers=1, bcs=1, clients=0, objects=1000)
    r = c.cli("backup", "--wait", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # the whole of stdout is one document
    assert doc["workflow"] == "backup" and doc["state"] == "succeeded"
    assert c.ledger.run(doc["id"])["state"] == "succeeded"
    names = {(s["name"], s["node"]) for s in doc["steps"]}
    assert {("export_tables", "srv1"), ("ship_snapshot", "bcs1"),
            ("verify_snapshot", "bcs1"), ("record_backup", "")} <= names
    assert c.ledger.holder("backup") is None  # freed as the run ended
    for s in doc["steps"]:
        assert s["state"] == "succeeded" and s["attempt"] == 1, s
        assert s["started_at"] <= s["finished_at"] and s["outcome"], s


# ----- a snapshot corrupted in transit ---------------------------------------------------
def test_a_snapshot_corrupted_in_transit_fails_verify_and_the_verified_one_stays(make_cluster):
    c = make_cluster(servers=1, bcs=1, clients=0, objects=1000)
    good_run = backup_ok(c)
    area = c.domain.backup_area("bcs1")
    (good,) = list_snapshots(area)
    assert is_verified(good) and good.name == snapshot_file(c, good_run)

    # The BCS's worker stops: the ship step waits in its queue while the bytes change
    # under it in the master's outbox, as a faulty disk or link would change them.
    pid = c.worker_pid("bcs1")
    os.kill(pid, signal.SIGSTOP)
    try:
        run_id = trigger.run(c.engine, BACKUP, BackupRequest(), "test",
                             "corrupted in transit").run_id
        wait_until(lambda: step_of(c, run_id, "ship_snapshot", "bcs1").state == "queued",
                   timeout=20, why="the ship step queued for bcs1")
        name = step_of(c, run_id, "ship_snapshot", "bcs1").input["file"]
        sent = c.domain.home("srv1") / OUTBOX / name
        data = bytearray(sent.read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 16):
            data[i] ^= 0xFF
        sent.write_bytes(bytes(data))  # same size: only the checksum can tell
    finally:
        os.kill(pid, signal.SIGCONT)

    run = c.wait(run_id)
    assert run["state"] == "failed"
    assert "verify_snapshot" in run["error"] and "checksum" in run["error"], run["error"]
    assert step_of(c, run_id, "ship_snapshot", "bcs1").state == "succeeded"
    verify = step_of(c, run_id, "verify_snapshot", "bcs1")
    assert verify.state == "failed" and "checksum" in verify.error, verify.error
    assert step_of(c, run_id, "record_backup").state == "planned"  # never reached
    bad = area / name
    assert bad.exists() and not is_verified(bad)
    assert good.exists() and is_verified(good)
    assert [r["file"] for r in c.ledger.catalog("bcs1")] == [good.name]
    assert c.ledger.holder("backup") is None  # a failed backup frees the schedule


# ----- retention --------------------------------------------------------------------------
def test_verify_prunes_past_retention_and_keeps_the_newest_verified(make_cluster):
    c = make_cluster(servers=1, bcs=2, clients=0, objects=500, up=False)
    c.amend_domain(control={"retention": 2})
    assert c.domain.control.retention == 2
    c.up()
    runs = [backup_ok(c) for _ in range(3)]
    files = [snapshot_file(c, r) for r in runs]
    for bcs in ("bcs1", "bcs2"):
        area = c.domain.backup_area(bcs)
        assert [p.name for p in list_snapshots(area)] == files[1:], bcs
        assert all(is_verified(p) for p in list_snapshots(area))
        assert not (area / (files[0] + ".verified")).exists()
        verify = step_of(c, runs[2], "verify_snapshot", bcs)
        assert verify.facts["pruned"] == [files[0]], verify.facts
        assert "pruned 1 older snapshot" in verify.outcome, verify.outcome
        assert step_of(c, runs[1], "verify_snapshot", bcs).facts["pruned"] == []
        # the catalog lists what is on disk, no more
        assert sorted(r["file"] for r in c.ledger.catalog(bcs)) == sorted(files[1:]), bcs


# ----- beat -------------------------------------------------------------------------------
def test_beat_every_second_backs_up_never_two_at_once_and_records_skips(make_cluster):
    c = make_cluster(servers=1, bcs=1, clients=0, objects=1000, up=False)
    c.amend_domain(control={"backup_interval": 1.0})
    assert c.domain.control.backup_interval == 1.0
    c.up()
    beat = c.local.start_beat()
    pid = c.worker_pid("bcs1")

    def succeeded() -> int:
        return sum(r["state"] == "succeeded" for r in backup_runs(c))

    try:
        wait_until(succeeded, timeout=30, poll=0.1, why="a first scheduled backup")
        # Hold a backup in its ship step (its BCS stopped) while beat keeps ticking: the
        # next trigger must be recorded as skipped, not run beside it nor queued.
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(lambda: any(r["state"] == "skipped" for r in backup_runs(c)),
                       timeout=20, poll=0.1, why="a trigger skipped while a backup ran")
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: succeeded() >= 3, timeout=30, poll=0.1, why="3 scheduled backups")
    finally:
        c.local.stop_components([beat])
    wait_until(lambda: all(r["state"] not in ("planned", "running") for r in backup_runs(c)),
               timeout=40, poll=0.1, why="every backup run finished")

    runs = backup_runs(c)
    assert all(r["triggered_by"] == "beat" for r in runs)
    done = [r for r in runs if r["state"] != "skipped"]
    assert sum(r["state"] == "succeeded" for r in done) >= 3
    spans = []
    for r in done:
        steps = [s for s in c.ledger.steps(r["id"]) if s.started_at]
        spans.append((min(s.started_at for s in steps),
                      max(s.finished_at or time.time() for s in steps), r["id"]))
    spans.sort()
    for (_a0, a1, a), (b0, _b1, b) in zip(spans, spans[1:], strict=False):
        assert a1 < b0, f"backup runs {a} and {b} overlap"
    skipped = [r for r in runs if r["state"] == "skipped"]
    assert skipped
    order = [rid for _a0, _a1, rid in spans]
    for r in skipped:
        holder = r["params"]["holder"]
        assert holder in r["reason"] and "still running" in r["reason"], r["reason"]
        assert holder in order and not c.ledger.steps(r["id"])
        # Skipped while its holder held the lock: after the run before it, before its end.
        k = order.index(holder)
        after = spans[k - 1][1] if k else 0.0
        assert after <= r["created_at"] <= spans[k][1], (r, spans)


def test_a_backup_no_worker_took_fails_saying_so_and_frees_the_schedule(make_cluster):
    """The master's worker stopped (SIGSTOP): the export waits in its queue past
    step_expires, the run fails saying so, and the next backup runs instead of being
    skipped behind a failed run (as it was, for the lock's 600 s lease)."""
    c = make_cluster(servers=1, bcs=1, clients=0, objects=100, up=False)
    c.amend_domain(control={"step_expires": 3.0})
    c.up()
    failed = c.backup_nobody_takes()
    assert failed["state"] == "failed", failed
    assert "no worker of srv1 took the step within 3 s" in failed["error"], failed["error"]
    assert c.ledger.holder(L.BACKUP_LOCK) is None
    following = trigger.run(c.engine, BACKUP, BackupRequest(), "test", "the next slot")
    assert following.state == "running", c.ledger.run(following.run_id)["reason"]
    assert c.wait(following.run_id)["state"] == "succeeded"


def test_two_domains_on_one_broker_back_up_and_fail_over_at_once_each_by_its_own_workers(
        make_cluster):
    """Both have a srv1 and a bcs1, and the same queue names: each domain's keys carry
    its name, so neither takes the other's steps (one did, and its backup failed)."""
    a = make_cluster("a", up=False, servers=1, bcs=1, clients=0, objects=100)
    b = make_cluster("b", up=False, servers=1, bcs=1, clients=0, objects=100)
    b.amend_domain(control={"name": "other"})
    assert a.domain.broker_url == b.domain.broker_url
    # This process speaks for one domain at a time: its Celery app is configured per call.
    for c in (a, b):
        configure(c.domain)
        c.up()
    started = []
    for c in (a, b):
        configure(c.domain)
        started.append((c, trigger.run(c.engine, BACKUP, BackupRequest(), "test", "at once")))
    for c, run in started:
        assert c.wait(run.run_id)["state"] == "succeeded", c.ledger.run(run.run_id)["error"]
        own = {c.worker_pid(n) for n in ("srv1", "bcs1", None)}
        took = {int(s.worker.rsplit(":", 1)[1]) for s in c.ledger.steps(run.run_id)
                if s.worker}
        assert took and took <= own, (c.domain.control.name, took, own)
    # Both lose srv1 and fail it over to their bcs1 at once.
    started = []
    for c in (a, b):
        configure(c.domain)
        own = {c.worker_pid(n) for n in ("bcs1", None)}
        c.local.kill("srv1")
        started.append((c, own, trigger.run(c.engine, FAILOVER, FailoverRequest("srv1", "bcs1"),
                                            "test", "at once")))
    for c, own, run in started:
        assert c.wait(run.run_id)["state"] == "succeeded", c.ledger.run(run.run_id)["error"]
        took = {int(s.worker.rsplit(":", 1)[1]) for s in c.ledger.steps(run.run_id)
                if s.worker}
        assert took and took <= own, (c.domain.control.name, took, own)
        assert str(c.authority()) == "bcs1@2"


def test_a_skipped_run_says_truly_what_its_lock_holder_is_doing():
    assert trigger.skip_reason(L.BACKUP_LOCK, "r1", "running") == \
        "skipped: backup run r1 is still running"
    assert trigger.skip_reason(L.HOSTING_LOCK, "r2", "failed") == (
        "skipped: hosting change run r2 failed and holds the domain's lock until it is "
        "resumed (cosfail resume r2)")
    assert trigger.skip_reason(L.BACKUP_LOCK, "r3", None) == \
        "skipped: backup run r3 (not in the ledger) holds the lock"


# ----- a worker killed in the middle of the copy -----------------------------------------
def test_a_worker_killed_mid_copy_is_resumed_to_the_same_verified_snapshot(make_cluster,
                                                                           tmp_path):
    c = make_cluster(servers=1, bcs=2, clients=0, objects=200_000)
    area = c.domain.backup_area("bcs1")
    for _attempt in range(3):
        pid = c.worker_pid("bcs1")
        run_id = trigger.run(c.engine, BACKUP, BackupRequest(), "test", "killed mid-copy").run_id
        part = area / (snapshot_file(c, run_id) + ".part")

        def copying_or_done(part: Path = part, run_id: str = run_id) -> str:
            if part.exists():
                return "copying"
            ship = step_of(c, run_id, "ship_snapshot", "bcs1")
            return "done" if ship.state in ("succeeded", "failed") else ""

        seen = wait_until(copying_or_done, timeout=60, poll=0.001, why="the copy to bcs1")
        if seen == "copying":
            os.kill(pid, signal.SIGKILL)
            # Dead, not dying (a process in the middle of an fsync takes a moment):
            # until then a restart would find the old worker still "alive".
            wait_until(lambda: not pid_alive(pid), why="the killed worker gone")  # noqa: B023
        if step_of(c, run_id, "ship_snapshot", "bcs1").state == "running":
            break  # the worker died with the step in progress
        # Too late (the copy had finished): let this backup end, then try a fresh one.
        if seen == "copying":
            c.restart_worker("bcs1")
        c.wait(run_id)
    else:
        raise AssertionError("could not catch the ship step in progress in 3 backups")

    c.restart_worker("bcs1")  # its start-up fails the step its predecessor died in
    run = c.wait(run_id)
    assert run["state"] == "failed", run
    lost = step_of(c, run_id, "ship_snapshot", "bcs1")
    assert lost.state == "failed" and "lost mid-step" in lost.error, lost.error
    runs_before = len(backup_runs(c))

    r = c.cli("resume", run_id, "--wait")
    assert r.returncode == 0, r.stdout + r.stderr

    run = c.ledger.run(run_id)
    assert run["state"] == "succeeded" and run["launch"] == 2, run
    assert len(backup_runs(c)) == runs_before  # the same run, resumed; not a new one
    ship1 = step_of(c, run_id, "ship_snapshot", "bcs1")
    assert ship1.state == "succeeded" and ship1.attempt >= 2, ship1
    # Steps already done are not repeated.
    assert step_of(c, run_id, "export_tables", "srv1").attempt == 1
    assert step_of(c, run_id, "ship_snapshot", "bcs2").attempt == 1

    name = snapshot_file(c, run_id)
    master = digest(c.domain.tables_url("srv1"))
    for bcs in ("bcs1", "bcs2"):
        bcs_area = c.domain.backup_area(bcs)
        snap = bcs_area / name
        assert is_verified(snap), bcs
        assert restored_digest(snap, tmp_path / f"{bcs}.db") == master, bcs
        assert not list(bcs_area.glob("*.part")), bcs
        if len(backup_runs(c)) == 1:  # no retry was needed: exactly what one run leaves
            assert list_snapshots(bcs_area) == [snap]
    assert {(r["bcs"], r["file"]) for r in c.ledger.catalog() if r["run_id"] == run_id} == {
        ("bcs1", name), ("bcs2", name)}


# ----- bad input ----------------------------------------------------------------------------
def test_backup_with_an_unreachable_broker_exits_2_naming_it_and_writes_nothing(tmp_path):
    broker = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    path = init_demo(tmp_path / "dom", broker=broker, bcs=1, clients=0, objects=100)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = run_cli("backup", "-d", str(path))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and broker in lines[0], r.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (path.parent / "ledger.db").exists()

    r = run_cli("run", "NOSUCH", "-d", str(path))
    assert r.returncode == 2 and "NOSUCH" in r.stderr, r.stdout + r.stderr


def test_backup_with_a_malformed_domain_file_exits_2_naming_it_and_writes_nothing(tmp_path):
    bad_toml = tmp_path / "broken" / "domain.toml"
    bad_toml.parent.mkdir()
    bad_toml.write_text('[control]\nbroker = "redis://127.0.0.1:1/0\n')
    wrong = tmp_path / "wrong" / "domain.toml"
    wrong.parent.mkdir()
    wrong.write_text('[control]\nname = "demo"\n\n[[node]]\nname = "srv1"\nrole = "printer"\n'
                     'home = "nodes/srv1"\nport = 7001\nmaster = true\n')
    for path in (bad_toml, wrong):
        r = run_cli("backup", "-d", str(path))
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and str(path) in lines[0], r.stderr
        assert [p.name for p in path.parent.iterdir()] == ["domain.toml"]
