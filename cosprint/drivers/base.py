"""What every driver does the same way: a node's tables, designation and last-running
record live in its home, whatever serves COSprint on it."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from cosfail.cosprint import designation, tables
from cosfail.cosprint import snapshot as snapshots
from cosfail.cosprint.designation import Designation


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

    def rehost(self, old_host: str, new_host: str) -> dict[str, int]:
        with tables.connect(self.tables_url) as conn:  # one transaction for all six tables
            return tables.rehost(conn, old_host, new_host)

    def read_designation(self) -> Designation | None:
        return designation.read(self.home / designation.DESIGNATION)

    def write_designation(self, d: Designation) -> None:
        designation.write(self.home / designation.DESIGNATION, d)

    def read_last_running(self) -> Designation | None:
        return designation.read(self.home / designation.LAST_RUNNING)

    def write_last_running(self, d: Designation) -> None:
        designation.write(self.home / designation.LAST_RUNNING, d)
