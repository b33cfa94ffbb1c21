"""Failover plans: pure functions over what the control plane saw. No I/O here.

Given the domain, the authoritative state and what each node's probe reported, decide
which BCS takes over, which snapshot it restores (and how old it is: the data that
will be lost), what moves, which nodes stop and start, or the reason to refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cosfail.cosprint.designation import Designation
from cosfail.cosprint.domain import Domain
from cosfail.workflows.refusal import Refusal, invalid


@dataclass(frozen=True)
class SnapshotSeen:
    file: str
    ok: bool
    reason: str = ""
    epoch: int = 0
    created_at: float = 0.0
    rows: int = 0


@dataclass(frozen=True)
class NodeSeen:
    """One node as the control plane saw it just now."""

    node: str
    worker: bool  # its worker answered the probe
    cosprint: dict[str, Any] | None = None  # its COSprint's status, None: no answer
    snapshots: list[SnapshotSeen] = field(default_factory=list)  # newest first
    hosted: dict[str, int] = field(default_factory=dict)  # host → objects, its tables
    sample_queues: dict[str, str] = field(default_factory=dict)  # host → a queue it hosts
    designation: dict[str, Any] | None = None  # its etc/master, as its worker read it

    @property
    def alive(self) -> bool:
        return self.worker or self.cosprint is not None

    @classmethod
    def from_probe(cls, node: str, report: dict[str, Any] | None,
                   cosprint: dict[str, Any] | None = None) -> NodeSeen:
        if report is None:
            return cls(node=node, worker=False, cosprint=cosprint)
        return cls(
            node=node, worker=True, cosprint=report.get("cosprint"),
            snapshots=[SnapshotSeen(**s) for s in report.get("snapshots", [])],
            hosted=report.get("hosted", {}),
            sample_queues=report.get("sample_queues", {}),
            designation=report.get("designation"),
        )

    @property
    def epoch(self) -> int | None:
        """The epoch of its designation file; None when missing or unreadable."""
        d = self.designation or {}
        return d.get("epoch")


@dataclass(frozen=True)
class FailoverRequest:
    server: str
    to: str | None = None  # a BCS, or None with best=True
    best: bool = False
    force: bool = False
    with_spool: bool = False  # also copy the server's pending spool files to the BCS
    # The detector and a second node have just seen the server down: its probe is not
    # waited on long (workflows/liveness.py, SUSPECT_TIMEOUT).
    seen_down: bool = False


@dataclass(frozen=True)
class MoveRequest:
    """A switchover of `server` to the BCS `to`; a failback or reclaim of `server`."""

    server: str
    to: str = ""


@dataclass(frozen=True)
class FailoverPlan:
    server: str
    bcs: str
    master_before: str
    master_after: str
    epoch_before: int
    epoch_after: int
    restore: list[str]  # verified snapshots to try on the BCS, newest first
    snapshot: str | None
    snapshot_age: float | None  # seconds of changes a restore loses
    refused_snapshots: list[str]
    moving: int  # objects the failed server hosts
    stop: list[str]  # nodes whose COSprint stops (workers alive)
    start: list[str]  # nodes re-pointed and started after
    unreachable: list[str]  # left out: they re-point themselves when they return
    probe_queue: str  # a queue that moves: the verification job goes there
    notes: list[str]
    # Hosting moves (old host, new host) made after the restored snapshot was taken:
    # re-applied after the restore, so that restoring it undoes no earlier failover.
    replay: list[tuple[str, str]] = field(default_factory=list)
    with_spool: bool = False  # the BCS also takes the server's pending spool files

    def summary(self) -> str:
        loss = (f"snapshot {self.snapshot}, {self.snapshot_age:.0f} s old"
                if self.snapshot else f"no data lost: master {self.master_after} is alive")
        return (f"fail {self.server} over to {self.bcs}: {self.moving} objects move; "
                f"master {self.master_before}@{self.epoch_before} → "
                f"{self.master_after}@{self.epoch_after}; {loss}")


def good_snapshots(seen: NodeSeen) -> list[SnapshotSeen]:
    return [s for s in seen.snapshots if s.ok]


def not_a(domain: Domain, name: str, role: str) -> Refusal | None:
    """Why `name` cannot be the `role` a request needs, or None."""
    if name not in domain.nodes:
        return invalid(f"unknown node {name!r} (known: {', '.join(domain.nodes)})")
    if domain.node(name).role != role:
        return invalid(f"{name} is a {domain.node(name).role}, not a {role}")
    return None


def choose_bcs(domain: Domain, req: FailoverRequest, seen: dict[str, NodeSeen],
               needs_snapshot: bool) -> str | Refusal:
    """The BCS to fail over to, or why none fits."""
    covering = domain.covering_bcs(req.server)
    if req.to is not None:
        wrong = not_a(domain, req.to, "bcs")
        if wrong:
            return wrong
        if req.to not in covering:
            return invalid(f"{req.to} does not cover {req.server} (covered by: "
                           f"{', '.join(covering)})")
        candidates = [req.to]
    else:
        candidates = covering
    reasons = []
    fit = []
    for b in candidates:
        s = seen.get(b)
        if s is None or not s.worker:
            reasons.append(f"{b}: worker not answering")
        elif needs_snapshot and not good_snapshots(s):
            bad = "; ".join(x.reason for x in s.snapshots if not x.ok)
            reasons.append(f"{b}: no verified snapshot" + (f" that still verifies ({bad})"
                                                           if bad else ""))
        else:
            fit.append(s)
    if not fit:
        return Refusal(f"no bcs can take over {req.server}: {'; '.join(reasons)}")

    def rank(s: NodeSeen) -> tuple[float, int]:
        newest = good_snapshots(s)[0].created_at if good_snapshots(s) else 0.0
        return (-newest, sum(v for h, v in s.hosted.items() if h == s.node))

    return min(fit, key=rank).node


def plan_failover(domain: Domain, state: Designation, seen: dict[str, NodeSeen],
                  req: FailoverRequest, now: float,
                  moves: Sequence[tuple[int, str, str]] = ()) -> FailoverPlan | Refusal:
    """The plan, or the reason to refuse (nothing has changed either way).

    `moves`: (epoch, old host, new host) of every hosting move that succeeded (the
    ledger's failovers, switchovers, failbacks); those newer than the snapshot to be
    restored are replayed after it.
    """
    wrong = not_a(domain, req.server, "server")
    if wrong:
        return wrong
    if (req.to is None) == (not req.best):
        return invalid("give exactly one of --to BCS or --best")
    failed = seen.get(req.server, NodeSeen(req.server, worker=False))
    if failed.alive and not req.force:
        parts = (["worker up"] if failed.worker else []) + (
            [f"COSprint up as {failed.cosprint.get('role')}"] if failed.cosprint else [])
        return Refusal(f"{req.server} is still alive ({', '.join(parts)}): "
                       "use --force to fail over a live server")
    master_changes = state.master == req.server
    bcs = choose_bcs(domain, req, seen, needs_snapshot=master_changes)
    if isinstance(bcs, Refusal):
        return bcs
    target = seen[bcs]
    moving = target.hosted.get(req.server, 0)
    if target.hosted and moving == 0:
        return Refusal(f"{req.server} hosts no objects (already failed over?)")
    master_after = bcs if master_changes else state.master
    if not master_changes and not seen.get(state.master, NodeSeen("", False)).worker:
        return Refusal(f"master {state.master} does not answer: fail it over first")
    restore, snapshot, age, refused = [], None, None, []
    replay: list[tuple[str, str]] = []
    if master_changes:
        good = good_snapshots(target)
        # Only snapshots of the chosen one's epoch: the replay below is computed for it.
        restore = [s.file for s in good if s.epoch == good[0].epoch]
        snapshot, age = good[0].file, max(0.0, now - good[0].created_at)
        newer = target.snapshots[: target.snapshots.index(good[0])]
        refused = [f"{s.file}: {s.reason}" for s in newer]
        replay = [(old, new) for ep, old, new in sorted(moves)
                  if good[0].epoch < ep <= state.epoch]
    others = [n for n in domain.names() if n != req.server]
    alive = [n for n in others if seen.get(n) and seen[n].worker]
    stop = alive + ([req.server] if failed.worker else [])
    notes = []
    if refused:
        notes.append(f"newer snapshot(s) refused, restoring the last good one: "
                      f"{'; '.join(refused)}")
    if replay:
        notes.append(f"{snapshot} predates later hosting changes, re-applied after the "
                     f"restore: {', '.join(f'{o} → {n}' for o, n in replay)}")
    unreachable = [n for n in others if n not in alive]
    if unreachable:
        notes.append(f"unreachable, will re-point when they return: {', '.join(unreachable)}")
    return FailoverPlan(
        server=req.server, bcs=bcs, master_before=state.master, master_after=master_after,
        epoch_before=state.epoch, epoch_after=state.epoch + 1, restore=restore,
        snapshot=snapshot, snapshot_age=age, refused_snapshots=refused, moving=moving,
        stop=stop, start=alive, unreachable=unreachable,
        probe_queue=target.sample_queues.get(req.server, ""), notes=notes, replay=replay,
        with_spool=req.with_spool,
    )


# ----- planned moves: switchover, failback; and reclaim ------------------------------------
def _planned_move(domain: Domain, state: Designation, seen: dict[str, NodeSeen],
                  source: str, target: str) -> FailoverPlan | Refusal:
    """Hosting from a live `source` to `target`, with nothing lost: the source stops
    first, and the master's tables travel fresh, not from an older backup."""
    src = seen.get(source)
    if src is None or not src.worker:
        return Refusal(f"{source}'s worker does not answer: a planned move needs it alive "
                       "(use failover for a dead server)")
    tgt = seen.get(target)
    if tgt is None or not tgt.worker:
        return Refusal(f"{target}'s worker does not answer")
    moving = tgt.hosted.get(source, 0) or src.hosted.get(source, 0)
    if moving == 0:
        return Refusal(f"{source} hosts no objects: nothing to move")
    master_after = target if state.master == source else state.master
    if master_after != target and not (seen.get(master_after) and seen[master_after].worker):
        return Refusal(f"master {master_after} does not answer")
    others = [n for n in domain.names() if n not in (source,)]
    alive = [n for n in others if seen.get(n) and seen[n].worker]
    unreachable = [n for n in others if n not in alive]
    notes = [f"unreachable, will re-point when they return: {', '.join(unreachable)}"] \
        if unreachable else []
    return FailoverPlan(
        server=source, bcs=target, master_before=state.master, master_after=master_after,
        epoch_before=state.epoch, epoch_after=state.epoch + 1, restore=[], snapshot=None,
        snapshot_age=0.0 if state.master == source else None, refused_snapshots=[],
        moving=moving, stop=alive, start=alive, unreachable=unreachable,
        probe_queue=tgt.sample_queues.get(source, ""), notes=notes)


def plan_switchover(domain: Domain, state: Designation, seen: dict[str, NodeSeen],
                    server: str, to: str) -> FailoverPlan | Refusal:
    wrong = not_a(domain, server, "server") or not_a(domain, to, "bcs")
    if wrong:
        return wrong
    if to not in domain.covering_bcs(server):
        return invalid(f"{to} does not cover {server}")
    return _planned_move(domain, state, seen, server, to)


def plan_failback(domain: Domain, state: Designation, seen: dict[str, NodeSeen], server: str,
                  took_over: str | None, reclaim_needed: list[str]) -> FailoverPlan | Refusal:
    """Hosting back from the BCS that took `server` over, once `server` is reclaimed."""
    wrong = not_a(domain, server, "server")
    if wrong:
        return wrong
    if took_over is None:
        return Refusal(f"{server} was never failed over: nothing to fail back")
    me = seen.get(server)
    if server in reclaim_needed or me is None or me.epoch is None or me.epoch < state.epoch:
        return Refusal(f"{server} is not reclaimed yet: run `cosfail reclaim {server}` first")
    return _planned_move(domain, state, seen, took_over, server)


@dataclass(frozen=True)
class ReclaimPlan:
    server: str
    master: str
    epoch: int
    obsolete_epoch: int


def plan_reclaim(domain: Domain, state: Designation, seen: dict[str, NodeSeen],
                 server: str, reclaim_needed: list[str]) -> ReclaimPlan | Refusal:
    wrong = not_a(domain, server, "server")
    if wrong:
        return wrong
    if server == state.master:
        return Refusal(f"{server} is the master at epoch {state.epoch}: nothing to reclaim")
    me = seen.get(server)
    if me is None or not me.worker:
        return Refusal(f"{server}'s worker does not answer: start it (cosfail local revive) "
                       "first")
    stale = server in reclaim_needed or me.epoch is None or me.epoch < state.epoch
    if not stale:
        return Refusal(f"{server} is not stale (its designation is at epoch {me.epoch}, "
                       f"like the domain's): nothing to reclaim")
    return ReclaimPlan(server=server, master=state.master, epoch=state.epoch,
                       obsolete_epoch=me.epoch or 0)
