"""SSH and SFTP to another node's host, through paramiko, with verified host keys.

Who connects to whom: a step runs on the worker of the node it acts on. When it needs
something from another node (a snapshot, spool files) or must act on another node's
host (fencing), that worker connects to the *other* node using the other node's
`[node.ssh]` table: `host`, `port`, `user`, and `key_file` and `known_hosts`, which are
paths on the connecting machine (resolved against the domain file's directory, like
every path in domain.toml). So `[node.ssh]` of a node says "how to reach this node".

Host keys (docs/architecture.md, invariant 6): only the configured known_hosts file is loaded (never
the system's or the user's), and a key that is missing from it or differs from it is
refused with `HostKeyRefused`, naming host:port and the offered key's SHA256
fingerprint. Nothing is ever added to known_hosts. Remote commands are argument lists
joined with `shlex.join`: every argument is quoted, so no node name or path is ever
interpreted by the remote shell. Key material is never logged, nor put in task
arguments: only the key file's path is in domain.toml.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import shlex
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cosfail.cosprint.daemon.identity import names_cosprintd, pidfile_path
from cosfail.cosprint.domain import Domain
from cosfail.cosprint.errors import CosfailError
from cosfail.cosprint.fsutil import TMP_SUFFIX, fsync_dir

log = logging.getLogger("cosfail.remote")

CONNECT_TIMEOUT = 10.0  # TCP connect, SSH banner and authentication, each
IO_TIMEOUT = 30.0  # no byte from the peer for this long: the connection is lost
KEEPALIVE = 15  # seconds between SSH keepalives on an idle connection
CHUNK = 32 * 1024  # paramiko's largest SFTP read request
WINDOW = 4 * 1024 * 1024  # read-ahead per round of pipelined requests: bounds memory
TAIL_CHECK = 64 * 1024  # bytes of a partial file compared with the source before resuming
FENCE_WAIT = 10.0  # seconds for a remote cosprintd to exit on SIGTERM before SIGKILL

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


# ----- errors ---------------------------------------------------------------------------
class TransportError(CosfailError):
    """A file could not be moved between two nodes, or a node's host could not be used."""


class NoSuchFile(TransportError):
    """The file to fetch is not on the source node."""


class HostKeyRefused(TransportError):
    """The host offered a key that known_hosts does not have, or one that differs."""


class AuthRefused(TransportError):
    """The host refused our key."""


class TransportUnreachable(TransportError, ConnectionError):
    """No SSH connection could be made. A ConnectionError: steps retry it with backoff."""


class TransportInterrupted(TransportError, ConnectionError):
    """The connection was lost mid-transfer. A ConnectionError: steps retry it, and the
    retry resumes from what the interrupted attempt left under the temporary name."""


# ----- endpoints ------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """How to reach one node over SSH (no secret in here: paths only)."""

    node: str
    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def where(self) -> str:
        return f"{self.user}@{self.address}"

    @property
    def known_hosts_name(self) -> str:
        """The name a known_hosts line uses for this host (OpenSSH's convention)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def endpoint(domain: Domain, node: str) -> Endpoint:
    ssh = domain.node(node).ssh
    if ssh is None:
        raise TransportError(
            f"{node} has no [node.ssh] in {domain.path}: it cannot be reached over SSH"
        )
    return Endpoint(node=node, host=ssh.host, port=ssh.port, user=ssh.user,
                    key_file=domain.resolve(ssh.key_file),
                    known_hosts=domain.resolve(ssh.known_hosts))


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a public key: `SHA256:<base64, unpadded>`."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _RefuseUnknown(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, with an error that names the host and the key offered."""

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise HostKeyRefused(
            f"host key of {self.ep.address} ({self.ep.node}) is unknown: "
            f"{key.get_name()} {fingerprint(key)} is not in {self.ep.known_hosts}; refused "
            "(check the key with the host's administrator, then add it: cosfail never "
            "adds host keys)"
        )


