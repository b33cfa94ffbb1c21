"""What every driver does the same way: a node's tables, designation and last-running
record live in its home, whatever serves COSprint on it."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from cosfail.cosprint import designation, lease, tables
from cosfail.cosprint import snapshot as snapshots
from cosfail.cosprint.designation import Designation
from cosfail.cosprint.errors import StaleEpochError
from cosfail.cosprint.fsutil import boot_id


class Children:
    """The service processes this process spawned, so they are reaped, not left zombies."""

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs[proc.pid] = proc

    def reap(self) -> None:
        with self._lock:
            for pid, proc in list(self._procs.items()):
                if proc.poll() is not None:
                    del self._procs[pid]

    def running(self) -> list[int]:
        with self._lock:
            return [pid for pid, proc in self._procs.items() if proc.poll() is None]


children = Children()


class NodeFiles:
    """Tables, snapshots, designation and last-running record of one node's home: these
    `Driver` calls work the same whatever serves COSprint on the node."""

    node: str
    home: Path
    tables_url: str

    def export_snapshot(self, dest: Path, epoch: int, domain: str) -> snapshots.Manifest:
        return snapshots.export_snapshot(self.tables_url, dest, domain=domain, epoch=epoch,
                                         source=self.node)

    def import_snapshot(self, snapshot: Path, min_epoch: int, domain: str) -> snapshots.Manifest:
        return snapshots.import_snapshot(snapshot, self.tables_url, domain=domain,
                                         min_epoch=min_epoch)

    def rehost(self, old_host: str, new_host: str, epoch: int) -> dict[str, int]:
        # The tables keep the highest epoch that wrote them: the fencing token a write
        # from a run an epoch behind is refused by (docs/architecture.md, invariant 14).
        with tables.connect(self.tables_url) as conn:  # one transaction for all six tables
            at = tables.read_pointer(conn)
            if at is not None and at[1] > epoch:
                raise StaleEpochError(
                    f"{self.node}'s tables are at epoch {at[1]}: will not rehost "
                    f"{old_host}'s objects to {new_host} under epoch {epoch}")
            moved = tables.rehost(conn, old_host, new_host)
            tables.write_pointer(conn, self.node, epoch)
            return moved

    def read_designation(self) -> Designation | None:
        return designation.read(self.home / designation.DESIGNATION)

    def write_designation(self, d: Designation) -> None:
        current = self.read_designation()
        if current is not None and current.epoch > d.epoch:
            raise StaleEpochError(f"{self.node} is at {current}: will not go back to {d}")
        designation.write(self.home / designation.DESIGNATION, d)

    def read_last_running(self) -> Designation | None:
        return designation.read(self.home / designation.LAST_RUNNING)

    def write_last_running(self, d: Designation) -> None:
        designation.write(self.home / designation.LAST_RUNNING, d)

    def failsafe_confirmed_ago(self) -> float | str | None:
        # A service that has no failsafe answer (cupsd) never writes the record.
        try:
            record: bytes | None = (self.home / lease.CONFIRMED).read_bytes()
        except FileNotFoundError:
            record = None
        return lease.confirmed_ago(record, time.monotonic(), boot_id())
