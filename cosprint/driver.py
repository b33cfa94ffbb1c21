"""The one interface through which cosfail drives a node's COSprint.

A site with real COSprint binaries implements this Protocol with its own commands; the
project ships `cosprint.drivers.reference`, whose COSprint is a real local process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cosprint.designation import Designation
from cosprint.snapshot import Manifest


@dataclass(frozen=True)
class ServiceStatus:
    """What a running COSprint says of itself."""

    node: str
    role: str  # "master", "server" (hosts objects, not master), "slave" or "stale"
    master: str
    epoch: int
    hosted: int
    up_since: float
    pid: int


class Driver(Protocol):
    node: str

    def prepare(self) -> None:
        """Make this process's later starts of COSprint quick where the driver can (a
        node's worker calls it once, as it starts)."""
        ...
    def start(self) -> None: ...
    def stop(self, timeout: float = 10.0) -> bool:
        """Stop COSprint; True if it was running."""
        ...
    def kill(self) -> bool:
        """SIGKILL COSprint, as a crash would; True if it was running."""
        ...
    def status(self) -> ServiceStatus | None:
        """The service's own report, or None when it does not answer."""
        ...
    def export_snapshot(self, dest: Path, epoch: int, domain: str) -> Manifest: ...
    def import_snapshot(self, snapshot: Path, min_epoch: int, domain: str) -> Manifest: ...
    def rehost(self, old_host: str, new_host: str) -> dict[str, int]: ...
    def read_designation(self) -> Designation | None: ...
    def write_designation(self, designation: Designation) -> None: ...
    def read_last_running(self) -> Designation | None: ...
    def write_last_running(self, designation: Designation) -> None: ...
    def spool_paths(self) -> list[Path]: ...
    def submit(self, queue: str, data: str, job_id: str | None = None,
               timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
        """Submit a print job through this node's COSprint: (HTTP-like status, answer)."""
        ...
