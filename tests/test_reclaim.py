"""Reclaim, switchover and failback on a real domain: print jobs across a switchover,
refusals that change nothing, auto reclaim turned off, and a reclaim whose node worker is
SIGKILLed at each of its node's steps, then resumed (issue 5)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from cosfail.cosprint import designation, tables
from cosfail.cosprint import snapshot as snap
from cosfail.cosprint.errors import DriverError, SnapshotError
from cosfail.launcher.local import pid_alive
from cosfail.workflows import ledger as L
from cosfail.workflows import trigger
from cosfail.workflows.backup import BACKUP, BackupRequest
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest, MoveRequest
from cosfail.workflows.reclaim import RECLAIM
from cosfail.workflows.refusal import Refused
from cosfail.workflows.status import reclaim_needed
from sqlalchemy import Connection, select, update


# ----- helpers ---------------------------------------------------------------------------
def cluster(make_cluster, name: str, control: dict[str, object] | None = None,
            **kw: object):  # type: ignore[no-untyped-def]
    """A running cluster whose domain.toml has these `[control]` settings from the start."""
    c = make_cluster(name, up=False, **kw)
    if control:
        c.amend_domain(control=control)
    c.up()
    c.settle()
    return c


def fail_over_srv1(c) -> None:  # type: ignore[no-untyped-def]
    """Backup, lose srv1 (worker and COSprint SIGKILLed), fail it over to bcs1."""
    c.backup()
    c.local.kill("srv1")
    started = trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv1", to="bcs1"), "test")
    run = c.wait(started.run_id)
    assert run["state"] == L.SUCCEEDED, run["error"]


def bring_srv1_back(c, cosprint_first: bool) -> None:  # type: ignore[no-untyped-def]
    """srv1's worker returns (auto_reclaim off): its start-up check leaves it for reclaim."""
    if cosprint_first:  # the machine rebooted and its COSprint came up on its own
        c.driver("srv1").start()
        assert c.driver("srv1").status().role == "stale"
    before = {r["id"] for r in c.ledger.runs(limit=100, workflow="restart-check")}
    c.restart_worker("srv1")
    deadline = time.time() + 60
    while True:
        new = [r for r in c.ledger.runs(limit=100, workflow="restart-check")
               if r["id"] not in before]
        if new:
            break
        assert time.time() < deadline, "srv1's worker never ran its start-up check"
        time.sleep(0.05)
    assert new[0]["state"] == L.REFUSED and "reclaim needed" in new[0]["reason"], new[0]


def file_hashes(home: Path) -> dict[str, str]:
    """sha256 of every file under a node's home but its logs."""
    return {str(p.relative_to(home)): snap.sha256_file(p) for p in sorted(home.rglob("*"))
            if p.is_file() and p.relative_to(home).parts[:2] != ("var", "log")}


