"""The CUPS driver on real cupsd processes, one per server and BCS, on loopback ports.

Every check reads CUPS through its own client programs (`lpstat`, `lpoptions`, `lp`),
which cosfail did not write: what they show is what a site's users would see.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import cups_tool, wait_until
from cosfail.cosprint import tables
from cosfail.cosprint.drivers.cups import UNFINISHED, CupsError, read_job
from cosfail.workflows import trigger
from cosfail.workflows.backup import BACKUP, BackupRequest
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest, MoveRequest
from cosfail.workflows.switchover import FAILBACK
from sqlalchemy import delete, insert, select

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(autouse=True)
def _cups_installed() -> None:
    assert os.path.exists("/usr/sbin/cupsd"), "cups-daemon is not installed (.ci/run does it)"
    assert os.path.exists("/usr/sbin/lpadmin") and os.path.exists("/usr/bin/lpoptions"), \
        "cups-client is not installed (.ci/run installs it)"
    assert os.geteuid() == 0, "cupsd runs as root with a test-made ServerRoot"


# ----- reading CUPS as its users do ------------------------------------------------------
VOLATILE = re.compile(r" ?(printer-state-change-time|printer-uri-supported)=\S+")


def config(c, node: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """`lpstat -p -a -c -v -d` (enabled, accepting, class members, device URIs, default)
    and `lpoptions -p D` of every destination, without the times and the server's own URI
    (which differ between two servers serving the same objects)."""
    dests = cups_tool(c, node, "lpstat", "-e", check=False).split()
    lpstat = cups_tool(c, node, "lpstat", "-p", "-a", "-c", "-v", "-d", check=False)
    lpstat = re.sub(r" since .*", "", lpstat)
    return {"lpstat": lpstat.splitlines(),
            "lpoptions": {d: VOLATILE.sub("", cups_tool(c, node, "lpoptions", "-p", d)).split()
                          for d in dests}}


def printed(c, *nodes: str) -> collections.Counter:  # type: ignore[no-untyped-def, type-arg]
    """Job titles recorded by the sink backend of `nodes`, counted."""
    return collections.Counter(j["job_id"] for n in nodes for j in c.printed(n))


class Client(threading.Thread):
    """A user at a client node printing with `lp` (its client.conf names the server),
    one job after another, retrying each refused job as a client queue would."""

    def __init__(self, c, node: str, queues: list[str]) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.env = c.driver(node).client_env()
        self.queues = queues
        self.accepted: list[tuple[float, str, str]] = []  # (time, title, request id)
        self.refused = 0
        self.gate = threading.Lock()  # held while one lp runs
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            title = f"tok-{i:04d}"
            queue = self.queues[i % len(self.queues)]
            while not self.halt.is_set():
                with self.gate:
                    done = subprocess.run(  # noqa: S603
                        ["/usr/bin/lp", "-d", queue, "-t", title], input=f"page {title}\n",
                        capture_output=True, text=True, timeout=20, env=self.env)
                m = re.search(r"request id is (\S+) ", done.stdout)
                if done.returncode == 0 and m:
                    self.accepted.append((time.time(), title, m.group(1)))
                    break
                self.refused += 1
                time.sleep(0.1)
            i += 1
            time.sleep(0.02)

    @contextmanager
    def between_jobs(self):  # type: ignore[no-untyped-def]
        with self.gate:
            yield

    def wait_accepted(self, n: int, after: float = 0.0, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while sum(t > after for t, _, _ in self.accepted) < n:
            assert self.is_alive(), "the client thread died"
            assert time.time() < deadline, f"only {len(self.accepted)} job(s) accepted"
            time.sleep(0.05)




def wait_run(c, workflow: str, timeout: float = 60.0) -> dict:  # type: ignore[no-untyped-def, type-arg]
    run = wait_until(lambda: c.ledger.runs(workflow=workflow), timeout, f"a {workflow} run")[0]
    return c.wait(run["id"])


# ----- the tests ----------------------------------------------------------------------
def test_failover_carries_every_cups_object_loses_no_job_and_failback_restores_cups_exactly(
        make_cluster):
    c = make_cluster(driver="cups", clients=1)
    c.settle()
    # An administrator's changes made with lpadmin on the server's cupsd, after the
    # tables were written: the backup captures them through IPP.
    cups_tool(c, "srv1", "lpadmin", "-p", "prn-srv1-0001", "-o",
              "sides-default=two-sided-long-edge", "-L", "Building A, floor 2, room 2.01 (moved)")
    cups_tool(c, "srv1", "lpadmin", "-p", "prn-admin", "-E", "-v",
              "cosfail-sink:socket://10.9.9.9:9100", "-o", "duplex-default=yes")
    cups_tool(c, "srv1", "lpadmin", "-p", "prn-admin", "-c", "q-admin")
    cups_tool(c, "srv1", "lpadmin", "-p", "q-admin", "-E")
    c.backup()
    before = config(c, "srv1")
    for name in ("prn-admin", "q-admin"):
        assert name in before["lpoptions"], before
    assert "sides=two-sided-long-edge" in before["lpoptions"]["prn-srv1-0001"]
    assert "system default destination: q-srv1-0001" in before["lpstat"]
    assert cups_tool(c, "bcs1", "lpstat", "-e", check=False).split() == []

    # A user prints from cl1 all along; prn-srv1-0002 is stopped on srv1, so the jobs of
    # its class wait in srv1's spool when srv1 dies.
    cups_tool(c, "srv1", "cupsdisable", "prn-srv1-0002")
    client = Client(c, "cl1", ["q-srv1-0002", "q-srv1-0003"])
    client.start()
    client.wait_accepted(8)
    with client.between_jobs():
        # Between two jobs, once srv1 prints nothing: a job in the middle of printing
        # when a server dies may print twice (once there, again where it is resubmitted).
        wait_until(lambda: "q-srv1-0003" not in cups_tool(c, "srv1", "lpstat", "-o"), 10, "idle")
        time.sleep(0.2)
        c.local.kill("srv1")
    killed_at = time.time()
    spool = c.domain.spool_dir("srv1")
    pending = [j for j in map(read_job, sorted(spool.glob("c*"))) if j.state in UNFINISHED]
    assert len(pending) >= 3 and {j.dest for j in pending} == {"q-srv1-0002"}, \
        [(j.title, j.dest, j.state) for j in pending]

    started = trigger.run(c.engine, FAILOVER, FailoverRequest(server="srv1", to="bcs1",
                                                       with_spool=True), "test")
    run = c.wait(started.run_id)
    assert run["state"] == "succeeded", run["error"]
    done_at = time.time()
    client.wait_accepted(6, after=done_at)
    client.halt.set()
    client.join(timeout=30)

    # Every accepted job completed, exactly once: srv1 printed some before it died, its
    # spool's pending jobs were resubmitted on bcs1, the rest printed on bcs1.
    titles = [t for _, t, _ in client.accepted]
    wait_until(lambda: set(titles) <= set(printed(c, "srv1", "bcs1")), 30, "jobs printed")
    counts = printed(c, "srv1", "bcs1")
    lost = [t for t in titles if counts[t] == 0]
    assert lost == [] and all(counts[t] == 1 for t in titles), counts
    on_bcs = printed(c, "bcs1")
    assert all(on_bcs[j.title] == 1 for j in pending)
    assert all(on_bcs[t] == 1 for ts, t, _ in client.accepted if ts > killed_at)
    assert client.refused > 0  # the outage was real; the client retried
    # Every printer, class, default and option of srv1 is on bcs1's cupsd.
    wait_until(lambda: "now printing" not in cups_tool(c, "bcs1", "lpstat", "-p"), 30, "idle")
    assert config(c, "bcs1") == before
    resubmitted = (c.domain.home("bcs1") / "var" / "spool-resubmitted" / "srv1"
                   / "resubmitted.jsonl").read_text().splitlines()
    assert sorted(json.loads(r)["title"] for r in resubmitted) == sorted(j.title for j in pending)
    st = c.driver("cl1").status()
    assert (st.master, st.epoch) == ("bcs1", 2)

    # srv1 returns: its cupsd first (stale epoch: every destination stopped, rejecting),
    # then its worker, whose start-up reclaims it as a slave that serves nothing.
    c.driver("srv1").start()
    assert c.driver("srv1").status().role == "stale"
    refused = cups_tool(c, "srv1", "lp", "-d", "q-srv1-0003", "/etc/hostname", check=False)
    assert "not accepting jobs" in refused, refused
    c.restart_worker("srv1")
    reclaim = wait_run(c, "reclaim")
    assert reclaim["state"] == "succeeded", reclaim["error"]
    assert cups_tool(c, "srv1", "lpstat", "-e", check=False).split() == []
    quarantine = c.domain.home("srv1") / "var" / "reclaimed" / "1" / "spool"
    assert {p.name for p in quarantine.iterdir()} >= {j.control.name for j in pending}
    # bcs1 printed them from the hand-over: reclaim sends none of them again, and says
    # that it kept every one.
    resend = next(s for s in c.ledger.steps(reclaim["id"]) if s.name == "resend_set_aside_jobs")
    assert resend.facts == {"sent": 0, "duplicates": 0, "kept": len(pending)}, resend.outcome
    assert f"{len(pending)} kept in {quarantine}" in resend.outcome

    # Failback: srv1's cupsd serves exactly what it served before it died.
    run_id = trigger.run(c.engine, FAILBACK, MoveRequest("srv1"), "test", "home again").run_id
    run = c.wait(run_id)
    assert run["state"] == "succeeded", run["error"]
    assert config(c, "srv1") == before
    assert cups_tool(c, "bcs1", "lpstat", "-e", check=False).split() == []
    out = cups_tool(c, "cl1", "lp", "-d", "q-admin", "-t", "after-failback", "/etc/hostname")
    assert "request id is q-admin-" in out
    assert c.wait_printed("srv1", "after-failback")
    # The returning srv1 never printed the jobs it had when it died: bcs1 did, once.
    counts = printed(c, "srv1", "bcs1")
    assert all(counts[t] == 1 for t in titles), counts


def test_unsupported_or_malformed_cups_objects_are_named_and_nothing_changes(make_cluster):
    c = make_cluster(driver="cups", clients=1, objects=40)
    c.settle()
    c.backup()
    snapshots = sorted(p.name for p in c.domain.backup_area("bcs1").glob("*.snap"))
    digest = c.digest("srv1")
    before = config(c, "srv1")

    # In CUPS: a class of two printers (a queue names one), a user allow-list.
    cups_tool(c, "srv1", "lpadmin", "-p", "prn-srv1-0001", "-c", "q-two")
    cups_tool(c, "srv1", "lpadmin", "-p", "prn-srv1-0002", "-c", "q-two")
    cups_tool(c, "srv1", "lpadmin", "-p", "prn-srv1-0003", "-u", "allow:alice")
    run_id = trigger.run(c.engine, BACKUP, BackupRequest(), "test",
                         "with unsupported objects").run_id
    run = c.wait(run_id)
    assert run["state"] == "failed"
    assert "class 'q-two'" in run["error"] and "2 members" in run["error"], run["error"]
    assert "printer 'prn-srv1-0003'" in run["error"], run["error"]
    assert "requesting-user-name-allowed" in run["error"], run["error"]
    assert c.digest("srv1") == digest
    assert sorted(p.name for p in c.domain.backup_area("bcs1").glob("*.snap")) == snapshots
    assert "members of class q-two:" in cups_tool(c, "srv1", "lpstat", "-c", "q-two")
    cups_tool(c, "srv1", "lpadmin", "-x", "q-two")
    cups_tool(c, "srv1", "lpadmin", "-p", "prn-srv1-0003", "-u", "allow:all")
    assert config(c, "srv1") == before

    # In the tables: rows CUPS cannot take. Starting COSprint refuses, naming each one,
    # before a single lpadmin: srv1's cupsd serves exactly what it served.
    url = c.domain.tables_url("srv1")
    with tables.connect(url) as conn:
        p = tables.printers
        pid = conn.execute(select(p.c.id).where(p.c.name == "prn-srv1-0001")).scalar_one()
        conn.execute(insert(p).values(id=900, name="prn bad", host="srv1",
                                      device="socket://10.0.0.9:9100", location=""))
        conn.execute(insert(p).values(id=901, name="prn-nouri", host="srv1",
                                      device="no uri at all", location=""))
        conn.execute(insert(tables.queues).values(id=900, name="q/slash", host="srv1",
                                                  printer_id=pid))
        conn.execute(insert(tables.resource_capabilities).values(
            id=900, host="srv1", printer_id=pid, capability="tray names", value="a b"))
    with pytest.raises(CupsError) as err:
        c.driver("srv1").start()
    text = str(err.value)
    for name in ("'prn bad'", "'prn-nouri'", "'q/slash'", "'tray names'", "nothing changed"):
        assert name in text, text
    assert config(c, "srv1") == before
    with tables.connect(url) as conn:
        conn.execute(delete(tables.resource_capabilities)
                     .where(tables.resource_capabilities.c.id == 900))
        conn.execute(delete(tables.queues).where(tables.queues.c.id == 900))
        conn.execute(delete(tables.printers).where(tables.printers.c.id.in_([900, 901])))
    assert c.digest("srv1") == digest
    c.driver("srv1").start()  # and with the rows gone, it serves again
    assert config(c, "srv1") == before


def test_init_demo_driver_cups_writes_a_cups_domain(tmp_path: Path) -> None:
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "cosfail.launcher.cli", "init-demo", str(tmp_path / "d"),
         "--driver", "cups"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "d" / "domain.toml").read_text()
    assert text.count('driver = "cups"') == 4 and "60 objects" in text
    assert text.count("[node.cups]") == 4 and "sink = true" in text


def test_merge_takes_each_object_from_the_side_that_changed_it() -> None:
    from cosfail.cosprint.drivers.cups import ClassConf, CupsConf, PrinterConf, merge

    base = CupsConf({"a": PrinterConf("x:1", "A"), "b": PrinterConf("x:2", "B"),
                     "c": PrinterConf("x:3", "C")}, {"q": ClassConf(("a",))}, "q")
    tables_ = CupsConf({"a": PrinterConf("x:1", "A2"), "b": PrinterConf("x:2", "B"),
                        "c": PrinterConf("x:3", "C3")}, {"q": ClassConf(("a",))}, "q")
    live = CupsConf({"a": PrinterConf("x:1", "A"), "b": PrinterConf("x:2", "B", {"o": "1"}),
                     "c": PrinterConf("x:3", "C4"), "n": PrinterConf("x:9", "")},
                    {"q": ClassConf(("a",), {"copies": "1"})}, "q")  # copies=1: cupsd's own
    m = merge(live, base, tables_, capture=True)
    assert m.final.printers["a"].location == "A2"  # changed in the tables only: applied
    assert m.final.printers["b"].options == {"o": "1"}  # changed in CUPS only: captured
    assert set(m.captured.printers) == {"b", "n"} and not m.captured.classes
    assert m.conflicts == ["printer 'c' was changed both in CUPS (outside cosfail) and in "
                           "the tables since cosfail last applied it"]
    m = merge(live, base, tables_, capture=False)  # a stale node captures nothing
    assert not m.captures and not m.conflicts and set(m.discarded) == {
        "printer b", "printer c", "printer n"}
    assert m.final.printers == tables_.printers


def test_the_domain_file_refuses_cups_settings_it_cannot_honour(tmp_path: Path) -> None:
    import tomllib

    from cosfail.cosprint.domain import parse_domain
    from cosfail.cosprint.errors import DomainFileError
    from cosfail.launcher.demo_domain import init_demo

    path = init_demo(tmp_path / "d", clients=0, objects=12, driver="cups")
    text = path.read_text()
    with pytest.raises(DomainFileError, match="a cupsd's spool cannot be shared"):
        parse_domain(tomllib.loads(text.replace(
            'driver = "cups"', 'driver = "cups"\nshared_spool = "/srv/spool"', 1)), path)
    with pytest.raises(DomainFileError, match=r"\[node.cups\] needs driver"):
        parse_domain(tomllib.loads(text.replace('driver = "cups"', 'driver = "reference"', 1)),
                     path)
    with pytest.raises(DomainFileError, match="max_jobs"):
        parse_domain(tomllib.loads(text.replace("sink = true", "sink = true\nmax_jobs = 0", 1)),
                     path)
