"""Node steps: each acts on the node whose worker runs it, and says what it did.

Every step checks the real state before it acts, so running it twice, or resuming a
run at any step, ends in the same state (docs/architecture.md, invariant 8).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cosfail.cosprint import snapshot as snap
from cosfail.cosprint import tables
from cosfail.cosprint.designation import Designation
from cosfail.cosprint.drivers import driver_for
from cosfail.cosprint.errors import CosfailError, DriverError, SnapshotError
from cosfail.workers import transport
from cosfail.workers.app import PROBE_TASK, app, current_domain, may_answer
from cosfail.workers.step import Here, Outcome, step, this_node, worker_id
from sqlalchemy import func, select

OUTBOX = Path("var/outbox")
VERIFIED = ".verified"


def outbox(here: Here, node: str | None = None) -> Path:
    return here.domain.home(node or here.node) / OUTBOX


# The outbox holds copies on their way to the BCSs, not backups: keep the newest few
# (a BCS may still be fetching one), never let it grow with every backup.
OUTBOX_KEEP = 3


def prune_outbox(directory: Path, keep: int) -> None:
    for old in snap.list_snapshots(directory)[:-keep]:
        old.unlink(missing_ok=True)
        snap.manifest_path(old).unlink(missing_ok=True)


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
    prune_outbox(outbox(here), keep=OUTBOX_KEEP)
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
    size = transport.fetch_snapshot(here.domain, arg.source, src, here.node, dest)
    return (f"copied {arg.file} ({size} bytes) from {arg.source} to {here.node} "
            f"{transport.how(here.domain, arg.source, here.node)}")


@dataclass(frozen=True)
class VerifySnapshot:
    file: str


@step("backup.verify_snapshot", VerifySnapshot)
def verify_snapshot(here: Here, arg: VerifySnapshot) -> Outcome:
    """Verify the shipped copy in place (sha256, header, row counts: everything a restore
    checks; a restore is a copy of these very bytes), mark it verified, then prune the
    snapshots past retention: the one just verified is the newest, so it always stays."""
    area = here.domain.backup_area(here.node)
    path = area / arg.file
    manifest = snap.check_snapshot(path, domain=here.domain.control.name)
    marker = verified_marker(path)
    if not marker.exists():
        marker.write_text(f"{time.time()}\n")
    text = f"verified {arg.file} on {here.node}: sha256, header and {manifest.rows} rows"
    try:
        pruned = prune_backups(area, here.domain.control.retention)
    except OSError as exc:  # a verified backup stands even when the old ones stay
        text += f"; nothing pruned: {exc}"
        pruned = []
    else:
        text += f"; pruned {len(pruned)} older snapshot(s)" if pruned else ""
    return Outcome(text, {"manifest": asdict(manifest), "verified_at": marker.stat().st_mtime,
                          "pruned": pruned})


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


def prune_backups(area: Path, retention: int) -> list[str]:
    """Delete the snapshots of a BCS's backup area past retention; returns their names."""
    found = snap.list_snapshots(area)
    doomed = choose_prunable([(p.name, is_verified(p)) for p in found], retention)
    for name in doomed:
        path = area / name
        path.unlink(missing_ok=True)
        snap.manifest_path(path).unlink(missing_ok=True)
        verified_marker(path).unlink(missing_ok=True)
    return doomed


# ----- probing (answers the control plane synchronously, through the result backend) ----
@dataclass(frozen=True)
class ProbeInput:
    check_snapshots: bool = True
    domain_epoch: int = 0


def snapshot_report(here: Here, min_epoch: int) -> list[dict[str, object]]:
    """Every verified snapshot on this BCS, newest first, each checked again now."""
    found = [p for p in snap.list_snapshots(here.domain.backup_area(here.node))
             if is_verified(p)]
    report = []
    for path in reversed(found):
        entry: dict[str, object] = {"file": path.name}
        try:
            m = snap.check_snapshot(path, domain=here.domain.control.name, min_epoch=0)
            entry.update(ok=True, epoch=m.epoch, created_at=m.created_at, rows=m.rows,
                         reason="")
        except SnapshotError as exc:
            entry.update(ok=False, reason=str(exc))
        report.append(entry)
    return report