# ----- a session ------------------------------------------------------------------------
@dataclass(frozen=True)
class Copied:
    size: int  # bytes of the file now in place
    resumed_at: int = 0  # bytes kept from an interrupted earlier attempt


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    mtime: float


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# What a dead peer or a dropped connection raises inside paramiko.
_LINK_ERRORS = (EOFError, OSError, paramiko.SSHException)


class Session:
    """One authenticated SSH connection to a node's host, with SFTP opened on demand."""

    def __init__(self, ep: Endpoint, client: paramiko.SSHClient) -> None:
        self.ep = ep
        self.client = client
        self._sftp: paramiko.SFTPClient | None = None

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except _LINK_ERRORS as exc:
                raise TransportInterrupted(
                    f"cannot open SFTP on {self.ep.where} ({self.ep.node}): {_reason(exc)}"
                ) from None
            self._sftp.get_channel().settimeout(IO_TIMEOUT)
        return self._sftp

    def close(self) -> None:
        try:
            if self._sftp is not None:
                self._sftp.close()
        except Exception:  # closing a dead connection: nothing left to tell
            pass
        self.client.close()

    # ----- files ------------------------------------------------------------------------
    def list_files(self, directory: Path, suffix: str) -> list[RemoteFile]:
        """Regular files in `directory` whose names end with `suffix`, oldest first
        (files still being written, `*.part`, left out)."""
        try:
            entries = self.sftp().listdir_attr(str(directory))
        except FileNotFoundError:
            return []
        except PermissionError as exc:
            raise TransportError(
                f"{self.ep.where} ({self.ep.node}): cannot list {directory}: {exc}"
            ) from None
        except _LINK_ERRORS as exc:
            raise self._lost(f"listing {directory}", exc) from None
        found = [RemoteFile(e.filename, e.st_size or 0, float(e.st_mtime or 0))
                 for e in entries
                 if e.filename.endswith(suffix) and not e.filename.endswith(TMP_SUFFIX)
                 and stat.S_ISREG(e.st_mode or 0)]
        return sorted(found, key=lambda f: (f.mtime, f.name))

    def get(self, remote: Path, local: Path, progress: Progress | None = None,
            sync_dir: bool = True, size: int | None = None) -> Copied:
        """Stream `remote` into `local`: under `local.part`, in chunks, fsynced, renamed.

        An interrupted attempt leaves only the `.part` file; the next attempt resumes
        from it once its last bytes match the source's (else it starts again). `size`:
        the file's size when the caller has just listed it (saves a round trip).
        """
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + TMP_SUFFIX)
        try:
            f = self.sftp().open(str(remote), "rb")
        except FileNotFoundError:
            raise NoSuchFile(f"{self.ep.node}:{remote}: no such file") from None
        except PermissionError as exc:
            raise TransportError(f"{self.ep.node}:{remote}: cannot read: {exc}") from None
        except _LINK_ERRORS as exc:
            raise self._lost(f"opening {remote}", exc) from None
        _quiet_prefetch(f)
        pos = start = 0
        try:
            if size is None or tmp.exists():
                size = f.stat().st_size or 0
            start = self._resume_point(f, tmp, size)
            pos = start
            with open(tmp, "r+b" if start else "wb") as out:
                out.truncate(start)
                out.seek(start)
                f.seek(start)
                while pos < size:
                    end = min(pos + WINDOW, size)
                    if end - pos > CHUNK:  # pipelined reads up to `end`: memory bounded
                        f.prefetch(end)
                    while pos < end:
                        data = f.read(min(CHUNK, end - pos))
                        if not data:
                            raise EOFError(f"{remote} ended early")
                        out.write(data)
                        pos += len(data)
                        if progress:
                            progress(pos, size)
                out.flush()
                os.fsync(out.fileno())
        except _LINK_ERRORS as exc:
            if isinstance(exc, OSError) and (exc.filename is not None or exc.errno in (
                    errno.ENOSPC, errno.EDQUOT, errno.EROFS)):
                raise  # a local disk problem, not the link
            raise self._lost(f"at byte {pos} of {size or '?'} of {remote}", exc) from None
        finally:
            try:
                f.close()
            except Exception:  # the connection is gone: the handle went with it
                pass
        os.replace(tmp, local)
        if sync_dir:
            fsync_dir(local.parent)
        if start:
            log.info("resumed %s:%s at byte %d of %d", self.ep.node, remote, start, size)
        return Copied(size=size, resumed_at=start)

    def _resume_point(self, f: paramiko.SFTPFile, tmp: Path, size: int) -> int:
        """Bytes of `tmp` (an earlier attempt) that can be kept: its tail must match."""
        try:
            have = tmp.stat().st_size
        except FileNotFoundError:
            return 0
        if have == 0 or have > size:
            return 0
        tail = min(have, TAIL_CHECK)
        f.seek(have - tail)
        theirs = b""
        while len(theirs) < tail:
            data = f.read(tail - len(theirs))
            if not data:
                return 0
            theirs += data
        with open(tmp, "rb") as mine:
            mine.seek(have - tail)
            if mine.read(tail) != theirs:
                return 0
        return have

    def _lost(self, what: str, exc: BaseException) -> TransportInterrupted:
        return TransportInterrupted(
            f"SFTP from {self.ep.where} ({self.ep.node}) lost {what}: {_reason(exc)}"
        )

    # ----- commands ---------------------------------------------------------------------
    def run(self, argv: list[str], timeout: float = IO_TIMEOUT) -> Ran:
        """Run one command; every argument is quoted (`shlex.join`), none interpreted."""
        command = shlex.join(argv)
        try:
            _in, out, err = self.client.exec_command(command, timeout=timeout)
            _in.close()
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
            code = out.channel.recv_exit_status()
        except _LINK_ERRORS as exc:
            raise TransportInterrupted(
                f"{self.ep.where} ({self.ep.node}): lost running {argv[0]}: {_reason(exc)}"
            ) from None
        return Ran(code, stdout, stderr)


