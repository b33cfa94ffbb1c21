"""One node's COSprint service: it accepts jobs into its spool, forwards those for
queues other nodes host, and prints its own into per-printer sink files."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from cosfail.cosprint import lease, plainsql
from cosfail.cosprint.daemon import peers
from cosfail.cosprint.daemon.keeper import RoleKeeper
from cosfail.cosprint.daemon.settings import Settings, open_tables
from cosfail.cosprint.daemon.spool import JOB_SUFFIX, REJECTED_DIR, SINK_DIR, list_spool, spool_job
from cosfail.cosprint.fsutil import atomic_write_bytes, boot_id, fsync_dir
from cosfail.cosprint.role import PRINTING_ROLES, UNVERIFIED

log = logging.getLogger("cosprintd")

PRINTER_POLL = 0.2  # seconds; also picks up spool files dropped in by others
FORWARD_TIMEOUT = 5.0
MAX_HOPS = 3  # forwards between nodes whose tables disagree must not loop forever
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")


class Service:
    """One node's COSprint: spool, printer thread, role keeper, job routing."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        self.settings = settings
        self.node = settings.node
        self.home = settings.home
        self.spool = settings.spool
        self.sink_dir = self.home / SINK_DIR
        self.tables_db = open_tables(settings.tables)
        self.keeper = RoleKeeper(settings, self.tables_db)
        self.up_since = time.time()
        self.stop_event = stop
        self.wake = threading.Event()
        self._accept_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._confirm_lock = threading.Lock()
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
            "lease": self.keeper.lease_status(),
        }

    def failsafe(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A peer that cannot reach the ledger asks whether this node still sees it
        serving under its master and epoch (docs/architecture.md, invariant 14)."""
        master, epoch, asker = body.get("master"), body.get("epoch"), body.get("node")
        if not isinstance(master, str) or not isinstance(epoch, int) \
                or not isinstance(asker, str):
            return 400, {"error": f"{self.node}: failsafe needs 'node', 'master' (strings) "
                                  "and 'epoch' (integer)"}
        serving = self._intake_open and not self.stop_event.is_set()
        why = self.keeper.failsafe_answer(master, epoch, serving)
        if why is None:
            self._record_confirmation(asker, master, epoch)
            log.warning("failsafe: confirmed %s serving under %s@%d", asker, master, epoch)
            return 200, {"confirm": True, "node": self.node}
        return 200, {"confirm": False, "node": self.node, "why": f"{self.node}: {why}"}

    def _record_confirmation(self, asker: str, master: str, epoch: int) -> None:
        """Before the answer leaves: a failover that stops this node reads when it last
        confirmed (docs/architecture.md, invariant 14). Under the lock, the record only
        moves forward in time."""
        with self._confirm_lock:
            atomic_write_bytes(self.home / lease.CONFIRMED, lease.confirmation_record(
                time.monotonic(), boot_id(), asker, master, epoch))

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
        sender_epoch = body.get("epoch")
        if sender_epoch is not None and not isinstance(sender_epoch, int):
            return 400, {"error": f"{self.node}: 'epoch' must be an integer"}
        if job_id in self.printed:  # sent again (a reclaim resends a dead node's spool)
            return 202, {"job_id": job_id, "printed_by": self.node, "duplicate": True}
        mine = self.keeper.state.designation
        if sender_epoch is not None and mine is not None and sender_epoch < mine.epoch:
            # The fencing token: a node still at an older epoch routed this job on tables
            # that may no longer hold. Its re-point is under way; then it sends again.
            self.count("refused")
            return 503, {"error": f"{self.node}: job {job_id} stamped with epoch "
                                  f"{sender_epoch}, older than this node's {mine.epoch}; "
                                  "send the job again", "retriable": True}
        route = self.queue_route(queue)
        if route is None:
            return 404, {"error": f"{self.node}: unknown queue {queue!r}"}
        host, _printer = route
        if host != self.node:
            job = {"queue": queue, "data": data, "job_id": job_id}
            if mine is not None:
                job["epoch"] = mine.epoch
            return self.forward(host, job, hops)
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
                "epoch": state.designation.epoch if state.designation else None,
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
        try:
            code, answer = peers.post_json(url, job, FORWARD_TIMEOUT,
                                           {"X-COSprint-Hops": str(hops + 1)})
        except peers.Unreachable as exc:
            return 503, {
                "error": f"{self.node}: host {host} of queue {job['queue']!r} is "
                f"unreachable at {url}: {exc}",
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
            "epoch": job.get("epoch"),  # the one it was accepted under
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