@app.task(name=PROBE_TASK, ignore_result=False, acks_late=False)
def probe(check_snapshots: bool = True) -> dict[str, object]:
    """This node as its worker sees it: COSprint, designation, last run, snapshots."""
    here = Here(current_domain(), this_node())
    driver = here.driver
    status = driver.status()
    report: dict[str, object] = {
        "node": here.node,
        "worker": worker_id(),
        "cosprint": asdict(status) if status else None,
        "designation": _designation_json(driver.read_designation),
        "last_running": _designation_json(driver.read_last_running),
        "hosted": hosted_objects(here),
        "sample_queues": sample_queues(here),
    }
    if check_snapshots and here.domain.node(here.node).role == "bcs":
        report["snapshots"] = snapshot_report(here, 0)
    return report


@app.task(name="cosfail.node.check_peer", ignore_result=False, acks_late=False)
def check_peer(node: str, worker: str | None = None, timeout: float = 0.5) -> dict[str, object]:
    """A second opinion on `node`, from this node: does its COSprint answer here (its
    status URL, from this host), and does its worker answer a ping sent over this
    worker's own broker connection? The detector calls a server down only when another
    node sees it gone too, so that a partition around the control plane alone does not
    count."""
    domain = current_domain()
    cosprint = driver_for(domain, node).status() is not None
    worker_answers = False
    # An answering COSprint already contradicts "down".
    if not cosprint and may_answer(domain, node):
        # A fresh connection: a pooled one can drop every reply (workflows/liveness.py).
        with app.connection_for_write() as conn:
            replies = app.control.ping(destination=[worker] if worker else None,
                                       timeout=timeout, connection=conn) or []
        worker_answers = any(name.split("@")[0] == node for r in replies for name in r)
    return {"from": this_node(), "node": node, "cosprint": cosprint,
            "worker": worker_answers}


def hosted_objects(here: Here) -> dict[str, int]:
    """Objects per host, as this node's own copy of the tables says."""
    with tables.connect(here.domain.tables_url(here.node)) as conn:
        return tables.hosted_counts(conn)


def sample_queues(here: Here) -> dict[str, str]:
    """One queue name per host: what a verification job can be sent to."""
    with tables.connect(here.domain.tables_url(here.node)) as conn:
        q = tables.queues
        rows = conn.execute(select(q.c.host, func.min(q.c.name)).group_by(q.c.host))
        return {host: name for host, name in rows}


def _designation_json(read) -> dict[str, object] | None:  # type: ignore[no-untyped-def]
    try:
        d = read()
    except CosfailError as exc:
        return {"error": str(exc)}
    return asdict(d) if d else None


# ----- failover -------------------------------------------------------------------------
@dataclass(frozen=True)
class NoInput:
    """For steps whose node is all they need to know."""


@step("failover.stop_cosprint", NoInput)
def stop_cosprint(here: Here, arg: NoInput) -> Outcome:
    """Stop this node's COSprint, and say when it last confirmed a peer's failsafe
    round (fact `failsafe_confirmed`, left out when it cannot tell): the failover's
    lease wait counts on it."""
    was_running = here.driver.stop()
    text = f"stopped COSprint on {here.node}" if was_running else \
        f"COSprint was already stopped on {here.node}"
    confirmed = here.driver.failsafe_confirmed_ago()
    if confirmed is None:
        return Outcome(text)
    if isinstance(confirmed, float):
        text += f"; it confirmed a failsafe round {confirmed:.1f} s before"
    return Outcome(text, {"failsafe_confirmed": confirmed})


@dataclass(frozen=True)
class RestoreSnapshot:
    candidates: list[str]  # verified snapshot files, newest first
    min_epoch: int = 0