def fingerprint(c) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What a refused command must leave as it was."""
    return {
        "runs": [(r["id"], r["workflow"], r["state"]) for r in c.ledger.runs(limit=1000)],
        "steps": sum(len(c.ledger.steps(r["id"])) for r in c.ledger.runs(limit=1000)),
        "authority": str(c.authority()),
        "hosting lock": c.ledger.holder(L.HOSTING_LOCK),
        "designations": {n: str(c.driver(n).read_designation()) for n in c.domain.names()},
        "srv1 files": file_hashes(c.domain.home("srv1")),
        "srv1 COSprint": c.driver("srv1").pid() is not None,
    }


def assert_all_refused(c, commands: dict[tuple[str, ...], str]) -> None:  # type: ignore[no-untyped-def]
    """Each command (run side by side) exits 2 with one line on stderr naming its reason,
    and nothing on stdout."""
    with ThreadPoolExecutor(len(commands)) as pool:
        done = dict(zip(commands, pool.map(lambda args: c.cli(*args), commands), strict=True))
    bad = []
    for args, reason in commands.items():
        r = done[args]
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        if r.returncode != 2 or len(lines) != 1 or reason not in lines[0] or r.stdout.strip():
            bad.append(f"cosfail {' '.join(args)} -> exit {r.returncode}, want 2 and "
                       f"{reason!r}\n  stdout: {r.stdout[-500:]!r}\n  stderr: {r.stderr[-500:]!r}")
    assert not bad, "\n".join(bad)


@contextmanager
def snapshot_rows(c, path: Path) -> Iterator[Connection]:  # type: ignore[no-untyped-def]
    """The rows of a snapshot file that verifies, read from a copy (a quarantine is
    never opened in place)."""
    snap.check_snapshot(path, domain=c.domain.control.name)
    copy = c.domain.base / "scratch-rows.db"
    shutil.copyfile(path, copy)
    try:
        with tables.connect(f"sqlite:///{copy}") as conn:
            yield conn
    finally:
        copy.unlink()


def snapshot_digest(c, path: Path) -> str:  # type: ignore[no-untyped-def]
    """Rows digest of a snapshot file, once it verifies; else why it does not."""
    try:
        with snapshot_rows(c, path) as conn:
            return tables.rows_digest(conn)
    except SnapshotError as exc:
        return f"invalid: {exc}"


def reclaim_end_state(c) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """srv1 after its reclaim, as facts that do not depend on timing."""
    home = c.domain.home("srv1")
    aside = home / "var" / "reclaimed" / "1"
    d = c.driver("srv1")
    st = d.status()
    return {
        "authority": str(c.authority()),
        "designation": str(d.read_designation()),
        "last running": str(d.read_last_running()),
        "serves": f"{st.role} of {st.master}@{st.epoch}" if st else "down",
        "tables": "= bcs1's" if c.digest("srv1") == c.digest("bcs1") else "differ from bcs1's",
        "hosted": c.hosted("srv1"),
        "set aside": sorted(str(p.relative_to(aside)) for p in aside.rglob("*") if p.is_file()),
        "set-aside designation": str(designation.read(aside / designation.DESIGNATION)),
        "set-aside tables": snapshot_digest(c, aside / "tables.snap"),
        "hosting lock": c.ledger.holder(L.HOSTING_LOCK),
    }


def undisturbed_end_state(original_digest: str, objects: int) -> dict[str, Any]:
    """What an undisturbed reclaim of srv1 (failed over to bcs1 at epoch 2) leaves."""
    return {
        "authority": "bcs1@2", "designation": "bcs1@2", "last running": "bcs1@2",
        "serves": "slave of bcs1@2", "tables": "= bcs1's", "hosted": {"bcs1": objects},
        "set aside": ["etc/master", "tables.manifest.json", "tables.snap", "var/last_master"],
        "set-aside designation": "srv1@1", "set-aside tables": original_digest,
        "hosting lock": None,
    }


def diff(got: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    return {k: {"got": got.get(k), "want": v} for k, v in want.items() if got.get(k) != v}


# ----- switchover with print jobs in flight -----------------------------------------------
class PrintClient:
    """A client that submits jobs through COSprint and retries retriable refusals
    (503, or no answer while a node restarts) until the job is accepted."""

    def __init__(self, c) -> None:  # type: ignore[no-untyped-def]
        self.c = c
        self.drivers = {n: c.driver(n) for n in c.domain.names()}
        self.accepted: dict[str, str] = {}  # job id -> the node that accepted it
        self.refusals: Counter[str] = Counter()
        self.given_up: dict[str, str] = {}
        self.in_flight_answer: int | None = None  # srv1's answer to the job sent slowly
        self.lock = threading.Lock()

    def note(self, job_id: str, code: int | None, answer: dict[str, Any]) -> bool:
        """Record one answer; True when the job is done with (accepted or given up)."""
        with self.lock:
            if code == 202:
                self.accepted[job_id] = answer.get("printed_by", "?")
                return True
            self.refusals[str(code or "no answer")] += 1
            if code not in (None, 503) and not answer.get("retriable"):
                self.given_up[job_id] = f"{code} {answer}"
                return True
            return False

    def submit(self, via: str, queue: str, job_id: str, timeout: float = 90.0) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                code, answer = self.drivers[via].submit(queue, f"page of {job_id}", job_id)
            except DriverError as exc:
                code, answer = None, {"error": str(exc)}
            if self.note(job_id, code, answer):
                return
            if time.time() > deadline:
                with self.lock:
                    self.given_up[job_id] = f"still refused after {timeout:g} s: {code} {answer}"
                return
            time.sleep(0.05)


def post_slowly(c, client: PrintClient, queue: str, job_id: str) -> None:  # type: ignore[no-untyped-def]
    """A job sent straight to srv1 whose body is still on its way when srv1's graceful
    stop begins: its headers go now, its body once srv1 has stopped answering (and has
    had time to drain its spool). Whatever srv1 answers, the job must print once."""
    body = json.dumps({"queue": queue, "data": f"page of {job_id}", "job_id": job_id}).encode()
    head = (f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    srv1 = client.drivers["srv1"]
    with socket.create_connection(("127.0.0.1", c.domain.node("srv1").port), timeout=60) as s:
        s.sendall(head)
        deadline = time.time() + 60
        silent = 0
        while silent < 2 and time.time() < deadline:  # two missed /status: it is stopping
            silent = silent + 1 if srv1.status() is None else 0
            time.sleep(0.05)
        time.sleep(0.3)  # its printer is joined and its spool drained by now
        s.sendall(body)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    status_line, _, rest = raw.decode(errors="replace").partition("\r\n")
    code = int(status_line.split()[1]) if status_line.startswith("HTTP/") else None
    answer = json.loads(rest.partition("\r\n\r\n")[2] or "{}") if code else {}
    client.in_flight_answer = code
    if not client.note(job_id, code, answer):
        client.submit("cl1", queue, job_id)


def whereabouts(c, job_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Where an unprinted job's spool file is (spools, quarantines, rejects)."""
    found = []
    for node in c.domain.names():
        home = c.domain.home(node)
        for p in home.rglob(f"{job_id}.job"):
            found.append(str(p.relative_to(c.domain.base)))
    return found


