"""The print service as IPP clients see it, through a failover, a reclaim and a failback
(issue 22): CUPS's own ipptool test files against the master's printers at each point,
clients that poll their jobs to completion, and a real IPP printer (ippeveprinter) as
every printer's device, so that a job counts as printed where the paper would come out.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
import time
import tomllib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import cups
import pytest
from conftest import ARTIFACTS, cups_tool, wait_until
from cosfail.workflows import trigger
from cosfail.workflows.failover import FAILOVER
from cosfail.workflows.plan import FailoverRequest, MoveRequest
from cosfail.workflows.switchover import FAILBACK

pytestmark = pytest.mark.timeout(300)

IPPTOOL_FILES = Path("/usr/share/cups/ipptool")
# Each file and the printer it runs against. ipp-2.2.test includes ipp-2.1, which
# includes ipp-2.0, which includes ipp-1.1: one run reports each of the four under its
# own name. A CUPS printer sends one job at a time to its device, and a file that waits
# for its job to complete gives up after 30 polls: each file that prints has a printer
# of its own (prn-srv1-0002 is the polling client's).
SUITES = {"ipp-2.2.test": "prn-srv1-0001", "print-job-and-wait.test": "prn-srv1-0003",
          "print-job.test": "prn-srv1-0004", "print-job-hold.test": "prn-srv1-0005",
          "create-job.test": "prn-srv1-0006", "create-job-format.test": "prn-srv1-0007",
          **dict.fromkeys(("get-printers.test", "get-jobs.test", "get-completed-jobs.test",
                           "validate-job.test", "get-printer-attributes.test",
                           "get-printer-description-attributes.test",
                           "get-job-template-attributes.test", "print-uri.test"),
                          "prn-srv1-0008")}
EXCEPTIONS = Path(__file__).parent / "data" / "ipptool-exceptions.toml"
HEADER = re.compile(r'^"(?P<file>[^"]+)":$')
RESULT = re.compile(r"^\s+(?P<test>\S.*?)\s+\[(?P<verdict>PASS|FAIL|SKIP)\]$")
COMPLETED = 9  # IPP job-state: completed; 7 canceled, 8 aborted


# ----- ipptool -------------------------------------------------------------------------
def ipptool(uri: str, suite: str, document: Path) -> list[tuple[str, str, str]]:
    """(file, test, verdict) of each test `suite` ran against `uri`, as ipptool reports."""
    try:
        done = subprocess.run(["ipptool", "-t", "-T", "30", "-f", str(document), uri, suite],  # noqa: S603, S607
                              cwd=IPPTOOL_FILES, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"ipptool {suite} against {uri} did not end in 120 s: a job it "
                             "polls never completes, or vanished (no job history?)") from None
    results, file = [], suite
    for line in done.stdout.splitlines():
        if m := HEADER.match(line):
            file = Path(m["file"]).name
        elif m := RESULT.match(line):
            results.append((file, m["test"], m["verdict"]))
    assert results, f"ipptool {suite} against {uri} reported nothing: {done.stdout[-800:]}" \
                    f"{done.stderr[-800:]}"
    return results


def expected_exceptions() -> set[tuple[str, str, str]]:
    entries = tomllib.loads(EXCEPTIONS.read_text())["exception"]
    assert all(e["why"].strip() for e in entries), "every exception says why"
    return {(e["file"], e["test"], e["verdict"]) for e in entries}


def conformance(server: str, document: Path, where: str) -> dict[str, dict[str, int]]:
    """Run every file against its printer on `server` (host:port), all at once, and
    check that exactly the listed exceptions do not pass; counts per file."""
    with ThreadPoolExecutor(len(SUITES)) as pool:
        results = [r for rs in pool.map(
            lambda s: ipptool(f"ipp://{server}/printers/{SUITES[s]}", s, document), SUITES)
            for r in rs]
    not_passed = {r for r in results if r[2] != "PASS"}
    expected = expected_exceptions()
    unlisted, stale = sorted(not_passed - expected), sorted(expected - not_passed)
    assert not unlisted, f"{where}: not passed and not in {EXCEPTIONS.name}:\n" + \
        "\n".join(map(repr, unlisted))
    assert not stale, f"{where}: in {EXCEPTIONS.name} but passed (remove them):\n" + \
        "\n".join(map(repr, stale))
    counts: dict[str, dict[str, int]] = {}
    for file, _test, verdict in results:
        counts.setdefault(file, Counter())[verdict] += 1  # type: ignore[arg-type]
    return {f: dict(c) for f, c in sorted(counts.items())}


# ----- a client that polls each job to completion ---------------------------------------
def server_of(client_conf: Path) -> tuple[str, int]:
    """The cupsd a client's client.conf names: what a new CUPS client connects to."""
    m = re.search(r"^ServerName\s+(\S+):(\d+)\s*$", client_conf.read_text(), re.M)
    assert m, f"{client_conf}: no ServerName"
    return m.group(1), int(m.group(2))