@step("failover.restore_snapshot", RestoreSnapshot)
def restore_snapshot(here: Here, arg: RestoreSnapshot) -> Outcome:
    """Replace this BCS's tables with the newest candidate that still verifies."""
    area = here.domain.backup_area(here.node)
    if here.driver.status() is not None:
        raise DriverError(f"COSprint still runs on {here.node}: will not restore under it")
    refused = []
    for name in arg.candidates:
        try:
            manifest = here.driver.import_snapshot(area / name, arg.min_epoch,
                                                   here.domain.control.name)
        except SnapshotError as exc:
            refused.append(str(exc))
            continue
        text = f"restored {name} ({manifest.rows} rows) on {here.node}"
        if refused:
            text += f" after refusing {len(refused)} newer: {'; '.join(refused)}"
        return Outcome(text, {"snapshot": name, "refused": refused})
    raise SnapshotError(f"no candidate snapshot verifies on {here.node}: {'; '.join(refused)}")


@dataclass(frozen=True)
class RehostObjects:
    old_host: str
    new_host: str
    epoch: int = 0  # the run's; a message queued without it is refused, as too old


@step("failover.rehost_objects", RehostObjects)
def rehost_objects(here: Here, arg: RehostObjects) -> Outcome:
    """Every object of the failed server, hosted from now on by the BCS (all six tables)."""
    moved = here.driver.rehost(arg.old_host, arg.new_host, arg.epoch)
    total = sum(moved.values())
    return Outcome(f"rehosted {total} objects from {arg.old_host} to {arg.new_host} "
                   f"in {here.node}'s tables", {"moved": moved})


@dataclass(frozen=True)
class PublishTables:
    file: str
    epoch: int


@step("failover.publish_tables", PublishTables)
def publish_tables(here: Here, arg: PublishTables) -> Outcome:
    """The new master's tables, exported for every node's restart-check to fetch."""
    with tables.connect(here.domain.tables_url(here.node)) as conn:
        tables.write_pointer(conn, here.node, arg.epoch)
    manifest = here.driver.export_snapshot(outbox(here) / arg.file, arg.epoch,
                                           here.domain.control.name)
    prune_outbox(outbox(here), keep=OUTBOX_KEEP)
    return Outcome(f"published {manifest.rows} rows of {here.node} at epoch {arg.epoch}",
                   {"manifest": asdict(manifest)})


@dataclass(frozen=True)
class RestartCheck:
    master: str
    epoch: int
    file: str  # the master's published tables


@step("restart_check.refresh_tables", RestartCheck)
def restart_check(here: Here, arg: RestartCheck) -> str:
    """The restart-check of this node: `repoint`."""
    return repoint(here, arg)


def repoint(here: Here, arg: RestartCheck) -> str:
    """Designation vs last-running: re-point this node's tables at a changed master.
    Writes the node's designation first (never back to an older epoch)."""
    driver = here.driver
    new = Designation(arg.master, arg.epoch)
    if driver.read_designation() != new:
        driver.write_designation(new)  # refused, unchanged, if the node is at a newer epoch
    last = driver.read_last_running()
    if last == new:
        return f"{here.node} already runs under {new}"
    published = outbox(here, arg.master) / arg.file
    if here.node != arg.master and transport.same_host(here.domain, arg.master, here.node):
        # The master's outbox is on this file system: the import reads it in place and
        # copies it into this node's tables once (no second copy through an inbox).
        driver.import_snapshot(published, arg.epoch, here.domain.control.name)
    elif here.node != arg.master:
        local = here.domain.home(here.node) / "var" / "inbox" / arg.file
        transport.fetch_snapshot(here.domain, arg.master, published, here.node, local)
        driver.import_snapshot(local, arg.epoch, here.domain.control.name)
        local.unlink()
        snap.manifest_path(local).unlink(missing_ok=True)
    driver.write_last_running(new)
    return f"re-pointed {here.node} from {last} to {new}"