def test_switchover_prints_every_job_once_and_keeps_every_row_changed_before_it(make_cluster):
    """`cosfail switchover srv1 --to bcs1` with jobs accepted just before it, jobs sent
    all through it (refused while nodes restart, retried) and one in flight across srv1's
    graceful stop: each printed exactly once, and nothing changed on the master lost."""
    c = cluster(make_cluster, "switch", servers=1, bcs=1, clients=2)
    url = c.domain.tables_url("srv1")
    with tables.connect(url) as conn:
        queues = list(conn.execute(select(tables.queues.c.name).where(
            tables.queues.c.host == "srv1").order_by(tables.queues.c.id).limit(5)).scalars())
        changed = list(conn.execute(select(tables.printers.c.id).where(
            tables.printers.c.host == "srv1").order_by(tables.printers.c.id).limit(5)).scalars())
    client = PrintClient(c)

    # Just before the switchover: 50 jobs through cl1 (srv1 hosts their queues), and
    # some rows changed on the master.
    for i in range(50):
        client.submit("cl1", queues[i % len(queues)], f"pre-{i:03d}")
    assert set(client.accepted) == {f"pre-{i:03d}" for i in range(50)}, client.given_up
    new_location = {pid: f"moved just before the switchover ({pid})" for pid in changed}
    with tables.connect(url) as conn:
        for pid, loc in new_location.items():
            conn.execute(update(tables.printers).where(tables.printers.c.id == pid)
                         .values(location=loc))

    # During it: a job in flight across srv1's stop, and a steady stream through both
    # clients, each retried until accepted.
    stop = threading.Event()

    def stream() -> None:
        i = 0
        while not stop.is_set():
            client.submit(("cl1", "cl2")[i % 2], queues[i % len(queues)], f"during-{i:03d}")
            i += 1
            time.sleep(0.02)

    threads = [threading.Thread(target=stream, daemon=True),
               threading.Thread(target=post_slowly, args=(c, client, queues[0], "in-flight"),
                                daemon=True)]
    for t in threads:
        t.start()
    done = c.cli("switchover", "srv1", "--to", "bcs1", "--yes", "--wait")
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert done.returncode == 0, f"switchover: exit {done.returncode}\n{done.stdout[-3000:]}" \
        f"\n{done.stderr[-3000:]}"
    for i in range(10):  # and just after
        client.submit("cl2", queues[i % len(queues)], f"post-{i:03d}")

    # Every accepted job printed exactly once, across every node's sinks.
    assert not client.given_up, f"jobs refused for good: {client.given_up}"
    deadline = time.time() + 30
    while True:
        printed = Counter(j["job_id"] for n in c.domain.names() for j in c.printed(n))
        missing = sorted(set(client.accepted) - set(printed))
        if not missing or time.time() > deadline:
            break
        time.sleep(0.1)
    twice = {j: n for j, n in printed.items() if n > 1}
    by = Counter(j["node"] for n in c.domain.names() for j in c.printed(n)
                 if j["job_id"] in client.accepted)
    summary = (f"{len(client.accepted)} jobs accepted (by {dict(Counter(client.accepted.values()))}"
               f"), printed by {dict(by)}; refusals retried: {dict(client.refusals)}; "
               f"srv1 answered the in-flight job {client.in_flight_answer}")
    assert not missing, f"accepted, never printed: " \
        f"{ {j: whereabouts(c, j) for j in missing} }; {summary}"
    assert not twice, f"printed more than once: {twice}; {summary}"
    assert client.refusals, f"the stream never met the switchover window: {summary}"

    # Every row changed before it is on the new master (and every node) with its new
    # value; srv1 serves as a slave of bcs1 at epoch 2, its old data set aside.
    for node in c.domain.names():
        with tables.connect(c.domain.tables_url(node)) as conn:
            rows = conn.execute(select(tables.printers.c.id, tables.printers.c.host,
                                       tables.printers.c.location)
                                .where(tables.printers.c.id.in_(changed))).all()
        assert {r.id: (r.host, r.location) for r in rows} == \
            {pid: ("bcs1", loc) for pid, loc in new_location.items()}, node
    assert str(c.authority()) == "bcs1@2"
    statuses = {n: c.driver(n).status() for n in ("bcs1", "srv1")}
    assert {n: (s.role, s.master, s.epoch) for n, s in statuses.items()} == {
        "bcs1": ("master", "bcs1", 2), "srv1": ("slave", "bcs1", 2)}
    assert c.digest("srv1") == c.digest("bcs1")
    aside = c.domain.home("srv1") / "var" / "reclaimed" / "1"
    assert designation.read(aside / designation.DESIGNATION) == designation.Designation("srv1", 1)
    with snapshot_rows(c, aside / "tables.snap") as conn:
        old = conn.execute(select(tables.printers.c.id, tables.printers.c.host,
                                  tables.printers.c.location)
                           .where(tables.printers.c.id.in_(changed))).all()
    assert {r.id: (r.host, r.location) for r in old} == \
        {pid: ("srv1", loc) for pid, loc in new_location.items()}
    assert c.ledger.holder(L.HOSTING_LOCK) is None


