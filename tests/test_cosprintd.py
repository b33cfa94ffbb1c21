"""cosprintd and the reference driver, on real processes, real files and real SQLite.

Each test builds a tiny domain in tmp_path (srv1 master, bcs1, cl1), starts the nodes'
cosprintd through the reference driver, and checks what the processes do and write.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cosfail.cosprint import authority, designation, plainsql, tables
from cosfail.cosprint.daemon.identity import is_cosprintd, names_cosprintd
from cosfail.cosprint.daemon.spool import spool_job
from cosfail.cosprint.designation import Designation
from cosfail.cosprint.domain import Domain, load_domain
from cosfail.cosprint.drivers import driver_for
from cosfail.cosprint.drivers.reference import ReferenceDriver
from cosfail.cosprint.errors import DriverError, StaleEpochError
from cosfail.cosprint.role import MASTER, SERVER, SLAVE, STALE, UNVERIFIED, decide_role
from sqlalchemy import create_engine, insert, select

DOMAIN_NAME = "testdom"
QUEUES = {"q-laser": "laser1", "q-label": "label1"}  # queue -> printer, all on srv1


# ----- a tiny domain, by hand ----------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_domain_file(base: Path) -> Path:
    ports = [free_port() for _ in range(3)]
    text = f"""
[control]
name = "{DOMAIN_NAME}"
ledger = "sqlite:///ledger.db"

[[node]]
name = "srv1"
role = "server"
home = "srv1"
port = {ports[0]}
master = true

[[node]]
name = "bcs1"
role = "bcs"
home = "bcs1"
port = {ports[1]}

[[node]]
name = "cl1"
role = "client"
home = "cl1"
port = {ports[2]}

[[coverage]]
bcs = "bcs1"
servers = ["srv1"]
"""
    path = base / "domain.toml"
    path.write_text(text)
    return path


def fill_tables(url: str, host: str) -> None:
    """Two printers and their queues, formats, defaults, a lock and capabilities."""
    with tables.connect(url) as conn:
        for i, (queue, printer) in enumerate(QUEUES.items(), start=1):
            conn.execute(
                insert(tables.printers).values(id=i, name=printer, host=host, device="dev")
            )
            conn.execute(insert(tables.queues).values(id=i, name=queue, host=host, printer_id=i))
            conn.execute(insert(tables.formats).values(id=i, name=f"f{i}", host=host, paper="A4"))
            conn.execute(
                insert(tables.defaults).values(
                    id=i, name=f"d{i}", host=host, queue_id=i, format_id=i
                )
            )
            conn.execute(
                insert(tables.resource_capabilities).values(
                    id=i, host=host, printer_id=i, capability="duplex", value="yes"
                )
            )
        conn.execute(
            insert(tables.default_locks).values(id=1, host=host, default_id=1, locked_by="ops")
        )
        tables.write_pointer(conn, "srv1", 1)


def build_domain(base: Path) -> Domain:
    domain = load_domain(write_domain_file(base))
    for node in domain.names():
        domain.home(node).mkdir(parents=True)
    for node in ("srv1", "cl1"):
        fill_tables(domain.tables_url(node), host="srv1")
    for node in domain.names():
        designation.write(domain.home(node) / designation.DESIGNATION, Designation("srv1", 1))
    authority.initialise(create_engine(domain.ledger_url), DOMAIN_NAME, "srv1")
    return domain


def advance_authority(domain: Domain, new: Designation) -> None:
    engine = create_engine(domain.ledger_url)
    current = authority.read(engine, DOMAIN_NAME)
    assert current is not None
    with engine.begin() as conn:
        authority.advance(conn, DOMAIN_NAME, current, new)
    engine.dispose()


def sink_lines(domain: Domain, node: str, printer: str) -> list[dict]:
    sink = domain.home(node) / "var" / "sink" / f"{printer}.log"
    if not sink.exists():
        return []
    return [json.loads(line) for line in sink.read_text().splitlines()]


def cosprintd_argv(domain_file: Path, node: str) -> list[str]:
    """The daemon's command line (an argument list of test-made paths; no shell)."""
    return [sys.executable, "-m", "cosfail.cosprint.daemon", "--domain", str(domain_file),
            "--node", node]