@dataclass(frozen=True)
class CopySpool:
    source: str  # the failed server


@step("failover.copy_spool", CopySpool)
def copy_spool(here: Here, arg: CopySpool) -> Outcome:
    """The failed server's pending print jobs, into this BCS's spool (`--with-spool`):
    streamed, resumable; nothing to copy when both share the spool; an unreachable
    source is reported, not fatal."""
    done = transport.copy_spool(here.domain, arg.source, here.node)
    return Outcome(done.sentence, done.facts)


@step("failover.start_cosprint", NoInput)
def start_cosprint(here: Here, arg: NoInput) -> Outcome:
    """This node's COSprint, started (it serves in the role its files give it)."""
    return start_service(here)


def start_service(here: Here) -> Outcome:
    here.driver.start()
    st = here.driver.status()
    role = st.role if st else "unknown"
    return Outcome(f"started COSprint on {here.node} as {role}", {"role": role})


@step("failover.repoint_and_start", RestartCheck)
def repoint_and_start(here: Here, arg: RestartCheck) -> Outcome:
    """The restart-check, then COSprint started, in one step: in a hosting change a
    node's start waits for its own re-pointing only, not for every other node's."""
    repointed = repoint(here, arg)
    started = start_service(here)
    return Outcome(f"{repointed}; {started.sentence}", started.facts)


# ----- reclaim --------------------------------------------------------------------------
@dataclass(frozen=True)
class SetAside:
    epoch: int  # the obsolete epoch: its data goes to var/reclaimed/<epoch>/


RECLAIMED = Path("var/reclaimed")


@step("reclaim.set_aside_data", SetAside)
def set_aside_data(here: Here, arg: SetAside) -> str:
    """Quarantine this node's obsolete tables, designation, last-running record and
    pending spool under var/reclaimed/<epoch>/: moved or copied, never deleted."""
    home = here.domain.home(here.node)
    dest = home / RECLAIMED / str(arg.epoch)
    saved = dest / "tables.snap"
    if here.driver.status() is not None:
        raise DriverError(f"COSprint still runs on {here.node}: stop it before reclaim")
    if not snap.manifest_path(saved).exists():
        here.driver.export_snapshot(saved, arg.epoch, here.domain.control.name)
    moved = 0
    for rel in (Path("etc/master"), Path("var/last_master")):
        if (home / rel).exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(home / rel, dest / rel)
    spool = here.domain.node(here.node).shared_spool is None
    if spool:
        for job in here.driver.spool_paths():
            (dest / "spool").mkdir(parents=True, exist_ok=True)
            os.replace(job, dest / "spool" / job.name)
            moved += 1
    return f"set aside {here.node}'s obsolete data (epoch {arg.epoch}) in " \
        f"{RECLAIMED / str(arg.epoch)}: tables, designation, {moved} spool job(s)"


@dataclass(frozen=True)
class ResendJobs:
    epoch: int  # whose set-aside spool, var/reclaimed/<epoch>/spool, to send again


@step("reclaim.resend_set_aside_jobs", ResendJobs)
def resend_set_aside_jobs(here: Here, arg: ResendJobs) -> Outcome:
    """Print what this node had accepted but not printed when it failed: each set-aside
    job goes again through this node's COSprint (a slave now) to its queue's current
    host, as its driver can without printing it twice (`Driver.resend_set_aside`). The
    set-aside copies stay where they are."""
    spool = here.domain.home(here.node) / RECLAIMED / str(arg.epoch) / "spool"
    r = here.driver.resend_set_aside(spool)
    kept = f"; {r.kept} kept in {spool}, not sent again" if r.kept else ""
    return Outcome(f"sent {r.sent} set-aside job(s) of {here.node} to their hosts again; "
                   f"{r.duplicates} were printed or held there already{kept}",
                   {"sent": r.sent, "duplicates": r.duplicates, "kept": r.kept})