def _quiet_prefetch(f: paramiko.SFTPFile) -> None:
    """Make a lost connection in paramiko's read-ahead thread an error of the reader.

    paramiko sends pipelined read requests from a thread of its own; when the connection
    drops, that thread dies with an uncaught EOFError (a traceback in the worker's log)
    while the reader gets its own error anyway. Keep the thread's error for the reader
    (paramiko's `_saved_exception` is re-raised by the next read) instead.
    """
    send = getattr(f, "_prefetch_thread", None)
    if send is None or not hasattr(f, "_saved_exception"):
        return  # another paramiko: leave it as it is

    def quiet(*args: object) -> None:
        try:
            send(*args)
        except _LINK_ERRORS as exc:
            f._saved_exception = exc

    f._prefetch_thread = quiet  # type: ignore[method-assign]


@contextmanager
def session(ep: Endpoint, timeout: float = CONNECT_TIMEOUT) -> Iterator[Session]:
    """An SSH connection to `ep`, its host key checked against `ep.known_hosts` only."""
    client = connect(ep, timeout)
    s = Session(ep, client)
    try:
        yield s
    finally:
        s.close()


def connect(ep: Endpoint, timeout: float = CONNECT_TIMEOUT) -> paramiko.SSHClient:
    if not ep.known_hosts.is_file():
        raise TransportError(f"{ep.node}: known_hosts file {ep.known_hosts} not found")
    try:
        pkey = paramiko.PKey.from_path(ep.key_file)
    except FileNotFoundError:
        raise TransportError(f"{ep.node}: key_file {ep.key_file} not found") from None
    except (OSError, ValueError, paramiko.SSHException) as exc:
        # Say which file, never what is in it.
        raise TransportError(
            f"{ep.node}: cannot load key_file {ep.key_file} ({type(exc).__name__})"
        ) from None
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(str(ep.known_hosts))  # this file only: no system keys
    except (OSError, paramiko.SSHException, ValueError) as exc:
        client.close()
        raise TransportError(
            f"{ep.node}: cannot read known_hosts {ep.known_hosts}: {_reason(exc)}"
        ) from None
    client.set_missing_host_key_policy(_RefuseUnknown(ep))
    try:
        client.connect(
            ep.host, port=ep.port, username=ep.user, pkey=pkey,
            look_for_keys=False, allow_agent=False, timeout=timeout,
            banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
        )
    except HostKeyRefused:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyRefused(
            f"host key of {ep.address} ({ep.node}) has changed: it offered "
            f"{exc.key.get_name()} {fingerprint(exc.key)}, {ep.known_hosts} expects "
            f"{exc.expected_key.get_name()} {fingerprint(exc.expected_key)}; refused "
            "(a reinstalled host, or someone in the middle: check before updating "
            "known_hosts)"
        ) from None
    except paramiko.AuthenticationException:
        client.close()
        raise AuthRefused(
            f"{ep.where} ({ep.node}) refused authentication with key {ep.key_file}"
        ) from None
    except _LINK_ERRORS as exc:  # refused, timed out, no SSH banner, ...
        client.close()
        raise TransportUnreachable(
            f"cannot reach {ep.where} ({ep.node}) over SSH: {_reason(exc)}"
        ) from None
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(KEEPALIVE)
    log.info("connected to %s (%s)", ep.where, ep.node)
    return client