def modules_imported(log: Path) -> list[str]:
    """Module names from `python -X importtime` lines (PYTHONPROFILEIMPORTTIME) in `log`."""
    return [
        line.split("|")[-1].strip()
        for line in log.read_text().splitlines()
        if line.startswith("import time:")
    ]


def wait_for(check: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def domain(tmp_path: Path) -> Domain:
    return build_domain(tmp_path)


@pytest.fixture
def drivers(domain: Domain) -> Iterator[dict[str, ReferenceDriver]]:
    """A driver per node; every cosprintd still running at the end is killed."""
    by_node = {name: ReferenceDriver(domain, name) for name in domain.names()}
    yield by_node
    for d in by_node.values():
        d.unprepare()
        d.kill()


# ----- the role decision (pure) --------------------------------------------------------
D = Designation


@pytest.mark.parametrize(
    ("node", "desig", "auth", "hosts", "role"),
    [
        ("srv1", D("srv1", 3), D("srv1", 3), True, MASTER),
        ("srv2", D("srv1", 3), D("srv1", 3), True, SERVER),
        ("cl1", D("srv1", 3), D("srv1", 3), False, SLAVE),
        ("srv1", D("srv1", 2), D("bcs1", 3), True, STALE),  # the returning old master
        ("cl1", D("srv1", 2), D("bcs1", 3), False, STALE),
        ("srv1", D("srv1", 4), D("srv1", 3), True, STALE),  # ahead of the authority
        ("srv1", D("srv1", 3), D("bcs1", 3), True, STALE),  # same epoch, other master
        ("srv1", None, D("srv1", 3), True, STALE),
        ("srv1", D("srv1", 3), None, True, UNVERIFIED),  # ledger down: never master
        ("srv2", D("srv1", 3), None, True, UNVERIFIED),
        ("cl1", D("srv1", 3), None, False, SLAVE),
    ],
)
def test_decide_role_serves_master_only_when_the_authority_confirms_it(
    node: str, desig: Designation | None, auth: Designation | None, hosts: bool, role: str
) -> None:
    got, reason = decide_role(node, desig, auth, hosts_objects=hosts)
    assert got == role
    assert node in reason


SRV1_ARGV = "python\0-m\0cosfail.cosprint.daemon\0--domain\0/d/domain.toml\0--node\0srv1"


@pytest.mark.parametrize(
    ("cmdline", "comm", "node", "is_it"),
    [
        (SRV1_ARGV, "python3.11", "srv1", True),
        # one started before the upgrade that installed cosprint as cosfail.cosprint
        (SRV1_ARGV.replace("cosfail.cosprint", "cosprint"), "python3.11", "srv1", True),
        (SRV1_ARGV, "python3.11", "cl1", False),
        (SRV1_ARGV.replace("/d/", "/e/"), "python3.11", "srv1", False),  # another domain
        # a fork server has its services' command line; only they are named cosprintd
        (SRV1_ARGV + "\0--fork-server\0" + "5", "python3.11\n", "srv1", False),
        (SRV1_ARGV + "\0--fork-server\0" + "5", "cosprintd\n", "srv1", True),
        ("python\0-m\0http.server\0--node\0srv1", "cosprintd\n", "srv1", False),
        ("", "python3.11\n", "srv1", False),  # a zombie
    ],
)
def test_names_cosprintd_tells_a_service_from_its_fork_server_and_other_processes(
    cmdline: str, comm: str, node: str, is_it: bool
) -> None:
    assert names_cosprintd(cmdline, comm, node, Path("/d/domain.toml")) is is_it


def test_decide_role_reasons_name_the_epochs_and_the_ledger_problem() -> None:
    _, stale = decide_role("srv1", D("srv1", 1), D("bcs1", 2), hosts_objects=True)
    assert "srv1@1" in stale and "bcs1@2" in stale and "reclaim" in stale
    _, down = decide_role(
        "srv1", D("srv1", 1), None, hosts_objects=True, authority_error="ledger x not found"
    )
    assert "ledger x not found" in down


# ----- the service as a real process ---------------------------------------------------
def test_server_starts_as_a_real_process_and_reports_master(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    srv = drivers["srv1"]
    srv.start()
    st = srv.status()
    assert st is not None
    assert (st.node, st.role, st.master, st.epoch) == ("srv1", MASTER, "srv1", 1)
    assert st.hosted == 2 * 5 + 1  # 2 of each of five tables, plus one lock
    assert st.pid == int(srv.pidfile.read_text()) and is_cosprintd(st.pid, "srv1")
    assert st.pid != os.getpid()
    assert "started" in srv.log_path.read_text()


def test_start_is_idempotent_and_driver_for_gives_the_reference_driver(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    d = driver_for(domain, "srv1")
    assert isinstance(d, ReferenceDriver)
    d.start()
    first = d.status()
    d.start()
    second = d.status()
    assert first is not None and second is not None and first.pid == second.pid
    drivers["srv1"].stop()


def test_job_submitted_to_the_server_is_printed_once_on_its_queues_printer(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    srv = drivers["srv1"]
    srv.start()
    code, answer = srv.submit("q-label", "hello", job_id="job-1")
    assert (code, answer["printed_by"], answer["job_id"]) == (202, "srv1", "job-1")
    wait_for(lambda: sink_lines(domain, "srv1", "label1"), what="the job in label1's sink")
    # The same client id again (a retry after a lost answer) is still one job.
    code, again = srv.submit("q-label", "hello", job_id="job-1")
    assert code == 202 and again.get("duplicate") is True
    time.sleep(0.5)
    lines = sink_lines(domain, "srv1", "label1")
    assert [(x["job_id"], x["queue"], x["printer"], x["node"]) for x in lines] == [
        ("job-1", "q-label", "label1", "srv1")
    ]
    assert sink_lines(domain, "srv1", "laser1") == []
    assert srv.spool_paths() == []
    counts = srv.jobs()
    assert counts is not None
    assert (counts["accepted"], counts["printed"], counts["pending"]) == (1, 1, 0)


def test_job_submitted_to_a_client_is_forwarded_and_printed_by_the_master(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    drivers["srv1"].start()
    drivers["cl1"].start()
    assert drivers["cl1"].status().role == SLAVE  # type: ignore[union-attr]
    code, answer = drivers["cl1"].submit("q-laser", "from the client")
    assert code == 202 and answer["printed_by"] == "srv1"
    wait_for(lambda: sink_lines(domain, "srv1", "laser1"), what="the forwarded job printed")
    [line] = sink_lines(domain, "srv1", "laser1")
    assert line["job_id"] == answer["job_id"] and line["node"] == "srv1"
    assert not (domain.home("cl1") / "var" / "sink").exists()
    assert drivers["cl1"].jobs()["forwarded"] == 1  # type: ignore[index]


def post_job(driver: ReferenceDriver, job: dict) -> tuple[int, dict]:  # type: ignore[type-arg]
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{driver.url}/jobs", data=json.dumps(job).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (our own URL)
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_job_stamped_with_an_older_epoch_is_refused_and_each_print_names_its_epoch(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    srv = drivers["srv1"]
    srv.start()
    code, answer = post_job(srv, {"queue": "q-laser", "job_id": "old-1", "epoch": 0})
    assert code == 503 and answer["retriable"] is True
    assert answer["error"] == ("srv1: job old-1 stamped with epoch 0, older than this "
                               "node's 1; send the job again")
    assert post_job(srv, {"queue": "q-laser", "job_id": "now-1", "epoch": 1})[0] == 202
    drivers["cl1"].start()  # a forward carries the forwarder's epoch, and is taken
    assert drivers["cl1"].submit("q-laser", "x", job_id="via-cl1")[0] == 202
    wait_for(lambda: len(sink_lines(domain, "srv1", "laser1")) == 2, what="two prints")
    assert {(p["job_id"], p["epoch"]) for p in sink_lines(domain, "srv1", "laser1")} == \
        {("now-1", 1), ("via-cl1", 1)}


def test_job_for_a_host_that_is_down_is_refused_as_retriable(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    drivers["cl1"].start()
    code, answer = drivers["cl1"].submit("q-laser", "x")
    assert code == 503 and answer["retriable"] is True
    assert "srv1" in answer["error"] and "unreachable" in answer["error"]


def test_unknown_queue_is_a_404_naming_the_queue(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    drivers["srv1"].start()
    code, answer = drivers["srv1"].submit("q-nowhere", "x")
    assert code == 404
    assert "unknown queue 'q-nowhere'" in answer["error"] and "srv1" in answer["error"]


def test_node_with_an_older_epoch_reports_stale_and_refuses_jobs(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    advance_authority(domain, Designation("bcs1", 2))  # srv1's designation stays srv1@1
    srv = drivers["srv1"]
    srv.start()
    report = srv.report()
    assert report is not None and report["role"] == STALE
    assert "srv1@1" in report["reason"] and "bcs1@2" in report["reason"]
    code, answer = srv.submit("q-laser", "must not print")
    assert code == 503 and "stale epoch, reclaim needed" in answer["error"]
    assert answer["retriable"] is True  # a re-point may be under way: never final
    time.sleep(0.3)
    assert sink_lines(domain, "srv1", "laser1") == [] and srv.spool_paths() == []


def test_returning_old_master_never_reports_master_even_for_one_sample(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    advance_authority(domain, Designation("bcs1", 2))
    srv = drivers["srv1"]
    # Started by hand, as an operator would: sample from the very first answer.
    proc = subprocess.Popen(cosprintd_argv(domain.path, "srv1"), stderr=subprocess.DEVNULL)  # noqa: S603
    roles = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and len(roles) < 20:
        st = srv.status()
        if st is not None:
            roles.append(st.role)
        time.sleep(0.02)
    assert roles and set(roles) == {STALE}
    assert proc.poll() is None
    assert srv.stop() is True and proc.wait(timeout=5) == 0


def test_cosprintd_refuses_a_bad_domain_file_or_node_with_exit_status_2(
    domain: Domain, tmp_path: Path
) -> None:
    missing = cosprintd_argv(tmp_path / "nope.toml", "srv1")
    bad = subprocess.run(missing, capture_output=True, text=True)  # noqa: S603
    assert bad.returncode == 2 and "no such domain file" in bad.stderr
    unknown = cosprintd_argv(domain.path, "srv9")
    bad = subprocess.run(unknown, capture_output=True, text=True)  # noqa: S603
    assert bad.returncode == 2 and "unknown node 'srv9'" in bad.stderr


def test_a_pidfile_removed_by_hand_does_not_hide_the_service_from_stop(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    srv = drivers["srv1"]
    srv.start()
    pid = srv.status().pid  # type: ignore[union-attr]
    srv.pidfile.unlink()
    assert srv.pid() == pid
    assert srv.stop() is True and not is_cosprintd(pid, "srv1")


def test_raising_the_authoritys_epoch_demotes_a_running_master_at_its_next_answer(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    srv = drivers["srv1"]
    srv.start()
    assert srv.status().role == MASTER  # type: ignore[union-attr]
    advance_authority(domain, Designation("bcs1", 2))
    # The role is re-decided for each answer, not on the background tick: the very
    # next answer is stale, and from then on it is never master again, nor takes a job.
    for _ in range(10):
        assert srv.status().role == STALE  # type: ignore[union-attr]
        time.sleep(0.05)
    assert srv.submit("q-laser", "x")[0] == 503


def test_master_with_an_unreadable_ledger_does_not_serve_as_master(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    ledger = domain.base / "ledger.db"
    ledger.rename(domain.base / "ledger.db.away")
    srv = drivers["srv1"]
    srv.start()
    report = srv.report()
    assert report is not None and report["role"] == UNVERIFIED
    assert "not found" in report["reason"]
    assert not ledger.exists()  # reading it did not create an empty one
    code, answer = srv.submit("q-laser", "x")
    assert code == 503 and answer["retriable"] is True


def test_stop_is_clean_and_idempotent(domain: Domain, drivers: dict[str, ReferenceDriver]) -> None:
    srv = drivers["srv1"]
    srv.start()
    pid = srv.status().pid  # type: ignore[union-attr]
    assert srv.stop() is True
    assert not srv.pidfile.exists()
    assert not is_cosprintd(pid, "srv1") and srv.status() is None
    assert srv.stop() is False
    assert "stopped" in srv.log_path.read_text()


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_prepared_node_forks_cosprintd_from_a_fork_server_never_taken_for_it(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    srv = drivers["srv1"]
    srv.prepare()  # what a node's worker does as it starts
    srv.start()
    pid = srv.pid()
    assert pid is not None and srv.status().role == MASTER  # type: ignore[union-attr]
    forker = parent_of(pid)
    assert "--fork-server" in Path(f"/proc/{forker}/cmdline").read_bytes().decode()
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "cosprintd"
    assert is_cosprintd(pid, "srv1", domain.path) and not is_cosprintd(forker, "srv1")
    assert os.getsid(pid) == pid  # a session of its own, as a service started by hand
    # Stopped, the service is gone and its fork server is not; a stale pidfile that
    # names the fork server is never signalled.
    assert srv.stop() is True and not is_cosprintd(pid, "srv1")
    srv.pidfile.write_text(f"{forker}\n")
    assert srv.pid() is None and srv.stop() is False
    assert Path(f"/proc/{forker}/cmdline").read_bytes()  # alive
    srv.start()
    again = srv.pid()
    assert again is not None and again != pid and parent_of(again) == forker
    # The fork server lost: its service serves on, and a start brings a new fork server.
    os.kill(forker, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{forker}/cmdline").read_bytes(), what="fork server gone")
    assert srv.status().pid == again  # type: ignore[union-attr]
    assert srv.stop() is True
    srv.start()
    third = srv.pid()
    assert third is not None and parent_of(third) not in (forker, os.getpid())
    assert srv.submit("q-laser", "after two fork servers")[0] == 202


def test_stale_pidfile_naming_another_process_is_never_signalled(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        srv = drivers["srv1"]
        srv.pidfile.parent.mkdir(parents=True, exist_ok=True)
        srv.pidfile.write_text(f"{bystander.pid}\n")
        assert srv.stop() is False
        assert bystander.poll() is None and not srv.pidfile.exists()
        srv.pidfile.write_text(f"{bystander.pid}\n")
        srv.start()
        assert srv.status().pid != bystander.pid  # type: ignore[union-attr]
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_kill_loses_the_node_and_start_recovers_from_its_pidfile(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    srv = drivers["srv1"]
    srv.start()
    old = srv.status().pid  # type: ignore[union-attr]
    assert srv.kill() is True
    assert srv.status() is None and srv.pidfile.exists()  # as after a real crash
    srv.start()
    assert srv.status().pid != old  # type: ignore[union-attr]


def test_pending_spool_files_present_at_start_are_printed_exactly_once(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    spool = domain.spool_dir("srv1")
    for i in range(3):
        spool_job(spool, {"job_id": f"pending-{i}", "queue": "q-laser", "data": "x"})
    # A crash between printing and unlinking: the job is in the sink and still spooled.
    sink = domain.home("srv1") / "var" / "sink" / "laser1.log"
    sink.parent.mkdir(parents=True)
    sink.write_text(json.dumps({"job_id": "pending-0", "queue": "q-laser"}) + "\n")
    srv = drivers["srv1"]
    srv.start()
    wait_for(lambda: not srv.spool_paths(), what="the spool to drain")
    ids = [x["job_id"] for x in sink_lines(domain, "srv1", "laser1")]
    assert sorted(ids) == ["pending-0", "pending-1", "pending-2"]
    # Once more across a restart: nothing is printed twice.
    srv.stop()
    srv.start()
    time.sleep(0.4)
    assert len(sink_lines(domain, "srv1", "laser1")) == 3


def test_stale_node_keeps_pending_jobs_instead_of_printing_them(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    spool_job(domain.spool_dir("srv1"), {"job_id": "held", "queue": "q-laser", "data": "x"})
    advance_authority(domain, Designation("bcs1", 2))
    srv = drivers["srv1"]
    srv.start()
    time.sleep(0.5)
    assert [p.name for p in srv.spool_paths()] == ["held.job"]
    assert sink_lines(domain, "srv1", "laser1") == []


def test_start_failure_names_the_node_and_its_log(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", domain.node("srv1").port))
        busy.listen()
        with pytest.raises(DriverError) as err:
            drivers["srv1"].start(timeout=5.0)
    msg = str(err.value)
    assert "srv1" in msg and str(drivers["srv1"].log_path) in msg
    assert "cannot listen" in msg
    assert not drivers["srv1"].pidfile.exists()


def test_driver_data_methods_work_on_the_nodes_files(
    domain: Domain, drivers: dict[str, ReferenceDriver], tmp_path: Path
) -> None:
    bcs = drivers["bcs1"]
    assert bcs.read_designation() == Designation("srv1", 1)
    bcs.write_last_running(Designation("srv1", 1))
    assert bcs.read_last_running() == Designation("srv1", 1)
    snap = tmp_path / "backup" / "srv1-1.snap"
    manifest = drivers["srv1"].export_snapshot(snap, epoch=1, domain=DOMAIN_NAME)
    assert manifest.rows == 11
    bcs.import_snapshot(snap, min_epoch=1, domain=DOMAIN_NAME)
    assert bcs.rehost("srv1", "bcs1", epoch=2)["queues"] == 2
    bcs.write_designation(Designation("bcs1", 2))
    advance_authority(domain, Designation("bcs1", 2))
    bcs.start()
    assert bcs.status().role == MASTER  # type: ignore[union-attr]
    code, answer = bcs.submit("q-laser", "after failover")
    assert code == 202 and answer["printed_by"] == "bcs1"


def test_a_table_write_or_re_point_stamped_with_an_older_epoch_is_refused_and_changes_nothing(
    drivers: dict[str, ReferenceDriver]
) -> None:
    cl1 = drivers["cl1"]  # tables and designation at srv1@1
    cl1.write_designation(Designation("bcs1", 3))
    assert cl1.rehost("srv1", "bcs1", epoch=3)["queues"] == 2
    with tables.connect(cl1.tables_url) as conn:
        before = tables.rows_digest(conn)
    with pytest.raises(StaleEpochError, match=r"^cl1's tables are at epoch 3: will not "
                       r"rehost bcs1's objects to srv1 under epoch 2$"):
        cl1.rehost("bcs1", "srv1", epoch=2)
    with pytest.raises(StaleEpochError, match=r"^cl1 is at bcs1@3: will not go back to srv1@2$"):
        cl1.write_designation(Designation("srv1", 2))
    with tables.connect(cl1.tables_url) as conn:
        assert tables.rows_digest(conn) == before
        assert tables.read_pointer(conn) == ("cl1", 3)
    assert cl1.read_designation() == Designation("bcs1", 3)


def test_concurrent_jobs_through_a_client_are_each_printed_exactly_once(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    drivers["srv1"].start()
    drivers["cl1"].start()
    codes: list[int] = []

    def submit_many(worker: int) -> None:
        for i in range(10):
            queue = "q-laser" if i % 2 else "q-label"
            codes.append(drivers["cl1"].submit(queue, "x", job_id=f"w{worker}-{i}")[0])

    threads = [threading.Thread(target=submit_many, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [202] * 40
    wait_for(lambda: not drivers["srv1"].spool_paths(), what="the spool to drain")
    printed = [x["job_id"] for p in ("laser1", "label1") for x in sink_lines(domain, "srv1", p)]
    assert sorted(printed) == sorted(f"w{w}-{i}" for w in range(4) for i in range(10))


# ----- a cheap start: plain SQL on SQLite, settings from the driver ---------------------
@pytest.mark.parametrize("options", ["", "?timeout=5"])  # stdlib sqlite3; SQLAlchemy
def test_plain_sql_reads_agree_with_the_sqlalchemy_tables_and_authority(
    domain: Domain, options: str
) -> None:
    assert plainsql.OBJECT_TABLE_NAMES == tuple(t.name for t in tables.OBJECT_TABLES)
    url = domain.tables_url("srv1")
    q, p = tables.queues, tables.printers
    with tables.connect(url) as conn:
        conn.execute(insert(tables.formats).values(id=9, name="f9", host="bcs1", paper="A3"))
        hosted = tables.hosted_counts(conn)
        routes = {
            name: (host, printer)
            for name, host, printer in conn.execute(
                select(q.c.name, q.c.host, p.c.name).join(p, q.c.printer_id == p.c.id)
            )
        }
    db = plainsql.Database(url + options, timeout=5.0)
    for host in ("srv1", "bcs1", "cl1"):
        assert db.first(plainsql.HOSTED_BY, {"host": host}) == (hosted.get(host, 0),)
    assert {queue: db.first(plainsql.QUEUE_ROUTE, {"queue": queue}) for queue in QUEUES} == routes
    assert db.first(plainsql.QUEUE_ROUTE, {"queue": "q-nowhere"}) is None
    ledger = plainsql.Database(domain.ledger_url + options, timeout=5.0)
    assert ledger.sqlite_path == domain.base / "ledger.db"
    assert ledger.first(plainsql.AUTHORITY, {"domain": DOMAIN_NAME}) == ("srv1", 1)
    assert authority.read(create_engine(domain.ledger_url), DOMAIN_NAME) == Designation("srv1", 1)


def test_cosprintd_on_sqlite_starts_without_importing_sqlalchemy_or_pydantic(
    domain: Domain, drivers: dict[str, ReferenceDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The driver passes its environment on; the daemon's stderr goes to its log.
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    srv = drivers["srv1"]
    srv.start()
    assert srv.status().role == MASTER  # type: ignore[union-attr]
    code, _ = srv.submit("q-laser", "x")
    assert code == 202
    srv.stop()
    imported = modules_imported(srv.log_path)
    assert "cosfail.cosprint.plainsql" in imported  # the daemon itself runs as __main__
    heavy = {"sqlalchemy", "pydantic", "cosfail.cosprint.domain", "cosfail.cosprint.tables"}
    assert [m for m in imported if m in heavy or m.split(".")[0] in heavy] == []


def test_fresh_node_without_tables_gets_their_schema_and_serves_as_slave(
    domain: Domain, drivers: dict[str, ReferenceDriver]
) -> None:
    tables_file = domain.home("bcs1") / "tables.db"
    assert not tables_file.exists()
    bcs = drivers["bcs1"]
    bcs.start()
    st = bcs.status()
    assert st is not None and (st.role, st.hosted) == (SLAVE, 0)
    assert plainsql.has_tables(tables_file, tuple(tables.metadata.tables))


def test_cosprintd_refuses_malformed_or_foreign_settings_with_exit_status_2(
    domain: Domain,
) -> None:
    argv = [*cosprintd_argv(domain.path, "srv1"), "--settings-stdin"]
    bad = subprocess.run(argv, input=b"{}", capture_output=True)  # noqa: S603
    assert bad.returncode == 2 and b"malformed settings" in bad.stderr
    cl1 = json.dumps(domain.service_settings("cl1")).encode()
    foreign = subprocess.run(argv, input=cl1, capture_output=True)  # noqa: S603
    assert foreign.returncode == 2 and b"for node 'cl1', not 'srv1'" in foreign.stderr
    assert not (domain.home("srv1") / "var" / "cosprintd.pid").exists()


def test_a_ledger_url_that_is_no_plain_sqlite_file_is_read_through_sqlalchemy(
    domain: Domain, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = domain.path.read_text()
    domain.path.write_text(text.replace('"sqlite:///ledger.db"', '"sqlite:///ledger.db?timeout=5"'))
    other = load_domain(domain.path)
    assert plainsql.sqlite_file(other.ledger_url) is None
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    srv = ReferenceDriver(other, "srv1")
    try:
        srv.start()
        report = srv.report()
        assert report is not None and report["role"] == MASTER
        assert report["authority"] == "srv1@1"
    finally:
        srv.kill()
    imported = modules_imported(srv.log_path)
    assert "sqlalchemy" in imported  # the daemon, run with -S, found it in site-packages
