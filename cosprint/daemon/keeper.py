"""The role keeper: reads the designation and the authority, and decides the role."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from cosfail.cosprint import designation, plainsql
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


class RoleKeeper:
    """Reads designation + authority and decides the role; cheap enough to call per job."""

    def __init__(self, settings: Settings, tables_db: plainsql.Database) -> None:
        self.settings = settings
        self.node = settings.node
        self.tables_db = tables_db
        self.ledger = open_database(settings.ledger, LEDGER_TIMEOUT)
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
