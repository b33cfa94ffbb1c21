"""A PostgreSQL cluster of the caller's own: `initdb` + `pg_ctl` in a directory, on a
free loopback port, run as the unprivileged `postgres` user when started by root
(PostgreSQL refuses to run as root). The tests' ledger server and `cosfail demo
--hosts`'s; never the machine's shared server.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from cosfail.cosprint.errors import CosfailError

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
SERVER_USER = "postgres"


class PostgresError(CosfailError):
    """A PostgreSQL program the launcher runs failed."""


def pg_binary(name: str) -> str:
    """`name` (initdb, pg_ctl, ...) from the newest installed PostgreSQL, else PATH."""
    for d in PG_BIN_DIRS:
        if (d / name).exists():
            return str(d / name)
    found = shutil.which(name)
    if not found:
        raise PostgresError(f"PostgreSQL's {name} is not installed: apt-get install postgresql")
    return found


class LocalPostgres:
    """One PostgreSQL server in `workdir/data`, listening on `host`:`port` with trust
    authentication (it is reachable from nowhere but this machine and its namespaces).
    `stop` then `start` brings it back with its data on the same port."""

    def __init__(self, workdir: Path, port: int, host: str = "127.0.0.1",
                 netns_exec: tuple[str, ...] = (), trusted: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.data = self.workdir / "data"
        self.log = self.workdir / "postgres.log"
        self.host = host
        self.port = port
        self.netns_exec = netns_exec  # runs it on a lab host (launcher/hosts.py)
        self.trusted = trusted  # a network (CIDR) let in without a password, besides loopback

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SERVER_USER}@{self.host}:{self.port}/{database}"

    def _as_server_user(self, *argv: str,
                        check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program as the server's own user (dropping root if we are)."""
        cmd = list(argv)
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PostgresError(f"no {SERVER_USER!r} user to run PostgreSQL as "
                                 "(it refuses to run as root)") from None
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        cmd = [*self.netns_exec, *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # noqa: S603
        if check and done.returncode != 0:
            why = (done.stderr or done.stdout).strip()
            raise PostgresError(f"{Path(argv[0]).name} failed: {why}")
        return done

    def _own_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.workdir, user.pw_uid, user.pw_gid)
            # initdb must reach workdir through every parent (pytest's tmp dirs are 0700)
            for parent in self.workdir.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists() and self._as_server_user(
            pg_binary("pg_ctl"), "-D", str(self.data), "status", check=False).returncode == 0

    def start(self, timeout: float = 30.0) -> None:
        """Make the cluster if there is none, and start it unless it runs."""
        if self.running():
            return
        self._own_workdir()  # again each time: another pytest run may have reset a parent
        if not (self.data / "PG_VERSION").exists():
            self._as_server_user(pg_binary("initdb"), "-D", str(self.data), "-A", "trust",
                                 "-U", SERVER_USER, "-E", "UTF8", "--no-sync")
            if self.trusted:
                with open(self.data / "pg_hba.conf", "a") as hba:
                    hba.write(f"host all all {self.trusted} trust\n")
        try:
            self._as_server_user(
                pg_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                "-t", str(int(timeout)), "-o",
                # fsync off: a lab server, lost only with the machine itself (pg_ctl's
                # "immediate" stop, the crash the tests make, loses nothing)
                # no Unix socket: every client comes over TCP, and a socket's path (at
                # most 107 bytes) under a deep work dir would stop the server at start
                f"-p {self.port} -h {self.host} -c unix_socket_directories='' "
                "-c fsync=off", "start")
        except PostgresError as e:
            raise PostgresError(f"{e} ({self.log}: {self._last_logged()})") from None

    def _last_logged(self) -> str:
        """pg_ctl says only that the server did not start; its log says why."""
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError as e:
            return f"unreadable: {e.strerror}"
        fatal = [line for line in lines if " FATAL: " in line or " PANIC: " in line]
        return (fatal or lines or ["empty"])[-1]

    def stop(self, mode: str = "fast", check: bool = True) -> None:
        """`mode` is pg_ctl's: "fast" (roll back, disconnect) or "immediate" (a crash)."""
        if (self.data / "postmaster.pid").exists():
            self._as_server_user(pg_binary("pg_ctl"), "-D", str(self.data), "-m", mode,
                                 "-w", "stop", check=check)

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        self._as_server_user(pg_binary("createdb"), *self._client_args(), name)
        return self.url(name)

    def ensure_database(self, name: str) -> None:
        """Database `name`, made unless it exists."""
        listed = self._as_server_user(pg_binary("psql"), *self._client_args(), "-d",
                                      "postgres", "-tAl").stdout
        if name not in {line.split("|")[0] for line in listed.splitlines()}:
            self.create_database(name)

    def _client_args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", SERVER_USER]

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
