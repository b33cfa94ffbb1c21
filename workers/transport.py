"""Moving files between nodes: a local copy on a shared file system, SFTP otherwise.

Either way the file arrives under a temporary name, is fsynced, then renamed: an
interrupted transfer never leaves a file that looks complete.
"""

from __future__ import annotations

from pathlib import Path

from cosprint.domain import Domain
from cosprint.errors import CosfailError
from cosprint.fsutil import atomic_copy
from cosprint.snapshot import manifest_path


class TransportError(CosfailError):
    """A file could not be moved between two nodes."""


def same_host(domain: Domain, a: str, b: str) -> bool:
    return domain.node(a).host == domain.node(b).host


def fetch(domain: Domain, source: str, remote: Path, here: str, local: Path) -> int:
    """Bring `remote` (a path on node `source`) to `local` on node `here`; returns bytes."""
    if same_host(domain, source, here):
        try:
            atomic_copy(remote, local)
        except FileNotFoundError:
            raise TransportError(f"{source}:{remote}: no such file") from None
        return local.stat().st_size
    raise TransportError(
        f"{source} and {here} are on different hosts and no SFTP transport is configured"
    )


def fetch_snapshot(domain: Domain, source: str, remote: Path, here: str, local: Path) -> int:
    """A snapshot and its manifest; the manifest first, so that the pair looks complete
    only once the snapshot itself has landed whole."""
    fetch(domain, source, manifest_path(remote), here, manifest_path(local))
    return fetch(domain, source, remote, here, local)