# ----- fencing --------------------------------------------------------------------------
def fence_cosprint(domain: Domain, node: str) -> str:
    """Stop `node`'s COSprint on its host over SSH; the outcome as one sentence.

    Reads the pidfile, checks that the pid is that node's cosprintd (never signals a
    reused pid), sends SIGTERM, then SIGKILL if it outlives FENCE_WAIT, and checks that
    it is gone. A host that cannot be reached is reported, not raised: the failover goes
    on (the epoch already keeps a returning server from acting as master).
    """
    try:
        ep = endpoint(domain, node)
        with session(ep) as s:
            return _stop_cosprintd(s, domain, node)
    except TransportError as exc:
        log.warning("%s not fenced: %s", node, exc)
        return f"{node} not fenced: {exc}"


def _stop_cosprintd(s: Session, domain: Domain, node: str) -> str:
    via = f"over SSH ({s.ep.where})"
    pidfile = pidfile_path(domain, node)
    got = s.run(["cat", "--", str(pidfile)])
    if got.code != 0:
        if "No such file" in got.err:
            return f"fenced {node} {via}: its COSprint was not running (no pidfile)"
        return f"{node} not fenced: cannot read {pidfile} {via}: {got.err.strip()[:200]}"
    try:
        pid = int(got.out.strip())
    except ValueError:
        return f"{node} not fenced: {pidfile} {via} holds no pid"

    def alive() -> bool:
        # One read of both: the cmdline's arguments end in NUL, the comm in a newline.
        cmd = s.run(["cat", "--", f"/proc/{pid}/cmdline", f"/proc/{pid}/comm"])
        cmdline, _, comm = cmd.out.rpartition("\0")
        return cmd.code == 0 and names_cosprintd(cmdline, comm, node, domain.path)

    if not alive():
        return (f"fenced {node} {via}: its COSprint was not running "
                f"(stale pidfile: pid {pid} is no cosprintd of {node})")
    for sig, wait in (("TERM", FENCE_WAIT), ("KILL", 5.0)):
        s.run(["kill", f"-{sig}", str(pid)])
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive():
                return f"fenced {node} {via}: stopped cosprintd pid {pid} (SIG{sig})"
            time.sleep(0.1)
    return f"{node} not fenced: cosprintd pid {pid} {via} survived SIGKILL"
