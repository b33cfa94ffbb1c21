"""Node steps: each acts on the node whose worker runs it, and says what it did.

Every step checks the real state before it acts, so running it twice, or resuming a
run at any step, ends in the same state (DESIGN section 2).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cosprint import snapshot as snap
from cosprint.errors import SnapshotError
from workers import transport
from workers.step import Here, Outcome, step

OUTBOX = Path("var/outbox")
VERIFIED = ".verified"


def outbox(here: Here, node: str | None = None) -> Path:
    return here.domain.home(node or here.node) / OUTBOX


def verified_marker(path: Path) -> Path:
    return path.with_name(path.name + VERIFIED)


def is_verified(path: Path) -> bool:
    return verified_marker(path).exists()


# ----- backup ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportTables:
    file: str  # the snapshot's file name, the same on every node
    epoch: int


@step("backup.export_tables", ExportTables)
def export_tables(here: Here, arg: ExportTables) -> Outcome:
    """Export this node's (the master's) tables into its outbox."""
    dest = outbox(here) / arg.file
    try:
        manifest = snap.check_snapshot(dest, domain=here.domain.control.name)
        done = "already exported"
    except SnapshotError:
        manifest = here.driver.export_snapshot(dest, arg.epoch, here.domain.control.name)
        done = "exported"
    return Outcome(
        f"{done} {manifest.rows} rows of {here.node} to {arg.file}",
        {"manifest": asdict(manifest)},
    )


@dataclass(frozen=True)
class ShipSnapshot:
    file: str
    source: str


@step("backup.ship_snapshot", ShipSnapshot)
def ship_snapshot(here: Here, arg: ShipSnapshot) -> str:
    """Bring the snapshot and its manifest from the source's outbox to this BCS."""
    area = here.domain.backup_area(here.node)
    dest = area / arg.file
    src = outbox(here, arg.source) / arg.file
    if is_verified(dest):
        return f"{arg.file} already verified on {here.node}"
    # Manifest first, snapshot last: the pair only looks complete once both are whole.
    transport.fetch(here.domain, arg.source, snap.manifest_path(src), here.node,
                    snap.manifest_path(dest))
    size = transport.fetch(here.domain, arg.source, src, here.node, dest)
    return f"copied {arg.file} ({size} bytes) from {arg.source} to {here.node}"


@dataclass(frozen=True)
class VerifySnapshot:
    file: str


@step("backup.verify_snapshot", VerifySnapshot)
def verify_snapshot(here: Here, arg: VerifySnapshot) -> Outcome:
    """Checksum, then a trial restore into scratch; only then mark it verified."""
    path = here.domain.backup_area(here.node) / arg.file
    scratch = here.domain.home(here.node) / "var" / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    manifest = snap.trial_restore(path, scratch, domain=here.domain.control.name)
    marker = verified_marker(path)
    if not marker.exists():
        marker.write_text(f"{time.time()}\n")
    return Outcome(
        f"verified {arg.file} on {here.node}: sha256 and trial restore of "
        f"{manifest.rows} rows",
        {"manifest": asdict(manifest), "verified_at": marker.stat().st_mtime},
    )


@dataclass(frozen=True)
class PruneBackups:
    retention: int


def choose_prunable(entries: list[tuple[str, bool]], retention: int) -> list[str]:
    """Which snapshots to delete, given (name, verified) oldest first.

    Keep the `retention` newest verified ones and anything newer than the newest
    verified (it may still be verifying). Never the newest verified: it is the one copy
    a failover would restore.
    """
    verified = [n for n, ok in entries if ok]
    if not verified:
        return []
    keep = set(verified[-retention:])
    newest = verified[-1]
    cutoff = [n for n, _ in entries].index(newest)
    return [n for i, (n, _ok) in enumerate(entries) if i < cutoff and n not in keep]


@step("backup.prune_backups", PruneBackups)
def prune_backups(here: Here, arg: PruneBackups) -> Outcome:
    """Delete snapshots past retention on this BCS; keep the newest verified always."""
    area = here.domain.backup_area(here.node)
    found = snap.list_snapshots(area)
    doomed = choose_prunable([(p.name, is_verified(p)) for p in found], arg.retention)
    for name in doomed:
        path = area / name
        path.unlink(missing_ok=True)
        snap.manifest_path(path).unlink(missing_ok=True)
        verified_marker(path).unlink(missing_ok=True)
    kept = len(found) - len(doomed)
    return Outcome(f"pruned {len(doomed)} snapshot(s) on {here.node}, kept {kept}",
                   {"pruned": doomed})
