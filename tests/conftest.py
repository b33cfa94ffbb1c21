"""Fixtures that start real services: a redis-server on a free port, a PostgreSQL
cluster of the tests' own, a domain of real node workers and real `cosprintd`
processes. Reused by every integration test.

Every test that makes a domain (`make_cluster`) runs once per ledger backend: on a
SQLite file in the domain and on a fresh database of the tests' PostgreSQL
(`-m "not postgresql"` runs the SQLite half only)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import count
from pathlib import Path
from typing import TypeVar

import pytest
from cosfail.cosprint import authority, tables
from cosfail.cosprint.domain import Domain, load_domain
from cosfail.cosprint.drivers import driver_for
from cosfail.cosprint.errors import DriverError
from cosfail.launcher.demo_domain import init_demo
from cosfail.launcher.hosts import sshd_config
from cosfail.launcher.local import LocalDomain, LoopbackRedis, free_port, pid_alive
from cosfail.launcher.postgres import LocalPostgres
from cosfail.workers.app import PROBE_TASK, configure
from cosfail.workflows import trigger
from cosfail.workflows.backup import BACKUP, BackupRequest
from cosfail.workflows.engine import Engine, wait_for
from cosfail.workflows.state import current_state

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts"


# The tests' broker: one loopback redis-server helper, shared with bench/.
RedisServer = LoopbackRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """The tests' own PostgreSQL cluster (initdb + pg_ctl as the postgres user).

    Outside pytest's temporary tree: any other pytest run on the machine makes
    /tmp/pytest-of-USER 0700 again, and the server, another user, loses its data dir."""
    workdir = Path(tempfile.mkdtemp(prefix="cosfail-tests-postgres-"))
    server = LocalPostgres(workdir, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop(check=False)
        shutil.rmtree(workdir, ignore_errors=True)


_databases = count(1)


@pytest.fixture(params=[
    pytest.param("sqlite"),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
])
def new_ledger(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Factory: the ledger URL for one more domain: None (the demo's SQLite file in the
    domain) or a new database of the tests' PostgreSQL."""
    if request.param == "sqlite":
        return lambda: None
    server: LocalPostgres = request.getfixturevalue("postgres_server")
    return lambda: server.create_database(f"ledger_{next(_databases)}")