class PollingClient(threading.Thread):
    """A user at a client node printing with pycups (libcups, as desktop print dialogs
    do): each job goes to the server the node's client.conf names at that moment, and
    the client polls it (Get-Job-Attributes) until it completes, as `lp -w`-style
    clients do. A refused job is retried; a job whose server vanished is given up on
    (its server's spool hands it over)."""

    def __init__(self, client_conf: Path, queue: str, document: Path) -> None:
        super().__init__(daemon=True)
        self.client_conf, self.queue, self.document = client_conf, queue, document
        self.accepted: list[tuple[float, str, str]] = []  # (time, title, server)
        self.completed: list[str] = []  # titles polled to job-state completed
        self.lost_sight: list[str] = []  # titles whose server went away mid-poll
        self.refused = 0
        self.gate = threading.Lock()  # held from a job's submission to its end
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            title = f"poll-{i:04d}"
            with self.gate:
                job = self.submit(title)
                if job is not None:
                    self.follow(*job)
                    i += 1
            if job is None:
                self.refused += 1
                time.sleep(0.1)

    def submit(self, title: str) -> tuple[cups.Connection, int, str] | None:
        host, port = server_of(self.client_conf)
        # libcups finds the destination through its default server, which is per
        # thread: Connection(host=...) alone would look it up on the system's cupsd.
        cups.setServer(f"{host}:{port}")
        try:
            conn = cups.Connection()
            job_id = conn.printFile(self.queue, str(self.document), title, {})
        except (RuntimeError, cups.IPPError):  # no server there, or it refuses jobs
            return None
        self.accepted.append((time.time(), title, f"{host}:{port}"))
        return conn, job_id, title

    def follow(self, conn: cups.Connection, job_id: int, title: str) -> None:
        while True:  # a halt waits for the job in hand
            try:
                state = conn.getJobAttributes(job_id, ["job-state"])["job-state"]
            except (RuntimeError, cups.IPPError):
                self.lost_sight.append(title)
                return
            if state >= 7:
                assert state == COMPLETED, f"{title}: job-state {state}"
                self.completed.append(title)
                return
            time.sleep(0.05)

    @contextmanager
    def between_jobs(self):  # type: ignore[no-untyped-def]
        with self.gate:
            yield

    def wait_completed(self, n: int, timeout: float = 60.0) -> None:
        start = len(self.completed)
        wait_until(lambda: len(self.completed) >= start + n or not self.is_alive(), timeout,
                   f"{n} more jobs polled to completion")
        assert self.is_alive(), "the polling client died"


def open_to_cups_user(path: Path) -> None:
    """cupsd runs a backend such as ipp as its User (lp), which must reach the node's
    ServerBin: pytest makes its temporary directories 0700 (the sink backend of the
    other CUPS tests runs as root, and needs none of this)."""
    for d in (path, *path.parents):
        if d == Path(tempfile.gettempdir()):
            return
        d.chmod(d.stat().st_mode | 0o055)


