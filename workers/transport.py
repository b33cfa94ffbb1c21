"""Moving files between nodes: a local copy on a shared file system, SFTP otherwise.

Two nodes are on the same host when their `host` values in domain.toml are equal: then
the file is copied locally (one machine, or a file system both see). Otherwise the
worker of the node that *receives* the file connects over SFTP to the node the file
comes from, using the source node's `[node.ssh]` (see workers/remote.py): a BCS pulls
the master's snapshot, a node pulls the new master's tables, a BCS pulls a failed
server's spool. Paths are the same on every host (each machine has the domain file and
the node homes at the same place).

Either way the file arrives under a temporary name (`.part`), is fsynced, then renamed:
an interrupted transfer never leaves a file that looks complete, and over SFTP the next
attempt resumes from the `.part` file. A lost connection raises `TransportInterrupted`,
a ConnectionError, which a step retries with backoff (workers/step.py): the retry
resumes. Files stream in chunks, never whole into memory.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cosfail.cosprint.daemon.spool import JOB_SUFFIX, list_spool
from cosfail.cosprint.domain import Domain
from cosfail.cosprint.drivers import spool_handoff
from cosfail.cosprint.fsutil import TMP_SUFFIX, atomic_copy, fsync_dir
from cosfail.cosprint.snapshot import manifest_path
from cosfail.workers.remote import (
    AuthRefused,
    Copied,
    HostKeyRefused,
    NoSuchFile,
    Progress,
    RemoteFile,
    Session,
    TransportError,
    TransportInterrupted,
    TransportUnreachable,
    endpoint,
    session,
)

__all__ = [
    "AuthRefused", "HostKeyRefused", "NoSuchFile", "TransportError", "TransportInterrupted",
    "TransportUnreachable", "copy_spool", "fetch", "fetch_snapshot", "how", "link",
    "same_host",
]

log = logging.getLogger("cosfail.transport")

PROGRESS_EVERY = 2.0  # seconds between progress lines of a long spool copy


def same_host(domain: Domain, a: str, b: str) -> bool:
    return domain.node(a).host == domain.node(b).host


class Link(Protocol):
    """Files of one source node, as the receiving node reaches them."""

    how: str  # "by local copy" or "over SFTP from user@host:port"

    def get(self, remote: Path, local: Path, progress: Progress | None = None,
            sync_dir: bool = True, size: int | None = None) -> Copied: ...

    def list_files(self, directory: Path, suffix: str) -> list[RemoteFile]: ...


class LocalLink:
    """Same host: a plain copy (temporary name, fsync, rename)."""

    how = "by local copy"

    def __init__(self, source: str) -> None:
        self.source = source

    def get(self, remote: Path, local: Path, progress: Progress | None = None,
            sync_dir: bool = True, size: int | None = None) -> Copied:
        try:
            atomic_copy(remote, local)
        except FileNotFoundError:
            raise NoSuchFile(f"{self.source}:{remote}: no such file") from None
        size = Path(local).stat().st_size
        if progress:
            progress(size, size)
        return Copied(size=size)

    def list_files(self, directory: Path, suffix: str) -> list[RemoteFile]:
        found = []
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return []
        for e in entries:
            if not e.name.endswith(suffix) or e.name.endswith(TMP_SUFFIX):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if e.is_file(follow_symlinks=False):
                found.append(RemoteFile(e.name, st.st_size, st.st_mtime))
        return sorted(found, key=lambda f: (f.mtime, f.name))


class SFTPLink:
    """Another host: SFTP over one SSH session to the source node."""

    def __init__(self, s: Session) -> None:
        self.session = s
        self.how = f"over SFTP from {s.ep.where}"

    def get(self, remote: Path, local: Path, progress: Progress | None = None,
            sync_dir: bool = True, size: int | None = None) -> Copied:
        return self.session.get(remote, local, progress, sync_dir, size)

    def list_files(self, directory: Path, suffix: str) -> list[RemoteFile]:
        return self.session.list_files(directory, suffix)


@contextmanager
def link(domain: Domain, source: str, here: str) -> Iterator[Link]:
    """The way node `here` reaches node `source`'s files, open for the block's length."""
    if same_host(domain, source, here):
        yield LocalLink(source)
        return
    with session(endpoint(domain, source)) as s:
        yield SFTPLink(s)


def how(domain: Domain, source: str, here: str) -> str:
    """How `here` gets files from `source`, for outcome sentences."""
    if same_host(domain, source, here):
        return LocalLink.how
    ssh = domain.node(source).ssh
    if ssh is None:
        return "over SFTP (no [node.ssh] configured)"
    return f"over SFTP from {ssh.user}@{ssh.host}:{ssh.port}"


def fetch(domain: Domain, source: str, remote: Path, here: str, local: Path) -> int:
    """Bring `remote` (a path on node `source`) to `local` on node `here`; returns bytes."""
    with link(domain, source, here) as ln:
        return ln.get(remote, local).size


def fetch_snapshot(domain: Domain, source: str, remote: Path, here: str, local: Path) -> int:
    """A snapshot and its manifest; the manifest first, so that the pair looks complete
    only once the snapshot itself has landed whole."""
    with link(domain, source, here) as ln:
        ln.get(manifest_path(remote), manifest_path(local))
        return ln.get(remote, local).size


# ----- spool ----------------------------------------------------------------------------
@dataclass
class SpoolCopy:
    """What a spool copy did: a sentence for the run, facts for the ledger."""

    sentence: str
    facts: dict[str, Any] = field(default_factory=dict)


def shares_spool(domain: Domain, a: str, b: str) -> bool:
    na, nb = domain.node(a), domain.node(b)
    return bool(na.shared_spool and nb.shared_spool) and \
        domain.spool_dir(a) == domain.spool_dir(b)


def copy_spool(domain: Domain, source: str, here: str) -> SpoolCopy:
    """Pending job files of `source`'s spool into `here`'s spool.

    Resumable: a file already here with the same size is skipped (a copy in progress is
    a `.part` file, never a complete-looking one), and over SFTP an interrupted file
    resumes. A job file here with the same name but another size is another job: it is
    kept, and the incoming one is set aside under var/spool-conflicts/<source>/.
    A source that cannot be reached is reported, not raised: the spool is optional.
    """
    # A cupsd's spool holds c/d files, not .job files: the source's driver says which
    # files to take and where they land (cosprint/drivers: spool_handoff).
    src_dir, dest_dir, suffix = spool_handoff(domain, source, here)
    if shares_spool(domain, source, here):
        pending = len(list_spool(dest_dir))
        return SpoolCopy(
            f"spool of {source} is shared with {here} ({dest_dir}): nothing to copy; "
            f"{pending} pending job file(s) there print on {here}",
            {"shared": True, "pending": pending, "copied": 0})
    aside_dir = domain.home(here) / "var" / "spool-conflicts" / source
    try:
        with link(domain, source, here) as ln:
            return _copy_files(ln, source, here, src_dir, dest_dir, aside_dir, suffix)
    except (TransportUnreachable, HostKeyRefused, AuthRefused) as exc:
        # Raised while connecting only: the source's host is down or not to be trusted.
        log.warning("spool of %s not copied: %s", source, exc)
        return SpoolCopy(f"spool of {source} not copied to {here}: {exc}",
                         {"copied": 0, "reason": str(exc)})


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _copy_files(ln: Link, source: str, here: str, src_dir: Path, dest_dir: Path,
                aside_dir: Path, suffix: str = JOB_SUFFIX) -> SpoolCopy:
    files = ln.list_files(src_dir, suffix)
    total = sum(f.size for f in files)
    copied = skipped = resumed = gone = 0
    moved = 0
    conflicts: list[str] = []
    last = time.monotonic()
    dirs: set[Path] = set()
    log.info("copying %d spool file(s) (%d bytes) of %s to %s %s",
             len(files), total, source, here, ln.how)
    try:
        for i, f in enumerate(files, 1):
            dest = dest_dir / f.name
            have = _size(dest)
            if have is not None and have != f.size:
                dest = aside_dir / f.name
                conflicts.append(f.name)
                have = _size(dest)
            if have == f.size:
                skipped += 1
                continue
            try:
                got = ln.get(src_dir / f.name, dest, sync_dir=False, size=f.size)
            except NoSuchFile:
                gone += 1  # printed or removed on the source since the listing
                continue
            dirs.add(dest.parent)
            copied += 1
            moved += got.size
            resumed += got.resumed_at > 0
            if time.monotonic() - last >= PROGRESS_EVERY:
                last = time.monotonic()
                log.info("spool of %s: %d/%d file(s), %d/%d bytes", source, i, len(files),
                         moved, total)
    finally:
        for d in dirs:  # one directory fsync for all the renames done so far
            fsync_dir(d)
    text = (f"copied {copied} spool file(s) ({moved} bytes) of {source} to {here} "
            f"{ln.how}")
    extra = []
    if skipped:
        extra.append(f"{skipped} already there")
    if resumed:
        extra.append(f"{resumed} resumed")
    if gone:
        extra.append(f"{gone} gone meanwhile")
    if conflicts:
        extra.append(f"{len(conflicts)} set aside in {aside_dir} (another job of that "
                     "name is already here)")
    if extra:
        text += "; " + ", ".join(extra)
    log.info("%s", text)
    return SpoolCopy(text, {"copied": copied, "bytes": moved, "skipped": skipped,
                            "resumed": resumed, "gone": gone, "conflicts": conflicts,
                            "files": len(files)})

