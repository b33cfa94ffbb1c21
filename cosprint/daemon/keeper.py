"""The role keeper: reads the designation and the authority, and decides the role."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from cosfail.cosprint import designation, lease, plainsql
from cosfail.cosprint.daemon import peers
from cosfail.cosprint.daemon.settings import Settings, open_database
from cosfail.cosprint.designation import Designation
from cosfail.cosprint.errors import CosfailError
from cosfail.cosprint.role import PRINTING_ROLES, STALE, UNVERIFIED, decide_role

log = logging.getLogger("cosprintd")

TICK = 0.5  # seconds between background re-checks of designation and authority
RECOUNT_EVERY = 10  # ticks between recounts of hosted objects (a GROUP BY on 6 tables)
LEDGER_TIMEOUT = 5.0


@dataclass
class RoleState:
    role: str
    reason: str
    designation: Designation | None
    authority: Designation | None
    hosted: int
    read_at: float = field(default=0.0)
    ledger_error: str | None = None  # why the authority could not be read, at read_at


class RoleKeeper:
    """Reads designation + authority and decides the role; cheap enough to call per job."""

    def __init__(self, settings: Settings, tables_db: plainsql.Database) -> None:
        self.settings = settings
        self.node = settings.node
        self.tables_db = tables_db
        self.ledger = open_database(settings.ledger, LEDGER_TIMEOUT)
        # Renewals on their own handle: a renewal must give up within RENEW_TIMEOUT.
        self._lease_db = open_database(settings.ledger, lease.RENEW_TIMEOUT)
        self._known: Designation | None = None  # the authority as last read
        self._hold = lease.Hold()
        self._renewed_at: float | None = None  # wall clock of the last acknowledged renewal
        self._outage: lease.Outage | None = None  # a ledger outage this node is living
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
        if auth is not None:
            self._known = auth
        role, reason = decide_role(
            self.node,
            desig,
            auth,
            hosts_objects=hosted > 0,
            designation_error=desig_err,
            authority_error=auth_err,
        )
        if auth is None and self._known is not None:
            role, reason = self._without_ledger(desig, hosted, auth_err, role, reason)
        return RoleState(role, reason, desig, auth, hosted, read_at, auth_err)

    def _without_ledger(self, desig: Designation | None, hosted: int, why: str | None,
                        role: str, reason: str) -> tuple[str, str]:
        """The role while the ledger is unreadable: the one the authority as last read
        gives, as long as the lease or failsafe holds; else `role` (not printing)."""
        known = self._known
        assert known is not None
        known_role, _ = decide_role(self.node, desig, known, hosts_objects=hosted > 0)
        if known_role not in PRINTING_ROLES:
            return role, reason
        holding = lease.serving_without_ledger(self._hold, known.epoch, time.monotonic(),
                                               self.settings.failsafe)
        if holding:
            return known_role, f"{self.node}: ledger unreadable ({why}); {holding}"
        failsafe = self._hold.failsafe_why if self.settings.failsafe else "failsafe is off"
        if self._outage is not None and not self._outage.stopped:
            self._outage.stopped = f"lease ended, no failsafe ({failsafe})"
        return UNVERIFIED, (f"{self.node}: ledger unreadable ({why}); lease ended, no "
                            f"failsafe ({failsafe}); not printing")

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

    # ----- the lease (cosprint/lease.py) -----------------------------------------------
    def keep_lease(self, stop: threading.Event) -> None:
        """Renew this node's lease every ttl/3 while it prints; when the ledger cannot
        be reached, ask the peers for failsafe instead. Its own thread: a ledger that
        hangs must not delay the role checks."""
        every = lease.renew_every(self.settings.lease_ttl)
        while True:
            started = time.monotonic()
            try:
                self.renew()
            except Exception:
                log.exception("lease renewal failed on %s", self.node)
            if stop.wait(max(TICK, started + every - time.monotonic())):
                return

    def renew(self) -> None:
        """One renewal, or failsafe round when the ledger cannot be reached."""
        known, state = self._known, self.state
        if self._outage is not None and state.ledger_error is None:
            self._record_outage(self._outage)  # whatever role it has come back in
        if known is None or state.role not in PRINTING_ROLES:
            return
        ttl = self.settings.lease_ttl
        sent = time.monotonic()
        params = {"domain": self.settings.domain, "node": self.node,
                  "epoch": known.epoch, "ttl": ttl}
        try:
            renewed = self._lease_db.execute(lease.renew_sql(self._lease_db.dialect), params)
        except Exception as exc:
            if self.state.ledger_error is None:  # it reads the ledger: prints on that
                log.warning("lease renewal of %s failed: %s", self.node, exc)
                return
            if self._outage is None:
                self._outage = lease.Outage(since=time.time(), epoch=known.epoch)
            if self.settings.failsafe:  # unreachable: the peers may keep it printing
                self._failsafe_round(known, self.state.ledger_error)
            return
        if renewed:
            self._hold = replace(self._hold, epoch=known.epoch,
                                 lease_until=sent + ttl - lease.margin(ttl))
            self._renewed_at = time.time()

    def _record_outage(self, outage: lease.Outage) -> None:
        """Put the outage just lived into the ledger, now that it answers again."""
        params = {"domain": self.settings.domain, "node": self.node, "epoch": outage.epoch,
                  "since": outage.since, "until": time.time(), "outcome": outage.outcome()}
        try:
            self._lease_db.execute(lease.RECORD_OUTAGE_SQL, params)
        except Exception as exc:  # kept for the next renewal
            log.warning("could not record the ledger outage of %s: %s", self.node, exc)
            return
        self._outage = None
        log.warning("ledger reachable again after %.1f s: %s",
                    params["until"] - outage.since, params["outcome"])

    def _failsafe_round(self, known: Designation, why: str) -> None:
        started = time.monotonic()
        others = {n: url for n, url in self.settings.peers.items() if n != self.node}
        question = {"node": self.node, "master": known.master, "epoch": known.epoch}
        with ThreadPoolExecutor(max_workers=min(16, len(others) or 1)) as pool:
            answers = dict(zip(others, pool.map(
                lambda url: _ask(url + "/failsafe", question), others.values()), strict=True))
        ok, verdict = lease.round_verdict(answers)
        if ok and self._outage is not None:
            self._outage.failsafe = True
        was = self._hold
        until = started + lease.failsafe_grant(self.settings.lease_ttl) if ok else 0.0
        self._hold = replace(was, epoch=known.epoch, failsafe_until=until,
                             failsafe_why=verdict)
        if (ok, verdict) != (was.failsafe_until > started, was.failsafe_why):
            level = logging.WARNING if not ok else logging.INFO
            log.log(level, "ledger unreachable (%s); failsafe %s: %s", why,
                    "holds" if ok else "refused", verdict)

    def failsafe_answer(self, master: str, epoch: int, serving: bool) -> str | None:
        """Why this node will not confirm a peer serving under master@epoch, or None."""
        state = self.state
        d = state.designation
        return lease.failsafe_refusal(
            master=master, epoch=epoch, mine=(d.master, d.epoch) if d else None,
            ledger_readable=state.ledger_error is None, serving=serving)

    def lease_status(self) -> dict[str, Any]:
        now = time.monotonic()
        hold = self._hold
        return {
            "ttl": self.settings.lease_ttl,
            "epoch": hold.epoch,
            "left": round(hold.lease_left(now), 2),
            "renewed_at": self._renewed_at,
            "failsafe": self.settings.failsafe and now < hold.failsafe_until,
            "failsafe_why": hold.failsafe_why,
        }


def _ask(url: str, question: dict[str, Any]) -> str | None:
    """A peer's refusal of failsafe, None if it confirms; no answer is a refusal."""
    try:
        code, answer = peers.post_json(url, question, lease.ROUND_TIMEOUT)
    except peers.Unreachable as exc:
        return f"no answer ({exc})"
    if code == 200 and answer.get("confirm") is True:
        return None
    return str(answer.get("why") or answer.get("error") or f"HTTP {code}")
