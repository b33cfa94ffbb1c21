"""The serving lease: how long a printing node may go on when it cannot read the ledger.

Pure: timings, the SQL that renews and reads a lease, and the decisions; the role keeper
(cosprint/daemon/keeper.py) and the failover's `wait_out_lease` step do the I/O. The
argument for why two nodes never print as master in overlapping intervals is in
docs/architecture.md, invariant 14.

Lease times are the database server's clock: a renewal writes `expires_at = now + ttl`
by the server's `now`, and the failover reads `expires_at - now` by the same clock. A
node counts its own lease on its monotonic clock from the moment it *sent* the renewal
that the server acknowledged, minus a margin, so its lease always ends before the one
the server recorded, whatever its wall clock says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TTL = 10.0
MIN_TTL = 5.0
MAX_TTL = 300.0
ROUND_TIMEOUT = 1.0  # seconds a peer has to answer a failsafe question
RENEW_TIMEOUT = 2.0  # seconds a renewal may take: to connect, or to get a lock on SQLite


def renew_every(ttl: float) -> float:
    return ttl / 3


def margin(ttl: float) -> float:
    """What a node takes off its own lease and a failover adds to the recorded one: room
    for clock-rate drift between hosts and for a request still in flight."""
    return max(0.5, ttl / 10)


def failsafe_grant(ttl: float) -> float:
    """How long one failsafe round (every peer confirmed) lets a node print, from the
    round's start: until its next round has answered, which starts `renew_every` later,
    after a renewal that may take RENEW_TIMEOUT, and takes a round timeout, with one
    round timeout to spare."""
    return renew_every(ttl) + RENEW_TIMEOUT + 2 * ROUND_TIMEOUT


def failover_wait(ttl: float) -> float:
    """How long after every peer stopped a failover waits at least: any failsafe round
    the old master won before has run out by then."""
    return failsafe_grant(ttl) + margin(ttl)


# A node's last failsafe confirmation of a peer, in its home: written before the answer
# leaves, so a failover that stopped the node knows how long rounds it confirmed may last.
CONFIRMED = Path("var/failsafe_confirmed")
NEVER = "never"  # what a stopped node says of its confirmations when it made none


def confirmation_record(at: float, boot: str, asker: str, master: str, epoch: int) -> bytes:
    """The record of a confirmation made at `at` on the monotonic clock of boot `boot`."""
    return json.dumps({"monotonic": at, "boot": boot, "asker": asker, "master": master,
                       "epoch": epoch}).encode() + b"\n"


def confirmed_ago(record: bytes | None, now: float, boot: str) -> float | str | None:
    """Seconds between the node's last confirmation and `now` (both on this boot's
    monotonic clock); NEVER without a record; None when the record cannot tell (written
    under another boot, whose clock does not compare, or malformed)."""
    if record is None:
        return NEVER
    try:
        data = json.loads(record)
        at, at_boot = float(data["monotonic"]), data["boot"]
    except (ValueError, KeyError, TypeError):
        return None
    return max(0.0, now - at) if at_boot == boot else None


def failsafe_wait(ttl: float, confirmed: dict[str, float | str]) -> tuple[float, str]:
    """How long from now a failover still waits for failsafe rounds the server may have
    won, and why, from what each peer the run stopped said at its stop of its last
    confirmation (seconds before, or NEVER). A round needs every peer's confirmation and
    lasts `failsafe_grant` from its start, which precedes each confirmation: one stopped
    peer whose last confirmation is older than that ends them all. Without word from a
    stopped peer, the whole `failover_wait`."""
    if not confirmed:
        return failover_wait(ttl), "any failsafe round it won has run out"
    peer, ago = max(confirmed.items(), key=lambda kv: float("inf") if kv[1] == NEVER
                    else float(kv[1]))
    if ago == NEVER:
        return 0.0, f"it won no failsafe round: {peer} confirmed none"
    left = max(0.0, failover_wait(ttl) - float(ago))
    return left, (f"{peer} last confirmed a failsafe round {float(ago):.1f} s before "
                  "its stop, and that round has run out")


def ttl_problem(ttl: float) -> str | None:
    """Why `ttl` cannot keep the invariant, or None."""
    if not MIN_TTL <= ttl <= MAX_TTL:
        return (f"ttl {ttl:g} s is outside {MIN_TTL:g}..{MAX_TTL:g} s: below, renewals "
                "every ttl/3 leave no room for a slow ledger; above, an isolated master "
                "would print on for minutes after a failover could start")
    return None


# The database server's clock, in seconds since the epoch. On SQLite the "server" is
# the file: its clock is that of the host that queries it (docs/architecture.md).
NOW_SQL = {
    "postgresql": "extract(epoch from clock_timestamp())",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


def renew_sql(dialect: str) -> str:
    """Renew :node's lease for :ttl seconds, only while the domain is at :epoch: a
    renewal racing a new epoch either lands before it (and the failover waits it out) or
    finds no row to renew. On PostgreSQL the share lock makes `advance_epoch` wait for a
    renewal in flight, and a renewal wait for an advance in flight, then re-check."""
    now = NOW_SQL[dialect]
    lock = " FOR SHARE" if dialect == "postgresql" else ""
    return (
        "INSERT INTO serving_lease (domain, node, epoch, renewed_at, expires_at) "
        f"SELECT domain, :node, epoch, {now}, {now} + :ttl FROM domain_state "
        f"WHERE domain = :domain AND epoch = :epoch{lock} "
        "ON CONFLICT (domain, node) DO UPDATE SET epoch = excluded.epoch, "
        "renewed_at = excluded.renewed_at, expires_at = excluded.expires_at"
    )


RECORD_OUTAGE_SQL = (
    "INSERT INTO lease_events (domain, node, epoch, since, until, outcome) "
    "VALUES (:domain, :node, :epoch, :since, :until, :outcome)")


STOPPED, THROUGHOUT = "stopped printing", "printed throughout"  # outcomes' openings


@dataclass
class Outage:
    """A ledger outage as one node lived it, on its own wall clock."""

    since: float
    epoch: int
    failsafe: bool = False  # it printed on failsafe rounds at some point
    stopped: str = ""  # why it stopped printing, if it did

    def outcome(self) -> str:
        if self.stopped:
            return f"{STOPPED}: {self.stopped}"[:200]
        return f"{THROUGHOUT}, in failsafe past its lease" if self.failsafe \
            else f"{THROUGHOUT} on its lease"


def outcome_kind(outcome: str) -> str:
    """A recorded outage's outcome in one word, for a metric's label: "stopped",
    "failsafe" (printed on past its lease) or "lease"."""
    if outcome.startswith(STOPPED):
        return "stopped"
    return "failsafe" if "failsafe" in outcome else "lease"


@dataclass(frozen=True)
class Hold:
    """What lets a node print without reading the ledger, on its monotonic clock."""

    epoch: int = 0  # the epoch the lease was renewed, and failsafe confirmed, under
    lease_until: float = 0.0
    failsafe_until: float = 0.0
    failsafe_why: str = "no failsafe round yet"

    def lease_left(self, now: float) -> float:
        return max(0.0, self.lease_until - now)


def serving_without_ledger(hold: Hold, epoch: int, now: float, failsafe: bool) -> str | None:
    """Why a node that would print at `epoch` may go on printing while the ledger is
    unreadable (its lease, or a failsafe round), or None when it must stop."""
    if hold.epoch != epoch:
        return None
    if now < hold.lease_until:
        return "printing on its lease"
    if failsafe and now < hold.failsafe_until:
        return f"printing in failsafe: {hold.failsafe_why}"
    return None


def failsafe_refusal(*, master: str, epoch: int, mine: tuple[str, int] | None,
                     ledger_readable: bool, serving: bool) -> str | None:
    """Why this node will not confirm, in failsafe, a peer that serves under `master`
    at `epoch`; None when it confirms.

    It confirms only what it can stand behind: it is running and not stopping, it cannot
    read the ledger either (else the asker should be able to: let it find out), and its
    own designation (`mine`) is the same master at the same epoch."""
    if not serving:
        return "stopping"
    if ledger_readable:
        return "it reads the ledger"
    if mine is None:
        return "its designation is unknown"
    if mine != (master, epoch):
        return f"it sees {mine[0]}@{mine[1]}, not {master}@{epoch}"
    return None


def round_verdict(answers: dict[str, str | None]) -> tuple[bool, str]:
    """One failsafe round: every peer's refusal (None: confirmed; missing: no answer is
    recorded as a refusal by the caller). Failsafe holds only if every peer confirmed."""
    refused = {peer: why for peer, why in sorted(answers.items()) if why is not None}
    if refused:
        peer, why = next(iter(refused.items()))
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        return False, f"{peer} refused: {why}{more}"
    return True, f"all {len(answers)} peers confirm"