# The fault suites (killing a worker at every step of the longest chains takes minutes
# per backend) run on PostgreSQL in `make soak`, on SQLite in every `make test`: both
# backends in CI would take it past its 30 minutes. So do the beat-driven tests of pause
# and scheduled switchover (their ledger work is one conditional update each, which the
# ledger race tests cover on both), and the slowest workflow tests whose ledger work is
# the runs and steps every workflow writes: each workflow's main test, the lease, the
# hosts domain and the ledger tests run on PostgreSQL in CI.
SOAK_ON_POSTGRESQL = (
    "tests/faults/", "tests/test_schedule.py", "tests/test_cli.py::test_a_paused_domain",
    "tests/test_cli.py::test_status_shows",
    "tests/test_reclaim.py::test_reclaim_interrupted_by_sigkill",
    "tests/test_reclaim.py::test_failback_reclaim_due_and_history_survive",
    "tests/test_reclaim.py::test_refusals_change_nothing",
    "tests/test_detect.py::test_blip_kill_recommendation",
    "tests/test_failover.py::test_a_client_whose_worker_dies",
    "tests/test_failover.py::test_restore_killed_mid_step",
    "tests/test_failover.py::test_bad_input_through_the_cli",
    "tests/test_backup.py::test_a_worker_killed_mid_copy",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("postgresql") and item.nodeid.startswith(SOAK_ON_POSTGRESQL):
            item.add_marker(pytest.mark.soak)


class Cluster:
    """A demo domain running for real: one worker and one COSprint per node."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.local = LocalDomain(domain)
        configure(domain)
        self.engine = Engine(domain)
        current_state(self.engine)

    @property
    def ledger(self):  # type: ignore[no-untyped-def]
        return self.engine.ledger

    def up(self) -> None:
        self.local.up(with_services=False)

    def driver(self, node: str):  # type: ignore[no-untyped-def]
        return driver_for(self.domain, node)

    def worker_pid(self, node: str | None) -> int:
        return self.local.components()[f"worker:{node or 'control'}"].pid

    def kill_worker(self, node: str | None) -> None:
        """SIGKILL a worker and wait until it is gone (a worker in fsync takes a while)."""
        pid = self.worker_pid(node)
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 10
        while pid_alive(pid) and time.time() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.01)

    def restart_worker(self, node: str | None) -> None:
        self.local.start_worker(node)
        self.local.wait_workers([node])

    def wait(self, run_id: str, timeout: float = 120.0) -> dict:  # type: ignore[type-arg]
        return wait_for(self.engine, run_id, timeout)

    def newest_run(self, workflow: str, timeout: float = 60.0) -> dict:  # type: ignore[type-arg]
        """The newest run of `workflow`, once there is one (one a worker starts itself)."""
        deadline = time.time() + timeout
        while not (runs := self.ledger.runs(limit=1, workflow=workflow)):
            assert time.time() < deadline, f"no {workflow} run within {timeout:g} s"
            time.sleep(0.1)
        return runs[0]

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "-d", str(self.domain.path), check=check)

    def authority(self):  # type: ignore[no-untyped-def]
        return authority.read(self.ledger.engine, self.domain.control.name)

    def backup(self) -> str:
        """A backup run to its successful end; returns its run id."""

        run_id = trigger.run(self.engine, BACKUP, BackupRequest(), "test", "test backup").run_id
        run = self.wait(run_id)
        assert run["state"] == "succeeded", run["error"]
        return run_id

    def backup_nobody_takes(self) -> dict:  # type: ignore[type-arg]
        """A backup run while the master's worker is stopped (SIGSTOP), ended: its export
        waits in the queue past `[control].step_expires` and the run fails."""
        pid = self.worker_pid(self.domain.initial_master)
        os.kill(pid, signal.SIGSTOP)
        try:
            run_id = trigger.run(self.engine, BACKUP, BackupRequest(), "test",
                                 "the master's worker stopped").run_id
            return self.wait(run_id)
        finally:
            os.kill(pid, signal.SIGCONT)

    def hosted(self, node: str) -> dict[str, int]:
        """Objects per host in `node`'s own copy of the tables."""
        with tables.connect(self.domain.tables_url(node)) as conn:
            return tables.hosted_counts(conn)

    def digest(self, node: str) -> str:
        with tables.connect(self.domain.tables_url(node)) as conn:
            return tables.rows_digest(conn)

    def printed(self, node: str) -> list[dict]:  # type: ignore[type-arg]
        """Every job `node`'s printers printed, from its sink files."""
        sink = self.domain.home(node) / "var" / "sink"
        return [json.loads(line) for f in sink.glob("*.log")
                for line in f.read_text().splitlines()]

    def wait_printed(self, node: str, job_id: str, timeout: float = 15.0) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(j["job_id"] == job_id for j in self.printed(node)):
                return True
            time.sleep(0.05)
        return False

    def amend_domain(self, control: dict[str, object] | None = None, append: str = "") -> None:
        """Edit domain.toml: set `[control]` keys (replacing a value the file has),
        append TOML text (a `[hooks]` table, say), and reload it here. Processes started
        afterwards (workers, CLI) read the new file; to change what workers see, make
        the cluster with up=False first."""
        path = self.domain.path
        head, sep, rest = path.read_text().partition("[control]\n")
        assert sep and "[control]\n" not in rest, "domain.toml needs one [control] table"
        table, nxt, after = rest.partition("\n[")
        for k, v in (control or {}).items():
            line = f"{k} = {json.dumps(v)}"
            table, found = re.subn(rf"^{re.escape(k)} = .*$", line, table, flags=re.M)
            if not found:
                table = f"{line}\n{table}"
        path.write_text(head + sep + table + nxt + after + append)
        self.domain = load_domain(path)
        self.local = LocalDomain(self.domain)
        configure(self.domain)
        self.engine = Engine(self.domain)

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until every node's start-up restart-check has run and no run is in flight,
        so that a test comparing the ledger before and after sees only its own doing."""
        nodes = set(self.domain.names())
        deadline = time.time() + timeout
        while True:
            runs = self.ledger.runs(limit=1000)
            checked = {r["subject"] for r in runs if r["workflow"] == "restart-check"}
            busy = [r["id"] for r in runs if r["state"] in ("planned", "running")]
            if nodes <= checked and not busy:
                return
            assert time.time() < deadline, f"not settled: unchecked {nodes - checked}, {busy}"
            time.sleep(0.05)

    def start_api(self):  # type: ignore[no-untyped-def]
        """Start this domain's real `cosfail api` process; return an httpx client
        carrying the token, once the API answers."""
        import httpx
        from cosfail.api.app import read_token

        comp = self.local.start_api()
        client = httpx.Client(base_url=comp.url, timeout=30,
                              headers={"Authorization": f"Bearer {read_token(self.domain)}"})
        deadline = time.time() + 20
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    return client
            except httpx.TransportError:
                pass
            assert time.time() < deadline, f"the API never answered: {comp.log}"
            time.sleep(0.05)

    def down(self) -> None:
        self.local.down()


class JobSender:
    """`with JobSender(cluster, node, queue):` sends a job for `queue` to `node`'s
    COSprint every 200 ms, as a print client does, and keeps every answer with its
    monotonic time; a COSprint that does not answer is recorded as code 0."""

    def __init__(self, cluster: Cluster, node: str, queue: str) -> None:
        self.driver = cluster.driver(node)
        self.node, self.queue = node, queue
        self.answers: list[tuple[float, int, dict]] = []  # type: ignore[type-arg]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(0.2):
            n += 1
            try:
                code, answer = self.driver.submit(self.queue, "page", f"via-{self.node}-{n:04d}")
            except DriverError as exc:
                code, answer = 0, {"error": str(exc)}
            self.answers.append((time.monotonic(), code, answer))

    def __enter__(self) -> JobSender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def refused(self) -> list[tuple[float, int, dict]]:  # type: ignore[type-arg]
        return [a for a in self.answers if a[1] != 202]

    def accepted_by(self, node: str) -> list[float]:
        return [t for t, code, a in self.answers if code == 202 and a.get("printed_by") == node]


class MasterWatcher:
    """Polls every node's COSprint status every 50 ms and keeps who claimed master."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.samples: list[tuple[float, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        drivers = [self.cluster.driver(n) for n in self.cluster.domain.names()]
        while not self._stop.is_set():
            masters = []
            for d in drivers:
                st = d.status()
                if st and st.role == "master":
                    masters.append(st.node)
            self.samples.append((time.time(), masters))
            self._stop.wait(0.05)

    def __enter__(self) -> MasterWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def masters_between(self, t0: float, t1: float) -> set[str]:
        return {m for t, ms in self.samples if t0 <= t <= t1 for m in ms}

    def most_masters(self) -> int:
        """The most nodes that claimed master in any one sample."""
        return max((len(ms) for _, ms in self.samples), default=0)


@pytest.fixture
def watch_masters() -> type[MasterWatcher]:
    """`with watch_masters(cluster) as watch:` samples who claims master every 50 ms."""
    return MasterWatcher


def run_cli(*args: str, check: bool = False, env: dict[str, str] | None = None,
            timeout: float = 300, on: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """`cosfail ARGS`; `on` prefixes the command (a lab's `ip netns exec NS`)."""
    return subprocess.run(  # noqa: S603
        [*on, sys.executable, "-m", "cosfail.launcher.cli", *args], capture_output=True, text=True,
        check=check, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


@pytest.fixture
def make_cluster(redis_server: RedisServer, new_ledger,  # type: ignore[no-untyped-def]
                 tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """Factory: make_cluster(servers=1, bcs=1, clients=2, objects=1000, coverage="one"),
    its ledger on this run's backend (`new_ledger`)."""
    made: list[Cluster] = []

    def make(name: str = "dom", up: bool = True, **kw: object) -> Cluster:
        redis_server.flush()
        if "ledger" not in kw and (url := new_ledger()) is not None:
            kw["ledger"] = url
        path = init_demo(tmp_path / name, broker=redis_server.url, **kw)  # type: ignore[arg-type]
        cluster = Cluster(load_domain(path))
        made.append(cluster)
        if up:
            cluster.up()
        return cluster

    yield make
    for cluster in made:
        cluster.down()


class FlowerServer:
    """A real `cosfail flower` process of a cluster, and an HTTP client logged in to it."""

    def __init__(self, cluster: Cluster, url: str) -> None:
        import httpx

        self.cluster = cluster
        self.url = url
        auth_file = cluster.domain.resolve(cluster.domain.control.flower_auth_file)
        user, _, password = auth_file.read_text().strip().partition(":")
        self.auth = (user, password)
        self.client = httpx.Client(base_url=url, auth=self.auth, timeout=30)

    def tasks(self, **params: object) -> dict[str, dict]:  # type: ignore[type-arg]
        r = self.client.get("/api/tasks", params=params)
        r.raise_for_status()
        return r.json()

    def wait_task(self, task_id: str, state: str, timeout: float = 30.0) -> dict:  # type: ignore[type-arg]
        """Flower's record of a task once it has reached `state`."""
        deadline = time.time() + timeout
        info: dict = {}  # type: ignore[type-arg]
        while time.time() < deadline:
            r = self.client.get(f"/api/task/info/{task_id}")
            info = r.json() if r.status_code == 200 else {}
            if info.get("state") == state:
                return info
            time.sleep(0.1)
        raise AssertionError(f"Flower never showed task {task_id} {state}: {info}")


@pytest.fixture
def flower() -> Iterator:  # type: ignore[type-arg]
    """Factory: flower(cluster) starts `cosfail flower` for a running cluster (stopped
    with it) and returns once Flower answers and receives the workers' task events."""
    import httpx
    from cosfail.workflows.liveness import probe_all

    def start(cluster: Cluster) -> FlowerServer:
        comp = cluster.local.start_flower()
        server = FlowerServer(cluster, comp.url)
        deadline = time.time() + 30
        while True:
            assert comp.alive(), f"cosfail flower exited: {Path(comp.log).read_text()[-2000:]}"
            try:
                if server.client.get("/healthcheck").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, f"Flower did not answer: {comp.log}"
            time.sleep(0.1)
        node = cluster.domain.names()[0]
        while not server.tasks(taskname=PROBE_TASK):
            assert time.time() < deadline, f"Flower receives no task events: {comp.log}"
            probe_all(cluster.domain, [node], timeout=2.0)
            time.sleep(0.2)
        return server

    yield start


T = TypeVar("T")


def wait_until(what: Callable[[], T], timeout: float = 30.0, why: str = "condition",
               poll: float = 0.05) -> T:
    """Poll `what()` until it is truthy; a timeout is a failsafe, not a speed assert."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{why}: still not true after {timeout:g} s")
        time.sleep(poll)


def cups_tool(c: Cluster, node: str, *args: str, check: bool = True) -> str:
    """A CUPS command (lp, lpstat, lpadmin, ...) as `node` runs it: against its cupsd,
    or the one its client.conf names."""
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=30,  # noqa: S603
                          env=c.driver(node).client_env())
    if check:
        assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout + done.stderr


class IppDevice:
    """A real IPP printer: CUPS's ippeveprinter on a loopback port. Its print command
    records each job's name in `record`, so "printed" means an IPP printer received the
    job and completed it, counted on the device's side. ippeveprinter starts only with a
    D-Bus to register with (even when told not to register), so it gets a bus of its own."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.uri = f"ipp://127.0.0.1:{self.port}/ipp/print"
        self.record = workdir / "printed.txt"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, timeout: float = 15.0) -> None:
        spool = self.workdir / "spool"
        spool.mkdir(parents=True)
        command = self.workdir / "print-command"
        command.write_text("#!/bin/sh\n# Records the job's name, once per job printed.\n"
                           f"printf '%s\\n' \"$IPP_JOB_NAME\" >> {shlex.quote(str(self.record))}\n")
        command.chmod(0o755)
        bus = f"unix:path={self.workdir / 'bus'}"
        log = open(self.workdir / "ippeveprinter.log", "wb")  # noqa: SIM115 - kept by the child
        self.procs.append(subprocess.Popen(  # noqa: S603
            ["dbus-daemon", "--session", f"--address={bus}", "--nofork", "--nopidfile"],
            stdout=log, stderr=log))
        wait_until(lambda: (self.workdir / "bus").exists(), 10, "the device's D-Bus")
        self.procs.append(subprocess.Popen(  # noqa: S603
            ["ippeveprinter", "-r", "off", "-n", "localhost", "-p", str(self.port),
             "-d", str(spool), "-c", str(command), "-f", "text/plain,application/octet-stream",
             "cosfail test device"],
            stdout=log, stderr=log, env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus}))

        def answers() -> bool:
            assert self.procs[-1].poll() is None, \
                f"ippeveprinter exited: {(self.workdir / 'ippeveprinter.log').read_text()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_until(answers, timeout, f"ippeveprinter on port {self.port}")

    def printed(self) -> Counter[str]:
        """How many times the device printed each job name."""
        if not self.record.exists():
            return Counter()
        return Counter(self.record.read_text().splitlines())

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.kill()
            proc.wait()


@pytest.fixture
def ipp_device(tmp_path: Path) -> Iterator[IppDevice]:
    """A real IPP printer of this test's own (IppDevice), stopped after it."""
    assert shutil.which("ippeveprinter") and shutil.which("dbus-daemon"), \
        "cups-ipp-utils and dbus are not installed (.ci/run installs them)"
    device = IppDevice(tmp_path / "ipp-device")
    device.start()
    yield device
    device.stop()


class SSHD:
    """A real OpenSSH sshd of the tests' own on 127.0.0.1:<free port>, root login by key.

    Everything it needs is generated here: a host key, a user key authorised for root,
    and a known_hosts file that knows the host key. `-D` keeps it in the foreground (its
    pid is the listener's); each connection is served by child processes of it.
    """

    BINARY = "/usr/sbin/sshd"

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = free_port()
        self.config = workdir / "sshd_config"
        self.log = workdir / "sshd.log"
        self.host_key = workdir / "host_key"
        self.user_key = workdir / "user_key"
        self.known_hosts = workdir / "known_hosts"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def keygen(self, path: Path) -> None:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name,  # noqa: S603, S607
                        "-f", str(path)], check=True)

    def fingerprint(self, pub: Path) -> str:
        """`SHA256:...` of a public key file, as ssh-keygen prints it."""
        out = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], check=True,  # noqa: S603, S607
                             capture_output=True, text=True).stdout
        return out.split()[1]

    def known_hosts_line(self, pub: Path) -> str:
        kind, key = pub.read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"

    def start(self) -> None:
        assert os.path.exists(self.BINARY), "openssh-server is not installed (.ci/run installs it)"
        assert os.geteuid() == 0, "the sshd fixture runs sshd as root"
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # its privilege-separation dir
        self.keygen(self.host_key)
        self.keygen(self.user_key)
        (self.dir / "authorized_keys").write_text(self.user_key.with_suffix(".pub").read_text())
        self.known_hosts.write_text(self.known_hosts_line(self.host_key.with_suffix(".pub")))
        self.config.write_text(sshd_config("127.0.0.1", self.port, self.host_key,
                                           self.dir / "authorized_keys", self.dir / "sshd.pid"))
        self.proc = subprocess.Popen(  # noqa: S603
            [self.BINARY, "-D", "-f", str(self.config), "-E", str(self.log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            assert self.proc.poll() is None, f"sshd exited: {self.log.read_text()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(64).startswith(b"SSH-2.0-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not answer on {self.address}")

    def stop(self) -> None:
        self.kill_sessions()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def sessions(self) -> list[int]:
        """Pids of the processes serving connections: every descendant of the listener."""
        assert self.proc is not None
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, todo = [], [self.proc.pid]
        while todo:
            for kid in children.get(todo.pop(), []):
                found.append(kid)
                todo.append(kid)
        return found

    def kill_sessions(self) -> list[int]:
        """SIGKILL every connection's processes (the listener stays): connections drop."""
        pids = self.sessions()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def accepted(self) -> int:
        """Connections authenticated so far (sshd logs one line for each)."""
        return self.log.read_text().count("Accepted publickey for root")

    def ssh_table(self, known_hosts: Path | None = None) -> dict[str, object]:
        """A node's `[node.ssh]` reaching this sshd."""
        return {"host": "127.0.0.1", "port": self.port, "user": "root",
                "key_file": str(self.user_key),
                "known_hosts": str(known_hosts or self.known_hosts)}


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHD]:
    server = SSHD(tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    server.stop()


class InstalledCosfail:
    """cosfail's wheel, built from the files the Dockerfile copies and installed into a
    fresh venv. The venv borrows the test venv's third-party packages through a .pth
    file (installing them again would cost a minute of CI); cosfail itself is only the
    wheel's, since an added path's own .pth files (the editable install's hook) are not
    read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.wheel = next((root / "dist").glob("cosfail-*.whl"))
        self.venv = root / "venv"
        self.bin = self.venv / "bin"
        [self.site_packages] = self.venv.glob("lib/python*/site-packages")

    @classmethod
    def build(cls, root: Path) -> InstalledCosfail:
        src = root / "src"
        docker = (REPO / "Dockerfile").read_text()
        for name in re.findall(r"^COPY (\S+) \./", docker, re.M):
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, src / name,
                                ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, src / name)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "wheel", "--no-deps", "-w", str(root / "dist"), str(src)],  # noqa: S603
                       check=True, timeout=300)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")],  # noqa: S603
                       check=True, timeout=120)
        built = cls(root)
        subprocess.run([*pip, "--python", str(built.bin / "python"), "install", "--no-deps",  # noqa: S603
                        str(built.wheel)], check=True, timeout=300)
        borrowed = [p for p in sys.path if p.endswith("site-packages")]
        (built.site_packages / "test-venv-packages.pth").write_text("\n".join(borrowed) + "\n")
        return built

    def run(self, *argv: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`argv` run in the fresh venv, from outside the source tree."""
        return subprocess.run(  # noqa: S603
            argv, capture_output=True, text=True, timeout=timeout, cwd=self.root,
            env={"PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", **(env or {})})


@pytest.fixture(scope="session")
def installed_cosfail(tmp_path_factory: pytest.TempPathFactory) -> InstalledCosfail:
    return InstalledCosfail.build(tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def fault_cluster(make_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Factory: a cluster whose workers honour failpoints (workers/failpoints.py)."""
    failpoints = tmp_path / "failpoints"
    monkeypatch.setenv("COSFAIL_FAILPOINTS_FILE", str(failpoints))

    def make(**kw: object):  # type: ignore[no-untyped-def]
        return make_cluster(**kw), failpoints

    return make