# ----- refusals, and auto reclaim turned off ------------------------------------------------
def test_a_refusal_that_follows_a_hosting_change_recorded_since_the_lock_check_names_it(
        make_cluster):
    """A trigger that found the domain free, then planned against a state another
    change had meanwhile moved on (a reclaim that already re-designated srv1), is told
    who changed it (409 naming that run), not "srv1 is not stale"; a refusal with no
    change since stays a refusal, with its reason."""
    c = make_cluster(servers=1, bcs=1, clients=0, objects=50)
    with pytest.raises(Refused, match="^srv1 is the master"):
        trigger.plan(c.engine, RECLAIM, MoveRequest("srv1"))
    other: list[str] = []

    def racing_reclaim(eng, req):  # type: ignore[no-untyped-def]
        other.append(c.ledger.create_run("reclaim", {"server": "srv1"}, "other", "", []))
        return RECLAIM.plan(eng, req)

    with pytest.raises(L.LockHeld) as held:
        trigger.plan(c.engine, replace(RECLAIM, plan=racing_reclaim), MoveRequest("srv1"))
    (other,) = other
    assert held.value.holder == other
    assert other in str(held.value)


def test_refusals_change_nothing_and_without_auto_reclaim_srv1_waits_for_the_operator(
        make_cluster):
    """Refused reclaims and failbacks exit 2 with one line and change nothing (ledger,
    authority, srv1's files); with `auto_reclaim = false` the returning server waits,
    stopped, for `cosfail reclaim`, which then makes it a slave."""
    c = cluster(make_cluster, "refuse", {"auto_reclaim": False}, servers=1, bcs=1, clients=1)
    original, objects = c.digest("srv1"), c.hosted("srv1")["srv1"]

    # A fresh domain: nothing to reclaim, nothing to fail back, and not a server.
    before = fingerprint(c)
    assert_all_refused(c, {
        ("reclaim", "srv1"): "srv1 is the master at epoch 1: nothing to reclaim",
        ("reclaim", "cl1"): "cl1 is a client, not a server",
        ("reclaim", "bcs1"): "bcs1 is a bcs, not a server",
        ("reclaim", "nosuch"): "unknown node 'nosuch'",
        ("failback", "srv1", "--yes"): "srv1 was never failed over",
    })
    assert fingerprint(c) == before

    # srv1 failed over, its worker back, not reclaimed: its COSprint stays stopped,
    # status says reclaim needed, a failback to it is refused, nothing moves on its own.
    fail_over_srv1(c)
    bring_srv1_back(c, cosprint_first=False)
    st = json.loads(c.cli("status", "--json", check=True).stdout)
    assert st["reclaim_needed"] == ["srv1"], st
    srv1 = next(n for n in st["nodes"] if n["name"] == "srv1")
    assert (srv1["worker"], srv1["cosprint"], srv1["reclaim_needed"]) == ("up", "down", True)
    before = fingerprint(c)
    assert_all_refused(c, {
        ("failback", "srv1", "--yes"): "srv1 is not reclaimed yet: run `cosfail reclaim srv1`",
        ("reclaim", "bcs1"): "bcs1 is a bcs, not a server",
    })
    assert fingerprint(c) == before
    assert c.driver("srv1").status() is None
    assert {r["workflow"] for r in c.ledger.runs(limit=1000)} == \
        {"restart-check", "backup", "failover"}
    assert (str(c.authority()), c.hosted("bcs1")) == ("bcs1@2", {"bcs1": objects})

    # The operator reclaims it: a slave of bcs1 now, its old data set aside.
    done = c.cli("reclaim", "srv1", "--wait")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got = reclaim_end_state(c)
    assert got == undisturbed_end_state(original, objects), diff(
        got, undisturbed_end_state(original, objects))
    assert reclaim_needed(c.engine) == []

    # Now srv1 is not stale: a second reclaim is refused, and changes nothing.
    before = fingerprint(c)
    assert_all_refused(c, {("reclaim", "srv1"): "srv1 is not stale (its designation is at "
                                                "epoch 2, like the domain's)"})
    assert fingerprint(c) == before


