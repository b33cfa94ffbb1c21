"""The one interface through which cosfail drives a node's COSprint.

A site with real COSprint binaries subclasses `Driver` with its own commands and names
it in the registry of `cosprint.drivers`; the project ships the reference driver
(`cosprint.drivers.reference`: a real local cosprintd) and the CUPS driver
(`cosprint.drivers.cups`: a real cupsd). A step that resumes repeats the call it was in,
so every call must be safe to make again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cosfail.cosprint.designation import Designation
    from cosfail.cosprint.domain import Domain
    from cosfail.cosprint.snapshot import Manifest


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
    reason: str = ""  # why it serves in that role
    lease: dict[str, Any] | None = None  # its serving lease as it counts it (reference)


@dataclass(frozen=True)
class Resent:
    """What a resend of set-aside jobs did, job by job."""

    sent: int  # taken by their queue's current host as new jobs
    duplicates: int  # the host, or this node, had printed or held them already
    kept: int = 0  # left set aside: this driver cannot send them without a second print


class Driver(ABC):
    """One node's COSprint. Errors are `DriverError`s that name the node."""

    node: str

    @abstractmethod
    def __init__(self, domain: Domain, node_name: str) -> None:
        """The driver of `node_name`; an unknown node raises `UnknownNodeError`. Starts,
        stops and reads nothing."""

    @classmethod
    @abstractmethod
    def spool_handoff(cls, domain: Domain, source: str, here: str) -> tuple[Path, Path, str]:
        """Where `failover --with-spool` takes `source`'s pending jobs from, where it puts
        them on `here`, and the name suffix of the files to copy ("" for every file);
        `source` runs this driver."""

    @abstractmethod
    def prepare(self) -> None:
        """Make this process's later starts of COSprint quick where the driver can (a
        node's worker calls it once, as it starts)."""

    @abstractmethod
    def start(self) -> None:
        """Start COSprint unless it runs; return once it serves, in the role that the
        designation and the authority decide (`cosprint.role`), or raise."""

    @abstractmethod
    def stop(self, timeout: float = 10.0) -> bool:
        """Stop COSprint gracefully, forcibly after `timeout` s; True if it was running.
        Returns once it is gone."""

    @abstractmethod
    def kill(self) -> bool:
        """Kill COSprint at once, as a crash would (what it holds stays, as after a real
        crash); True if it was running."""

    @abstractmethod
    def status(self) -> ServiceStatus | None:
        """The service's own report, or None when it does not answer."""

    @abstractmethod
    def export_snapshot(self, dest: Path, epoch: int, domain: str) -> Manifest:
        """The node's tables as the snapshot `dest` and its manifest, marked with
        `domain` and `epoch`; the tables are only read."""

    @abstractmethod
    def import_snapshot(self, snapshot: Path, min_epoch: int, domain: str) -> Manifest:
        """Replace the node's tables with `snapshot`, only once it verifies (its domain,
        an epoch not older than `min_epoch`, its checksum); else raise, tables whole."""

    @abstractmethod
    def rehost(self, old_host: str, new_host: str, epoch: int) -> dict[str, int]:
        """Move every object `old_host` hosts to `new_host`, all six tables in one
        transaction, under `epoch`; the rows changed, per table. Tables a newer epoch
        wrote refuse (`StaleEpochError`), unchanged."""

    @abstractmethod
    def read_designation(self) -> Designation | None:
        """The node's designation, None if it has none; a malformed one raises."""

    @abstractmethod
    def write_designation(self, designation: Designation) -> None:
        """Replace the node's designation atomically (written whole, or not at all); one
        of an older epoch than the node's is refused (`StaleEpochError`), unchanged."""

    @abstractmethod
    def read_last_running(self) -> Designation | None:
        """The designation COSprint last ran under, None if none; a malformed one raises."""

    @abstractmethod
    def write_last_running(self, designation: Designation) -> None:
        """Replace the last-running record atomically."""

    @abstractmethod
    def failsafe_confirmed_ago(self) -> float | str | None:
        """Seconds since COSprint here last confirmed a peer's failsafe round, as
        `cosprint.lease.confirmed_ago` says: NEVER if it never did, None if it cannot
        tell. Read on this node's host, once COSprint is stopped, it bounds the rounds
        a failed server could still print on."""

    @abstractmethod
    def spool_paths(self) -> list[Path]:
        """The files of the jobs COSprint accepted and has not printed, oldest first:
        what reclaim sets aside."""

    @abstractmethod
    def resend_set_aside(self, spool: Path) -> Resent:
        """Send again, through this node's COSprint, the jobs reclaim moved from
        `spool_paths` into `spool`, each to its queue's current host, and say what
        became of each. The files stay in `spool`."""

    @abstractmethod
    def submit(self, queue: str, data: str, job_id: str | None = None,
               timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
        """Submit a print job through this node's COSprint: (HTTP-like status, answer).
        202 means accepted; a retriable refusal says so in the answer."""
