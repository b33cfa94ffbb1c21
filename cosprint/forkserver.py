"""Warm starts of cosprintd: a process that has imported the daemon once forks a
serving copy of itself for each start.

Every node restarts at once in a failover. A cosprintd started from scratch spends
~150 ms of CPU importing before it serves, and on a machine that runs many nodes those
starts queue for the same cores; a fork of a process that has imported costs a few ms.

A node's worker keeps one fork server for its node (`ReferenceDriver.prepare`). The
fork server runs the daemon's own command line plus `--fork-server FD`, so a service it
forks keeps a command line that names its node and domain: /proc (and fencing over SSH)
knows it for that node's cosprintd. The fork server itself is told apart by its process
name: a service renames itself `cosprintd` (see `cosprint.daemon.identity.names_cosprintd`).
The fork server exits when its starter closes its end of the socket (the worker exits
or dies); the services it forked run on, each in a session of its own, as a service
started from scratch would.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cosfail.cosprint.errors import DriverError

if TYPE_CHECKING:
    import subprocess

    # Starts the daemon's command line plus these arguments, passing it this fd.
    Spawn = Callable[[list[str], int], subprocess.Popen[bytes]]

FLAG = "--fork-server"
SERVICE_NAME = "cosprintd"  # what a forked service writes to /proc/self/comm
MAX_SETTINGS = 1 << 20


def serve_forks(sock_fd: int, run: Callable[[bytes, int], int]) -> int:
    """The fork server's loop. For each start asked for on the unix socket `sock_fd` (the
    service's settings, with the write end of its ready pipe attached), fork a child that
    returns `run(settings, ready_fd)` as its exit status, and answer with the child's
    pid. Returns 0 once the starter closes its end."""
    sock = socket.socket(fileno=sock_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps what it forks
    while True:
        try:
            raw, fds, _, _ = socket.recv_fds(sock, MAX_SETTINGS, 1)
        except ConnectionError:
            return 0
        if not raw:
            return 0
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            sock.send(b"0")  # a malformed request: no service, and the starter is told
            continue
        pid = os.fork()
        if pid == 0:
            sock.close()
            os._exit(_become_service(run, raw, fds[0]))
        os.close(fds[0])  # the service's copy alone: its exit closes the pipe
        sock.send(str(pid).encode())


def _become_service(run: Callable[[bytes, int], int], raw: bytes, ready_fd: int) -> int:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()  # as `start_new_session`: the starter's signals are not its own
    Path("/proc/self/comm").write_text(SERVICE_NAME)
    return run(raw, ready_fd)


class ForkServer:
    """The starter's end of one fork server, which `spawn` starts (the daemon's command
    line, plus the flag and the socket's fd) and `name` names in errors. Thread-safe; a
    fork server found gone is started again once."""

    def __init__(self, spawn: Spawn, name: str) -> None:
        self.spawn, self.name = spawn, name
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    def start(self, settings: bytes, ready_w: int) -> int:
        """Fork a service that reads `settings` and says on `ready_w` when it serves;
        returns its pid. The caller keeps (and closes) `ready_w`."""
        with self._lock:
            try:
                return self._ask(settings, ready_w)
            except (OSError, ValueError):
                self._close()
            try:
                return self._ask(settings, ready_w)
            except (OSError, ValueError) as exc:
                self._close()
                raise DriverError(f"{self.name}: cannot start cosprintd through its fork "
                                  f"server: {exc}") from None

    def _ask(self, settings: bytes, ready_w: int) -> int:
        sock = self._sock or self._spawn()
        socket.send_fds(sock, [settings], [ready_w])
        answer = sock.recv(32)
        pid = int(answer or b"0")
        if pid <= 0:
            raise OSError("it answered no pid" if answer else "it is gone")
        return pid

    def _spawn(self) -> socket.socket:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = self.spawn([FLAG, str(theirs.fileno())], theirs.fileno())
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self._sock = mine
        return mine

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()  # its end sees EOF and exits
            self._sock = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()  # not waited on: it serves nothing, and may not answer
                self._proc.wait()
            self._proc = None

    def warm(self) -> None:
        """Start the fork server now, so that the next start only forks."""
        with self._lock:
            if self._sock is None:
                self._spawn()

    def close(self) -> None:
        with self._lock:
            self._close()