def beat_while_a_backup_runs(c, times: int) -> None:  # type: ignore[no-untyped-def]
    """`times` scheduled backups, each refused by the real trigger because a backup holds
    the lock: rows in the ledger as a day of beat leaves them, in seconds."""
    holder = L.new_run_id()
    c.ledger.acquire(L.BACKUP_LOCK, holder, "test", 600)
    try:
        for _ in range(times):
            started = trigger.run(c.engine, BACKUP, BackupRequest(), "beat", "scheduled")
            assert started.state == L.SKIPPED
    finally:
        c.ledger.release(L.BACKUP_LOCK, holder)


# Every scan of recent runs the ledger ever served held at most 1000 of them.
MORE_RUNS_THAN_ANY_SCAN = 1100


def test_failback_reclaim_due_and_history_survive_a_day_of_backups_after_the_failover(
        make_cluster):
    """Who hosts a failed-over server, and that it waits for reclaim, are facts of the
    ledger: more backup runs after the failover than any window of recent runs holds
    change neither what status shows, nor whether reclaim and failback may run, nor what
    `cosfail history` shows."""
    c = cluster(make_cluster, "day", {"auto_reclaim": False}, servers=1, bcs=1, clients=1)
    objects = c.hosted("srv1")["srv1"]
    fail_over_srv1(c)
    bring_srv1_back(c, cosprint_first=False)
    beat_while_a_backup_runs(c, MORE_RUNS_THAN_ANY_SCAN)

    st = json.loads(c.cli("status", "--json", check=True).stdout)
    assert st["reclaim_needed"] == ["srv1"], st
    assert c.ledger.hosted_by("srv1") == "bcs1"
    done = c.cli("reclaim", "srv1", "--wait")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    beat_while_a_backup_runs(c, MORE_RUNS_THAN_ANY_SCAN)
    done = c.cli("failback", "srv1", "--yes", "--wait")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (str(c.authority()), c.hosted("srv1")) == ("srv1@3", {"srv1": objects})
    assert [(h["server"], h["moved_from"], h["hosted_by"], h["epoch"])
            for h in c.ledger.hosting_history()] == [("srv1", "srv1", "bcs1", 2),
                                                     ("srv1", "bcs1", "srv1", 3)]
    assert c.ledger.hosted_by("srv1") is None

    shown = json.loads(c.cli("history", "--server", "srv1", "--json", check=True).stdout)
    failover, failback = (c.newest_run(wf) for wf in ("failover", "failback"))
    assert [(m["epoch"], m["moved_from"], m["hosted_by"], m["workflow"], m["run_id"])
            for m in shown] == [(2, "srv1", "bcs1", "failover", failover["id"]),
                                (3, "bcs1", "srv1", "failback", failback["id"])]
    plan = failover["params"]["plan"]
    assert (shown[0]["snapshot"], shown[0]["data_loss"]) == (plan["snapshot"],
                                                             plan["snapshot_age"])
    assert shown[0]["data_loss"] > 0 and shown[1]["data_loss"] == 0.0
    human = run_cli("history", "-d", str(c.domain.path), env={"COLUMNS": "400"})
    assert human.returncode == 0, human.stderr
    assert f"srv1 → bcs1 │ {failover['id']}" in human.stdout, human.stdout
    assert f"changes of the last {plan['snapshot_age']:.0f} s ({plan['snapshot']})" \
        in human.stdout, human.stdout
    wrong = c.cli("history", "--server", "bcs1")
    assert (wrong.returncode, wrong.stderr.strip()) == (
        2, "cosfail: bcs1 is a bcs, not a server: only servers' objects move")


