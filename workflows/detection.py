"""Failure detection's decisions: pure functions over what was seen, no I/O.

Liveness moves up → suspect → down → up (`transition`); a node is down only once a peer
confirms it (`judge_confirmation`); a confirmed-down server is failed over
automatically only when no guard stops it (`auto_failover_guards`). `workflows.detect`
observes the nodes and acts on these answers.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cosfail.cosprint.domain import Detect, Domain
from cosfail.workflows import ledger as L

UP, SUSPECT, DOWN = "up", "suspect", "down"
HOUR = 3600.0


@dataclass(frozen=True)
class Seen:
    """One node, as the control plane observed it just now."""

    worker: bool
    cosprint: bool

    @property
    def reachable(self) -> bool:
        return self.worker or self.cosprint


@dataclass(frozen=True)
class Confirmation:
    """What the peers asked about a node said, judged."""

    confirmed: bool
    by: str | None  # the peer that confirmed
    detail: str


@dataclass(frozen=True)
class Liveness:
    node: str
    state: str  # UP, SUSPECT, DOWN
    since: float  # when this state began
    unreachable_since: float | None = None  # first observation with both gone
    confirmed_by: str | None = None
    note: str = ""
    # Set once peers were asked while suspect and did not confirm: why not.
    unconfirmed: str | None = None


def judge_confirmation(node: str, asked: Sequence[str],
                       answers: dict[str, dict[str, Any] | None]) -> Confirmation:
    """Down is confirmed when a peer sees neither the node's COSprint nor its worker and
    no peer sees either one (a peer that does is evidence of a partition around us)."""
    if not asked:
        return Confirmation(False, None, "no other node's worker answers to confirm")
    seeing, blind, silent = [], [], []
    for peer in asked:
        a = answers.get(peer)
        if a is None:
            silent.append(peer)
        elif a.get("cosprint") or a.get("worker"):
            what = " and ".join(k for k in ("COSprint", "worker") if a.get(k.lower()))
            seeing.append(f"{peer} still reaches its {what}")
        else:
            blind.append(peer)
    if seeing:
        return Confirmation(False, None, "; ".join(seeing))
    if blind:
        return Confirmation(True, blind[0],
                            f"{', '.join(blind)} reach neither its COSprint nor its worker")
    return Confirmation(False, None, f"no answer from {', '.join(silent)}")


def wants_confirmation(prev: Liveness | None, now: float, down_after: float) -> bool:
    """Ask peers in this observation round: the node has been unreachable long enough."""
    return (prev is not None and prev.state == SUSPECT and prev.unreachable_since is not None
            and now - prev.unreachable_since >= down_after)


def transition(prev: Liveness | None, node: str, seen: Seen, now: float, down_after: float,
               confirmation: Confirmation | None = None) -> Liveness:
    """The node's liveness after observing `seen` at `now`.

    Up as soon as either its worker or its COSprint answers. Otherwise suspect, and
    down only once both have been unreachable for `down_after` seconds and a peer
    confirmed it in this round. Down stays down until the node answers again.
    """
    if seen.reachable:
        if prev is not None and prev.state == UP:
            return prev
        what = " and ".join(k for k, ok in (("worker", seen.worker),
                                            ("COSprint", seen.cosprint)) if ok)
        note = f"{what} answer{'s' if 'and' not in what else ''} again"
        if prev is not None and prev.unreachable_since is not None:
            note += f" after {now - prev.unreachable_since:.1f} s"
        return Liveness(node, UP, now, note=note if prev is not None else "")
    if prev is not None and prev.state == DOWN:
        return prev
    start = prev.unreachable_since if prev is not None and prev.state == SUSPECT \
        and prev.unreachable_since is not None else now
    since = prev.since if prev is not None and prev.state == SUSPECT else now
    elapsed = now - start
    if elapsed >= down_after and confirmation is not None:
        if confirmation.confirmed:
            return Liveness(node, DOWN, now, start, confirmation.by,
                            f"worker and COSprint unreachable from the control plane for "
                            f"{elapsed:.1f} s; confirmed by {confirmation.by}: "
                            f"{confirmation.detail}")
        return Liveness(node, SUSPECT, since, start,
                        note=f"unreachable from the control plane, but not confirmed by "
                             f"another node: {confirmation.detail}",
                        unconfirmed=confirmation.detail)
    if prev is not None and prev.state == SUSPECT:
        return prev  # same verdict: nothing new to record
    return Liveness(node, SUSPECT, now, start,
                    note="worker and COSprint unreachable from the control plane")


def worth_recording(prev: Liveness | None, new: Liveness) -> bool:
    """A ledger row: a change of state, or a new verdict on a suspect node."""
    return prev is None or prev.state != new.state or (
        new.state == SUSPECT and new.unconfirmed != prev.unconfirmed)


def worth_notifying(prev: Liveness | None, new: Liveness) -> bool:
    """notify_command runs once per transition; a first sighting of a healthy node is
    not one."""
    if prev is None:
        return new.state != UP
    return prev.state != new.state


def notify_argv(template: Sequence[str], node: str, state: str) -> list[str]:
    """The notify command's argv: `{node}` and `{state}` substituted inside each
    argument, never split or shell-interpreted."""
    return [a.replace("{node}", node).replace("{state}", state) for a in template]


def resume(row: dict[str, Any] | None, now: float) -> Liveness | None:
    """A node's liveness from its latest ledger row, for a (re)starting detector. A
    suspect node's clock starts again: nobody watched it in between."""
    if row is None:
        return None
    if row["state"] == SUSPECT:
        return Liveness(row["node"], SUSPECT, now, now, note=row["note"])
    return Liveness(row["node"], row["state"], row["at"], row["unreachable_since"],
                    row["confirmed_by"], row["note"])


