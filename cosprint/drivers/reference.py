"""The reference driver: COSprint as a real local `cosprintd` process with SQLite tables.

Every workflow runs for real on one machine through it. The process is found through
its pidfile, and a pid is trusted only when /proc says it is a cosprintd of this node:
a stale pidfile or a pid reused by another program is never signalled.

Every node restarts at once in a failover, so neither wait polls: a start it made ends
on a line the daemon writes on a pipe once it serves, a stop on the pid's pidfd.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cosfail.cosprint.daemon import peers
from cosfail.cosprint.daemon.identity import READY, is_cosprintd, log_path, pidfile_path, read_pid
from cosfail.cosprint.daemon.spool import JOB_SUFFIX, list_spool
from cosfail.cosprint.domain import Domain
from cosfail.cosprint.driver import Driver, Resent, ServiceStatus
from cosfail.cosprint.drivers.base import NodeFiles, children
from cosfail.cosprint.errors import DriverError
from cosfail.cosprint.forkserver import ForkServer

import cosfail

START_TIMEOUT = 10.0
STATUS_TIMEOUT = 0.5
KILL_WAIT = 5.0
_POLL = 0.02

# This process's fork servers, by (domain file, node): see ReferenceDriver.prepare.
_FORK_SERVERS: dict[tuple[Path, str], ForkServer] = {}
_FORK_SERVERS_LOCK = threading.Lock()


class ReferenceDriver(NodeFiles, Driver):
    """Drives one node's cosprintd; every method is safe to call again."""

    @classmethod
    def spool_handoff(cls, domain: Domain, source: str, here: str) -> tuple[Path, Path, str]:
        """Spool to spool: a cosprintd prints the job files it finds in its spool."""
        return domain.spool_dir(source), domain.spool_dir(here), JOB_SUFFIX

    def __init__(self, domain: Domain, node_name: str) -> None:
        domain.node(node_name)  # an unknown node fails here, naming it
        self.domain = domain
        self.node = node_name
        self.home = domain.home(node_name)
        self.pidfile = pidfile_path(domain, node_name)
        self.log_path = log_path(domain, node_name)
        self.url = domain.service_url(node_name)
        self.tables_url = domain.tables_url(node_name)

    # ----- the process -----------------------------------------------------------------
    def pid(self) -> int | None:
        """The pid of this node's running cosprintd, or None."""
        children.reap()
        pid = read_pid(self.pidfile)
        if pid is not None and self._is_ours(pid):
            return pid
        # A pidfile removed by hand must not hide a running service from stop().
        report = self.report()
        pid = report.get("pid") if report else None
        if isinstance(pid, int) and self._is_ours(pid):
            return pid
        return None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start cosprintd unless it already runs; return once it serves /status."""
        pid = self.pid()
        if pid is not None:
            if self._wait_answer(pid, timeout):
                return
            raise DriverError(
                f"node {self.node}: cosprintd pid {pid} runs but does not answer at "
                f"{self.url} (see {self.log_path})"
            )
        pid, ready = self._spawn()
        if _wait_ready(ready, timeout):
            return
        exited = self._wait_gone(pid, 0.5)  # the pipe closed unready, or time ran out
        racer = self.pid()
        if racer is not None and racer != pid and self._wait_answer(racer, timeout):
            return  # another start won the race: the service runs, which is what we want
        if not exited:
            self._terminate(pid, 2.0)  # half-started: leave no orphan behind
            why = f"did not answer at {self.url} within {timeout:g} s"
        else:
            why = "exited before it served"
        raise DriverError(
            f"node {self.node}: cosprintd {why} (see {self.log_path}): {self._log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM, then SIGKILL after `timeout`; True if it was running."""
        pid = self.pid()
        if pid is None:
            self._clear_stale_pidfile()
            return False
        self._terminate(pid, timeout)
        return True

    def kill(self) -> bool:
        """SIGKILL, as a lost node: the pidfile stays behind, as after a real crash."""
        pid = self.pid()
        if pid is None:
            return False
        self._signal(pid, signal.SIGKILL)
        if not self._wait_gone(pid, KILL_WAIT):
            raise DriverError(f"node {self.node}: cosprintd pid {pid} survived SIGKILL")
        return True

    def prepare(self) -> None:
        """Keep a fork server of this node's cosprintd in this process (a node's worker
        does, at its start): from then on, a start here forks a service from it."""
        key = (self.domain.path, self.node)
        with _FORK_SERVERS_LOCK:
            server = _FORK_SERVERS.get(key)
            if server is None:
                server = _FORK_SERVERS[key] = ForkServer(
                    lambda args, fd: self._popen(args, fd, subprocess.DEVNULL),
                    f"node {self.node}")
        server.warm()

    def unprepare(self) -> None:
        """Keep no fork server of this node in this process any longer (it exits); the
        services it forked serve on."""
        with _FORK_SERVERS_LOCK:
            server = _FORK_SERVERS.pop((self.domain.path, self.node), None)
        if server is not None:
            server.close()

    def _spawn(self) -> tuple[int, int]:
        """Start cosprintd, forked from this node's fork server where this process keeps
        one; returns its pid and the read end of its ready pipe."""
        # The settings travel on a pipe, not argv: a ledger URL may hold a password.
        settings = json.dumps(self.domain.service_settings(self.node)).encode()
        server = _FORK_SERVERS.get((self.domain.path, self.node))
        ready_r, ready_w = os.pipe()
        try:
            if server is not None:
                return server.start(settings, ready_w), ready_r
            return self._start_alone(settings, ready_w), ready_r
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)  # the child's copy alone: its exit closes the pipe

    def _start_alone(self, settings: bytes, ready_w: int) -> int:
        proc = self._popen(["--settings-stdin", "--ready-fd", str(ready_w)], ready_w,
                           subprocess.PIPE)
        children.add(proc)
        assert proc.stdin is not None
        try:
            proc.stdin.write(settings)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it died first; start() reports its exit and log
        return proc.pid

    def _popen(self, args: list[str], fd: int, stdin: int) -> subprocess.Popen[bytes]:
        """The daemon's command line for this node plus `args`, passed `fd`: a service,
        or a fork server of services."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # The child must import this very cosfail, installed or not (cosfail/__init__.py).
        root = str(Path(cosfail.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        argv = [
            sys.executable,
            "-S",  # no site-packages until the daemon needs one (see daemon._with_packages)
            "-m",
            "cosfail.cosprint.daemon",
            "--domain",
            str(self.domain.path),
            "--node",
            self.node,
            *args,
        ]
        with open(self.log_path, "ab") as out:
            # An argument list, no shell: the node name and paths are never interpreted.
            return subprocess.Popen(  # noqa: S603
                argv,
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                env=env,
                start_new_session=True,  # survives the caller's terminal and signals
                close_fds=True,
                pass_fds=(fd,),
            )

    def _wait_answer(self, pid: int, timeout: float) -> bool:
        """True once `pid`, a cosprintd this driver did not start, answers /status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st is not None and st.pid == pid:
                return True
            if not self._is_ours(pid):
                return False
            time.sleep(_POLL)
        return False

    def _terminate(self, pid: int, timeout: float) -> None:
        self._signal(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout):
            self._signal(pid, signal.SIGKILL)
            if not self._wait_gone(pid, KILL_WAIT):
                raise DriverError(f"node {self.node}: cosprintd pid {pid} survived SIGKILL")
        self._clear_stale_pidfile()

    def _is_ours(self, pid: int) -> bool:
        return is_cosprintd(pid, self.node, self.domain.path)

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        exited = _pidfd(pid)  # readable the moment it exits: no polling latency
        try:
            while True:
                children.reap()
                if not self._is_ours(pid):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if exited is None:
                    time.sleep(min(_POLL, left))
                else:
                    _readable(exited, left)
        finally:
            if exited is not None:
                os.close(exited)

    def _clear_stale_pidfile(self) -> None:
        pid = read_pid(self.pidfile)
        if pid is not None and not self._is_ours(pid):
            self.pidfile.unlink(missing_ok=True)

    def _log_tail(self, limit: int = 300) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return (lines[-1] if lines else "empty log")[-limit:]

    # ----- the service's HTTP interface ------------------------------------------------
    def report(self) -> dict[str, Any] | None:
        """The raw /status document (with the role's reason), or None."""
        body = self._get("/status")
        if body is None or body.get("node") != self.node:
            return None  # not answering, or another node's service on this port
        return body

    def status(self) -> ServiceStatus | None:
        body = self.report()
        if body is None:
            return None
        try:
            return ServiceStatus(
                node=body["node"],
                role=body["role"],
                master=body["master"],
                epoch=int(body["epoch"]),
                hosted=int(body["hosted"]),
                up_since=float(body["up_since"]),
                pid=int(body["pid"]),
                reason=str(body.get("reason", "")),
                lease=body.get("lease") if isinstance(body.get("lease"), dict) else None,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def jobs(self) -> dict[str, Any] | None:
        """Job counts (accepted, forwarded, refused since start; printed; pending)."""
        return self._get("/jobs")

    def submit(
        self, queue: str, data: str, job_id: str | None = None, timeout: float = 10.0
    ) -> tuple[int, dict[str, Any]]:
        """POST one job to this node's COSprint: (HTTP status, answer)."""
        job: dict[str, Any] = {"queue": queue, "data": data}
        if job_id is not None:
            job["job_id"] = job_id
        try:
            return peers.post_json(self.url + "/jobs", job, timeout)
        except peers.Unreachable as exc:
            raise DriverError(
                f"node {self.node}: cannot submit a job to {self.url}: {exc}"
            ) from None

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            with peers.opener().open(self.url + path, timeout=STATUS_TIMEOUT) as resp:
                body = json.loads(resp.read())
        except Exception:  # down, refused, timed out, garbled: all mean "no answer"
            return None
        return body if isinstance(body, dict) else None

    # ----- data ------------------------------------------------------------------------
    def spool_paths(self) -> list[Path]:
        """Complete job files in the spool, oldest first (temporary `.part` files left out)."""
        return list_spool(self.domain.spool_dir(self.node))

    def resend_set_aside(self, spool: Path) -> Resent:
        """Each job file again, under its own id: the ids keep it to one print (this node
        answers for a job it printed before it failed, the host for one a client already
        sent again). A job no host takes raises, naming it."""
        sent, known = 0, 0
        for path in sorted(spool.glob(f"*{JOB_SUFFIX}")):
            job = json.loads(path.read_bytes())
            code, answer = self.submit(job["queue"], job.get("data", ""), job_id=job["job_id"])
            if code != 202:
                raise DriverError(f"set-aside job {job['job_id']} sent again via {self.node}: "
                                  f"{code} {answer.get('error', answer)}")
            if answer.get("duplicate"):
                known += 1
            else:
                sent += 1
        return Resent(sent=sent, duplicates=known)


def _wait_ready(fd: int, timeout: float) -> bool:
    """True once cosprintd writes READY on its pipe; False if the pipe closes first (it
    exited) or `timeout` passes. Closes `fd`."""
    try:
        return _readable(fd, timeout) and os.read(fd, len(READY)) == READY
    finally:
        os.close(fd)


def _readable(fd: int, timeout: float) -> bool:
    """Wait up to `timeout` s for `fd` to be readable or closed (poll: no FD_SETSIZE cap
    in a worker with many files open)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _pidfd(pid: int) -> int | None:
    """A pidfd of `pid`, or None where there is none (gone already, or no pidfd_open)."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None