# ----- a reclaim whose node worker is SIGKILLed, then resumed --------------------------------
class Missed(Exception):
    """The step was over before the worker could be stopped in it (a scheduling hiccup
    of this test process): the run goes on undisturbed, and the kill point is tried again."""


def freeze_and_kill(c, run_id: str, step: str, when: str) -> str:  # type: ignore[no-untyped-def]
    """SIGKILL srv1's worker when reclaim step `step` is `running` (SIGSTOPped the moment
    the ledger shows it running), or `queued` (SIGSTOPped once the step before it, on
    another node, has begun: the step is then queued while srv1's worker cannot take it).
    Returns the step's state at the kill."""
    pid = c.worker_pid("srv1")
    idx = {s.name: s.idx for s in c.ledger.steps(run_id)}[step]
    query = select(L.steps.c.idx, L.steps.c.state).where(L.steps.c.run_id == run_id)
    frozen = False
    deadline = time.time() + 60
    with c.ledger.engine.connect() as conn:
        while True:
            states = dict(conn.execute(query).all())
            conn.rollback()  # the next read sees the latest commit
            if frozen and states[idx] != L.PLANNED:
                break
            if not frozen:
                if when == "running":
                    trigger = states[idx] == L.RUNNING
                else:
                    trigger = states[idx - 1] in (L.RUNNING, L.SUCCEEDED) or \
                        states[idx] != L.PLANNED
                if trigger:
                    os.kill(pid, signal.SIGSTOP)
                    frozen = True
                    continue  # read again: what the worker had done by then
                if states[idx] in (L.SUCCEEDED, L.FAILED):
                    raise Missed(states[idx])
            assert time.time() < deadline, f"{step}/{when}: never reached: {states}"
            time.sleep(0.001)
    if states[idx] not in (L.QUEUED, L.RUNNING):
        os.kill(pid, signal.SIGCONT)
        raise Missed(states[idx])
    os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        while pid_alive(pid):
            time.sleep(0.01)
    return states[idx]


def runs_after(c, since: float, timeout: float = 30.0) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Runs created after `since`, once srv1's start-up restart-check (held back while
    the reclaim held the domain lock) has been created and has ended."""
    deadline = time.time() + timeout
    while True:
        after = [r for r in c.ledger.runs(limit=20) if r["created_at"] > since]
        if any(r["workflow"] == "restart-check" for r in after) and \
                all(r["state"] not in (L.PLANNED, L.RUNNING) for r in after):
            return after
        if time.time() > deadline:
            return after
        time.sleep(0.05)


KILL_POINTS = [
    ("stop_cosprint", "running"),  # srv1's stale COSprint is being stopped
    ("set_aside_data", "running"),  # its obsolete data half set aside
    ("refresh_tables", "queued"),  # the master has published; srv1 never took the step
    ("start_cosprint", "running"),  # cosprintd being spawned
]
RETURNED = ("tables.db", "etc/master", "var/last_master")  # srv1's files as it came back


def save_returned(c, keep: Path) -> None:  # type: ignore[no-untyped-def]
    home = c.domain.home("srv1")
    for rel in RETURNED:
        (keep / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(home / rel, keep / rel)


def back_to_returned(c, keep: Path) -> None:  # type: ignore[no-untyped-def]
    """srv1 as it came back from its failover (obsolete tables, designation srv1@1, its
    stale COSprint up), the domain otherwise as it is: the next kill point's start."""
    stuck = c.ledger.holder(L.HOSTING_LOCK)
    if stuck:  # a kill point whose run never finished: do not let it block the next
        c.ledger.release(L.HOSTING_LOCK, stuck)
    c.driver("srv1").stop()
    home = c.domain.home("srv1")
    shutil.rmtree(home / "var" / "reclaimed", ignore_errors=True)
    for rel in RETURNED:
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(keep / rel, home / rel)
    c.driver("srv1").start()
    assert c.driver("srv1").status().role == "stale"