# ----- the test -------------------------------------------------------------------------
@pytest.mark.parametrize("new_ledger", ["sqlite"], indirect=True)
def test_ipp_clients_see_one_print_service_through_failover_reclaim_and_failback(
        make_cluster, ipp_device, tmp_path: Path):
    c = make_cluster(driver="cups", clients=1, device=ipp_device.uri)
    open_to_cups_user(c.domain.path.parent)
    c.settle()
    c.backup()
    document = tmp_path / "page.txt"
    document.write_text("one page for the conformance suite\n")
    server = {n: f"127.0.0.1:{c.domain.node(n).port}" for n in ("srv1", "bcs1")}
    report: dict[str, dict[str, dict[str, int]]] = {}

    report["srv1, before failover"] = conformance(server["srv1"], document, "srv1 before")

    client_conf = c.driver("cl1").client_conf
    client = PollingClient(client_conf, "q-srv1-0002", document)
    client.start()
    client.wait_completed(3)
    # Jobs a user sent to a stopped printer wait in srv1's spool when it dies: the
    # failover hands them to bcs1, which prints each once.
    cups_tool(c, "srv1", "cupsdisable", "prn-srv1-0009")
    for n in range(3):
        cups_tool(c, "cl1", "lp", "-d", "q-srv1-0009", "-t", f"spooled-{n}", str(document))
    with client.between_jobs():
        c.local.kill("srv1")
    run = c.wait(trigger.run(c.engine, FAILOVER, FailoverRequest(
        server="srv1", to="bcs1", with_spool=True), "test").run_id)
    assert run["state"] == "succeeded", run["error"]
    assert c.driver("cl1").points_at() == "bcs1"  # re-pointed
    client.wait_completed(3)
    report["bcs1, after failover"] = conformance(server["bcs1"], document, "bcs1 after failover")

    # The job history a client polls: a job completed on bcs1 is still known there, and
    # lpstat shows it; a held job is listed, cancelled, and never reaches the device.
    completed = cups_tool(c, "cl1", "lpstat", "-W", "completed", "-o", "q-srv1-0002")
    assert completed.count("q-srv1-0002-") >= 3, completed
    held = cups_tool(c, "cl1", "lp", "-d", "q-srv1-0003", "-H", "hold", "-t", "held-job",
                     str(document))
    job = re.search(r"request id is (\S+) ", held).group(1)  # type: ignore[union-attr]
    assert job in cups_tool(c, "cl1", "lpstat", "-o")
    cups_tool(c, "cl1", "cancel", job)
    assert job not in cups_tool(c, "cl1", "lpstat", "-o")

    # srv1 returns and is reclaimed as a slave: bcs1 serves on, unchanged.
    c.driver("srv1").start()
    c.restart_worker("srv1")
    reclaim = c.wait(c.newest_run("reclaim")["id"])
    assert reclaim["state"] == "succeeded", reclaim["error"]
    client.wait_completed(2)
    report["bcs1, after reclaim"] = conformance(server["bcs1"], document, "bcs1 after reclaim")

    with client.between_jobs():
        run = c.wait(trigger.run(c.engine, FAILBACK, MoveRequest("srv1"), "test").run_id)
        assert run["state"] == "succeeded", run["error"]
    assert c.driver("cl1").points_at() == "srv1"
    client.wait_completed(3)
    client.halt.set()
    client.join(timeout=30)
    assert not client.is_alive(), "the polling client's last job never completed"
    report["srv1, after failback"] = conformance(server["srv1"], document, "srv1 after failback")

    # Every job a server accepted from the client printed exactly once on the device,
    # and each was followed to completion by the client that sent it.
    titles = [t for _, t, _ in client.accepted]
    wait_until(lambda: set(titles) <= set(ipp_device.printed()), 30, "the device printed all")
    printed = ipp_device.printed()
    assert [t for t in titles if printed[t] != 1] == [], printed
    assert client.completed == titles and client.lost_sight == []
    assert client.refused > 0  # the outage was real: the client retried
    assert {s for _, _, s in client.accepted} == set(server.values())
    assert printed["held-job"] == 0
    assert [printed[f"spooled-{n}"] for n in range(3)] == [1, 1, 1], printed

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lines = [f"{where}: " + ", ".join(f"{f} {n.get('PASS', 0)} pass / {n.get('FAIL', 0)} fail"
                                      f" / {n.get('SKIP', 0)} skip" for f, n in files.items())
             for where, files in report.items()]
    (ARTIFACTS / "ipptool.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    # The same results at every point: the clients see one print service.
    assert len({repr(r) for r in report.values()}) == 1, report
