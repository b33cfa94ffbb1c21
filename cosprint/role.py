"""The role a node may serve in, decided from its designation and the authority.

Pure: the callers read the designation file and the ledger, and re-decide before every
act that matters (cosprintd per job, the CUPS driver per sync), so that a node whose
epoch is older than the domain's never acts as master (docs/architecture.md, invariant 2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cosfail.cosprint.designation import Designation

MASTER, SERVER, SLAVE, STALE, UNVERIFIED = "master", "server", "slave", "stale", "unverified"
PRINTING_ROLES = frozenset({MASTER, SERVER})


def decide_role(
    node: str,
    designation: Designation | None,
    authority: Designation | None,
    *,
    hosts_objects: bool,
    designation_error: str | None = None,
    authority_error: str | None = None,
) -> tuple[str, str]:
    """The role `node` may serve in, and why.

    `designation` is the node's own copy (None when missing or malformed, with
    `designation_error` saying which); `authority` is the ledger's state (None when it
    cannot be read or was never initialised, with `authority_error`).

    - master: the designation names the node and equals the authority exactly;
    - stale: the node's epoch is unknown, older than, or disagrees with the authority's:
      it refuses jobs for objects it hosts until restart-check or reclaim fixes it;
    - unverified: the authority cannot be read, and the node would otherwise be master
      or host objects: it must not print, but this is transient, not a reclaim;
    - server / slave: epoch confirmed; hosts objects or not.
    """
    if designation is None:
        why = designation_error or "no designation file"
        return STALE, f"{node}: {why}; epoch unknown, restart-check or reclaim needed"
    if authority is None:
        why = authority_error or "no authoritative state in the ledger"
        if designation.master == node or hosts_objects:
            return UNVERIFIED, (
                f"{node}: cannot verify designation {designation} against the authority "
                f"({why}); not printing"
            )
        return SLAVE, f"{node}: authority unreadable ({why}); slave on designation {designation}"
    if designation.epoch < authority.epoch:
        return STALE, (
            f"{node}: designation {designation} is older than the authority's {authority}; "
            "reclaim needed"
        )
    if designation != authority:
        return STALE, f"{node}: designation {designation} disagrees with authority {authority}"
    if designation.master == node:
        return MASTER, f"{node}: designated master at epoch {authority.epoch}, confirmed"
    if hosts_objects:
        return SERVER, f"{node}: hosts objects; master is {authority}"
    return SLAVE, f"{node}: hosts nothing; master is {authority}"