def interrupt_and_resume(c, step: str, when: str, expected: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """One kill point, reported as one dict (its own failures included)."""
    run_id = trigger.run(c.engine, RECLAIM, MoveRequest("srv1"), "test",
                         f"killed at {step} {when}").run_id
    result: dict[str, Any] = {"kill point": f"{step}/{when}", "run": run_id}
    try:
        result["killed while"] = freeze_and_kill(c, run_id, step, when)
    except Missed as missed:
        raise Missed(missed.args[0], run_id) from None
    c.restart_worker("srv1")  # its start-up check waits while the reclaim holds the lock
    interrupted = c.wait(run_id, timeout=60)
    result["after the kill"] = f"{interrupted['state']}: {(interrupted['error'] or '')[:140]}"
    done = c.cli("resume", run_id, "--wait")
    run = c.ledger.run(run_id)
    result["resume"] = f"exit {done.returncode}, run {run['state']}"
    if done.returncode != 0:
        result["resume output"] = (done.stdout[-1500:], done.stderr[-1500:])
    result["steps"] = " ".join(f"{s.name}:{s.state}#{s.attempt}" for s in c.ledger.steps(run_id))
    after = runs_after(c, run["created_at"])
    result["runs after it"] = [f"{r['workflow']}:{r['state']}" for r in after]
    result["end state"] = diff(reclaim_end_state(c), expected) or "same"
    result["ok"] = (result["killed while"] in (L.QUEUED, L.RUNNING)
                    and interrupted["state"] == L.FAILED
                    and (done.returncode, run["state"]) == (0, L.SUCCEEDED)
                    and result["end state"] == "same"
                    and all(r["state"] == L.SUCCEEDED for r in after))
    return result


def test_reclaim_interrupted_by_sigkill_of_the_node_worker_resumes_to_the_same_end_state(
        make_cluster, tmp_path: Path):
    """For each step srv1's worker runs in a reclaim: SIGKILL that worker in it, restart
    the worker, `cosfail resume RUN --wait` exits 0, and srv1 ends as an undisturbed
    reclaim leaves it. One failed-over domain serves every kill point: srv1's returned
    files are put back between them."""
    # step_expires: a step queued for a worker that died with it is reaped this soon.
    c = cluster(make_cluster, "kill", {"auto_reclaim": False, "step_expires": 8.0},
                servers=1, bcs=1, clients=0)
    expected = undisturbed_end_state(c.digest("srv1"), c.hosted("srv1")["srv1"])
    fail_over_srv1(c)
    bring_srv1_back(c, cosprint_first=True)
    keep = tmp_path / "srv1-returned"
    save_returned(c, keep)
    results: list[dict[str, Any]] = []
    fresh = True
    for step, when in KILL_POINTS:
        for attempt in range(1, 4):
            if not fresh:
                back_to_returned(c, keep)
            fresh = False
            try:
                results.append(interrupt_and_resume(c, step, when, expected))
            except Missed as missed:
                c.wait(missed.args[1], timeout=60)
                if attempt < 3:
                    continue
                results.append({"kill point": f"{step}/{when}", "ok": False,
                                "error": f"missed 3 times: the step was {missed.args[0]}"})
            except Exception as exc:  # reported with the other kill points
                results.append({"kill point": f"{step}/{when}", "ok": False,
                                "error": f"{type(exc).__name__}: {exc}"})
            results[-1]["tries"] = attempt
            break
    table = "\n".join(f"{'ok ' if r['ok'] else 'BAD'} {r['kill point']:<24} "
                      f"killed while {r.get('killed while', '-')} (try {r['tries']}); "
                      f"{r.get('resume', r.get('error'))}; end state {r.get('end state')}"
                      for r in results)
    print(f"kill points:\n{table}")  # shown with -rP
    details = json.dumps([r for r in results if not r["ok"]], indent=1, default=str)
    assert all(r["ok"] for r in results), f"kill points:\n{table}\n{details}"