def lease_for(cfg: Detect) -> float:
    """How long the active detector's lock outlives its last tick."""
    return max(5.0, 5 * cfg.interval)


def failover_candidate(liv: Liveness, now: float, down_after: float) -> bool:
    """Whether the automatic failover is considered for this node now: it is down, or
    has been unreachable long enough but no peer confirmed it (a guard then says so)."""
    if liv.state == DOWN:
        return True
    return (liv.state == SUSPECT and liv.unconfirmed is not None
            and liv.unreachable_since is not None
            and now - liv.unreachable_since >= down_after)


def hosted_elsewhere(server: str, moves: Sequence[tuple[int, str, str]]) -> tuple[int, str] | None:
    """(epoch, new host) when the ledger's hosting moves left `server` hosting nothing."""
    where: tuple[int, str] | None = None
    for epoch, old, new in sorted(moves):
        if old == server:
            where = (epoch, new)
        elif new == server:
            where = None
    return where


def already_handled(server: str, liv: Liveness, failovers: Sequence[dict[str, Any]],
                    moves: Sequence[tuple[int, str, str]]) -> str | None:
    """Why no automatic failover is due at all: one already ran in this outage, or the
    server's objects are hosted elsewhere (its return is reclaim's job)."""
    start = liv.unreachable_since or liv.since
    for run in failovers:
        if run["params"].get("request", {}).get("server") != server:
            continue
        if run["state"] != L.REFUSED and run["created_at"] >= start:
            return (f"failover run {run['id']} ({run['state']}, by {run['triggered_by']}) "
                    f"already acts on this outage")
    moved = hosted_elsewhere(server, moves)
    if moved:
        return (f"{server} hosts nothing since epoch {moved[0]} (its objects are on "
                f"{moved[1]}): when it returns, reclaim makes it a slave")
    return None


def data_loss_guard(is_master: bool, snapshot_age: float | None,
                    max_data_loss: float) -> str | None:
    """The stale-snapshot guard: a restore may lose at most `max_data_loss` seconds.
    Only a failed master's objects come from a snapshot; others come from the master's
    live tables and lose nothing."""
    if not is_master:
        return None
    if snapshot_age is None:
        return "no verified snapshot on a bcs covering it"
    if snapshot_age > max_data_loss:
        return (f"the newest verified snapshot is {snapshot_age:.0f} s old, more than "
                f"max_data_loss = {max_data_loss:g} s")
    return None


def auto_failover_guards(liv: Liveness, now: float, cfg: Detect, lock_holder: str | None,
                         auto_failovers_at: Sequence[float], is_master: bool,
                         snapshot_age: float | None,
                         control_worker: bool = True,
                         paused: str | None = None) -> list[tuple[str, str]]:
    """Every guard that stops the automatic failover of a candidate node now, as
    (kind, reason); empty: go. `paused` is why the domain is paused, if it is."""
    out: list[tuple[str, str]] = []
    if not cfg.auto_failover:
        out.append(("off", "[detect].auto_failover is off"))
    if paused:
        out.append(("paused", paused))
    if liv.state != DOWN:
        out.append(("unconfirmed", "no second-node confirmation: "
                    + (liv.unconfirmed or "no peer asked yet")))
    if lock_holder:
        out.append(("lock", f"a hosting change runs: run {lock_holder} holds the hosting lock"))
    recent = [t for t in auto_failovers_at if now - t < HOUR]
    if len(recent) >= cfg.max_auto_per_hour:
        out.append(("rate", f"{len(recent)} automatic failover(s) in the last hour; "
                    f"max_auto_per_hour = {cfg.max_auto_per_hour}"))
    stale = data_loss_guard(is_master, snapshot_age, cfg.max_data_loss)
    if stale:
        out.append(("snapshot", stale))
    if not control_worker:
        out.append(("control", "no control worker answers: the failover could not run"))
    return out


def auto_failover_guard(*args: Any, **kwargs: Any) -> str | None:
    """The guards' reasons in one sentence, or None when nothing stops it."""
    guards = auto_failover_guards(*args, **kwargs)
    return "; ".join(r for _, r in guards) or None


def failover_command(domain: Domain, server: str, bcs: str) -> str:
    """The exact command an operator runs to fail `server` over to `bcs`."""
    return shlex.join(["cosfail", "failover", server, "--to", bcs, "-d", str(domain.path)])
