"""`cosprintd`: the reference COSprint service, one real process per node.

It serves HTTP on 127.0.0.1:<node.port>, accepts print jobs into its spool, prints them
into per-printer sink files, and forwards jobs for queues other nodes host. Its role is
decided from the node's designation file *and* the authoritative state in the ledger: a
node whose epoch is older than the domain's never acts as master (docs/architecture.md,
invariant 2).
That decision is re-made before every act that matters (accepting or printing a job,
claiming a printing role in /status), not only on a timer, so split brain is impossible
by construction rather than by timing.

    python -m cosprint.daemon --domain PATH --node NAME

Startup is on the failover critical path, where every node restarts at once: on SQLite
(tables and ledger) a start imports only the stdlib and cosprint's stdlib-only modules.
The reference driver hands the daemon its settings as JSON on stdin (`--settings-stdin`)
and learns that it serves from a line on a pipe (`--ready-fd`); started by hand, the
daemon reads the domain file itself (pydantic), and SQLAlchemy is imported only for a
database that is not an SQLite file or tables that do not exist yet.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import logging
import os
import re
import selectors
import signal
import socketserver
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosprint import designation, forkserver, plainsql
from cosprint.designation import Designation
from cosprint.errors import CosfailError, DriverError
from cosprint.fsutil import atomic_write_bytes, fsync_dir

if TYPE_CHECKING:
    import urllib.request

    from cosprint.domain import Domain

log = logging.getLogger("cosprintd")

# Paths inside a node's home; the driver uses the same constants.
PIDFILE = Path("var/cosprintd.pid")
LOGFILE = Path("var/log/cosprintd.log")
SINK_DIR = Path("var/sink")
REJECTED_DIR = Path("var/spool-rejected")
JOB_SUFFIX = ".job"

MASTER, SERVER, SLAVE, STALE, UNVERIFIED = "master", "server", "slave", "stale", "unverified"
PRINTING_ROLES = frozenset({MASTER, SERVER})

TICK = 0.5  # seconds between background re-checks of designation and authority
RECOUNT_EVERY = 10  # ticks between recounts of hosted objects (a GROUP BY on 6 tables)
PRINTER_POLL = 0.2  # seconds; also picks up spool files dropped in by others
FORWARD_TIMEOUT = 5.0
MAX_HOPS = 3  # forwards between nodes whose tables disagree must not loop forever
MAX_BODY = 32 * 1024 * 1024
TABLES_TIMEOUT = 10.0  # seconds an SQLite read waits on a writer's lock
LEDGER_TIMEOUT = 5.0
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
READY = b"ready\n"  # written on --ready-fd once the service answers
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")


@functools.cache
def _opener() -> urllib.request.OpenerDirector:
    import urllib.request

    # Loopback traffic must never go through an http_proxy from the environment.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ----- role decision (pure) ------------------------------------------------------------
def decide_role(
    node: str,
    designation: Designation | None,
    authority: Designation | None,
    *,
    hosts_objects: bool,
    designation_error: str | None = None,
    authority_error: str | None = None,
) -> tuple[str, str]:
    """The role `node` may serve in, and why.

    `designation` is the node's own copy (None when missing or malformed, with
    `designation_error` saying which); `authority` is the ledger's state (None when it
    cannot be read or was never initialised, with `authority_error`).

    - master: the designation names the node and equals the authority exactly;
    - stale: the node's epoch is unknown, older than, or disagrees with the authority's:
      it refuses jobs for objects it hosts until restart-check or reclaim fixes it;
    - unverified: the authority cannot be read, and the node would otherwise be master
      or host objects: it must not print, but this is transient, not a reclaim;
    - server / slave: epoch confirmed; hosts objects or not.
    """
    if designation is None:
        why = designation_error or "no designation file"
        return STALE, f"{node}: {why}; epoch unknown, restart-check or reclaim needed"
    if authority is None:
        why = authority_error or "no authoritative state in the ledger"
        if designation.master == node or hosts_objects:
            return UNVERIFIED, (
                f"{node}: cannot verify designation {designation} against the authority "
                f"({why}); not printing"
            )
        return SLAVE, f"{node}: authority unreadable ({why}); slave on designation {designation}"
    if designation.epoch < authority.epoch:
        return STALE, (
            f"{node}: designation {designation} is older than the authority's {authority}; "
            "reclaim needed"
        )
    if designation != authority:
        return STALE, f"{node}: designation {designation} disagrees with authority {authority}"
    if designation.master == node:
        return MASTER, f"{node}: designated master at epoch {authority.epoch}, confirmed"
    if hosts_objects:
        return SERVER, f"{node}: hosts objects; master is {authority}"
    return SLAVE, f"{node}: hosts nothing; master is {authority}"


# ----- settings ------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What the daemon needs of the domain file: `Domain.service_settings`, as read back."""

    domain: str
    domain_file: Path
    node: str
    port: int
    home: Path
    spool: Path
    tables: str
    ledger: str
    peers: dict[str, str]  # node name -> its service URL

    @classmethod
    def from_json(cls, raw: bytes) -> Settings:
        try:
            d = json.loads(raw)
        except ValueError as exc:
            raise CosfailError(f"settings are not JSON: {exc}") from None
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: Any) -> Settings:
        try:
            peers = d["peers"]
            settings = cls(
                domain=str(d["domain"]),
                domain_file=Path(d["domain_file"]),
                node=str(d["node"]),
                port=int(d["port"]),
                home=Path(d["home"]),
                spool=Path(d["spool"]),
                tables=str(d["tables"]),
                ledger=str(d["ledger"]),
                peers={str(k): str(v) for k, v in peers.items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CosfailError(f"malformed settings: {type(exc).__name__} {exc}") from None
        return settings


# ----- small helpers shared with the reference driver ----------------------------------
def pidfile_path(domain: Domain, node: str) -> Path:
    return domain.home(node) / PIDFILE


def log_path(domain: Domain, node: str) -> Path:
    return domain.home(node) / LOGFILE


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_cosprintd(pid: int, node: str, domain_file: Path | None = None) -> bool:
    """True if `pid` is a live cosprintd of `node` (not a zombie, not a reused pid, not
    a fork server).

    With `domain_file`, a process started with an absolute --domain must name that file:
    two domains on one machine may both have a node called srv1.
    """
    proc = Path(f"/proc/{pid}")
    try:
        cmdline, comm = (proc / "cmdline").read_bytes(), (proc / "comm").read_text()
    except OSError:
        return False
    return names_cosprintd(cmdline.decode(errors="replace"), comm, node, domain_file)


def names_cosprintd(cmdline: str, comm: str, node: str, domain_file: Path | None) -> bool:
    """Whether a process's /proc `cmdline` and `comm` are those of a cosprintd serving
    `node`: a fork server has its services' command line, but only they rename
    themselves (cosprint.forkserver)."""
    args = cmdline.split("\0")  # a zombie's cmdline is empty
    is_daemon = "cosprint.daemon" in args or any(a.endswith("/cosprintd") for a in args)
    opts = dict(zip(args, args[1:], strict=False))
    if not is_daemon or opts.get("--node") != node:
        return False
    if forkserver.FLAG in args and comm.strip() != forkserver.SERVICE_NAME:
        return False
    other = opts.get("--domain", "")
    return domain_file is None or not os.path.isabs(other) or Path(other) == domain_file


def spool_job(spool: Path, job: dict[str, Any]) -> Path:
    """Write one job into `spool` atomically (temp name, fsync, rename)."""
    path = spool / f"{job['job_id']}{JOB_SUFFIX}"
    atomic_write_bytes(path, json.dumps(job).encode())
    return path


def list_spool(spool: Path) -> list[Path]:
    """Complete job files, oldest first (a `.part` file is a write still in progress)."""
    try:
        entries = [p for p in spool.iterdir() if p.name.endswith(JOB_SUFFIX)]
    except FileNotFoundError:
        return []
    return sorted(entries, key=_mtime_or_zero)


def _mtime_or_zero(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except FileNotFoundError:  # printed by another node sharing the spool meanwhile
        return 0.0


@functools.cache
def _with_packages() -> None:
    """Make installed packages importable. The reference driver runs the daemon with
    `python -S`: processing site-packages (.pth files) is two thirds of a bare
    interpreter's start, and a start on SQLite files needs no package."""
    if sys.flags.no_site:
        import site

        site.main()


def _database(url: str, timeout: float) -> plainsql.Database:
    if plainsql.sqlite_file(url) is None:
        _with_packages()  # SQLAlchemy reads any other URL
    return plainsql.Database(url, timeout)


def _open_tables(url: str) -> plainsql.Database:
    """The node's tables, their schema created first on a fresh node."""
    path = plainsql.sqlite_file(url)
    if path is None or not plainsql.has_tables(path, plainsql.OBJECT_TABLE_NAMES):
        _with_packages()
        from cosprint import tables  # SQLAlchemy: the schema has one definition

        tables.open_tables(url).dispose()
    return _database(url, TABLES_TIMEOUT)


# ----- the role keeper -----------------------------------------------------------------
@dataclass
class RoleState:
    role: str
    reason: str
    designation: Designation | None
    authority: Designation | None
    hosted: int
    read_at: float = field(default=0.0)


class RoleKeeper:
    """Reads designation + authority and decides the role; cheap enough to call per job."""

    def __init__(self, settings: Settings, tables_db: plainsql.Database) -> None:
        self.settings = settings
        self.node = settings.node
        self.tables_db = tables_db
        self.ledger = _database(settings.ledger, LEDGER_TIMEOUT)
        self._ledger_file = self.ledger.sqlite_path
        self._designation_path = settings.home / designation.DESIGNATION
        self._lock = threading.Lock()
        self._hosted: int | None = None
        self.state = RoleState(STALE, f"{self.node}: not decided yet", None, None, 0)

    def count_hosted(self) -> int:
        row = self.tables_db.first(plainsql.HOSTED_BY, {"host": self.node})
        return int(row[0]) if row else 0

    def _read_designation(self) -> tuple[Designation | None, str | None]:
        try:
            return designation.read(self._designation_path), None
        except CosfailError as exc:
            return None, str(exc)

    def _read_authority(self) -> tuple[Designation | None, str | None]:
        if self._ledger_file is not None and not self._ledger_file.exists():
            # Connecting would create an empty ledger file as a side effect.
            return None, f"ledger {self._ledger_file} not found"
        domain = self.settings.domain
        try:
            row = self.ledger.first(plainsql.AUTHORITY, {"domain": domain})
            current = Designation(str(row[0]), int(row[1])) if row else None
        except Exception as exc:  # any DB failure means "cannot verify", never "master"
            return None, f"ledger unreadable: {type(exc).__name__}"
        if current is None:
            return None, f"no authoritative state for domain {domain!r}"
        return current, None

    def _decide(self, read_at: float, recount: bool) -> RoleState:
        desig, desig_err = self._read_designation()
        if recount or self._hosted is None or desig != self.state.designation:
            self._hosted = self.count_hosted()
        hosted = self._hosted
        auth, auth_err = self._read_authority()
        role, reason = decide_role(
            self.node,
            desig,
            auth,
            hosts_objects=hosted > 0,
            designation_error=desig_err,
            authority_error=auth_err,
        )
        return RoleState(role, reason, desig, auth, hosted, read_at)

    def refresh(self, recount: bool = False) -> RoleState:
        """Re-read everything now, store the result unless a newer read already won."""
        read_at = time.monotonic()
        try:
            new = self._decide(read_at, recount)
        except Exception as exc:  # e.g. unreadable tables: never keep a stale "master"
            log.exception("role check failed on %s", self.node)
            why = f"{self.node}: role check failed ({type(exc).__name__}); not printing"
            new = RoleState(UNVERIFIED, why, None, None, self._hosted or 0, read_at)
        with self._lock:
            old = self.state
            if read_at >= old.read_at:
                self.state = new
        changed = (old.role, old.reason) != (new.role, new.reason)
        if changed and old.read_at and read_at >= old.read_at:  # serve() logs the first
            level = logging.WARNING if new.role not in PRINTING_ROLES else logging.INFO
            log.log(level, "role %s -> %s: %s", old.role, new.role, new.reason)
        return new

    def verified(self) -> RoleState:
        """The role to act on: freshly re-checked if the cache claims a printing role."""
        state = self.state
        if state.role in PRINTING_ROLES:
            return self.refresh()
        return state

    def run(self, stop: threading.Event) -> None:
        ticks = 0
        while not stop.wait(TICK):
            ticks += 1
            self.refresh(recount=ticks % RECOUNT_EVERY == 0)


# ----- the service ---------------------------------------------------------------------
class Service:
    """One node's COSprint: spool, printer thread, role keeper, job routing."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        self.settings = settings
        self.node = settings.node
        self.home = settings.home
        self.spool = settings.spool
        self.sink_dir = self.home / SINK_DIR
        self.tables_db = _open_tables(settings.tables)
        self.keeper = RoleKeeper(settings, self.tables_db)
        self.up_since = time.time()
        self.stop_event = stop
        self.wake = threading.Event()
        self._accept_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._counts = {"accepted": 0, "forwarded": 0, "refused": 0}  # since this start
        self._intake_open = True  # closed by a graceful stop, before its last drain
        self.printed: set[str] = set()

    # ----- lookups ---------------------------------------------------------------------
    def queue_route(self, queue: str) -> tuple[str, str] | None:
        """(host, printer name) of `queue` in this node's tables, None if unknown."""
        row = self.tables_db.first(plainsql.QUEUE_ROUTE, {"queue": queue})
        return (row[0], row[1]) if row else None

    def count(self, what: str) -> None:
        with self._count_lock:
            self._counts[what] += 1

    def _counts_copy(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self._counts)

    def status(self) -> dict[str, Any]:
        s = self.keeper.verified()
        d = s.designation
        return {
            "node": self.node,
            "role": s.role,
            "master": d.master if d else "",
            "epoch": d.epoch if d else 0,
            "hosted": s.hosted,
            "up_since": self.up_since,
            "pid": os.getpid(),
            "reason": s.reason,
            "authority": str(s.authority) if s.authority else None,
        }

    def job_counts(self) -> dict[str, Any]:
        return {
            "node": self.node,
            **self._counts_copy(),
            "printed": len(self.printed),
            "pending": len(list_spool(self.spool)),
        }

    # ----- accepting jobs --------------------------------------------------------------
    def submit(self, body: dict[str, Any], hops: int) -> tuple[int, dict[str, Any]]:
        """Route one job: spool it here, forward it to its host, or refuse it."""
        queue, data, job_id = body.get("queue"), body.get("data", ""), body.get("job_id")
        if not isinstance(queue, str) or not queue:
            return 400, {"error": f"{self.node}: a job needs a 'queue' (string)"}
        if not isinstance(data, str):
            return 400, {"error": f"{self.node}: 'data' must be a string"}
        if job_id is None:
            job_id = os.urandom(16).hex()  # chosen before forwarding: retries stay one job
        if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
            return 400, {"error": f"{self.node}: job_id must match {_JOB_ID_RE.pattern}"}
        if job_id in self.printed:  # sent again (a reclaim resends a dead node's spool)
            return 202, {"job_id": job_id, "printed_by": self.node, "duplicate": True}
        route = self.queue_route(queue)
        if route is None:
            return 404, {"error": f"{self.node}: unknown queue {queue!r}"}
        host, _printer = route
        if host != self.node:
            return self.forward(host, {"queue": queue, "data": data, "job_id": job_id}, hops)
        return self.accept(queue, data, job_id)

    def accept(self, queue: str, data: str, job_id: str) -> tuple[int, dict[str, Any]]:
        state = self.keeper.refresh()  # acting as host: the authority is checked right now
        if state.role not in PRINTING_ROLES:
            self.count("refused")
            if state.role == UNVERIFIED:
                return 503, {"error": state.reason, "retriable": True}
            # Never final: a hosting change in flight re-points this node within seconds
            # (every server but the failed one is stale from its new epoch until its
            # stop), or reclaim does; then the node takes, or forwards, the same job.
            return 503, {
                "error": f"{self.node}: stale epoch, reclaim needed or a re-point under "
                "way; send the job again",
                "reason": state.reason,
                "retriable": True,
            }
        answer = {"job_id": job_id, "printed_by": self.node}
        with self._accept_lock:
            path = self.spool / f"{job_id}{JOB_SUFFIX}"
            if job_id in self.printed or path.exists():
                return 202, {**answer, "duplicate": True}  # a client retry: still one job
            if not self._intake_open:
                self.count("refused")
                return 503, {"error": f"{self.node}: stopping; send the job again",
                             "retriable": True}
            job = {
                "job_id": job_id,
                "queue": queue,
                "data": data,
                "accepted_by": self.node,
                "accepted_at": time.time(),
            }
            spool_job(self.spool, job)
            self.count("accepted")
        log.info("accepted job %s for queue %s", job_id, queue)
        self.wake.set()
        return 202, answer

    def close_intake(self) -> None:
        """Refuse every job from now on (503, retriable), once any accept midway has
        spooled its job: nothing accepted can land in the spool after the last drain."""
        with self._accept_lock:
            self._intake_open = False

    def forward(self, host: str, job: dict[str, Any], hops: int) -> tuple[int, dict[str, Any]]:
        if hops >= MAX_HOPS:
            return 508, {
                "error": f"{self.node}: job for {job['queue']!r} forwarded {hops} "
                "times; the nodes' tables disagree on its host"
            }
        if host not in self.settings.peers:
            return 502, {
                "error": f"{self.node}: queue {job['queue']!r} is hosted by "
                f"{host!r}, which the domain does not declare"
            }
        url = self.settings.peers[host] + "/jobs"
        import urllib.error  # at the first forward, not at start: costly imports
        import urllib.request

        opener = _opener()
        req = urllib.request.Request(
            url,
            data=json.dumps(job).encode(),
            headers={"Content-Type": "application/json", "X-COSprint-Hops": str(hops + 1)},
            method="POST",
        )
        try:
            with opener.open(req, timeout=FORWARD_TIMEOUT) as resp:
                code, answer = resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            code, answer = exc.code, _json_or_text(exc.read())
        except (OSError, ValueError, http.client.HTTPException) as exc:
            why = getattr(exc, "reason", exc)
            return 503, {
                "error": f"{self.node}: host {host} of queue {job['queue']!r} is "
                f"unreachable at {url}: {why}",
                "retriable": True,
            }
        if code < 300:
            self.count("forwarded")
            log.info("forwarded job %s to %s", job["job_id"], host)
        return code, answer

    # ----- printing --------------------------------------------------------------------
    def load_printed(self) -> None:
        """Job ids already in this node's sinks: a replayed spool file is not reprinted."""
        for sink in sorted(self.sink_dir.glob("*.log")):
            with open(sink, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        self.printed.add(json.loads(line)["job_id"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line from a crash mid-append

    def print_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.print_pending()
            except Exception:
                log.exception("printer of %s failed; retrying", self.node)
                self.stop_event.wait(1.0)
            self.wake.wait(PRINTER_POLL)
            self.wake.clear()

    def print_pending(self, draining: bool = False) -> None:
        files = list_spool(self.spool)
        if not files or self.keeper.verified().role not in PRINTING_ROLES:
            return
        for path in files:
            if (self.stop_event.is_set() and not draining) or \
                    self.keeper.state.role not in PRINTING_ROLES:
                return  # a stop or a demotion lets the current print finish, no more
            self.print_one(path)

    def print_one(self, path: Path) -> None:
        try:
            job = json.loads(path.read_bytes())
            job_id, queue = job["job_id"], job["queue"]
        except FileNotFoundError:
            return  # taken by the other node of a shared spool
        except (ValueError, KeyError, TypeError):
            self.reject(path, "not a job file")
            return
        route = self.queue_route(queue)
        if route is None:
            self.reject(path, f"unknown queue {queue!r}")
            return
        host, printer = route
        if host != self.node:
            return  # another node hosts it (shared spool): not ours to print
        if job_id in self.printed:
            log.info("job %s was printed before a crash; removing its spool file", job_id)
        else:
            self.append_to_sink(printer, job)
        # Append first, unlink second: a crash in between replays into the check above.
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def append_to_sink(self, printer: str, job: dict[str, Any]) -> None:
        line = {
            "job_id": job["job_id"],
            "queue": job["queue"],
            "printer": printer,
            "node": self.node,
            "time": time.time(),
            "bytes": len(job.get("data", "")),
        }
        self.sink_dir.mkdir(parents=True, exist_ok=True)
        sink = self.sink_dir / f"{_UNSAFE_FILENAME.sub('_', printer)}.log"
        with open(sink, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.printed.add(job["job_id"])
        log.info("printed job %s on %s", job["job_id"], printer)

    def reject(self, path: Path, why: str) -> None:
        """Set an unprintable spool file aside; never delete it."""
        dest = self.home / REJECTED_DIR / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, dest)
        except FileNotFoundError:
            return
        log.error("spool file %s set aside in %s: %s", path.name, dest.parent, why)


def _json_or_text(raw: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(raw)
    except ValueError:
        return {"error": raw.decode(errors="replace")[:500]}
    return answer if isinstance(answer, dict) else {"error": str(answer)}


# ----- HTTP ----------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    server: CosprintServer
    server_version = "cosprintd/0.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        svc = self.server.service
        if self.path == "/status":
            self.reply(200, svc.status())
        elif self.path == "/jobs":
            self.reply(200, svc.job_counts())
        else:
            self.reply(404, {"error": f"{svc.node}: no such path {self.path!r}"})

    def do_POST(self) -> None:  # noqa: N802
        svc = self.server.service
        if self.path != "/jobs":
            self.reply(404, {"error": f"{svc.node}: no such path {self.path!r}"})
            return
        body = self.read_json()
        if body is None:
            return
        try:
            hops = int(self.headers.get("X-COSprint-Hops", "0"))
        except ValueError:
            hops = MAX_HOPS
        try:
            code, answer = svc.submit(body, hops)
        except Exception:
            log.exception("job submission failed on %s", svc.node)
            code, answer = (
                500,
                {"error": f"{svc.node}: internal error (see its log)", "retriable": True},
            )
        self.reply(code, answer)

    def read_json(self) -> dict[str, Any] | None:
        node = self.server.service.node
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.reply(411, {"error": f"{node}: Content-Length required"})
            return None
        if length > MAX_BODY:
            self.reply(413, {"error": f"{node}: job larger than {MAX_BODY} bytes"})
            return None
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self.reply(400, {"error": f"{node}: body must be a JSON object"})
            return None
        return body

    def reply(self, code: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # /status is polled many times a second; only failed requests are worth a line.
        code = getattr(code, "value", code)
        if isinstance(code, int) and code >= 400:
            log.info("%s %r -> %d", self.client_address[0], self.requestline, code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.info("%s %s", self.client_address[0], format % args)


class CosprintServer(ThreadingHTTPServer):
    daemon_threads = False  # a graceful stop lets in-flight requests finish
    block_on_close = True

    def __init__(self, service: Service, port: int) -> None:
        self.service = service
        self._wake_r, self._wake_w = os.pipe()  # first: a failed bind calls server_close()
        super().__init__(("127.0.0.1", port), Handler)

    def server_bind(self) -> None:
        # HTTPServer's own also looks up the address's FQDN (a resolver round trip, tens
        # of ms on a start) for a name that nothing here uses.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def serve_until_stopped(self) -> None:
        """Answer requests until stop_serving(), which wakes it at once: serve_forever
        would notice a shutdown only at its next poll tick, and a stop is on the
        failover's critical path."""
        self.timeout = 0  # handle_request() takes the connection select() saw, never waits
        with selectors.DefaultSelector() as sel:
            sel.register(self, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not any(key.fd == self._wake_r for key, _ in sel.select()):
                self.handle_request()

    def stop_serving(self) -> None:
        os.write(self._wake_w, b"\0")

    def server_close(self) -> None:
        super().server_close()
        os.close(self._wake_r)
        os.close(self._wake_w)


# ----- process lifecycle ---------------------------------------------------------------
def _setup_logging(path: Path, node: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(f"%(asctime)s cosprintd[%(process)d] {node} %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.FileHandler(path)]
    if sys.stderr.isatty():  # the driver sends stderr to the same file: avoid doubles
        handlers.append(logging.StreamHandler())
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(logging.INFO)


def _refuse_if_running(path: Path, settings: Settings) -> None:
    other = read_pid(path)
    if other and other != os.getpid() and is_cosprintd(other, settings.node,
                                                       settings.domain_file):
        raise DriverError(f"node {settings.node}: cosprintd already running as pid {other}")


def _release_pidfile(path: Path) -> None:
    if read_pid(path) == os.getpid():
        path.unlink(missing_ok=True)


def _bind(service: Service, port: int) -> CosprintServer:
    try:
        return CosprintServer(service, port)  # binds now: a busy port fails fast
    except OSError as exc:
        raise DriverError(
            f"node {service.node}: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}"
        ) from None


def _say_ready(fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.write(fd, READY)
    except OSError:  # the starter is gone: nobody to tell
        pass
    finally:
        os.close(fd)


def serve(settings: Settings, ready_fd: int | None = None) -> int:
    """Run the service until SIGTERM/SIGINT; returns the exit status."""
    # First, and inherited by every thread: the stop signals wait for sigwait() below, so a
    # stop is seen the moment it comes (a handler runs only when the main thread wakes,
    # whichever thread the kernel picked), and one during startup is graceful once started.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    port = settings.port
    pidfile = settings.home / PIDFILE
    stop = threading.Event()
    _refuse_if_running(pidfile, settings)
    service = Service(settings, stop)
    server = _bind(service, port)
    try:
        # Written only once the port is ours: of two racing starts, the loser never
        # touches the winner's pidfile.
        atomic_write_bytes(pidfile, f"{os.getpid()}\n".encode())
        service.spool.mkdir(parents=True, exist_ok=True)
        service.load_printed()
        state = service.keeper.refresh(recount=True)  # decided before the first answer
        log.info("started on 127.0.0.1:%d as %s: %s", port, state.role, state.reason)
        threads = [
            threading.Thread(target=server.serve_until_stopped, name="http", daemon=True),
            threading.Thread(target=service.keeper.run, args=(stop,), name="role", daemon=True),
            threading.Thread(target=service.print_loop, name="printer", daemon=True),
        ]
        for t in threads:
            t.start()
        _say_ready(ready_fd)
        signal.sigwait(STOP_SIGNALS)
        stop.set()
        log.info("stopping")
        # A request already read may still be on its way to accept(): it is refused now
        # rather than spooled after the drain below (and left unprinted).
        service.close_intake()
        server.stop_serving()
        threads[0].join()
        service.wake.set()
        threads[2].join(timeout=30)  # the printer finishes the job it is on
        # A graceful stop prints what it accepted: a switchover loses no queued job.
        service.print_pending(draining=True)
    finally:
        server.server_close()
        _release_pidfile(pidfile)
    log.info("stopped")
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    if args.settings_stdin:
        return _settings_of(args.node, sys.stdin.buffer.read())
    _with_packages()
    from cosprint.domain import load_domain  # pydantic: only for a start by hand

    return Settings.from_dict(load_domain(args.domain).service_settings(args.node))


def _settings_of(node: str, raw: bytes) -> Settings:
    settings = Settings.from_json(raw)
    if settings.node != node:
        raise CosfailError(f"settings are for node {settings.node!r}, not {node!r}")
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cosprintd", description=__doc__.splitlines()[0])
    parser.add_argument("--domain", "-d", default=None, help="domain.toml")
    parser.add_argument("--node", required=True, help="this node's name")
    parser.add_argument("--settings-stdin", action="store_true",
                        help="read Domain.service_settings as JSON from stdin, not --domain")
    parser.add_argument("--ready-fd", type=int, default=None,
                        help="write a line to this fd once serving, then close it")
    parser.add_argument(forkserver.FLAG, type=int, default=None, metavar="FD",
                        help="serve no jobs: fork a service for each start asked for on "
                             "the unix socket FD (see cosprint.forkserver)")
    args = parser.parse_args(argv)
    if args.fork_server is not None:
        return forkserver.serve_forks(args.fork_server, functools.partial(_forked, args.node))
    try:
        settings = _settings(args)
    except CosfailError as exc:
        print(f"cosprintd: {exc}", file=sys.stderr)
        return 2
    return _run(settings, args.ready_fd)


def _forked(node: str, raw: bytes, ready_fd: int) -> int:
    try:
        settings = _settings_of(node, raw)
    except CosfailError as exc:
        print(f"cosprintd: {exc}", file=sys.stderr)
        os.close(ready_fd)
        return _flushed(2)
    return _flushed(_run(settings, ready_fd))


def _run(settings: Settings, ready_fd: int | None) -> int:
    _setup_logging(settings.home / LOGFILE, settings.node)
    try:
        return serve(settings, ready_fd)
    except CosfailError as exc:
        log.error("%s", exc)
        print(f"cosprintd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        msg = f"node {settings.node}: {exc}"
        log.error("%s", msg)
        print(f"cosprintd: {msg}", file=sys.stderr)
        return 1


def _flushed(status: int) -> int:
    """`status`, once what the process wrote is out: its exit skips the interpreter's
    teardown (os._exit)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    return status


if __name__ == "__main__":
    # What the daemon writes is fsynced as it goes, and every thread that writes has been
    # joined: skip the interpreter's teardown of its modules, tens of ms of every stop.
    os._exit(_flushed(main()))
