"""What every driver does the same way: a node's tables, designation and last-running
record live in its home, whatever serves COSprint on it."""

from __future__ import annotations

from pathlib import Path

from cosprint import designation, tables
from cosprint import snapshot as snapshots
from cosprint.designation import Designation


class NodeFiles:
    """Tables, snapshots, designation and last-running record of one node's home."""

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
