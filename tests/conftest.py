"""Fixtures that start real services: a redis-server on a free port, a domain of real
node workers and real `cosprintd` processes. Reused by every integration test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cosprint import authority, tables
from cosprint.demo import init_demo
from cosprint.domain import Domain, load_domain
from cosprint.drivers import driver_for
from workers.app import configure
from workers.local import LocalDomain
from workflows.engine import Engine, wait_for
from workflows.state import current_state

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server of the tests' own, on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (.ci/run installs it)"
        self.proc = subprocess.Popen(  # noqa: S603
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


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
        os.kill(self.worker_pid(node), signal.SIGKILL)

    def restart_worker(self, node: str | None) -> None:
        self.local.start_worker(node)
        self.local.wait_workers([node])

    def wait(self, run_id: str, timeout: float = 120.0) -> dict:  # type: ignore[type-arg]
        return wait_for(self.engine, run_id, timeout)

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "-d", str(self.domain.path), check=check)

    def authority(self):  # type: ignore[no-untyped-def]
        return authority.read(self.ledger.engine, self.domain.control.name)

    def backup(self) -> str:
        """A backup run to its successful end; returns its run id."""
        from workflows.backup import start_backup

        run_id, _ = start_backup(self.engine, "test", "test backup")
        run = self.wait(run_id)
        assert run["state"] == "succeeded", run["error"]
        return run_id

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

    def down(self) -> None:
        self.local.down()


def run_cli(*args: str, check: bool = False, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "api.cli", *args], capture_output=True, text=True,
        check=check, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


@pytest.fixture
def make_cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """Factory: make_cluster(servers=1, bcs=1, clients=2, objects=1000, coverage="one")."""
    made: list[Cluster] = []

    def make(name: str = "dom", up: bool = True, **kw: object) -> Cluster:
        redis_server.flush()
        path = init_demo(tmp_path / name, broker=redis_server.url, **kw)  # type: ignore[arg-type]
        cluster = Cluster(load_domain(path))
        made.append(cluster)
        if up:
            cluster.up()
        return cluster

    yield make
    for cluster in made:
        cluster.down()
